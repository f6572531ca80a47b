"""The OpenAPI document: the error body on every route, the key schemes where they are checked."""

from __future__ import annotations

from typing import Any

import pytest

from api.app import create_api
from api.dependencies import AccessKeys, Gateway


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


def test_every_refusal_is_documented_with_the_error_body(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)  # validation answers 400
        errors = {code: r for code, r in responses.items() if int(code) >= 400}
        if path == "/health":
            continue  # its 503 is the health report itself
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, code)


def expected_scheme(method: str, path: str) -> str | None:
    if path.startswith(("/v1/write-keys", "/v1/dead-letters", "/v1/outreach", "/v1/admin")):
        return "adminKey"
    if path in ("/health", "/metrics") or path.startswith("/v1/schemas"):
        return None
    if path in ("/v1/projects/{write_key}/settings", "/sourceConfig"):
        return None  # the browser SDKs' settings: the write key is in the path or query
    if method == "POST" and path.rsplit("/", 1)[-1] in (
        "track", "page", "screen", "identify", "group", "alias", "batch",
    ):  # fmt: skip
        return "writeKey"
    return "readKey"


def test_each_route_declares_the_key_it_checks(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        declared = [name for requirement in operation.get("security", []) for name in requirement]
        scheme = expected_scheme(method, path)
        assert declared == ([scheme] if scheme else []), (method, path, declared)
        statuses = set(operation["responses"])
        if scheme is not None:
            assert {"400", "401"} <= statuses, (method, path)
        if scheme == "writeKey":
            assert {"413", "415", "429", "503"} <= statuses, (method, path)
            # A 503 of ingest (broker, full journal, lag limit) says when to retry.
            unavailable = operation["responses"]["503"]
            assert "Retry-After" in unavailable["headers"], (method, path)
            assert "backlog" in unavailable["description"], (method, path)
