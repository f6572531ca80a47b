"""Funnel definitions: ordered steps a customer takes within a conversion window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from events import EventType

MIN_STEPS, MAX_STEPS = 2, 10


@dataclass(frozen=True, slots=True)
class FunnelStep:
    """One step: an event of a canonical type, or an event with an exact name."""

    event_type: EventType | None = None
    event_name: str | None = None

    def __post_init__(self) -> None:
        if (self.event_type is None) == (self.event_name is None):
            raise ValueError("a funnel step names exactly one of event_type or event_name")

    @property
    def label(self) -> str:
        """How the step is shown to a marketer."""
        return self.event_name or str(self.event_type)


@dataclass(frozen=True, slots=True)
class Funnel:
    """Ordered steps, each within ``window`` of the first."""

    steps: tuple[FunnelStep, ...]
    window: timedelta

    def __post_init__(self) -> None:
        if not MIN_STEPS <= len(self.steps) <= MAX_STEPS:
            raise ValueError(f"a funnel has {MIN_STEPS} to {MAX_STEPS} steps")
        if self.window <= timedelta(0):
            raise ValueError("the conversion window must be positive")
