"""The dead-letter agent's work: records of ``<prefix>.events.dlq`` → ``dead_letters``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from projections.dead_letters import DeadLetter, DeadLetterLog


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic and where it sat."""

    partition: int
    offset: int
    value: bytes
    # Kafka's record time, in seconds since the epoch.
    timestamp: float


def to_dead_letter(record: DeadLetterRecord, epoch: str = "") -> DeadLetter:
    """A dead letter from a topic record; tolerant, because this is the last stop.

    The gateway gives each letter an id and a time; letters from elsewhere (the
    journey worker's unreadable envelopes, anything foreign) get their topic
    position as id, so a re-consumed record still collapses into one row.
    """
    position_id = f"{epoch}#{record.partition}:{record.offset}"
    try:
        data: Any = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        reason = {"field": "record", "rule": "dead_letter", "message": "not a dead-letter record"}
        data = {"reasons": [reason], "payload": record.value.decode("utf-8", "replace")}
    rejected_at = _time(data.get("rejected_at")) or datetime.fromtimestamp(record.timestamp, UTC)
    reasons = data.get("reasons")
    payload = data.get("payload")
    return DeadLetter(
        id=str(data.get("id") or position_id),
        rejected_at=rejected_at,
        source=str(data.get("source") or ""),
        reasons=reasons if isinstance(reasons, list) else [],
        payload=payload if isinstance(payload, str) else orjson.dumps(payload).decode(),
    )


def store_dead_letters(
    log: DeadLetterLog, records: Sequence[DeadLetterRecord], epoch: str = ""
) -> int:
    """Insert a batch of records; returns how many."""
    letters = [to_dead_letter(record, epoch) for record in records]
    log.append(letters)
    return len(letters)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
