"""``journeys flows validate`` over flows files and the shipped file; the verbs that go
to the API (set, pause, resume) against a recording stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stack.cli import main

SHIPPED = Path(__file__).parents[2] / "journeys" / "flows.toml"


def test_the_shipped_flows_validate(capsys: pytest.CaptureFixture[str]) -> None:
    """``list`` and ``show`` read the stored flows over the API
    (tests/integration/test_flows_admin.py); ``validate`` checks a file."""
    assert main(["flows", "validate"]) == 0
    assert capsys.readouterr().out.strip() == "ok: 8 flows, 27 nodes"
    assert main(["flows", "validate", "--file", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 8 flows, 27 nodes"
    # Without a node to ask, list says so (it no longer falls back to a file).
    assert main(["flows", "list", "--url", "http://127.0.0.1:9", "--admin-key", "ak"]) == 2
    assert "cannot reach the API at http://127.0.0.1:9" in capsys.readouterr().err


def test_an_invalid_file_names_the_node_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "flows.toml"
    bad.write_text(SHIPPED.read_text().replace("{{ customer_id }}", "").replace(
        "entry.name | default('your item')", "cart.name"
    ))  # fmt: skip
    assert main(["flows", "validate", "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: flows.abandoned_cart.nodes.reminder.body: unknown variable 'cart'" in err
    bad.write_text("[flows\n")
    assert main(["flows", "validate", "--file", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    draft = tmp_path / "draft.toml"
    draft.write_text(SHIPPED.read_text().replace('timeout = "1h"', 'timeout = "soon"'))
    # A draft is validated before anything is sent: no API needed to refuse it.
    code = main(["flows", "backtest", "abandoned_cart", "--from", "2026-01-01", "--to",
                 "2026-02-01", "--file", str(draft), "--url", "http://127.0.0.1:9"])  # fmt: skip
    assert code == 2
    assert "flows.abandoned_cart.nodes.wait_for_order.timeout" in capsys.readouterr().err


def test_set_pause_and_resume_go_to_the_admin_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over HTTP to an API (here a recording stand-in): the file's [flows.ID] table as the
    PUT body, with the admin key."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[tuple[str, str, str, object]] = []

    class Api(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            seen.append((self.command, self.path, self.headers["Authorization"], body))
            payload = json.dumps({"id": "abandoned_cart"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_PUT = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        connection = ["--url", url, "--admin-key", "ak_cli"]
        assert main(["flows", "set", "abandoned_cart", str(SHIPPED), *connection]) == 0
        assert main(["flows", "pause", "abandoned_cart", *connection]) == 0
        assert main(["flows", "resume", "abandoned_cart", *connection]) == 0
        missing = tmp_path / "missing.toml"
        assert main(["flows", "set", "abandoned_cart", str(missing), *connection]) == 2
        assert str(missing) in capsys.readouterr().err
    finally:
        server.shutdown()
    put, pause, resume = seen
    assert put[:3] == ("PUT", "/v1/flows/abandoned_cart", "Bearer ak_cli")
    assert isinstance(put[3], dict) and put[3]["version"] == 1 and "nodes" in put[3]
    assert (pause[0], pause[1]) == ("POST", "/v1/flows/abandoned_cart/pause")
    assert (resume[0], resume[1]) == ("POST", "/v1/flows/abandoned_cart/resume")
