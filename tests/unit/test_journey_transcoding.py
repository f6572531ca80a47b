"""The orjson transcoder writes the eventsourcing library's JSON, byte for byte, and reads it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)

from journeys.transcoding import OrjsonTranscoder

AT = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
ID = uuid5(NAMESPACE_URL, "urn:test")


def registered(transcoder: JSONTranscoder) -> JSONTranscoder:
    """``transcoder`` with the transcodings every eventsourcing application registers."""
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


LIBRARY = registered(JSONTranscoder())
ORJSON = registered(OrjsonTranscoder())

STATES: list[Any] = [
    # A fact event's state, as the journeys store it.
    {
        "touch": {"event_id": "m-1", "at": AT.isoformat(), "revenue": 20.5, "rating": None},
        "forget_before": AT - timedelta(hours=48),
        "timestamp": AT,
    },
    # A snapshot's nested datetimes (stage history, recorded ids, absorbed stages).
    {
        "stage_history": [["awareness", AT], ["purchase", AT + timedelta(days=1)]],
        "recorded_ids": {"web/m-1": AT},
        "absorbed_stages": {"anon:a": [["awareness", AT]]},
        "order_ids": {},
        "naive": datetime(2026, 1, 1),
        "offset": AT.astimezone(timezone(timedelta(hours=2))),
    },
    # The library's other registered types; text that merely looks like a UUID.
    {"id": ID, "ids": [ID, (ID,)], "price": Decimal("19.99"), "message_id": str(ID)},
    {"_type_": "not ours", "size": 1},
    ["é ✓ \u2028", 2**70 + 1, -1, 0.1, True, None, {"1": 1}],
]


@pytest.mark.parametrize("state", STATES)
def test_orjson_writes_the_library_s_bytes_and_each_reads_the_other(state: Any) -> None:
    written = ORJSON.encode(state)
    assert written == LIBRARY.encode(state)
    assert ORJSON.decode(written) == LIBRARY.decode(written)
    assert LIBRARY.decode(written) == ORJSON.decode(LIBRARY.encode(state))


def test_a_type_without_a_transcoding_is_refused_as_the_library_refuses_it() -> None:
    with pytest.raises(TranscodingNotRegisteredError):
        ORJSON.encode({"when": AT.date()})
    with pytest.raises(TranscodingNotRegisteredError):
        ORJSON.decode(b'{"_type_": "unknown", "_data_": 1}')


def test_a_nan_the_library_stored_still_reads() -> None:
    decoded = ORJSON.decode(LIBRARY.encode({"rating": float("nan"), "at": AT}))
    assert decoded["at"] == AT
    assert decoded["rating"] != decoded["rating"]


def test_decoded_values_have_their_types() -> None:
    decoded = ORJSON.decode(LIBRARY.encode(STATES[2]))
    assert decoded["id"] == ID and isinstance(decoded["id"], UUID)
    assert decoded["ids"] == [ID, [ID]]
    assert decoded["price"] == Decimal("19.99")
    assert decoded["message_id"] == str(ID)
