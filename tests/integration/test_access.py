"""Users, roles, sessions, the audit log and access alerts, on a real node over HTTP."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.access import PUBLIC_ROUTES, ROUTE_ACCESS, UNLISTED
from projections.access import Role
from stack.settings import Settings
from streams.outreach.channels import SIGNATURE_HEADER, verify
from tests.node_process import NodeProcess, started_node
from tests.node_process import platform_settings as node_settings

PASSWORD = "correct horse battery"
ALERT_SECRET = "alert-secret"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers.get(SIGNATURE_HEADER, ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return None


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A real HTTP server that keeps the alerts it is sent."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", _Receiver.received
    server.shutdown()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, broker: Any, receiver: tuple[str, list[Any]]
) -> Iterator[NodeProcess]:
    name = uuid.uuid4().hex[:10]
    settings = node_settings(
        tmp_path_factory.mktemp("access") / "data",
        name,
        broker.bootstrap_servers,
        alert_customers_per_min=3,
        signin_max_failures=3,
        alert_webhook_url=receiver[0],
        alert_webhook_secret=ALERT_SECRET,
    )
    for role in Role:
        added = users_cli(settings, "add", role.name, "--role", role.name, "--password-stdin")
        assert added.returncode == 0, added.stderr
    running = started_node(settings)
    yield running
    running.stop()


def users_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", "users", *args],
        env={**os.environ, **settings.to_env()},
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def signed_in(node: NodeProcess, name: str, password: str = PASSWORD) -> httpx.Client:
    client = httpx.Client(base_url=node.base, timeout=30)
    response = client.post("/v1/session", json={"name": name, "password": password})
    assert response.status_code == 200, response.text
    client.headers["X-CSRF-Token"] = response.json()["csrf_token"]
    return client


def admin(node: NodeProcess) -> httpx.Client:
    headers = {"Authorization": f"Bearer {node.settings.admin_key}"}
    return httpx.Client(base_url=node.base, timeout=30, headers=headers)


def guarded_routes(node: NodeProcess) -> list[tuple[str, str]]:
    document = httpx.get(f"{node.base}/openapi.json", timeout=30).json()
    routes = [
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if (method.upper(), path) not in PUBLIC_ROUTES
    ]
    # Signing out ends the session the rest of the matrix uses: last.
    return sorted(routes, key=lambda route: route == ("DELETE", "/v1/session"))


def test_every_route_answers_each_role_as_the_table_says(node: NodeProcess) -> None:
    callers: dict[str, tuple[httpx.Client, Role]] = {
        role.name: (signed_in(node, role.name), role) for role in Role
    }
    read_headers = {"Authorization": f"Bearer {node.settings.read_key}"}
    callers["read key"] = (httpx.Client(base_url=node.base, headers=read_headers), Role.analyst)
    callers["admin key"] = (admin(node), Role.admin)
    anonymous = httpx.Client(base_url=node.base, timeout=30)
    routes = guarded_routes(node)
    assert len(routes) == len(ROUTE_ACCESS)  # the table names every guarded route
    for method, template in routes:
        path = template.replace("{", "x").replace("}", "")  # any value: the guard comes first
        body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        assert anonymous.request(method, path, **body).status_code == 401, (method, path)
        needed = ROUTE_ACCESS.get((method, template), UNLISTED).role
        for who, (client, role) in callers.items():
            response = client.request(method, path, **body)
            if role < needed:
                assert response.status_code == 403, (who, method, path, response.text)
                assert response.json()["errors"][0]["rule"] == "role_required"
                assert needed.name in response.json()["message"]
            else:
                assert response.status_code not in (401, 403, 500), (who, method, path)


def test_sign_in_sessions_and_csrf(node: NodeProcess) -> None:
    anonymous = httpx.Client(base_url=node.base, timeout=30)
    wrong = anonymous.post("/v1/session", json={"name": "analyst", "password": "not it at all"})
    unknown = anonymous.post("/v1/session", json={"name": "nobody", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()  # never a hint of which part was wrong
    assert anonymous.post("/v1/session", json={"name": "x"}).status_code == 400

    marketer = httpx.Client(base_url=node.base, timeout=30)
    response = marketer.post("/v1/session", json={"name": "marketer", "password": PASSWORD})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    csrf = response.json()["csrf_token"]
    assert marketer.get("/v1/session").json()["role"] == "marketer"
    rule = {"event": "Cart Abandoned"}
    without = marketer.put("/v1/outreach/rules/r1", json=rule)
    assert without.status_code == 403
    assert without.json()["errors"][0]["field"] == "X-CSRF-Token"
    with_token = marketer.put("/v1/outreach/rules/r1", json=rule, headers={"X-CSRF-Token": csrf})
    assert with_token.status_code not in (401, 403), with_token.text

    assert marketer.delete("/v1/session").status_code == 403  # unsafe: CSRF token too
    signed_out = marketer.delete("/v1/session", headers={"X-CSRF-Token": csrf})
    assert signed_out.status_code == 204
    assert marketer.get("/v1/stages").status_code == 401

    viewer = signed_in(node, "viewer")
    assert viewer.get("/v1/stages").status_code == 200
    assert users_cli(node.settings, "disable", "viewer").returncode == 0
    assert viewer.get("/v1/stages").status_code == 401  # disabling ends the session
    blocked = httpx.post(
        f"{node.base}/v1/session", json={"name": "viewer", "password": PASSWORD}, timeout=30
    )
    assert blocked.status_code == 401
    assert users_cli(node.settings, "enable", "viewer").returncode == 0
    signed_in(node, "viewer")

    added = admin(node).post("/v1/users", json={"name": "temp", "role": "boss", "password": "x"})
    assert added.status_code == 400
    assert {error["field"] for error in added.json()["errors"]} == {"role", "password"}


def test_the_audit_log_records_who_did_what(node: NodeProcess) -> None:
    assert node.track("alice", "Product Viewed", f"m-{uuid.uuid4()}") == 200
    analyst = signed_in(node, "analyst")
    analyst.get("/v1/customers/alice")
    assert analyst.get("/v1/audit").status_code == 403  # denied, and written down
    created = admin(node).post("/v1/write-keys", json={"name": "shop"})
    assert created.status_code == 201, created.text
    httpx.post(f"{node.base}/v1/session", json={"name": "analyst", "password": "wrong one!"})

    entries = admin(node).get("/v1/audit", params={"limit": 1000}).json()
    seen = {(e["actor"], e["action"], e["target"], e["outcome"]) for e in entries}
    customer_read = "GET /v1/customers/{customer_id}"
    assert ("user:analyst", customer_read, "/v1/customers/alice", "allowed") in seen
    assert ("user:analyst", "GET /v1/audit", "/v1/audit", "denied") in seen
    assert ("key:admin", "POST /v1/write-keys", "/v1/write-keys", "allowed") in seen
    assert ("user:analyst", "sign_in", "analyst", "allowed") in seen
    assert ("user:analyst", "sign_in", "analyst", "denied") in seen
    by_command = {(e["action"], e["target"]) for e in entries if e["actor"].startswith("cli:")}
    assert {("users.add", "admin"), ("users.disable", "viewer")} <= by_command
    over_http = [e for e in entries if not e["actor"].startswith("cli:")]
    assert all(e["source"] == "127.0.0.1" and e["at"] for e in over_http)
    assert [e["seq"] for e in entries] == sorted((e["seq"] for e in entries), reverse=True)

    # Append-only: the database itself refuses to rewrite or remove an entry.
    database = sqlite3.connect(Path(node.settings.data_dir) / "access.sqlite")
    for statement in ("UPDATE access_audit SET actor = 'x'", "DELETE FROM access_audit"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            database.execute(statement)
    database.close()


def test_unusual_access_raises_an_alert(
    node: NodeProcess, receiver: tuple[str, list[tuple[str, bytes]]]
) -> None:
    analyst = signed_in(node, "analyst")
    for customer in ("c1", "c2", "c3", "c4", "c5"):
        analyst.get(f"/v1/customers/{customer}")
    for _ in range(3):
        httpx.post(f"{node.base}/v1/session", json={"name": "marketer", "password": "guessing!!"})
    locked = httpx.post(
        f"{node.base}/v1/session", json={"name": "marketer", "password": PASSWORD}, timeout=30
    )
    assert locked.status_code == 429
    assert locked.json()["errors"][0]["rule"] == "too_many_failures"

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(receiver[1]) < 2:
        time.sleep(0.2)
    alerts = {}
    for signature, body in receiver[1]:
        assert verify(ALERT_SECRET, signature, body)
        alert = json.loads(body)
        alerts[alert["alert"]] = alert
    assert alerts["customer_reads"]["actor"] == "user:analyst"
    assert alerts["customer_reads"]["distinct_customers_per_min"] > 3  # once past the limit
    assert alerts["sign_in_failures"]["actor"] == "user:marketer"
    actions = {e["action"] for e in admin(node).get("/v1/audit", params={"limit": 1000}).json()}
    assert {"alert.customer_reads", "alert.sign_in_failures"} <= actions
