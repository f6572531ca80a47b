"""Every decision a flow takes for a customer, as a domain fact.

``Entered`` → ``NodeReached`` (``Waiting``) … ``Sent`` / ``Skipped`` … →
``GoalReached`` and/or ``Left``. Together a run's facts answer "why did (or
didn't) this customer get this message?": a send not made is a ``Skipped``
naming its reason (holdout, consent, quiet_hours, cap, expired, template), or
the run left before reaching it (``Left`` with the reason: converted, exit,
completed, version_removed).

Each fact has a stable id derived from the run and what happened, so a fact
recorded twice (a replay) is recognised; a ``Sent`` fact's ``message_id`` keys
its delivery (one per run and send node: sent once across crashes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, uuid5

from journeys.flows.inputs import iso

_FACT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:customer-journeys:flow-fact")

# Why a send was not made.
SKIP_REASONS = (
    "holdout",
    "consent",
    "quiet_hours",
    "cap",
    "expired",
    "template",
    "reentry",
    "paused",
)
# Why a run ended.
LEAVE_REASONS = ("converted", "exit", "completed", "version_removed")


@dataclass(frozen=True, slots=True)
class FlowFact:
    """What all facts carry: whose run of which flow version, when, at which node."""

    type: ClassVar[str] = "FlowFact"

    flow_id: str
    version: int
    customer_key: str
    run_id: str
    at_ms: int
    node: str = ""

    @property
    def fact_id(self) -> str:
        """Stable: the same decision always has the same id."""
        # Canonical JSON: the same decision read back in another key order (the event
        # log's columns) has the same id.
        # The fields as they are (asdict's deep copy gave the same JSON, four times slower).
        own = {item.name: getattr(self, item.name) for item in fields(self)}
        detail = json.dumps(own, sort_keys=True, default=str)
        return str(uuid5(_FACT_NAMESPACE, f"{self.type}|{detail}"))

    def to_dict(self) -> dict[str, Any]:
        """As recorded and shown by the API (times also as ISO-8601)."""
        data = {"type": self.type, "fact_id": self.fact_id, **asdict(self)}
        data["at"] = iso(self.at_ms)
        return data

    def why(self) -> str:
        """One sentence for the fact: the answer to "why did (or didn't) …"."""
        raise NotImplementedError(self.type)


@dataclass(frozen=True, slots=True)
class Entered(FlowFact):
    type: ClassVar[str] = "Entered"
    via: str = ""  # the input (event id, stage or segment change) that entered

    def why(self) -> str:
        return f"entered version {self.version} at {self.node} (by {self.via})"


@dataclass(frozen=True, slots=True)
class NodeReached(FlowFact):
    type: ClassVar[str] = "NodeReached"
    via: str = ""  # how: "previous_node: outcome" (timeout, event, holdout, case 1, else …)

    def why(self) -> str:
        return f"reached {self.node} ({self.via})"


@dataclass(frozen=True, slots=True)
class Waiting(FlowFact):
    type: ClassVar[str] = "Waiting"
    until_ms: int = 0
    reason: str = ""  # duration, event (wait_until), quiet_hours, goal

    def to_dict(self) -> dict[str, Any]:
        return {**FlowFact.to_dict(self), "until": iso(self.until_ms)}

    def why(self) -> str:
        return f"waits at {self.node or 'the end'} until {iso(self.until_ms)} ({self.reason})"


@dataclass(frozen=True, slots=True)
class Sent(FlowFact):
    type: ClassVar[str] = "Sent"
    channel: str = ""
    message_id: str = ""
    # What the templates render with, as stored (personal values sealed): the message
    # is rendered at delivery, after opening them, so no rendered text is kept.
    variables: Mapping[str, Any] = field(default_factory=dict)

    def why(self) -> str:
        return f"sent {self.node} on {self.channel} (message {self.message_id})"


@dataclass(frozen=True, slots=True)
class Skipped(FlowFact):
    type: ClassVar[str] = "Skipped"
    channel: str = ""
    reason: str = ""  # one of SKIP_REASONS
    detail: str = ""

    def why(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.node} not sent: {_SKIPPED.get(self.reason, self.reason)}{detail}"


@dataclass(frozen=True, slots=True)
class GoalReached(FlowFact):
    type: ClassVar[str] = "GoalReached"
    via: str = ""

    def why(self) -> str:
        return f"converted (by {self.via})"


@dataclass(frozen=True, slots=True)
class Left(FlowFact):
    type: ClassVar[str] = "Left"
    reason: str = ""  # one of LEAVE_REASONS
    detail: str = ""
    group: str = ""  # the split branch the run was in ("" without a split)
    holdout: bool = False

    def why(self) -> str:
        return f"left at {self.node or 'the end'}: {_LEFT.get(self.reason, self.reason)}"


FACT_TYPES: dict[str, type[FlowFact]] = {
    kind.type: kind for kind in (Entered, NodeReached, Waiting, Sent, Skipped, GoalReached, Left)
}


_SKIPPED = {
    "holdout": "in the holdout (gets nothing, so the flow's uplift can be measured)",
    "consent": "not subscribed to the channel",
    "quiet_hours": "due in the customer's quiet hours (the flow skips those)",
    "cap": "the flow sent on this channel too recently (frequency cap)",
    "expired": "due too long before it could be decided (a replay or a long outage)",
    "template": "the message did not render",
    "reentry": "the re-entry policy refused a new run",
    "paused": "the flow was paused (no new runs)",
}
_LEFT = {
    "converted": "reached the goal",
    "exit": "an exit condition happened",
    "completed": "the path ended",
    "version_removed": "the version it ran on is no longer known",
}


def explain(fact: Mapping[str, Any]) -> str:
    """One sentence for a fact as :meth:`FlowFact.to_dict` wrote it: the "why"."""
    return fact_from_dict(fact).why() if fact.get("type") in FACT_TYPES else str(fact.get("type"))


def fact_from_dict(data: Mapping[str, Any]) -> FlowFact:
    """A fact as :meth:`FlowFact.to_dict` wrote it."""
    kind = FACT_TYPES[data["type"]]
    names = _FIELDS[kind]
    return kind(**{k: v for k, v in data.items() if k in names})


# Each fact type's field names, computed once (a flow's results read every fact).
_FIELDS = {kind: frozenset(f.name for f in fields(kind)) for kind in FACT_TYPES.values()}
