"""SQL fragments for step conditions and properties, with every value a parameter."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

from events import EventType
from journeys.funnels import FilterOp, FunnelStep, PropertyFilter
from projections.analytics.errors import QueryProblem
from projections.event_log import FLOAT_FIELDS, INT_FIELDS, STRING_FIELDS

# Map keys reach SQL as parameters; the pattern only keeps names sane.
_PROPERTY_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_.$ -]{0,99}$")
NUMERIC_COLUMNS = FLOAT_FIELDS + INT_FIELDS
# Properties a breakdown may use besides the free-form ones: string columns only.
BREAKDOWN_COLUMNS = ("event_name", "call_type", *STRING_FIELDS)
_SQL_OPS = {
    FilterOp.EQ: "=",
    FilterOp.NEQ: "!=",
    FilterOp.GT: ">",
    FilterOp.GTE: ">=",
    FilterOp.LT: "<",
    FilterOp.LTE: "<=",
}


def string_form(value: Any) -> str:
    """How a property value compares as text: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class Params:
    """Query parameters, named ``p0``, ``p1``, … as fragments ask for them."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, kind: str) -> str:
        """A placeholder ``{pN:kind}`` bound to ``value``."""
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"

    def time_range(self, start: datetime | None, end: datetime | None, column: str) -> str:
        """``column`` within ``[start, end)``; ``1`` when unbounded."""
        parts, kind = [], "DateTime64(3, 'UTC')"
        if start is not None:
            parts.append(f"{column} >= {self.add(start, kind)}")
        if end is not None:
            parts.append(f"{column} < {self.add(end, kind)}")
        return " AND ".join(parts) or "1"


def check_property_name(name: str, field: str) -> None:
    """400 unless ``name`` looks like a property name."""
    if not _PROPERTY_NAME.match(name):
        raise QueryProblem(field, f"{name!r} is not a property name")


def _map_text(key: str) -> str:
    """The string form of a free-form property (stored as JSON text), in SQL."""
    return (
        f"if(JSONType(properties[{key}]) = 'String', "
        f"JSONExtractString(properties[{key}]), properties[{key}])"
    )


def filter_sql(item: PropertyFilter, params: Params, field: str) -> str:
    """SQL for one property filter on the ``events`` table."""
    name, op, value = item.property, item.op, item.value
    values = value if isinstance(value, tuple) else (value,)
    if name in NUMERIC_COLUMNS:
        numbers = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise QueryProblem(field, f"{name} is a number; compare it with numbers")
            numbers.append(float(v))
        if op is FilterOp.IN:
            return f"ifNull({name} IN {params.add(numbers, 'Array(Float64)')}, 0)"
        return f"ifNull({name} {_SQL_OPS[op]} {params.add(numbers[0], 'Float64')}, 0)"
    check_property_name(name, field)
    if name in STRING_FIELDS:
        text, present = name, "1"
    else:
        key = params.add(name, "String")
        text, present = _map_text(key), f"mapContains(properties, {key})"
    if op is FilterOp.IN:
        texts = params.add([string_form(v) for v in values], "Array(String)")
        return f"({present} AND {text} IN {texts})"
    if op in (FilterOp.EQ, FilterOp.NEQ):
        return f"({present} AND {text} {_SQL_OPS[op]} {params.add(string_form(value), 'String')})"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryProblem(field, f"{op.value} compares numbers; give a number")
    number = params.add(float(value), "Float64")
    return f"({present} AND ifNull(toFloat64OrNull({text}) {_SQL_OPS[op]} {number}, 0))"


def step_sql(step: FunnelStep, params: Params, field: str) -> str:
    """SQL that is true for events matching ``step`` (type or name, and its filters)."""
    if step.event_type is not None:
        parts = [f"event_type = {params.add(step.event_type.value, 'String')}"]
    else:
        parts = [f"event_name = {params.add(step.event_name, 'String')}"]
    for index, item in enumerate(step.filters):
        parts.append(filter_sql(item, params, f"{field}.filters[{index}]"))
    return "(" + " AND ".join(parts) + ")"


def breakdown_sql(name: str, params: Params) -> str:
    """The string value of property ``name`` on an event ('' when absent)."""
    if name in BREAKDOWN_COLUMNS:
        return name
    if name in NUMERIC_COLUMNS or name in ("event_type", "timestamp", "customer_key"):
        raise QueryProblem("breakdown", f"{name} cannot be a breakdown; use a text property")
    check_property_name(name, "breakdown")
    key = params.add(name, "String")
    return f"if(mapContains(properties, {key}), {_map_text(key)}, '')"


TYPE_CODES: dict[EventType, int] = {t: i + 1 for i, t in enumerate(EventType)}
