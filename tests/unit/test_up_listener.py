"""`journeys up` listens on the API's port itself: one already taken is refused, by name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from stack import cli
from stack.settings import Settings


def test_up_refuses_a_port_already_taken_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        settings = Settings(data_dir=tmp_path / "data", api_port=port, master_key="")
        assert cli.up(settings) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "JOURNEYS_API_PORT" in err
    assert not (tmp_path / "data" / "logs").exists(), "no broker or node was started"
