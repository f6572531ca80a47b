"""The pure segment evaluator's speed: events/s folding a generated history.

    .venv/bin/python -m bench.segment_evaluator --events 20000 --customers 2000 --runs 5

Folds the same generated storefront history (views, adds, orders, support
requests, identifies; time-ordered over 60 days, a few late ones) one event
per call, as the worker does per batch, with the state round-tripped through
its stored form between calls. Once with ``bench/segments.py``'s 20 segments
and 10 traits, once with no definitions (the raw limit, same run); runs
alternated, medians. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.segments import CATEGORIES, definitions_document
from events import event_type_for
from journeys.segment_definitions import Definitions, parse_definitions
from journeys.segment_state import (
    MembershipChange,
    SegmentEvaluator,
    SegmentEvent,
    SegmentState,
)

BRANDS = ("Northwind", "Contoso", "Fabrikam", "Tailspin")
STAGES = ("awareness", "consideration", "purchase", "service", "loyalty")
DAY_MS = 86_400_000


def history(events: int, customers: int, seed: int = 17) -> list[tuple[str, SegmentEvent, str]]:
    """(customer, event, stage) in arrival order: mostly time-ordered, 2 % late."""
    rng = random.Random(seed)
    start = 1_760_000_000_000
    span = 60 * DAY_MS
    found: list[tuple[str, SegmentEvent, str]] = []
    for i in range(events):
        at = start + span * i // events
        if rng.random() < 0.02:
            at -= rng.randrange(1, 3 * DAY_MS)
        customer = f"c{rng.randrange(customers)}"
        roll = rng.random()
        props: dict[str, object]
        if roll < 0.6:
            name = "Product Viewed"
            props = {
                "category": rng.choice(CATEGORIES),
                "price": round(rng.uniform(5, 300), 2),
                "brand": rng.choice(BRANDS),
            }
        elif roll < 0.8:
            name, props = "Product Added", {"price": round(rng.uniform(5, 300), 2)}
        elif roll < 0.9:
            name, props = "Order Completed", {"revenue": round(rng.uniform(10, 900), 2)}
        elif roll < 0.95:
            name, props = "Ticket Opened", {}
        else:
            name, props = "identify", {"plan": rng.choice(("free", "pro"))}
        kind = "identify" if name == "identify" else event_type_for("track", name).value
        if name == "Ticket Opened":
            kind = "support"
        event = SegmentEvent(f"e{i}", at, name, kind, props)
        found.append((customer, event, rng.choice(STAGES)))
    return found


def fold(
    definitions: Definitions, events: Sequence[tuple[str, SegmentEvent, str]]
) -> tuple[float, list[MembershipChange]]:
    """(events/s, the membership changes) folding ``events`` one call each."""
    evaluator = SegmentEvaluator(definitions)
    stored: dict[str, dict[str, Any]] = {}
    changes: list[MembershipChange] = []
    began = time.perf_counter()
    for customer, event, stage in events:
        held = stored.get(customer)
        state = SegmentState.from_dict(held) if held is not None else SegmentState()
        changes.extend(evaluator.advance(state, [event], stage=stage))
        stored[customer] = state.to_dict()
    spent = time.perf_counter() - began
    return len(events) / spent, changes


def measure(events: int, customers: int, runs: int) -> dict[str, Any]:
    generated = history(events, customers)
    with_segments = parse_definitions(definitions_document(True))
    without = parse_definitions(definitions_document(False))
    rates: dict[str, list[float]] = {"with": [], "without": []}
    changes: list[MembershipChange] = []
    for _ in range(runs):
        rate, changes = fold(with_segments, generated)
        rates["with"].append(rate)
        rates["without"].append(fold(without, generated)[0])
    w, wo = statistics.median(rates["with"]), statistics.median(rates["without"])
    # A digest of every change, to compare two versions of the evaluator.
    digest = hashlib.sha256(repr(changes).encode()).hexdigest()[:12]
    return {"with": w, "without": wo, "ratio": w / wo, "changes": len(changes), "digest": digest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    found = measure(args.events, args.customers, args.runs)
    print(
        f"evaluator events/s, 20 segments + 10 traits: {found['with']:,.0f}"
        f" | without definitions (raw limit, same run): {found['without']:,.0f}"
        f" | ratio {found['ratio']:.2f} | membership changes {found['changes']:,}"
        f" (digest {found['digest']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
