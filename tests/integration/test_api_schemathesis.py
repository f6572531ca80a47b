"""Schemathesis over every operation of the running API: no 5xx, and it keeps its word.

A real node (worker and API, Tansu, chdb, SQLite) answers cases generated from
its own OpenAPI document, fitting and breaking each operation's schema, with
the key each operation declares (write key as HTTP Basic user, read or admin
key as Bearer). Every answer is below 500, its status, content type and body
are what the document lists for the operation (schemathesis's conformance
checks), and every refusal has the error body.

``SCHEMATHESIS_EXAMPLES`` (per operation and mode, default 6) makes the longer
run recorded in docs/architecture.md.
"""

from __future__ import annotations

import base64
import os
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess

pytestmark = pytest.mark.integration
# Not negative_data_rejection: it wants unknown query parameters refused, which
# the API (like most) ignores; a longer run found nothing else.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "6"))
# A subscribed webhook is POSTed to by the worker: generated URLs would send
# traffic off this machine. The route's validation is covered by the outreach tests.
# And a backup is written into the folders the request names: generated ones would write
# anywhere on this machine. The route's validation is covered by test_backup.py.
NOT_FUZZED = {("POST", "/v1/outreach/webhooks"), ("POST", "/v1/admin/backups")}


def key_headers(settings: Settings, security: list[dict[str, Any]] | None) -> dict[str, str]:
    """The credentials an operation's declared scheme asks for."""
    schemes = {name for requirement in security or [] for name in requirement}
    if "writeKey" in schemes:
        token = base64.b64encode(f"{settings.write_key}:".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if "adminKey" in schemes:
        return {"Authorization": f"Bearer {settings.admin_key}"}
    if "readKey" in schemes:
        return {"Authorization": f"Bearer {settings.read_key}"}
    return {}


def test_every_operation_answers_below_500_with_a_documented_status(settings: Settings) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    node = NodeProcess(settings, settings.data_dir / "node.log")
    node.start()
    statuses: Counter[tuple[str, int]] = Counter()
    try:
        with httpx.Client(base_url=node.base, timeout=60) as client:
            document = client.get("/openapi.json").json()
            schema = schemathesis.openapi.from_dict(document)
            operations = [result.ok() for result in schema.get_all_operations()]
            fuzzed = [op for op in operations if (op.method.upper(), op.path) not in NOT_FUZZED]
            assert len(fuzzed) >= 30, [op.label for op in operations]
            for operation in fuzzed:
                began = time.monotonic()
                fuzz(client, settings, operation, statuses)
                cases = sum(n for (label, _), n in statuses.items() if label == operation.label)
                print(f"{operation.label}: {cases} cases, {time.monotonic() - began:.1f} s")
    finally:
        log = node.log_tail(80)
        node.stop()
    assert "Traceback" not in log, log
    labels = {label for label, _ in statuses}
    assert labels == {op.label for op in fuzzed}
    # Both kinds of answer were reached: accepted and refused cases.
    assert any(200 <= code < 300 for _, code in statuses), statuses
    assert any(code == 400 for _, code in statuses), statuses


def fuzz(
    client: httpx.Client,
    settings: Settings,
    operation: Any,
    statuses: Counter[tuple[str, int]],
) -> None:
    raw = operation.definition.raw
    documented = set(raw["responses"])
    keys = key_headers(settings, raw.get("security"))
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
        GenerationMode.NEGATIVE
    )

    @hypothesis_settings(
        max_examples=EXAMPLES * 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def answers(case: schemathesis.Case) -> None:
        sent = case.as_transport_kwargs(base_url=node_base(client), headers=keys)
        response = client.request(
            sent["method"],
            sent["url"],
            params=sent.get("params"),
            headers=sent.get("headers"),
            cookies=sent.get("cookies"),
            content=sent.get("data"),
            json=sent.get("json"),
        )
        where = (case.method, case.formatted_path, response.text[:500])
        assert response.status_code < 500, where
        assert str(response.status_code) in documented, where
        if response.status_code >= 400 and operation.path != "/health":
            answer = response.json()
            assert answer["success"] is False and answer["message"], where
        statuses[(operation.label, response.status_code)] += 1
        # Schemathesis's own view of the same answer: status, content type and body
        # as the document says.
        case.validate_response(response, checks=CHECKS, transport_kwargs=sent)

    answers()


def node_base(client: httpx.Client) -> str:
    return str(client.base_url).rstrip("/")
