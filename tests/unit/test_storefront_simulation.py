"""The synthetic storefront: deterministic, accepted by the gateway's models, funnel-shaped."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from events.segment import IdentifyCall, PageCall, SegmentCall, TrackCall
from simulation.storefront import ShopperBehaviour, Storefront

MODELS: dict[str, type[SegmentCall]] = {
    "track": TrackCall,
    "page": PageCall,
    "identify": IdentifyCall,
}


def generate(**kwargs: Any) -> tuple[list[dict[str, Any]], Storefront]:
    shop = Storefront(**kwargs)
    return list(shop.calls()), shop


def test_same_seed_same_calls_other_seed_other_calls() -> None:
    first, _ = generate(seed=3, shoppers=40)
    again, _ = generate(seed=3, shoppers=40)
    other, _ = generate(seed=4, shoppers=40)
    assert first == again
    assert first != other


@pytest.mark.parametrize("live", [False, True])
def test_every_call_is_accepted_by_the_gateway_models(live: bool) -> None:
    calls, _ = generate(seed=5, shoppers=60, live=live)
    rejected = []
    for call in calls:
        try:
            MODELS[call["type"]].model_validate(call)
        except ValidationError as error:
            rejected.append((call, error))
    assert rejected == []
    stamps = {"originalTimestamp", "sentAt"} if live else {"timestamp"}
    assert all(stamps <= call.keys() for call in calls)


def test_traffic_narrows_like_a_funnel_and_the_tally_matches() -> None:
    calls, shop = generate(seed=11, shoppers=400)
    names = Counter(call.get("event") for call in calls if call["type"] == "track")
    assert names["Product Viewed"] > names["Product Added"] > names["Checkout Started"]
    assert names["Checkout Started"] >= names["Order Completed"] > 0
    assert names["Order Completed"] == shop.tally.orders
    revenue = sum(c["properties"]["revenue"] for c in calls if c.get("event") == "Order Completed")
    assert round(revenue, 2) == shop.tally.revenue
    assert shop.tally.calls == len(calls)
    assert len({call["messageId"] for call in calls}) == len(calls)


def test_anonymous_shoppers_identify_and_some_use_two_devices() -> None:
    calls, _ = generate(seed=13, shoppers=300)
    identifies = [c for c in calls if c["type"] == "identify"]
    assert identifies and all("userId" in c and "anonymousId" in c for c in identifies)
    devices_per_user: dict[str, set[str]] = {}
    for call in calls:
        if "userId" in call:
            devices_per_user.setdefault(call["userId"], set()).add(call["anonymousId"])
    assert any(len(devices) > 1 for devices in devices_per_user.values())
    anonymous_only = [c for c in calls if "userId" not in c]
    assert anonymous_only, "some shoppers never sign up"


def test_late_arrivals_are_out_of_order_in_send_order() -> None:
    behaviour = ShopperBehaviour(late_arrival=0.2)
    calls, shop = generate(seed=17, shoppers=100, live=True, behaviour=behaviour)
    assert shop.tally.late > 0
    happened = [call["originalTimestamp"] for call in calls]
    assert happened != sorted(happened), "late calls arrive after later events"
