"""How journey events and snapshots become bytes in the event store: orjson, the library's format.

The eventsourcing library's ``JSONTranscoder`` runs the stdlib ``json`` module
and calls back into Python twice for every datetime: a third of the event
store's commit (docs/performance.md). :class:`OrjsonTranscoder` writes the same
JSON with orjson: a registered type is still the library's
``{"_type_": name, "_data_": ...}`` object (datetimes as ISO text, UUIDs as
hex, Decimals as text), so what either transcoder stored, the other reads.

Where orjson's JSON would differ from the stdlib's, the library's own encoder
does the work: a UUID (orjson writes it as plain text: found by its text in
orjson's output, then confirmed on the object) and an integer beyond 64 bits
(orjson refuses it). One difference stays: orjson writes a NaN or an infinity
as null, the stdlib as ``NaN``; journeys never hold one (a touch keeps finite
numbers only, journeys/touches.py).

Reading stays with the library's decoder: orjson's parse plus reviving the
registered types in Python, and the check for integers orjson would read as
floats, measured slower than the stdlib's parser with its C-driven hook.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import JSONTranscoder

# Datetimes and dataclasses go to the registered transcodings, as with the stdlib;
# non-string keys become strings, as the stdlib does.
_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS
)
# How orjson writes a UUID: a string (or a text that merely looks like one) to check.
_UUID_TEXT = re.compile(rb"-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\"")


class OrjsonTranscoder(JSONTranscoder):
    """The library's JSON transcoding, written by orjson; transcodings register as usual."""

    def encode(self, obj: Any) -> bytes:
        """``obj`` as the library's JSON (UTF-8, no spaces)."""
        try:
            data = orjson.dumps(obj, default=self._encode_other, option=_OPTIONS)
        except orjson.JSONEncodeError:
            # An unregistered type (the library raises its own error) or a huge integer.
            return super().encode(obj)
        if _UUID_TEXT.search(data) is not None and _holds_uuid([obj]):
            return super().encode(obj)
        return data

    def _encode_other(self, obj: Any) -> Any:
        # The library's datetime transcoding, without its two Python calls per datetime.
        if type(obj) is datetime and self.types.get(datetime) is not None:
            return {"_type_": "datetime_iso", "_data_": obj.isoformat()}
        return self._encode_obj(obj)


def _holds_uuid(value: Any) -> bool:
    """Whether ``value`` holds a UUID anywhere (orjson would write it as plain text)."""
    # A loop, not recursion, and plain values skipped by their exact type: this runs
    # for every event whose text has something that looks like a UUID (messageIds).
    pending = [value]
    while pending:
        container = pending.pop()
        items = container.values() if isinstance(container, dict) else container
        # Most containers hold plain values only: their types checked in one C loop.
        if _PLAIN.issuperset(map(type, items)):
            continue
        for item in items:
            kind = type(item)
            if kind in _PLAIN:
                continue
            if isinstance(item, UUID):
                return True
            if isinstance(item, dict | list | tuple):
                pending.append(item)
    return False


_PLAIN = frozenset({str, int, float, bool, type(None), datetime})
