"""Prometheus metrics at /metrics: the gateway's counters and whatever else is registered.

Each app has its own registry (tests build many apps in one process); the
composition root registers the worker's histograms and the node's gauges
(backlog per partition, journal bytes) in the same one. Unauthenticated, like
/health: operators scrape it from inside (README, "Operating").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest


class IngestMetrics:
    """What ingest counts: events accepted, and calls rejected by the rule of their first problem.

    A refusal of a whole request (401, 413, 429, 503…) counts the events the
    request holds when its body could be read (a batch's items), else one; an
    invalid item of a batch counts one.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, counted_elsewhere: bool = False
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Behind ingest gateways (`journeys up`) the node shows the gateways' counts,
        # summed from their files (stack/metrics.py); its own stay out of /metrics.
        counters = CollectorRegistry() if counted_elsewhere else self.registry
        self._accepted = Counter(
            "journeys_events_accepted",
            "Events accepted: acknowledged by the broker (and journaled) before the answer",
            registry=counters,
        )
        self._rejected = Counter(
            "journeys_events_rejected",
            "Events refused, by the rule of the first problem (the errors' rule)",
            ["rule"],
            registry=counters,
        )

    def accepted(self, events: int) -> None:
        """``events`` were stored."""
        if events:
            self._accepted.inc(events)

    def rejected(self, reasons: Sequence[dict[str, Any]], events: int = 1) -> None:
        """``events`` were refused for ``reasons`` (counted under the first rule)."""
        rule = str(reasons[0].get("rule", "unknown")) if reasons else "unknown"
        self._rejected.labels(rule=rule).inc(events)


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Counters, histograms and gauges of this process, for a Prometheus scrape."""
    registry: CollectorRegistry = request.app.state.gateway.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
