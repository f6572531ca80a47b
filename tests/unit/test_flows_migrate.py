"""``journeys flows migrate-rules``: a rules file (and the API's overrides) as a flows file."""

from __future__ import annotations

import json
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from journeys.flows.definitions import flows_from_toml
from journeys.outreach_rules import parse_rule
from stack.cli import main

ROOT = Path(__file__).parents[2]
RULES_FILE = ROOT / "journeys" / "rules.toml"
SHIPPED = tomllib.loads((ROOT / "journeys" / "flows.toml").read_text())["flows"]
ADMIN_KEY = "admin-test-key"


def test_the_shipped_rules_migrate_to_the_shipped_flows(tmp_path: Path) -> None:
    out = tmp_path / "flows.toml"
    assert main(["flows", "migrate-rules", str(RULES_FILE), "--out", str(out)]) == 0
    written = tomllib.loads(out.read_text())["flows"]
    assert len(flows_from_toml(out.read_text())) == 8
    for flow_id, table in written.items():
        if flow_id == "abandoned_cart":  # the rule's own reminder, not the canonical flow
            assert table["nodes"]["due"] == {
                "kind": "date_entry",
                "anchor": "cart",
                "min_value": 0,
                "after": "1h",
                "next": "send_webhook",
            }
            continue
        assert {**table, "enabled": False} == SHIPPED[flow_id], flow_id
    assert main(["flows", "validate", "--file", str(out)]) == 0


def test_a_bad_rules_file_names_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nid = "x"\ntrigger = "birthday"\ndelay = "soon"\n')
    assert main(["flows", "migrate-rules", str(bad)]) == 2
    assert "rule[0].delay: must be a duration" in capsys.readouterr().err


class _RulesInForce(BaseHTTPRequestHandler):
    """The node's ``GET /v1/outreach/rules`` as the API answers it (a fake for the CLI)."""

    answer: dict[str, Any] = {}

    def do_GET(self) -> None:
        authorized = self.headers.get("Authorization") == f"Bearer {ADMIN_KEY}"
        ok = self.path == "/v1/outreach/rules" and authorized
        body = json.dumps(self.answer if ok else {"message": "no"}).encode()
        self.send_response(200 if ok else 403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _RulesInForce)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_apis_overrides_are_migrated_too(
    api: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As the API lists the rules in force: TriggerRule.to_dict (durations in seconds).
    changed = parse_rule(
        {"id": "review_request", "trigger": "post_purchase", "delay": "3d", "channels": ["email"]}
    )
    added = parse_rule({"id": "vip-two", "trigger": "high_value", "frequency_cap": "30d"})
    _RulesInForce.answer = {"rules": [changed.to_dict(), added.to_dict()]}
    out = tmp_path / "flows.toml"
    args = ["flows", "migrate-rules", str(RULES_FILE), "--overrides-from-api", "--url", api]
    assert main([*args, "--admin-key", ADMIN_KEY, "--out", str(out)]) == 0
    written = tomllib.loads(out.read_text())["flows"]
    assert sorted(written) == sorted([*SHIPPED, "vip_two"])
    review = written["review_request"]
    assert review["nodes"]["due"]["after"] == "3d" and list(review["nodes"]) == [
        "due",
        "send_email",
    ]
    assert "quiet_hours" not in review  # the override is a whole rule: it has none
    assert written["vip_two"]["frequency_cap"] == "30d"
    assert written["win_back"] == {**SHIPPED["win_back"], "enabled": True}  # from the file
    # A wrong key: the API's refusal, nothing written.
    out.unlink()
    assert main([*args, "--admin-key", "wrong", "--out", str(out)]) == 1
    assert not out.exists() and "403" in capsys.readouterr().err
