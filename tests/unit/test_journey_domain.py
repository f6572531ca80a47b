"""Unit tests for the journey domain: stages, the CustomerJourney aggregate and funnels."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import EventType, TrackedEvent, event_type_for
from events.ecommerce import MAX_MONEY
from journeys.domainmodel import CustomerJourney
from journeys.funnels import MAX_STEPS, MIN_STEPS, Funnel, FunnelStep
from journeys.stages import Stage, StageRules
from journeys.touches import Touch, touch_from

T0 = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
RULES = StageRules()
_ids = itertools.count()


def touch(
    name: str = "Product Viewed",
    *,
    at: datetime | timedelta = timedelta(0),
    event_id: str | None = None,
    customer: str = "cust-1",
    call_type: str = "track",
    event_type: EventType | None = None,
) -> TrackedEvent:
    """A touch; ``at`` is a time or an offset from T0, the type follows the Segment mapping."""
    when = T0 + at if isinstance(at, timedelta) else at
    return TrackedEvent(
        event_id=event_id or f"evt-{next(_ids)}",
        customer_key=customer,
        call_type=call_type,
        event_type=event_type or event_type_for(call_type, name),
        event_name=name,
        timestamp=when,
        received_at=when,
        user_id=customer,
    )


def new_journey(customer: str = "cust-1", started_at: datetime = T0) -> CustomerJourney:
    return CustomerJourney(customer_key=customer, started_at=started_at)


def moved(journey: CustomerJourney, touch: TrackedEvent, rules: StageRules = RULES) -> Stage | None:
    """The stage one touch left the journey in, if it changed the stage at all."""
    changes = journey.record(touch, rules)
    return changes[-1].stage if changes else None


def play(
    journey: CustomerJourney, *touches: TrackedEvent, rules: StageRules = RULES
) -> list[Stage | None]:
    return [moved(journey, t, rules) for t in touches]


def reached(journey: CustomerJourney, *touches: TrackedEvent, rules: StageRules = RULES) -> Any:
    """Every stage the touches moved the journey to, in order."""
    return [change.stage for t in touches for change in journey.record(t, rules)]


# --- stages -------------------------------------------------------------------------------


def test_stages_are_ranked_in_journey_order() -> None:
    assert [(s.value, s.rank) for s in Stage] == [
        ("awareness", 0),
        ("consideration", 1),
        ("purchase", 2),
        ("service", 3),
        ("loyalty", 4),
        ("lapsed", 5),
        ("merged", 6),
    ]


def test_stage_rules_defaults() -> None:
    assert StageRules() == StageRules(consideration_product_views=2, loyalty_repeat_window_days=365)


# --- the aggregate: identity and bookkeeping ----------------------------------------------


def test_journey_id_is_derived_from_customer_key() -> None:
    assert CustomerJourney.create_id("alice") == CustomerJourney.create_id("alice")
    assert CustomerJourney.create_id("alice") != CustomerJourney.create_id("bob")
    assert new_journey("alice").id == CustomerJourney.create_id("alice")


def test_new_journey_has_no_stage() -> None:
    journey = new_journey()
    assert journey.stage is None
    assert journey.touchpoints == 0
    assert journey.orders == 0
    assert journey.summary() == {
        "customer_key": "cust-1",
        "stage": None,
        "stage_since": None,
        "event_count": 0,
        "first_seen": T0,
        "last_seen": T0,
        "orders": 0,
        "last_order_at": None,
        "merged_into": "",
        "absorbed_keys": [],
        "version": 1,
    }


def test_summary_after_touches() -> None:
    journey = new_journey()
    play(
        journey,
        touch("Product Viewed", at=timedelta(hours=1)),
        touch("Order Completed", at=timedelta(hours=3)),
        touch("Product Viewed", at=timedelta(hours=2)),
    )
    summary = journey.summary()
    assert summary["stage"] == "purchase"
    assert summary["stage_since"] == T0 + timedelta(hours=3)
    assert summary["event_count"] == 3
    assert summary["first_seen"] == T0
    assert summary["last_seen"] == T0 + timedelta(hours=3)
    assert summary["orders"] == 1
    assert summary["version"] == journey.version


def test_first_and_last_seen_follow_event_time_not_arrival_order() -> None:
    journey = new_journey(started_at=T0)
    play(journey, touch(at=-timedelta(days=2)), touch(at=timedelta(days=5)), touch(at=timedelta(0)))
    assert journey.first_seen == T0 - timedelta(days=2)
    assert journey.last_seen == T0 + timedelta(days=5)


# --- awareness and consideration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "call_type"),
    [
        ("Product List Viewed", "track"),
        ("Home", "page"),
        ("Identify", "identify"),
        ("Foo", "track"),
    ],
)
def test_first_touch_of_any_browsing_kind_is_awareness(name: str, call_type: str) -> None:
    journey = new_journey()
    assert moved(journey, touch(name, call_type=call_type)) is Stage.AWARENESS
    assert journey.stage is Stage.AWARENESS
    assert journey.stage_reason == f"first touch: {name}"
    assert journey.stage_since == T0


def test_later_browsing_moves_nothing() -> None:
    journey = new_journey()
    assert play(journey, touch("Home", call_type="page"), touch("Promotion Viewed")) == [
        Stage.AWARENESS,
        None,
    ]


@pytest.mark.parametrize(
    "name",
    ["Product Added", "Cart Viewed", "Checkout Started", "Payment Info Entered", "Coupon Applied"],
)
def test_cart_or_checkout_event_is_consideration(name: str) -> None:
    journey = new_journey()
    assert play(journey, touch("Home", call_type="page"), touch(name)) == [
        Stage.AWARENESS,
        Stage.CONSIDERATION,
    ]
    assert journey.stage_reason == f"{event_type_for('track', name).value}: {name}"


def test_product_search_is_consideration() -> None:
    journey = new_journey()
    assert play(journey, touch("Home", call_type="page"), touch("products searched")) == [
        Stage.AWARENESS,
        Stage.CONSIDERATION,
    ]
    assert journey.stage_reason == "product search"


def test_two_product_views_are_consideration_by_default() -> None:
    journey = new_journey()
    assert play(journey, touch("Product Viewed"), touch("Product Viewed")) == [
        Stage.AWARENESS,
        Stage.CONSIDERATION,
    ]
    assert journey.product_views == 2
    assert journey.stage_reason == "2 product views"


def test_product_view_threshold_is_configurable() -> None:
    rules = StageRules(consideration_product_views=3)
    journey = new_journey()
    views = [touch("Product Viewed") for _ in range(3)]
    assert play(journey, *views, rules=rules) == [Stage.AWARENESS, None, Stage.CONSIDERATION]


def test_other_browse_events_are_not_product_views() -> None:
    journey = new_journey()
    result = play(journey, touch("Product Clicked"), touch("Product List Viewed"), touch("Home"))
    assert result == [Stage.AWARENESS, None, None]
    assert journey.product_views == 0


def test_product_view_names_are_case_insensitive() -> None:
    journey = new_journey()
    assert reached(journey, touch("PRODUCT VIEWED"), touch("product viewed")) == [
        Stage.AWARENESS,
        Stage.CONSIDERATION,
    ]


def test_cart_event_as_first_touch_reaches_awareness_then_consideration() -> None:
    # Every journey begins at awareness; the same touch may then move it further.
    journey = new_journey()
    changes = journey.record(touch("Product Added"), RULES)
    assert [(c.previous, c.stage) for c in changes] == [
        (None, Stage.AWARENESS),
        (Stage.AWARENESS, Stage.CONSIDERATION),
    ]
    assert journey.stage is Stage.CONSIDERATION


# --- purchase, service, loyalty -----------------------------------------------------------


def test_first_order_is_purchase() -> None:
    journey = new_journey()
    stages = play(journey, touch("Product Added"), touch("Order Completed", at=timedelta(hours=1)))
    assert stages == [Stage.CONSIDERATION, Stage.PURCHASE]
    assert journey.stage_reason == "first order"
    assert journey.stage_since == T0 + timedelta(hours=1)
    assert journey.orders == 1


@pytest.mark.parametrize("name", ["order completed", "ORDER COMPLETED", "Order completed"])
def test_order_name_is_case_insensitive(name: str) -> None:
    journey = new_journey()
    assert reached(journey, touch("Home", call_type="page"), touch(name)) == [
        Stage.AWARENESS,
        Stage.PURCHASE,
    ]


def test_order_completed_with_surrounding_space_is_an_order() -> None:
    # The ingest classifies " Order Completed " as a purchase (event_type_for strips the
    # name); the journey must count the same event as the customer's order.
    order = touch(" Order Completed ")
    assert order.event_type is EventType.PURCHASE
    journey = new_journey()
    assert moved(journey, order) is Stage.PURCHASE
    assert journey.orders == 1


@pytest.mark.parametrize("name", ["Order Updated", "Order Refunded", "Order Cancelled"])
def test_other_order_events_are_not_orders(name: str) -> None:
    journey = new_journey()
    play(journey, touch("Product Added"), touch(name))
    assert journey.stage is Stage.CONSIDERATION
    assert journey.orders == 0


def test_support_after_order_is_service() -> None:
    journey = new_journey()
    stages = play(
        journey,
        touch("Order Completed"),
        touch("Ticket Created", at=timedelta(days=1)),
        touch("Ticket Resolved", at=timedelta(days=2)),
    )
    assert stages == [Stage.PURCHASE, Stage.SERVICE, None]
    assert journey.stage_reason == "support after purchase: Ticket Created"


def test_support_before_any_order_is_not_service() -> None:
    journey = new_journey()
    assert play(journey, touch("Ticket Created"), touch("Feedback Submitted")) == [
        Stage.AWARENESS,
        None,
    ]
    assert journey.stage is Stage.AWARENESS


def test_support_before_order_does_not_count_later() -> None:
    journey = new_journey()
    stages = play(journey, touch("Ticket Created"), touch("Order Completed", at=timedelta(days=1)))
    assert stages == [Stage.AWARENESS, Stage.PURCHASE]


def test_second_order_within_window_is_loyalty() -> None:
    journey = new_journey()
    stages = play(
        journey, touch("Order Completed"), touch("Order Completed", at=timedelta(days=30))
    )
    assert stages == [Stage.PURCHASE, Stage.LOYALTY]
    assert journey.stage_reason == "repeat order"
    assert journey.orders == 2


def test_loyalty_after_service() -> None:
    journey = new_journey()
    stages = play(
        journey,
        touch("Order Completed"),
        touch("Ticket Created", at=timedelta(days=1)),
        touch("Order Completed", at=timedelta(days=2)),
    )
    assert stages == [Stage.PURCHASE, Stage.SERVICE, Stage.LOYALTY]


def test_second_order_exactly_at_window_edge_is_loyalty() -> None:
    journey = new_journey()
    stages = play(journey, touch("Order Completed"), touch("Order Completed", at=timedelta(365)))
    assert stages[-1] is Stage.LOYALTY


def test_second_order_outside_window_is_not_loyalty() -> None:
    journey = new_journey()
    late = timedelta(days=365, seconds=1)
    assert play(journey, touch("Order Completed"), touch("Order Completed", at=late)) == [
        Stage.PURCHASE,
        None,
    ]
    assert journey.stage is Stage.PURCHASE
    assert journey.orders == 2


def test_third_order_within_window_of_the_second_is_loyalty() -> None:
    journey = new_journey()
    stages = play(
        journey,
        touch("Order Completed"),
        touch("Order Completed", at=timedelta(days=500)),
        touch("Order Completed", at=timedelta(days=600)),
    )
    assert stages == [Stage.PURCHASE, None, Stage.LOYALTY]


def test_loyalty_window_is_configurable() -> None:
    rules = StageRules(loyalty_repeat_window_days=7)
    journey = new_journey()
    stages = play(
        journey,
        touch("Order Completed"),
        touch("Order Completed", at=timedelta(days=8)),
        touch("Order Completed", at=timedelta(days=14)),
        rules=rules,
    )
    assert stages == [Stage.PURCHASE, None, Stage.LOYALTY]


def test_late_arriving_earlier_order_within_window_is_loyalty() -> None:
    journey = new_journey()
    late, early = (
        touch("Order Completed", at=timedelta(days=100)),
        touch("Order Completed", at=timedelta(days=10)),
    )
    assert play(journey, late) == [Stage.PURCHASE]
    # Out of event-time order: recorded, then the stages are re-derived from all facts.
    assert play(journey, early) == [None]
    changes = journey.revise([touch_from(late), touch_from(early)], RULES)
    assert [(c.stage, c.at, c.revised) for c in changes] == [
        (Stage.AWARENESS, T0 + timedelta(days=10), True),
        (Stage.PURCHASE, T0 + timedelta(days=10), True),
        (Stage.LOYALTY, T0 + timedelta(days=100), True),
    ]
    assert journey.stage is Stage.LOYALTY
    assert journey.stage_history[1] == ["purchase", T0 + timedelta(days=10)]


def test_stages_never_go_backwards() -> None:
    journey = new_journey()
    play(journey, touch("Order Completed"), touch("Order Completed", at=timedelta(days=1)))
    assert journey.stage is Stage.LOYALTY
    after = play(
        journey,
        touch("Home", call_type="page"),
        touch("Product Added"),
        touch("Products Searched"),
        touch("Ticket Created"),
        touch("Order Completed", at=timedelta(days=2)),
    )
    assert after == [None] * 5
    assert journey.stage is Stage.LOYALTY


def test_browsing_after_purchase_does_not_return_to_consideration() -> None:
    journey = new_journey()
    assert reached(
        journey, touch("Order Completed"), touch("Product Viewed"), touch("Product Viewed")
    ) == [Stage.AWARENESS, Stage.PURCHASE]


# --- idempotence --------------------------------------------------------------------------


def test_same_event_id_recorded_twice_counts_once() -> None:
    journey = new_journey()
    view = touch("Product Viewed", event_id="m-1")
    assert moved(journey, view) is Stage.AWARENESS
    version = journey.version
    assert moved(journey, view) is None
    assert journey.touchpoints == 1
    assert journey.product_views == 1
    assert journey.version == version
    assert journey.stage is Stage.AWARENESS


def test_message_ids_are_unique_per_source() -> None:
    journey = new_journey()
    from_shop = replace(touch("Product Viewed", event_id="m-1"), source="shop")
    from_app = replace(from_shop, source="app")
    play(journey, from_shop, from_app)
    assert journey.touchpoints == 2  # two sources reusing one messageId: two events
    version = journey.version
    play(journey, from_shop, from_app)  # each source re-sends: nothing new
    assert (journey.touchpoints, journey.product_views, journey.version) == (2, 2, version)
    assert set(journey.recorded_ids) == {"shop/m-1", "app/m-1"}


def test_imported_history_counts_once_whichever_key_imports_it() -> None:
    journey = new_journey()
    # The importer's ids come from the shop's rows: the same order under any key.
    imported = replace(
        touch("Order Completed", event_id="import:order:o-1"),
        source="k1",
        context={"historical": True},
    )
    play(journey, imported, replace(imported, source="k2"))
    assert (journey.touchpoints, journey.orders) == (1, 1)


def test_ids_recorded_before_sources_were_kept_still_dedupe() -> None:
    # A journey stored before ids were per source holds bare messageIds: a touch
    # written then has no id_scope (Touch.from_dict of an old fact event).
    journey = new_journey()
    sent = replace(touch("Product Viewed", event_id="m-old"), source="shop")
    stored = Touch.from_dict(
        {k: v for k, v in touch_from(sent).to_dict().items() if k != "id_scope"}
    )
    assert stored.id_scope == ""
    journey.record_touch(stored, RULES)
    assert set(journey.recorded_ids) == {"m-old"}
    assert journey.record(sent, RULES) == []  # the source re-sends after the upgrade
    assert journey.touchpoints == 1
    # Once the old id ages out of the dedup window it is kept without its arrival,
    # and still recognised.
    later = replace(
        touch("Product Viewed", event_id="m-new", at=timedelta(hours=25)), source="shop"
    )
    journey.record(later, RULES)
    assert set(journey.recorded_ids) == {"shop/m-new"}
    assert set(journey.ids_past_window) == {"m-old"}
    assert journey.record(replace(sent, received_at=T0 + timedelta(hours=26)), RULES) == []
    assert journey.touchpoints == 2


def test_a_fact_stored_before_arrival_and_scope_were_kept_applies_with_their_defaults() -> None:
    # The touch of an old fact event lacks received_at, id_scope and merged_from:
    # applied from the stored dict, the event time stands for the arrival and the
    # bare messageId is the remembered key, as Touch.from_dict's defaults say.
    journey = new_journey()
    sent = touch("Order Completed", event_id="m-1", at=timedelta(hours=2))
    sent = replace(sent, source="shop", properties={"order_id": "o-1", "revenue": 30})
    full = touch_from(sent).to_dict()
    old = {k: v for k, v in full.items() if k not in ("received_at", "id_scope", "merged_from")}
    forget = T0 - timedelta(hours=RULES.dedup_window_hours)
    journey.trigger_event(
        CustomerJourney.OrderPlaced,
        touch=old,
        forget_before=forget,
        order_id="o-1",
        revenue=full["revenue"],
    )
    assert journey.recorded_ids == {"m-1": T0 + timedelta(hours=2)}
    assert journey.last_arrival == T0 + timedelta(hours=2)
    assert (journey.orders, journey.order_ids, journey.revenue) == (1, {"o-1": None}, 30.0)
    assert journey.channels == {full["channel"]: 1}
    assert Touch.from_dict(old).arrived == journey.last_arrival


def test_redelivered_order_is_not_a_second_order() -> None:
    journey = new_journey()
    order = touch("Order Completed", event_id="order-1")
    assert play(journey, order, order) == [Stage.PURCHASE, None]
    assert journey.orders == 1
    assert journey.stage is Stage.PURCHASE


def test_duplicates_emit_no_domain_events() -> None:
    journey = new_journey()
    view = touch(event_id="m-1")
    journey.record(view, RULES)
    journey.collect_events()
    journey.record(view, RULES)
    assert journey.collect_events() == []


def test_each_recorded_touch_is_one_fact_event_plus_stage_changes() -> None:
    # Deliberate change: the generic TouchpointRecorded became fact events named by meaning.
    journey = new_journey()
    play(journey, touch("Home", call_type="page"), touch("Promotion Viewed"), touch("Foo"))
    names = [type(e).__name__ for e in journey.collect_events()]
    assert names == ["JourneyStarted", "Browsed", "StageReached", "Browsed", "Interacted"]


# --- property: any sequence ---------------------------------------------------------------

_NAMES = [
    "Product Viewed",
    "product viewed",
    "Products Searched",
    "Product Added",
    "Checkout Started",
    "Order Completed",
    "ORDER COMPLETED",
    "Order Refunded",
    "Ticket Created",
    "Feedback Submitted",
    "Promotion Viewed",
    "Newsletter Signup",
]
_touch_specs = st.tuples(
    st.sampled_from(["track", "track", "track", "page", "identify"]),
    st.sampled_from(_NAMES) | st.text(max_size=12),
    st.sampled_from(list(EventType)) | st.none(),
    st.integers(min_value=-2_000, max_value=2_000),  # offset in days / 2, hours apart
)


@st.composite
def touch_sequences(draw: st.DrawFn) -> list[TrackedEvent]:
    """Distinct events, then a delivery order that re-delivers some of them."""
    specs = draw(st.lists(_touch_specs, min_size=1, max_size=25))
    events = [
        touch(
            name,
            call_type=call_type,
            event_type=event_type,
            event_id=f"m-{index}",
            at=timedelta(hours=12 * offset),
        )
        for index, (call_type, name, event_type, offset) in enumerate(specs)
    ]
    order = draw(st.lists(st.integers(min_value=0, max_value=len(events) - 1), max_size=15))
    deliveries = list(events) + [events[i] for i in order]
    return draw(st.permutations(deliveries))


@settings(max_examples=150, deadline=None, database=None)
@given(
    deliveries=touch_sequences(),
    rules=st.builds(
        StageRules,
        consideration_product_views=st.integers(min_value=1, max_value=4),
        loyalty_repeat_window_days=st.integers(min_value=1, max_value=400),
        # Wider than the span of the sequences: no lapse, every id remembered
        # (lapse and the dedup window have their own tests).
        loyalty_lapse_days=st.just(10_000),
        dedup_window_hours=st.just(24 * 10_000),
    ),
)
def test_any_sequence_moves_forward_counts_once_and_replays_as_a_no_op(
    deliveries: list[TrackedEvent], rules: StageRules
) -> None:
    journey = new_journey(started_at=deliveries[0].timestamp)
    stages = [s for s in play(journey, *deliveries, rules=rules) if s is not None]

    ranks = [s.rank for s in stages]
    assert ranks == sorted(set(ranks)), stages
    assert stages, "the first touch always reaches a stage"
    assert journey.stage is stages[-1]
    distinct = {t.event_id for t in deliveries}
    assert journey.touchpoints == len(distinct)
    assert set(journey.recorded_ids) == distinct
    # An order is a purchase-type event named Order Completed (a page of that name is not).
    orders = {
        t.event_id
        for t in deliveries
        if t.event_type is EventType.PURCHASE and t.event_name.strip().lower() == "order completed"
    }
    assert journey.orders == len(orders)
    if journey.stage.rank >= Stage.PURCHASE.rank:
        assert journey.orders >= 1
    if journey.stage is Stage.LOYALTY:
        assert journey.orders >= 2

    first_deliveries: dict[str, TrackedEvent] = {}
    for t in deliveries:
        first_deliveries.setdefault(t.event_id, t)
    once = new_journey(started_at=deliveries[0].timestamp)
    assert [
        s for s in play(once, *first_deliveries.values(), rules=rules) if s is not None
    ] == stages
    assert once.summary() == journey.summary()

    journey.collect_events()
    before = (journey.version, journey.summary(), dict(journey.recorded_ids))
    assert play(journey, *deliveries, rules=rules) == [None] * len(deliveries)
    assert journey.collect_events() == []
    assert (journey.version, journey.summary(), dict(journey.recorded_ids)) == before


# --- funnels ------------------------------------------------------------------------------


def test_funnel_step_by_type_or_by_name() -> None:
    assert FunnelStep(event_type=EventType.CART).label == "cart"
    assert FunnelStep(event_name="Order Completed").label == "Order Completed"


@pytest.mark.parametrize(
    "kwargs", [{}, {"event_type": EventType.CART, "event_name": "Product Added"}]
)
def test_funnel_step_needs_exactly_one_criterion(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        FunnelStep(**kwargs)


@pytest.mark.parametrize("count", [MIN_STEPS, 5, MAX_STEPS])
def test_funnel_accepts_two_to_ten_steps(count: int) -> None:
    steps = tuple(FunnelStep(event_name=f"step {i}") for i in range(count))
    funnel = Funnel(steps=steps, window=timedelta(days=7))
    assert len(funnel.steps) == count


@pytest.mark.parametrize("count", [0, 1, MAX_STEPS + 1])
def test_funnel_rejects_too_few_or_too_many_steps(count: int) -> None:
    steps = tuple(FunnelStep(event_name=f"step {i}") for i in range(count))
    with pytest.raises(ValueError, match="2 to 10 steps"):
        Funnel(steps=steps, window=timedelta(days=7))


@pytest.mark.parametrize("window", [timedelta(0), timedelta(seconds=-1), -timedelta(days=7)])
def test_funnel_window_must_be_positive(window: timedelta) -> None:
    steps = (FunnelStep(event_type=EventType.BROWSE), FunnelStep(event_type=EventType.PURCHASE))
    with pytest.raises(ValueError, match="positive"):
        Funnel(steps=steps, window=window)


def test_funnel_with_smallest_positive_window_is_accepted() -> None:
    steps = (FunnelStep(event_type=EventType.BROWSE), FunnelStep(event_type=EventType.PURCHASE))
    assert Funnel(steps=steps, window=timedelta(microseconds=1)).window == timedelta(microseconds=1)


@settings(max_examples=100, deadline=None, database=None)
@given(deliveries=touch_sequences(), seed=st.randoms(use_true_random=False))
def test_stages_once_revised_do_not_depend_on_the_arrival_order(
    deliveries: list[TrackedEvent], seed: Any
) -> None:
    """Two arrival orders of the same facts, each re-derived: one stage history."""
    rules = StageRules(loyalty_lapse_days=30, dedup_window_hours=24 * 10_000)
    histories = []
    for order in (deliveries, seed.sample(deliveries, len(deliveries))):
        journey = new_journey(started_at=order[0].timestamp)
        recorded: dict[str, Touch] = {}
        for event in order:
            journey.record(event, rules)
            recorded.setdefault(event.event_id, touch_from(event))
        journey.revise(recorded.values(), rules)
        histories.append(journey.stage_history)
    assert histories[0] == histories[1]


def test_orders_stored_before_the_value_bounds_sum_to_a_finite_revenue() -> None:
    # Touches recorded before ingest bounded amounts may hold 1e308: summed, inf,
    # which the journey's JSON state (and a snapshot of it) cannot hold.
    journey = CustomerJourney(customer_key="rich", started_at=T0)
    for n in range(3):
        order = touch_from(touch("Order Completed", at=timedelta(minutes=n), customer="rich"))
        journey.record_touch(replace(order, order_id=f"o{n}", revenue=1e308), StageRules())
    assert math.isfinite(journey.revenue) and journey.revenue == 3 * MAX_MONEY
    rebuilt = None
    for domain_event in journey.collect_events():
        rebuilt = domain_event.mutate(rebuilt)
    assert isinstance(rebuilt, CustomerJourney) and rebuilt.revenue == journey.revenue
