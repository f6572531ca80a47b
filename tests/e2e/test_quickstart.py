"""The whole stack as a user starts it: ``journeys up``, HTTP in, stage and funnel out.

Then Ctrl-C: everything stops, nothing is left running, and a second ``up`` on
the same data folder still knows the customer (nothing corrupted or lost).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from stack.processes import free_port
from tests.stack_process import RunningStack, leftovers, wait_for

pytestmark = pytest.mark.e2e


def test_quickstart_up_track_query_and_stop(tmp_path: Path) -> None:
    port = free_port()
    stack = RunningStack(tmp_path, port)
    write_key, read_key = stack.wait_for_banner()
    reader = {"Authorization": f"Bearer {read_key}"}
    try:
        health = httpx.get(f"{stack.base}/health", timeout=10).json()
        # The embedded stack journals what it accepts (its broker keeps its log in memory).
        assert set(health["components"]) == {
            "broker",
            "clickhouse",
            "event_store",
            "worker",
            "backlog",
            "journal",
            # The ingest gateways' own journals (one per gateway).
            "gateway_journals",
        }
        assert all(c["ok"] for c in health["components"].values()), health

        def track(user: str, event: str, message_id: str) -> int:
            return httpx.post(
                f"{stack.base}/v1/track",
                auth=(write_key, ""),
                timeout=30,
                json={"userId": user, "event": event, "messageId": message_id},
            ).status_code

        assert track("ann", "Product Viewed", "m1") == 200
        assert track("ben", "Product Viewed", "m2") == 200

        def stage_of(user: str) -> str | None:
            response = httpx.get(f"{stack.base}/v1/customers/{user}", headers=reader, timeout=30)
            return response.json()["stage"] if response.status_code == 200 else None

        assert wait_for(lambda: stage_of("ann") == "awareness")

        def funnel() -> list[int]:
            response = httpx.post(
                f"{stack.base}/v1/funnels",
                headers=reader,
                timeout=30,
                json={
                    "steps": [
                        {"event_type": "browse"},
                        {"event_type": "cart"},
                        {"event_type": "purchase"},
                    ]
                },
            )
            assert response.status_code == 200, response.text
            return [step["customers"] for step in response.json()["steps"]]

        assert wait_for(lambda: funnel() == [2, 0, 0])
        assert track("ann", "Product Added", "m3") == 200
        assert wait_for(lambda: stage_of("ann") == "consideration")
        assert track("ann", "Order Completed", "m4") == 200
        assert wait_for(lambda: stage_of("ann") == "purchase")
        assert wait_for(lambda: funnel() == [2, 1, 1])

        # Bad input: a named field and rule, never a 500.
        bad = httpx.post(
            f"{stack.base}/v1/track",
            auth=(write_key, ""),
            timeout=30,
            json={"event": "Product Viewed"},
        )
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["field"] == "userId"
        unknown = httpx.get(f"{stack.base}/v1/customers/nobody", headers=reader, timeout=30)
        assert unknown.status_code == 404
        assert httpx.get(f"{stack.base}/v1/customers/ann", timeout=30).status_code == 401

        # Everything the stack wrote is its owner's alone (0600 files, 0700 folders).
        modes = modes_under(tmp_path / "data")
        shared = [f"{path} {stat.filemode(mode)}" for path, mode in modes if mode & 0o077]
        assert len(modes) > 10 and shared == []
    finally:
        code, children = stack.interrupt()
    assert code == 0, stack.output()
    assert "stopped." in stack.output()
    assert children, "journeys up should have run a broker and a node"
    assert leftovers(children) == [], f"processes left running: {leftovers(children)}"

    # A second start on the same data folder: same keys, the customer is still there.
    again = RunningStack(tmp_path, port)
    try:
        assert again.wait_for_banner() == (write_key, read_key)
        response = httpx.get(f"{again.base}/v1/customers/ann", headers=reader, timeout=30)
        assert response.status_code == 200
        assert response.json()["stage"] == "purchase"
        assert response.json()["event_count"] == 3
    finally:
        code, _ = again.interrupt()
    assert code == 0, again.output()


def modes_under(folder: Path) -> list[tuple[Path, int]]:
    """Each path under ``folder`` (itself included) with its mode, skipping what vanished
    meanwhile (ClickHouse's temporary parts, trimmed journal segments)."""
    found = []
    # os.walk, not rglob: a folder that vanishes while walked is skipped, not an error.
    walked = [Path(root) / name for root, dirs, files in os.walk(folder) for name in dirs + files]
    for path in [folder, *walked]:
        try:
            found.append((path, path.stat().st_mode))
        except FileNotFoundError:
            continue
    return found
