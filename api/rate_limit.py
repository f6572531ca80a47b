"""Per-source rate limit: a token bucket per write key, in events per second."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """A token bucket per source: ``rate`` events per second, bursts up to ``burst``.

    Each replica keeps its own buckets, so N replicas allow up to N times the
    rate; the limit protects a replica and the broker from one noisy source.
    A ``rate`` of 0 turns the limit off.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, source: str, events: int) -> float:
        """Take ``events`` tokens; returns 0 when allowed, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(tokens=self.burst, updated=now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        # A request bigger than the burst could never pass: it costs a full bucket.
        cost = min(float(events), self.burst)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` header value (whole seconds, at least 1) for a wait."""
        return str(max(1, math.ceil(wait)))
