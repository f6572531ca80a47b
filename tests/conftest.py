"""Shared fixtures. Integration tests use real parts: Tansu, chdb, SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import TrackedEvent, event_type_for

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_event(
    event_id: str, customer: str, name: str, minutes: float = 0, **properties: object
) -> TrackedEvent:
    """A tracked ``track`` event ``minutes`` after T0."""
    return TrackedEvent(
        event_id=event_id,
        customer_key=customer,
        call_type="track",
        event_type=event_type_for("track", name),
        event_name=name,
        timestamp=T0 + timedelta(minutes=minutes),
        received_at=T0 + timedelta(minutes=minutes),
        user_id=customer,
        properties=dict(properties),
    )


@pytest.fixture
def unique() -> str:
    """A suffix that makes topic, group and database names unique to a test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def artifacts_dir() -> Iterator[Path]:
    """Where tests leave logs worth reading after a failure."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    yield path
