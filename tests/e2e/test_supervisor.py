"""`journeys up` supervises its children: a killed node or broker comes back, Ctrl-C stops all.

And a child that cannot stay up is a crash loop: the stack stops, naming it and its log.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from stack.processes import free_port
from tests.stack_process import RunningStack, leftovers, wait_for

pytestmark = pytest.mark.e2e

NODE = "stack.cli node"
BROKER = "tansu"


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _replaced(stack: RunningStack, marker: str, old: psutil.Process) -> psutil.Process | None:
    new = stack.child(marker)
    return new if new is not None and new.pid != old.pid else None


def test_killed_children_are_restarted_and_sigterm_stops_all(tmp_path: Path) -> None:
    stack = RunningStack(tmp_path, free_port())
    write_key, read_key = stack.wait_for_banner()
    reader = {"Authorization": f"Bearer {read_key}"}

    def track(message_id: str, timeout: float = 30) -> int:
        return httpx.post(
            f"{stack.base}/v1/track",
            auth=(write_key, ""),
            timeout=timeout,
            json={"userId": "sam", "event": "Product Viewed", "messageId": message_id},
        ).status_code

    def event_count() -> int | None:
        response = httpx.get(f"{stack.base}/v1/customers/sam", headers=reader, timeout=10)
        return response.json()["event_count"] if response.status_code == 200 else None

    seen: list[int] = []
    try:
        assert track("m1") == 200
        assert wait_for(lambda: event_count() == 1)

        node = stack.child(NODE)
        broker = stack.child(BROKER)
        assert node is not None and broker is not None
        seen += [node.pid, broker.pid]
        node.send_signal(signal.SIGKILL)
        node.wait(timeout=10)
        # With no node, an ingest gateway still takes the call (journaled, produced);
        # the count reads wait in the node's socket for the next node.
        assert track("m-while-down", timeout=180) == 200, stack.output()
        new_node = wait_for(lambda: _replaced(stack, NODE, node), timeout=120)
        assert new_node is not None and new_node.pid != node.pid, stack.output()
        seen.append(new_node.pid)
        assert stack.child(BROKER).pid == broker.pid, "the broker kept running"  # type: ignore[union-attr]
        assert "the node exited" in stack.output()
        assert wait_for(lambda: event_count() == 2), stack.output()

        broker.send_signal(signal.SIGKILL)
        new_broker = wait_for(lambda: _replaced(stack, BROKER, broker), timeout=30)
        assert new_broker, stack.output()
        seen.append(new_broker.pid)
        # A new broker is a new epoch: the node is started again with it.
        newest_node = wait_for(lambda: _replaced(stack, NODE, new_node), timeout=60)
        assert newest_node, stack.output()
        seen.append(newest_node.pid)
        assert wait_for(lambda: _healthy(stack.base), timeout=120), stack.output()
        assert "the broker exited" in stack.output()
        assert track("m2") == 200
        assert wait_for(lambda: event_count() == 3), stack.output()
    finally:
        code, children = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
    assert "stopped." in stack.output()
    assert leftovers(children + seen) == [], stack.output()


def test_a_crash_loop_stops_the_stack_naming_the_child(tmp_path: Path) -> None:
    # The node refuses to start on a stage rules file that does not exist.
    stack = RunningStack(
        tmp_path,
        free_port(),
        stage_rules_file=str(tmp_path / "missing.toml"),
        supervisor_max_restarts="2",
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    while stack.process.poll() is None and time.monotonic() < deadline:
        try:
            seen.update(child.pid for child in stack.children())
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    code = stack.process.wait(timeout=10)
    text = stack.output()
    assert code == 1, text
    assert "the node died 3 times within 60 s; stopping the stack" in text
    assert str(Path("data") / "logs" / "node.log") in text
    assert "missing.toml" in text  # the log's tail says why
    assert "is up" not in text
    assert seen, "it ran a broker and nodes"
    assert leftovers(sorted(seen)) == [], text
