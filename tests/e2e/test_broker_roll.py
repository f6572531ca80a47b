"""`journeys up` bounds the embedded broker's memory by rolling it, losing no acknowledged event.

Tansu's memory storage keeps every record (bench/broker_memory.py); past
``JOURNEYS_BROKER_MAX_RSS_MIB`` the supervisor starts a new broker (a new epoch),
drains and stops the node (killing it past ``JOURNEYS_BROKER_ROLL_DRAIN_S``: it then
replays its journal) and starts it on the new broker. An SDK-like sender that re-sends
until it gets a 200 keeps sending through the roll, and is never refused (its calls
wait in the supervisor's socket); afterwards every acknowledged event is counted once
and the new broker holds less than the bound.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stack.processes import free_port, rss_mib
from tests.stack_process import RunningStack, counted_events, leftovers, wait_for

pytestmark = pytest.mark.e2e

LIMIT_MIB = 48
CUSTOMERS = 20
BATCH = 100
# Enough to pass the bound about twice over (the broker holds ~1.02x what it is sent).
MAX_BATCHES = 1200
AFTER_ROLL_BATCHES = 20
PADDING = "x" * 1000


def batch(index: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "userId": f"u{n % CUSTOMERS}",
            "event": "Product Viewed",
            "messageId": f"m{n}",
            "properties": {"product_id": f"p{n % 97}", "note": PADDING},
        }
        for n in range(index * BATCH, (index + 1) * BATCH)
    ]


def send_until_200(client: httpx.Client, calls: list[dict[str, Any]], refused: list[str]) -> float:
    """Send until answered 200, as an SDK does; the seconds it took.

    A refused connection is noted in ``refused``: the supervisor's socket should keep
    calls waiting while the node restarts, not refuse them."""
    began = time.monotonic()
    while True:
        try:
            if client.post("/v1/batch", json={"batch": calls}).status_code == 200:
                return time.monotonic() - began
        except httpx.ConnectError as error:
            refused.append(str(error))
        except httpx.HTTPError:
            pass  # a wait longer than the client's timeout: try again, as an SDK does
        time.sleep(0.2)


@pytest.mark.parametrize(
    "drain_s",
    [
        "5",  # the default: this small backlog drains in time, nothing to replay
        "0",  # no drain: the node is killed and replays its journal into the new broker
    ],
)
def test_the_broker_is_rolled_past_its_memory_bound_and_nothing_is_lost(
    tmp_path: Path, drain_s: str
) -> None:
    stack = RunningStack(
        tmp_path,
        free_port(),
        broker_max_rss_mib=str(LIMIT_MIB),
        broker_roll_drain_s=drain_s,
        ingest_rate_per_s="0",
    )
    write_key, read_key = stack.wait_for_banner()
    broker = stack.child("tansu")
    assert broker is not None
    first_broker = broker.pid
    acknowledged = 0
    longest = 0.0
    refused: list[str] = []
    seen = [first_broker]
    try:
        with httpx.Client(base_url=stack.base, auth=(write_key, ""), timeout=30) as client:
            after_roll = None
            for index in range(MAX_BATCHES):
                longest = max(longest, send_until_200(client, batch(index), refused))
                acknowledged += BATCH
                if after_roll is None and "broker rolled" in stack.output():
                    after_roll = index
                if after_roll is not None and index - after_roll >= AFTER_ROLL_BATCHES:
                    break
            assert after_roll is not None, f"no roll after {acknowledged} events:\n{stack.output()}"
        assert "rolling it: a new broker starts, the node drains and stops" in stack.output()
        assert refused == [], refused[:3]
        # The next node was waiting, imports done, and took over from the drained one.
        assert "starting the node (journey worker + API) from its standby" in stack.output()
        new_broker = stack.child("tansu")
        assert new_broker is not None and new_broker.pid != first_broker
        seen.append(new_broker.pid)

        # Bounded: the broker in place is under the bound, or, if the journal's replay
        # carried a backlog into it, has grown by less than half the bound since (the
        # supervisor rolls it past that: rolling sooner would carry the same backlog).
        def under_bound() -> bool:
            current = stack.child("tansu")
            if current is None:
                return False
            seen.append(current.pid)
            rss = rss_mib(current.pid)  # 0 once it is gone (rolled meanwhile)
            carried = re.findall(r"which holds ([\d,]+) MiB after the replay", stack.output())
            allowed = max(LIMIT_MIB, float(carried[-1].replace(",", "")) + LIMIT_MIB / 2)
            return 0 < rss < allowed

        assert wait_for(under_bound, timeout=120), stack.output()

        def counted() -> int:
            return counted_events(stack.base, read_key, CUSTOMERS)

        assert wait_for(lambda: counted() == acknowledged, timeout=180), (
            f"{counted()} counted of {acknowledged} acknowledged\n" + stack.output()
        )
        # The roll's cost to a sender: its longest wait for a 200 (not asserted).
        print(f"{acknowledged} events acknowledged; longest wait for a 200: {longest:.1f} s")
    finally:
        code, children = stack.interrupt(signal.SIGTERM)
    assert code == 0, stack.output()
    assert leftovers(children + seen) == [], stack.output()
