"""The journey stages and the rules that move a customer between them.

The thresholds live in a rules file (TOML; the default is
``journeys/stage_rules.toml``). Reading the file is the composition root's job
(``stack/``); this module only turns its parsed content into :class:`StageRules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from journeys.toml_text import load_toml


class Stage(StrEnum):
    """Where a customer is in their journey.

    The first five are the journey, in order. ``lapsed`` is where a loyal
    customer goes after too long without an order (an order wins them back to
    loyalty); ``merged`` ends an anonymous journey that was merged into a known
    customer's.
    """

    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    SERVICE = "service"
    LOYALTY = "loyalty"
    LAPSED = "lapsed"
    MERGED = "merged"

    @property
    def rank(self) -> int:
        """Position in the journey: awareness is 0, loyalty 4, lapsed 5, merged 6."""
        # A table, not list(Stage).index: the stage decisions ask for it per event.
        return _RANKS[self]


_RANKS = {stage: rank for rank, stage in enumerate(Stage)}


PROGRESSION = (
    Stage.AWARENESS,
    Stage.CONSIDERATION,
    Stage.PURCHASE,
    Stage.SERVICE,
    Stage.LOYALTY,
)
"""The five stages of the journey, in order: the steps of the stage funnel."""

JOURNEY_STAGES = (
    Stage.AWARENESS,
    Stage.CONSIDERATION,
    Stage.PURCHASE,
    Stage.SERVICE,
    Stage.LOYALTY,
    Stage.LAPSED,
)
"""The stages a live customer can be in (``merged`` journeys are not customers any more)."""


@dataclass(frozen=True, slots=True)
class StageRules:
    """Thresholds of the stage rules, with their documented defaults.

    - awareness: the first touch of any kind.
    - consideration: a cart or checkout event, a product search, or
      ``consideration_product_views`` product views.
    - purchase: the first completed order.
    - service: a support event after the first order.
    - loyalty: an order within ``loyalty_repeat_window_days`` of a previous one.
    - lapsed: loyalty with no order for more than ``loyalty_lapse_days``, decided
      from event time: when the customer's next event arrives, and when a
      question is asked "as of" a moment. The next order wins them back to loyalty.
    - ``dedup_window_hours``: how long a journey remembers event ids with their
      arrival time (``received_at``, kept with each event, so replays agree);
      older ids are kept without it. Either way a re-sent event counts once,
      however old its events are and however late it is sent again.
    """

    consideration_product_views: int = 2
    loyalty_repeat_window_days: int = 365
    loyalty_lapse_days: int = 180
    dedup_window_hours: int = 24

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field.name}: must be a whole number of at least 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> StageRules:
        """Rules from the rules file's tables (``[consideration]``, ``[loyalty]``, ``[dedup]``)."""
        known = {
            ("consideration", "product_views"): "consideration_product_views",
            ("loyalty", "repeat_window_days"): "loyalty_repeat_window_days",
            ("loyalty", "lapse_days"): "loyalty_lapse_days",
            ("dedup", "window_hours"): "dedup_window_hours",
        }
        values: dict[str, Any] = {}
        for table, entries in data.items():
            if not isinstance(entries, Mapping):
                raise ValueError(f"{table}: must be a table")
            for key, value in entries.items():
                name = known.get((table, key))
                if name is None:
                    raise ValueError(f"{table}.{key}: unknown rule")
                values[name] = value
        return cls(**values)

    @classmethod
    def from_toml(cls, text: str) -> StageRules:
        """Rules from the text of a TOML rules file; unknown or invalid entries are errors."""
        return cls.from_mapping(load_toml(text))
