"""Message templates: Jinja2's sandboxed environment, checked when the flow is validated.

A send renders ``subject`` (e-mail) and ``body`` with these variables, and only
these (any other name is a validation error, not a surprise at send time):

- ``customer_id``: the customer key;
- ``traits``: the identify traits as last identified (``traits.first_name``);
- ``computed_traits``: the computed traits as the journey worker last reported
  them at or before the send's instant (``computed_traits.lifetime_revenue``);
- ``entry``: the properties of the event that entered the run (``entry.cart_id``);
- ``event``: the properties of the event that moved the run on last (the one a
  ``wait_until`` waited for; the entry event until then);
- ``flow``: ``{"id", "version", "name"}``; ``node``: the send node's id;
- ``unsubscribe_url``: the signed one-click link naming the customer and the
  message's channel (journeys/unsubscribe_links.py), filled in at delivery
  (empty in the trial render at decision time, and where no links are made).
- ``data``: what the customer's facts say, as the trigger rules' payloads did
  (``data.cart.lines``, ``data.cart.value``, ``data.orders``,
  ``data.lifetime_revenue``, ``data.last_order_at``, ``data.open_tickets``,
  ``data.ticket_id``, ``data.stage``, ``data.segment``, ``data.birthday``…; see
  engine.py ``facts_payload``); a flow whose templates read it keeps the facts.

A *missing* trait or property renders as the empty string (the documented
default; ``{{ traits.first_name | default("there") }}`` gives another), never
an error: a customer without a first name still gets the message. Syntax
errors, unknown filters and unknown variables are validation errors naming
the node and field. The sandbox refuses unsafe attribute access, and every size
a template can ask for is bounded (:class:`_BoundedSandbox`); should a
render still fail, the send is skipped with reason ``template``, not crashed.
"""

from __future__ import annotations

import contextvars
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, meta
from jinja2 import Template as JinjaTemplate
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment, SecurityError, safe_range

VARIABLES = (
    "customer_id",
    "traits",
    "computed_traits",
    "entry",
    "event",
    "flow",
    "node",
    "unsubscribe_url",
    "data",
)
MAX_TEMPLATE = 20_000
MAX_RENDERED = 100_000
# Integers a render may build, in bits (10**1000 is about 3,300).
MAX_INT_BITS = 100_000
_NUMBER = re.compile(r"\d+")
# What the range() calls of one render may count in all (nested loops multiply).
_RANGE_LEFT: contextvars.ContextVar[list[int]] = contextvars.ContextVar("range_left")


def _too_big(value: object) -> bool:
    """An integer a template passes as a size (a width, a count) beyond any message."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_RENDERED


def _check_sizes(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if any(_too_big(a) for a in (*args, *kwargs.values())):
        raise SecurityError(f"a size above {MAX_RENDERED} was asked for")


def _check_format(text: object) -> None:
    """A %- or {}-format string asking for a width beyond any message."""
    if isinstance(text, str) and any(int(n) > MAX_RENDERED for n in _NUMBER.findall(text)):
        raise SecurityError(f"a format width above {MAX_RENDERED}")


def _counted_range(*args: int) -> range:
    found = safe_range(*args)
    left = _RANGE_LEFT.get(None)
    if left is not None:
        left[0] -= len(found)
        if left[0] < 0:
            raise SecurityError(f"the range() calls of a render count at most {MAX_RENDERED}")
    return found


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox with every size a template can ask for bounded.

    The sandbox keeps templates from reaching Python's internals, not from asking for
    memory or time: ``{{ 'x' * 10**10 }}`` in a send's body took the node's memory
    (20 GB, killed) when the flow was validated. Here ``*``, ``**`` and ``%`` are
    checked before they run, any integer argument of a call or filter is at most
    MAX_RENDERED, format widths too, and ``range`` counts against one budget per render.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**":
            if ints and right > 0 and max(left.bit_length(), 1) * right > MAX_INT_BITS:
                raise SecurityError(f"a power above {MAX_INT_BITS} bits")
            return left**right
        if operator == "*":
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"a product above {MAX_INT_BITS} bits")
            for one, other in ((left, right), (right, left)):
                repeated = isinstance(one, str | list | tuple) and isinstance(other, int)
                if repeated and len(one) * other > MAX_RENDERED:
                    raise SecurityError(f"a repetition longer than {MAX_RENDERED}")
            return left * right
        if isinstance(left, str):  # %-formatting
            _check_format(left)
            _check_sizes(right if isinstance(right, tuple) else (right,), {})
        return left % right

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_sizes(args, kwargs)
        bound = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(bound, str) and getattr(__obj, "__name__", "") in ("format", "format_map"):
            _check_format(bound)
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, run: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run)  # keeps Jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_sizes(args, kwargs)
        if name == "format" and args:
            _check_format(args[0])
        return run(*args, **kwargs)

    return bounded


_ENVIRONMENT = _BoundedSandbox(undefined=ChainableUndefined, autoescape=False)
_ENVIRONMENT.filters = {n: _bounded_filter(n, f) for n, f in _ENVIRONMENT.filters.items()}
_ENVIRONMENT.globals["range"] = _counted_range
_SAMPLE = {
    "customer_id": "c",
    "traits": {},
    "computed_traits": {},
    "entry": {},
    "event": {},
    "flow": {"id": "f", "version": 1, "name": "f"},
    "node": "n",
    "unsubscribe_url": "https://example.invalid/v1/unsubscribe/token",
    "data": {},
}


class RenderFailed(Exception):
    """A template that passed validation failed to render (the send is skipped)."""


@dataclass(frozen=True)
class MessageTemplate:
    """A validated template and its source."""

    source: str
    compiled: JinjaTemplate = field(compare=False, repr=False)
    names: frozenset[str] = field(default=frozenset(), compare=False)  # variables it reads

    def render(self, variables: Mapping[str, Any]) -> str:
        """The text, stopped as soon as it is longer than MAX_RENDERED (a loop's output
        is never held whole first)."""
        parts: list[str] = []
        size = 0
        budget = _RANGE_LEFT.set([MAX_RENDERED])
        try:
            for part in self.compiled.generate(dict(variables)):
                size += len(part)
                if size > MAX_RENDERED:
                    raise RenderFailed(f"rendered text longer than {MAX_RENDERED} characters")
                parts.append(part)
        except (TemplateError, ArithmeticError, TypeError, ValueError, RecursionError) as error:
            raise RenderFailed(f"{type(error).__name__}: {error}") from error
        finally:
            _RANGE_LEFT.reset(budget)
        return "".join(parts)


def compile_template(source: object) -> MessageTemplate | str:
    """The template, or what is wrong with it (one sentence)."""
    if not isinstance(source, str):
        return "must be a template string"
    if len(source) > MAX_TEMPLATE:
        return f"must be at most {MAX_TEMPLATE} characters"
    try:
        names = meta.find_undeclared_variables(_ENVIRONMENT.parse(source))
        unknown = sorted(names - set(VARIABLES))
        if unknown:
            return f"unknown variable {unknown[0]!r} (known: {', '.join(VARIABLES)})"
        compiled = _ENVIRONMENT.from_string(source)  # unknown filters and tests fail here
    except TemplateError as error:
        line = getattr(error, "lineno", None)
        return f"template error{f' on line {line}' if line else ''}: {error.message}"
    except RecursionError:  # the parser and compiler recurse per nesting level
        return "is nested too deeply"
    template = MessageTemplate(source, compiled, frozenset(names))
    try:
        template.render(_SAMPLE)  # e.g. a filter applied to what it cannot take
    except RenderFailed as error:
        return f"does not render with empty traits and properties: {error}"
    return template
