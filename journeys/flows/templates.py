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
the node and field. The sandbox refuses unsafe attribute access; should a
render still fail, the send is skipped with reason ``template``, not crashed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import ChainableUndefined, TemplateError, meta
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment

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

_ENVIRONMENT = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)
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
        try:
            text = self.compiled.render(dict(variables))
        except (TemplateError, ArithmeticError, TypeError, ValueError) as error:
            raise RenderFailed(f"{type(error).__name__}: {error}") from error
        if len(text) > MAX_RENDERED:
            raise RenderFailed(f"rendered text longer than {MAX_RENDERED} characters")
        return text


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
    template = MessageTemplate(source, compiled, frozenset(names))
    try:
        template.render(_SAMPLE)  # e.g. a filter applied to what it cannot take
    except RenderFailed as error:
        return f"does not render with empty traits and properties: {error}"
    return template
