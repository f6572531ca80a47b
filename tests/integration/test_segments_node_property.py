"""Property, through the real pipeline: segment membership equals a plain evaluation.

A running node (real broker, SQLite event and segment stores, chdb). Each
example defines random segments over the admin API (event conditions with
property filters, counts, absence, rolling windows and dates, computed traits
from the seed file, other segments, and/or/not), waits for their backfill,
then sends a random history in batches through ``/v1/batch``: a known customer
and an anonymous visitor with ties in time, events arriving after later ones
(late), and an identify that merges the visitor into the customer. After each
batch is processed, at random instants (event times, window boundaries and
the instant before, the merge), the members route (``?as_of=``) and the
customer route (``?as_of=``) must equal a plain-Python evaluation over the
events known then (tests/unit/test_segments_property.py), where the merged
customer's history holds the visitor's, and the visitor is in nothing from the
merge on (what it was before stays as it was).

Stage and identify-trait conditions are left out: the plain evaluation would need
the journey's stage rules at each instant, and a revision (the late events and
the merge here) reads the stage after the batch (docs; the stage at each instant
of a live batch is tests/unit/test_segments.py's).
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from journeys.segment_state import SegmentEvent
from stack.processes import wait_until
from stack.settings import Settings
from tests.node_process import NodeProcess, started_node
from tests.unit.test_segments_property import (
    NAMES,
    STEP,
    T0,
    TYPES,
    WINDOWS,
    conditions,
    direct_members,
)

pytestmark = pytest.mark.integration

TRAITS = """
[traits.t0]
op = "count"
event = "Product Viewed"
within = "1d"

[traits.t1]
op = "sum"
property = "price"
type = "browse"

[traits.t2]
op = "last"
property = "cat"
event = "Product Added"

[traits.t3]
op = "most_frequent"
property = "cat"
within = "3d"
type = "browse"
"""
TRAIT_DEFS = {
    "t0": {"op": "count", "event": "Product Viewed", "within": "1d"},
    "t1": {"op": "sum", "property": "price", "type": "browse"},
    "t2": {"op": "last", "property": "cat", "event": "Product Added"},
    "t3": {"op": "most_frequent", "property": "cat", "within": "3d", "type": "browse"},
}
EXAMPLES = itertools.count()


@st.composite
def segment_sets(draw: st.DrawFn) -> dict[str, Any]:
    segments: dict[str, Any] = {}
    for i in range(draw(st.integers(1, 3))):
        segments[f"s{i}"] = {
            "where": draw(conditions(sorted(TRAIT_DEFS), sorted(segments), stages=False))
        }
    return segments


@st.composite
def histories(draw: st.DrawFn) -> list[list[tuple[str, SegmentEvent]]]:
    """Batches in arrival order of (who, event): who is "user" or "anon"; one identify."""
    events: list[tuple[str, SegmentEvent]] = []
    for i in range(draw(st.integers(1, 10))):
        name = draw(st.sampled_from(NAMES))
        props: dict[str, Any] = {}
        if draw(st.booleans()):
            props["cat"] = draw(st.sampled_from(["x", "y", "xz"]))
        if draw(st.booleans()):
            props["price"] = draw(st.integers(0, 5))
        at = T0 + draw(st.integers(0, 24)) * STEP  # few slots: ties happen
        who = draw(st.sampled_from(["user", "anon", "anon"]))
        events.append((who, SegmentEvent(f"e{i:02}", at, name, TYPES[name], props)))
    events = draw(st.permutations(events))  # arrival order differs from event time
    batches: list[list[tuple[str, SegmentEvent]]] = []
    while events:
        size = draw(st.integers(1, 4))
        batches.append(events[:size])
        events = events[size:]
    identify = SegmentEvent("id", T0 + draw(st.integers(0, 24)) * STEP, "Identify", "identify")
    # Mostly after some of the visitor's events (a merge with a history to fold).
    batches.insert(draw(st.integers(min(1, len(batches)), len(batches))), [("user", identify)])
    return batches


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _call(prefix: str, who: str, event: SegmentEvent) -> dict[str, Any]:
    user, visitor = f"{prefix}u", f"{prefix}a"
    call: dict[str, Any] = {
        "messageId": f"{prefix}{event.event_id}",
        "timestamp": _iso(event.at_ms),
    }
    if event.type == "identify":
        return call | {"type": "identify", "userId": user, "anonymousId": visitor}
    call |= {"type": "track", "event": event.name, "properties": dict(event.properties)}
    return call | ({"userId": user} if who == "user" else {"anonymousId": visitor})


class Checked:
    """The node under test and what it is asked."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.admin = {"Authorization": f"Bearer {node.settings.admin_key}"}

    def running(self) -> bool:
        return self.node.process is not None and self.node.process.poll() is None

    def quiet(self) -> bool:
        """No backlog, seen four times in a row (the worker's own messages come after)."""
        for _ in range(4):
            health = httpx.get(f"{self.node.base}/health", timeout=10).json()
            if health["components"]["backlog"]["lag_events"] != 0:
                return False
            time.sleep(0.25)
        return True

    def settle(self) -> None:
        assert wait_until(self.quiet, 60, self.running), self.node.log_tail()

    def define(self, segment_id: str, table: dict[str, Any]) -> None:
        answer = httpx.put(
            f"{self.node.base}/v1/segments/{segment_id}", json=table, headers=self.admin, timeout=30
        )
        assert answer.status_code == 201, answer.text

    def backfilled(self, segment_id: str) -> bool:
        answer = self.node.read("GET", f"/v1/segments/{segment_id}")
        return answer.status_code == 200 and bool(answer.json()["backfilled"])

    def send(self, calls: list[dict[str, Any]]) -> None:
        answer = httpx.post(
            f"{self.node.base}/v1/batch",
            json={"batch": calls},
            auth=(self.node.settings.write_key, ""),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    def members(self, segment_id: str, at_ms: int) -> set[str]:
        answer = self.node.read(
            "GET", f"/v1/segments/{segment_id}/members", params={"as_of": _iso(at_ms)}
        )
        assert answer.status_code == 200, answer.text
        return set(answer.json()["members"])

    def segments_of(self, customer: str, at_ms: int) -> set[str]:
        answer = self.node.read("GET", f"/v1/customers/{customer}", params={"as_of": _iso(at_ms)})
        if answer.status_code == 404:
            return set()
        assert answer.status_code == 200, answer.text
        return set((answer.json()["segments"] or {}).get("segments", []))


def members_at(defs: dict[str, Any], events: list[SegmentEvent], t: int) -> set[str]:
    """The plain evaluation at ``t``; nothing before the customer's first event (they
    were no customer yet, so not even in a segment of "no order in 30 days")."""
    if not any(e.at_ms <= t for e in events):
        return set()
    return direct_members(defs, events, t, "")


def _renamed(raw: Any, prefix: str) -> Any:
    """The condition with segment references under this example's prefix."""
    if isinstance(raw, dict):
        return {
            k: (f"{prefix}{v}" if k == "segment" else _renamed(v, prefix)) for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [_renamed(v, prefix) for v in raw]
    return raw


def test_membership_through_the_node_equals_a_plain_evaluation(settings: Settings) -> None:
    seeded = settings.data_dir.parent / "segments.toml"
    seeded.write_text(TRAITS)
    node = started_node(settings.model_copy(update={"segments_file": seeded}))
    checked = Checked(node)
    try:
        # A few examples: each one costs seconds (definitions reload, backfill, batches).
        @seed(17)
        @hypothesis_settings(
            max_examples=4,
            deadline=None,
            database=None,
            # No shrinking: every example costs seconds of a running node.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(segments=segment_sets(), batches=histories(), data=st.data())
        def example(
            segments: dict[str, Any],
            batches: list[list[tuple[str, SegmentEvent]]],
            data: st.DataObject,
        ) -> None:
            prefix = f"p{next(EXAMPLES)}_"
            user, visitor = f"{prefix}u", f"anon:{prefix}a"
            defs = {"traits": TRAIT_DEFS, "segments": segments}
            for sid, table in segments.items():
                checked.define(f"{prefix}{sid}", {"where": _renamed(table["where"], prefix)})
            for sid in segments:
                assert wait_until(
                    lambda s=sid: checked.backfilled(f"{prefix}{s}"), 60, checked.running
                )
            known: dict[str, list[SegmentEvent]] = {"user": [], "anon": []}
            merged_at: int | None = None
            before_merge: list[SegmentEvent] = []  # the visitor's, recorded on its own key
            for batch in batches:
                checked.send([_call(prefix, who, e) for who, e in batch])
                for who, event in batch:
                    known[who].append(event)
                    if event.type == "identify":
                        merged_at, before_merge = event.at_ms, list(known["anon"])
                checked.settle()
                if merged_at is not None and before_merge:
                    # The visitor's worker applies the link, then the customer the history.
                    assert wait_until(
                        lambda: (
                            node.read("GET", f"/v1/customers/{visitor}").json()["merged_into"]
                            == user
                        ),
                        30,
                        checked.running,
                    )
                    checked.settle()
                user_events = known["user"] + (known["anon"] if merged_at is not None else [])
                every = user_events + known["anon"]
                edges = [e.at_ms + w for e in every for w in WINDOWS.values()]
                candidates = [e.at_ms for e in every] + [
                    x for edge in edges for x in (edge - 1, edge)
                ]
                if merged_at is not None:
                    candidates += [merged_at - 1, merged_at]
                instants = data.draw(
                    st.lists(st.sampled_from(candidates), min_size=1, max_size=3), label="instants"
                )
                for t in instants:
                    visitor_events = (
                        known["anon"]
                        if merged_at is None
                        else before_merge
                        if t < merged_at
                        else []
                    )
                    expected = {
                        user: members_at(defs, user_events, t),
                        visitor: members_at(defs, visitor_events, t),
                    }
                    for sid in segments:
                        found = checked.members(f"{prefix}{sid}", t) & {user, visitor}
                        wanted = {key for key, inside in expected.items() if sid in inside}
                        assert found == wanted, (sid, _iso(t), batches, segments)
                    ours = {
                        s.removeprefix(prefix)
                        for s in checked.segments_of(user, t)
                        if s.startswith(prefix)
                    }
                    assert ours == expected[user], (_iso(t), batches, segments)

        example()
    finally:
        node.stop()
