"""The one type of every time the API accepts (``as_of``, ``start``, ``end``).

ISO-8601, UTC when no offset is given, and within the range the stores can
answer for: events are never stamped before 1970 (``events.segment``), and
ClickHouse's ``DateTime64`` ends in 2299, so a time outside
[:data:`EARLIEST`, :data:`LATEST`) is a 400 naming the field, not a query
that fails inside the engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_RANGE = f"{EARLIEST:%Y-%m-%dT%H:%M:%SZ} to {LATEST:%Y-%m-%dT%H:%M:%SZ}"


def bounded_time(moment: datetime) -> datetime:
    """``moment`` in UTC; raises ``time_range`` when it is outside the supported range."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # year 1 with a positive offset, year 9999 with a negative one
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise PydanticCustomError(
            "time_range", "must be a time from {range} (UTC)", {"range": _RANGE}
        )
    return utc


ApiTime = Annotated[
    datetime,
    AfterValidator(bounded_time),
    Field(description=f"ISO-8601 time, UTC if no offset is given; from {_RANGE}"),
]
