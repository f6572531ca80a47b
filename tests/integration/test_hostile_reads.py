"""Defence in depth on the read side, on the real ClickHouse engine.

Rows the ingest bounds refuse today (revenue 1e307, -1e308, NaN, inf, price
1e40) are written straight into the event log and the profile table, as
events accepted under the older, looser rules were; then every report reads
them: never a 5xx, figures finite, the clamped ones flagged. A property test
does the same with random extreme values.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from clickhouse_connect.driver.client import Client
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from api.app import create_api
from api.dependencies import AccessKeys, Gateway
from events import TrackedEvent
from projections.analytics.reports import Reports
from projections.customer_stages import CustomerStageView
from projections.event_log import EventLog
from projections.migrations import migrate
from projections.profiles import ProfileView
from tests.conftest import T0, make_event

pytestmark = pytest.mark.integration
READ = {"Authorization": "Bearer rk_test"}
HOSTILE = [1e307, -1e308, math.inf, -math.inf, math.nan, 1e40]


class NoSink:
    """Nothing is ingested here: the rows are written as the old rules let them in."""

    async def publish(self, events: Sequence[TrackedEvent]) -> None:
        raise AssertionError("reads must not publish")

    async def dead_letter(
        self, payload: bytes, reasons: Sequence[dict[str, Any]], source: str = ""
    ) -> None:
        raise AssertionError("reads must not dead-letter")


class Store:
    """A database of its own with the read API over it."""

    def __init__(self, clickhouse: Client) -> None:
        self.clickhouse = clickhouse
        self.db = f"db_{uuid.uuid4().hex[:12]}"
        migrate(clickhouse, self.db)
        self.log = EventLog(clickhouse, self.db)
        gateway = Gateway(
            sink=NoSink(),
            keys=AccessKeys(write_keys=frozenset(), read_keys=frozenset({"rk_test"})),
            event_log=self.log,
            stages=CustomerStageView(clickhouse, self.db),
            profiles=ProfileView(clickhouse, self.db),
        )
        self.api = TestClient(create_api(gateway), raise_server_exceptions=False)

    def customer_rows(self, key: str, revenue: float, other: float | None = None) -> None:
        """The stage and profile rows an old journey with this revenue wrote; ``other``
        stands for its cycle and rating (the revenue itself by default)."""
        other = revenue if other is None else other
        at = T0 + timedelta(minutes=5)
        self.clickhouse.insert(
            f"{self.db}.customer_stages",
            [[key, "purchase", at, 2, 1, T0, at, at, "", [], 1]],
            column_names=[
                "customer_key", "stage", "stage_since", "event_count", "orders",
                "first_seen", "last_seen", "last_order_at", "merged_into",
                "absorbed_keys", "version",
            ],
        )  # fmt: skip
        self.clickhouse.insert(
            f"{self.db}.customer_profiles",
            [[key, T0, at, ["web"], 1, revenue, 0.0, revenue, at, revenue, other, [], other, 0, 1]],
            column_names=[
                "customer_key", "first_seen", "last_seen", "channels", "orders", "revenue",
                "refunded", "aov", "last_order_at", "ltv_estimate", "purchase_cycle_days",
                "interest_tags", "average_rating", "open_tickets", "version",
            ],
        )  # fmt: skip

    def close(self) -> None:
        self.api.close()
        self.clickhouse.command(f"DROP DATABASE {self.db}")


@pytest.fixture
def store(clickhouse: Client) -> Iterator[Store]:
    made = Store(clickhouse)
    yield made
    made.close()


PRICE_OVER_1 = {"property": "price", "op": "gt", "value": 1}
ANY_REVENUE = {"property": "revenue", "op": "gte", "value": -1e308}
STEPS = [{"event_type": "browse"}, {"event_type": "cart"}, {"event_type": "purchase"}]
SPAN = {"start": "2020-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}


def every_report(
    api: httpx.Client, customers: Sequence[str], headers: dict[str, str] = READ
) -> list[tuple[str, Any]]:
    """Each read endpoint's answer: (what was asked, the response)."""
    funnel = {"steps": STEPS, "window_seconds": 86400}
    asked = [
        ("GET", "/v1/rfm", None),
        ("GET", "/v1/stages", None),
        ("GET", "/v1/trends", None),
        ("GET", "/v1/stage-flow", None),
        ("GET", "/v1/funnels/stages", None),
        ("POST", "/v1/funnels", funnel),
        ("POST", "/v1/funnels", {**funnel, **SPAN, "breakdown": "currency"}),
        (
            "POST",
            "/v1/funnels",
            {
                "steps": [
                    {"event_type": "cart", "filters": [PRICE_OVER_1]},
                    {"event_type": "purchase", "filters": [ANY_REVENUE]},
                ],
            },
        ),
        ("POST", "/v1/funnels/dropped", {**funnel, "dropped_at": 3}),
        (
            "POST",
            "/v1/retention",
            {"start_event": {"event_type": "cart"}, "return_event": {"event_type": "purchase"}},
        ),
        ("POST", "/v1/paths", {"event_type": "cart", **SPAN}),
    ]  # fmt: skip
    for key in map(functools.partial(quote, safe=""), customers):
        asked += [("GET", f"/v1/rfm/{key}", None), ("GET", f"/v1/customers/{key}", None)]
    return [
        (f"{method} {path}", api.request(method, path, json=body, headers=headers))
        for method, path, body in asked
    ]


def test_values_accepted_under_older_rules_never_fail_a_report(store: Store) -> None:
    events = []
    for index, value in enumerate(HOSTILE):
        key = f"old-{index}"
        events += [
            make_event(f"{key}-v", key, "Product Viewed", index),
            make_event(f"{key}-a", key, "Product Added", index + 1, price=value, quantity=1),
            make_event(f"{key}-o", key, "Order Completed", index + 2, order_id=key, revenue=value),
        ]
        store.customer_rows(key, value)
    events.append(make_event("fine-o", "fine", "Order Completed", 3, order_id="f", revenue=20.0))
    store.customer_rows("fine", 20.0, 4.0)
    store.log.append(events)
    # What the columns hold is what the old rules let in: the test would prove nothing otherwise.
    stored = store.clickhouse.query(
        f"SELECT countIf(NOT isFinite(revenue)), maxIf(revenue, isFinite(revenue)), "
        f"countIf(price = 1e40) FROM {store.db}.events"
    ).result_rows[0]
    assert stored[0] == 3 and stored[1] == 1e307 and stored[2] == 1

    customers = [f"old-{i}" for i in range(len(HOSTILE))] + ["fine"]
    for asked, response in every_report(store.api, customers):
        assert response.status_code == 200, (asked, response.text)

    rfm = store.api.get("/v1/rfm", headers=READ).json()
    assert rfm["customers"] == len(customers)
    by_key = {row["customer_key"]: row for row in rfm["page"]}
    assert all(math.isfinite(row["monetary"]) for row in by_key.values())
    assert by_key["old-0"]["monetary"] == 1e12 and by_key["old-0"]["clamped"] is True
    assert by_key["old-1"]["monetary"] == -1e12
    assert by_key["old-4"]["monetary"] == 0 and by_key["old-4"]["clamped"] is True  # NaN
    assert by_key["fine"] == {**by_key["fine"], "monetary": 20.0, "clamped": False}
    # The worker's segment scan is the same query over all buyers.
    scan = Reports(store.clickhouse, store.db).rfm(T0 + timedelta(days=1))
    assert len(scan) == len(customers) and {s.segment for s in scan}

    for index in range(len(HOSTILE)):
        profile = store.api.get(f"/v1/customers/old-{index}", headers=READ).json()["profile"]
        assert profile["clamped"] is True, profile
        for name in ("revenue", "average_order_value", "ltv_estimate", "monetary"):
            assert math.isfinite(profile[name]) and abs(profile[name]) <= 1e15, (name, profile)
        assert profile["rfm"] is not None
    fine = store.api.get("/v1/customers/fine", headers=READ).json()["profile"]
    assert (fine["revenue"], fine["clamped"]) == (20.0, False)


_extreme = (
    st.sampled_from([*HOSTILE, 0.0, -0.0, 5e-324, 1.7976931348623157e308, -1e12, 1e12])
    | st.floats()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
)
_text = st.text(st.characters(codec="utf-8"), max_size=12)
_names = st.sampled_from(
    ["Order Completed", "Product Added", "Product Viewed", "Checkout Started", "E\x00vil", ""]
)
_event = st.fixed_dictionaries(
    {
        "customer": st.sampled_from(["a", "b", "\x00", "c" * 255]),
        "name": _names,
        "minutes": st.floats(min_value=-1e6, max_value=1e7),
        "revenue": _extreme,
        "price": _extreme,
        "quantity": st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.none(),
        "category": _text,
        "currency": _text,
    }
)


def test_random_extreme_stored_values_never_make_a_report_fail(store: Store) -> None:
    counter = iter(range(10**9))

    @hypothesis_settings(
        max_examples=15,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(batch=st.lists(_event, min_size=1, max_size=6), profile_value=_extreme)
    def never_5xx(batch: list[dict[str, Any]], profile_value: float) -> None:
        events = []
        for spec in batch:
            number = next(counter)
            properties = {
                k: spec[k] for k in ("revenue", "price", "quantity", "category", "currency")
            }
            event = make_event(
                f"x{number}", spec["customer"], spec["name"] or "Product Viewed",
                spec["minutes"], **properties,
            )  # fmt: skip
            events.append(event)
        store.log.append(events)
        key = batch[0]["customer"]
        store.customer_rows(key, float(profile_value))
        for asked, response in every_report(store.api, [key]):
            assert response.status_code < 500, (asked, response.text)
            assert response.status_code in (200, 400, 404), (asked, response.text)

    never_5xx()


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1" + b"0" * 400])
def test_non_finite_numbers_in_an_analysis_body_are_refused_by_field(
    store: Store, number: bytes
) -> None:
    # FastAPI reads bodies with json.loads, which takes NaN, Infinity and 1e999 (inf).
    store.log.append([make_event("n1", "n", "Product Added", 0, price=5.0)])
    step = b'{"event_type": "cart", "filters": [{"property": "price", "op": "gt", "value": %s}]}'
    body = b'{"steps": [%s, %s]}' % (step % number, step % number)
    response = store.api.post(
        "/v1/funnels", content=body, headers={**READ, "content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert "steps.0.filters.0.value.float" in fields, response.text
