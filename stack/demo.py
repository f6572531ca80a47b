"""Demo traffic: the synthetic storefront, sent live to a running platform over HTTP."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from simulation.storefront import Storefront


def live_calls(seed: int, shoppers: int) -> Iterator[dict[str, Any]]:
    """Storefront calls without end: one storefront after another, seed after seed."""
    for offset in itertools.count():
        yield from Storefront(seed=seed + offset, shoppers=shoppers, live=True).calls()


def send(
    base_url: str,
    write_key: str,
    rate: float,
    calls: Iterator[dict[str, Any]],
    limit: int | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """POST calls to /v1/<type> at ``rate`` per second; returns (accepted, rejected).

    The calls are stamped like a browser SDK's, so the gateway's clock-skew
    correction places them at the moment they are sent.
    """
    accepted = rejected = 0
    started = time.monotonic()
    with httpx.Client(base_url=base_url, auth=(write_key, ""), timeout=30) as client:
        for index, call in enumerate(calls):
            if (limit is not None and index >= limit) or (stop is not None and stop.is_set()):
                break
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                response = client.post(f"/v1/{call['type']}", json=call)
            except httpx.HTTPError:
                rejected += 1
                continue
            if response.status_code == 200:
                accepted += 1
            else:
                rejected += 1
            if on_progress is not None and (index + 1) % 100 == 0:
                on_progress(accepted, rejected)
    return accepted, rejected
