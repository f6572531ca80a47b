"""The five journey stages and the rules that move a customer between them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    """Where a customer is in their journey, in order."""

    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    PURCHASE = "purchase"
    SERVICE = "service"
    LOYALTY = "loyalty"

    @property
    def rank(self) -> int:
        """Position in the journey: awareness is 0, loyalty 4."""
        return list(Stage).index(self)


@dataclass(frozen=True, slots=True)
class StageRules:
    """Thresholds of the stage rules, with their documented defaults.

    - awareness: the first touch of any kind.
    - consideration: a cart or checkout event, a product search, or
      ``consideration_product_views`` product views.
    - purchase: the first completed order.
    - service: a support event after the first order.
    - loyalty: a second completed order within ``loyalty_repeat_window_days``
      of the previous one.
    """

    consideration_product_views: int = 2
    loyalty_repeat_window_days: int = 365
