"""The OpenAPI document: the error body on every route, the key schemes where they are checked."""

from __future__ import annotations

from typing import Any

import pytest

from api.access import PUBLIC_ROUTES, ROUTE_ACCESS, UNLISTED
from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from projections.access import Role


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # The document is built from the routes alone: no collaborator is called.
    gateway = Gateway(
        sink=None,  # type: ignore[arg-type]
        keys=AccessKeys(frozenset(), frozenset()),
        event_log=None,  # type: ignore[arg-type]
        stages=None,  # type: ignore[arg-type]
    )
    return create_api(gateway).openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_error_body_and_the_key_schemes_are_components(document: dict[str, Any]) -> None:
    components = document["components"]
    body = components["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"message"}
    assert body["properties"]["success"]["const"] is False
    assert set(components["schemas"]["ErrorItem"]["required"]) == {"field", "rule", "message"}
    schemes = components["securitySchemes"]
    assert schemes["writeKey"] == {**schemes["writeKey"], "type": "http", "scheme": "basic"}
    assert schemes["readKey"]["scheme"] == schemes["adminKey"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in components["schemas"]


# Segments and traits refuse a definition, a static list a row, flows a flow, by their own rules.
DEFINITION_ROUTES = (
    "/v1/segments/{segment_id}",
    "/v1/traits/{trait_id}",
    "/v1/segments/{segment_id}/members",
    "/v1/funnels/dropoffs",
    "/v1/flows/{flow_id}",
)


def test_every_refusal_is_documented_with_the_error_body(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        # Request validation answers 400; only a route that refuses a definition by its
        # own rules answers 422 (segments, traits, flows), documented with the error body.
        if "422" in responses:
            assert path in DEFINITION_ROUTES, (method, path)
        errors = {code: r for code, r in responses.items() if int(code) >= 400}
        if path == "/health":
            continue  # its 503 is the health report itself
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)


def expected_schemes(method: str, path: str) -> list[str]:
    """What api/access.py's table says: keys by least role, and a signed-in session."""
    if method == "POST" and path.rsplit("/", 1)[-1] in (
        "track", "page", "screen", "identify", "group", "alias", "batch",
    ):  # fmt: skip
        return ["writeKey"]
    if (method, path) in PUBLIC_ROUTES:
        return []
    rule = ROUTE_ACCESS.get((method, path), UNLISTED)
    # No key is a marketer: outreach, like keys and users, takes the admin key.
    return ["adminKey" if rule.role >= Role.marketer else "readKey", "session"]


def test_each_route_declares_the_key_it_checks(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        declared = [name for requirement in operation.get("security", []) for name in requirement]
        schemes = expected_schemes(method, path)
        assert declared == schemes, (method, path, declared)
        statuses = set(operation["responses"])
        if "session" in schemes:
            assert {"400", "401", "403"} <= statuses, (method, path)
        if schemes == ["writeKey"]:
            assert {"400", "401"} <= statuses, (method, path)
            assert {"413", "415", "429", "503"} <= statuses, (method, path)
            # A 503 of ingest (broker, full journal, lag limit) says when to retry.
            unavailable = operation["responses"]["503"]
            assert "Retry-After" in unavailable["headers"], (method, path)
            assert "backlog" in unavailable["description"], (method, path)


def test_the_route_table_and_the_app_name_the_same_routes(document: dict[str, Any]) -> None:
    served = {(method, path) for method, path, _ in operations(document)}
    assert served - PUBLIC_ROUTES - set(ROUTE_ACCESS) == set()  # no route falls to UNLISTED
    assert set(ROUTE_ACCESS) - served == set()  # no rule for a route that is gone
    assert PUBLIC_ROUTES - served == set()
