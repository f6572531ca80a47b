"""Issue 15's seven cases through the real node over HTTP, read back as a marketer would.

Each case is one ``/v1/batch`` (case 3 also as two batches, the order first, so
the late ticket revises a history already projected). The answers come from the
read API: the customer view now and ``as_of``, the journey's stage list, RFM,
and ``/v1/stages?as_of`` against the per-customer answers summed.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from tests.node_process import NodeProcess, started_node

pytestmark = pytest.mark.integration

# Within the lapse period of now, so that "now" answers are not lapsed.
T0 = (datetime.now(UTC) - timedelta(days=20)).replace(microsecond=0)
_ids = iter(range(10_000))


def at(delta: timedelta) -> str:
    return (T0 + delta).isoformat()


def track(name: str, delta: timedelta, *, user: str = "", anon: str = "", **props: Any) -> dict:
    who = {"userId": user} if user else {"anonymousId": anon}
    return {
        "type": "track",
        **who,
        "event": name,
        "timestamp": at(delta),
        "messageId": f"m{next(_ids)}",
        "properties": props,
    }


def identify(user: str, anon: str, delta: timedelta) -> dict:
    return {
        "type": "identify",
        "userId": user,
        "anonymousId": anon,
        "timestamp": at(delta),
        "messageId": f"m{next(_ids)}",
    }


MIN, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
ZERO = timedelta(0)
CASES = {
    "r1": [
        track("Ticket Created", ZERO, anon="a1"),
        identify("r1", "a1", MIN),
        track("Order Completed", 2 * MIN, user="r1", order_id="o1", revenue=10),
    ],
    "r2": [
        track("Order Completed", ZERO, anon="a2", order_id="o2", revenue=10),
        identify("r2", "a2", MIN),
        track("Ticket Created", 2 * MIN, user="r2"),
    ],
    "r3": [
        track("Order Completed", HOUR, user="r3", order_id="o3", revenue=10),
        track("Ticket Created", ZERO, user="r3"),
    ],
    "r4": [
        track("Order Completed", 5 * DAY, user="r4", order_id="o4", revenue=10),
        track("Product Viewed", ZERO, user="r4"),
    ],
    "r5": [
        track("Order Completed", ZERO, anon="a5", order_id="o5a", revenue=5),
        track("Order Completed", HOUR, anon="a5", order_id="o5b", revenue=5),
        identify("r5", "a5", DAY),
        track("Products Searched", 3 * DAY, user="r5"),
    ],
    "r6": [
        # The copy sent second is stamped earlier and says 12: it is the order.
        track("Order Completed", 5 * MIN, user="r6", order_id="o6", revenue=10),
        track("Order Completed", ZERO, user="r6", order_id="o6", revenue=12),
    ],
    "r7": [
        track("Product Viewed", ZERO, user="r7"),
        track("Order Completed", 2 * DAY, user="r7", order_id="o7", revenue=10),
    ],
}


def test_the_seven_cases_read_back_through_the_api(settings: Settings) -> None:
    node = started_node(settings)
    try:
        for body in CASES.values():
            send(node, body)
        # Case 3 again as two batches: the ticket arrives after the order is projected.
        send(node, [track("Order Completed", HOUR, user="r3b", order_id="o3b", revenue=10)])
        wait_for(node, lambda: view(node, "r3b")["stage"] == "purchase")
        send(node, [track("Ticket Created", ZERO, user="r3b")])
        wait_for(node, lambda: view(node, "r3b")["event_count"] == 2)
        wait_for(node, lambda: all(_seen(node, key) for key in CASES))

        assert view(node, "r1")["stage"] == "purchase"
        assert view(node, "r2")["stage"] == "service"
        for key in ("r3", "r3b"):
            assert view(node, key)["stage"] == "purchase", key
            assert stage_list(node, key) == [("awareness", T0), ("purchase", T0 + HOUR)], key

        assert view(node, "r4", T0 + DAY)["stage"] == "awareness"
        assert stage_list(node, "r4") == [("awareness", T0), ("purchase", T0 + 5 * DAY)]

        assert view(node, "r5", T0 + 2 * DAY)["stage"] == "loyalty"
        assert ("loyalty", T0 + HOUR) in stage_list(node, "r5")

        r6 = view(node, "r6")
        assert (r6["orders"], r6["profile"]["orders"], r6["profile"]["revenue"]) == (1, 1, 12.0)
        rfm = node.read("GET", "/v1/rfm/r6").json()
        assert (rfm["frequency"], rfm["monetary"]) == (1, 12.0)
        assert datetime.fromisoformat(r6["profile"]["last_order_at"]) == T0

        before_order = view(node, "r7", T0 + DAY)
        assert (before_order["stage"], before_order["event_count"]) == ("awareness", 1)
        assert (before_order["orders"], before_order["profile"]["orders"]) == (0, 0)
        assert before_order["profile"]["revenue"] == 0.0
        assert view(node, "r7", T0 - DAY)["stage"] is None

        keys = [*CASES, "r3b", "a1", "a2", "a5"]
        for moment in (T0 + 30 * MIN, T0 + 2 * DAY, T0 + 6 * DAY):
            total = node.read("GET", "/v1/stages", params={"as_of": moment.isoformat()}).json()
            summed = Counter(view(node, _key(key), moment)["stage"] for key in keys)
            stages = {stage: n for stage, n in total["stages"].items() if n}
            assert stages == {s: n for s, n in summed.items() if s not in (None, "merged")}
    finally:
        node.stop()


def send(node: NodeProcess, batch: list[dict]) -> None:
    response = httpx.post(
        f"{node.base}/v1/batch",
        json={"batch": batch},
        auth=(node.settings.write_key, ""),
        timeout=30,
    )
    assert response.status_code == 200, response.text


def view(node: NodeProcess, key: str, as_of: datetime | None = None) -> dict[str, Any]:
    params = {"as_of": as_of.isoformat()} if as_of is not None else {}
    response = node.read("GET", f"/v1/customers/{key}", params=params)
    assert response.status_code == 200, (key, response.text)
    found: dict[str, Any] = response.json()
    return found


def stage_list(node: NodeProcess, key: str) -> list[tuple[str, datetime]]:
    steps = node.read("GET", f"/v1/customers/{key}/journey").json()["stages"]
    return [(step["stage"], datetime.fromisoformat(step["at"])) for step in steps]


def wait_for(node: NodeProcess, done: Any) -> None:
    def check() -> bool:
        try:
            return bool(done())
        except (AssertionError, KeyError):
            return False

    assert wait_until(check, timeout=60, alive=lambda: True, interval=0.3), node.log_tail()


def _seen(node: NodeProcess, key: str) -> bool:
    # Every event of the case is the customer's once the anonymous ones are merged.
    found = node.read("GET", f"/v1/customers/{key}").json()
    return bool(found.get("event_count") == len(CASES[key]))


def _key(key: str) -> str:
    return f"anon:{key}" if key.startswith("a") else key
