"""Writes ``stored_journeys.json.gz``: journeys exactly as an event store held them.

Run it with the code whose stored history later code must keep reading (it was
run at commit 44bef00, before the fact and stage events became classes of their
own and before the orjson transcoder)::

    cd <checkout of that commit> && .venv/bin/python <this file> <output>

The file holds every stored event and snapshot (topic and state bytes as the
library's transcoder wrote them) and, per customer, the journey's state as that
code reconstructed it (encoded by the library's transcoder, for comparison).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, Tracking

sys.path.insert(0, str(Path.cwd()))

from bench.run import storefront_events
from events import TrackedEvent
from journeys.application import JourneyApplication
from journeys.domainmodel import CustomerJourney
from tests.conftest import make_event


def main() -> None:
    """Record a storefront's journeys (merges included) and one past a snapshot; dump them."""
    app = JourneyApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    library = Application.construct_transcoder(app)
    assert type(library) is JSONTranscoder
    events = [TrackedEvent.from_json(value) for _, value in storefront_events(700, seed=3)]
    # One long journey, past the snapshot interval (200 events).
    events += [make_event(f"lea-{i}", "lea", "Product Viewed", i) for i in range(205)]
    queue = [events[i : i + 500] for i in range(0, len(events), 500)]
    position = 0
    while queue:
        position += 1
        update = app.record(queue.pop(0), Tracking("fixture", position))
        app.commit(update)
        if update.forwards:
            queue.append(update.forwards)
    stored = app.recorder.select_notifications(start=1, limit=1_000_000)
    ids = {n.originator_id for n in stored}
    assert app.snapshots is not None
    snapshots = [s for i in ids for s in app.snapshots.recorder.select_events(i)]
    journeys = {}
    for journey_id in ids:
        journey = app.repository.get(journey_id)
        assert isinstance(journey, CustomerJourney)
        state = {k: v for k, v in vars(journey).items() if k != "_pending_events"}
        journeys[journey.customer_key] = library.encode(state).decode()

    def rows(found: list) -> list:
        return [
            [str(s.originator_id), s.originator_version, s.topic, s.state.decode()] for s in found
        ]

    data = {"events": rows(list(stored)), "snapshots": rows(snapshots), "journeys": journeys}
    with gzip.open(sys.argv[1], "wt", encoding="utf-8") as out:
        json.dump(data, out)
    print(len(stored), "events,", len(snapshots), "snapshots,", len(journeys), "journeys")


if __name__ == "__main__":
    main()
