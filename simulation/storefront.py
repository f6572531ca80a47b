"""A synthetic storefront: Segment calls as real shoppers' SDKs would send them.

Deterministic by seed. Shoppers arrive anonymously on one or more devices,
browse, search, add to cart, check out, buy (or drop off at any step), come back
and buy again, open support tickets; some sign up (identify) along the way.
Calls are emitted in *send* order: a few arrive late (their ``sentAt`` long
after ``originalTimestamp``) and so out of order. Reused by tests, the demo
traffic and the benchmarks.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

CATEGORIES = ["shoes", "jackets", "bags", "watches", "shirts", "outdoor", "beauty", "home"]
BRANDS = ["Northwind", "Contoso", "Fabrikam", "Tailspin", "Litware", "Adatum"]


@dataclass(frozen=True, slots=True)
class Product:
    """An item of the catalogue."""

    product_id: str
    sku: str
    name: str
    category: str
    brand: str
    price: float

    def properties(self, quantity: int = 1) -> dict[str, Any]:
        """The product as Segment e-commerce spec properties."""
        return {
            "product_id": self.product_id,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "quantity": quantity,
            "currency": "USD",
        }


@dataclass(frozen=True, slots=True)
class ShopperBehaviour:
    """Probabilities of each step, given the previous one; tune to shape funnels."""

    search: float = 0.4
    add_to_cart: float = 0.35
    checkout: float = 0.6
    purchase: float = 0.75
    identify_when_anonymous: float = 0.5
    support_after_purchase: float = 0.15
    return_visit: float = 0.45
    second_device: float = 0.2
    late_arrival: float = 0.02


@dataclass
class Tally:
    """What the generator did, to check results against."""

    calls: int = 0
    customers: set[str] = field(default_factory=set)
    buyers: set[str] = field(default_factory=set)
    carts_abandoned: int = 0
    orders: int = 0
    revenue: float = 0.0
    late: int = 0


class Storefront:
    """Generates Segment calls for ``shoppers`` shoppers over ``days`` days from ``start``."""

    def __init__(
        self,
        seed: int = 7,
        shoppers: int = 100,
        start: datetime | None = None,
        days: int = 30,
        behaviour: ShopperBehaviour | None = None,
        catalogue_size: int = 200,
        live: bool = False,
    ) -> None:
        """``live``: stamp calls like a browser SDK (originalTimestamp + sentAt), to be
        sent as they happen; otherwise an explicit ``timestamp`` (a server library or
        backfill), which the gateway keeps, so history keeps its spread in time."""
        self.live = live
        self.rng = random.Random(seed)
        self.shoppers = shoppers
        self.start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.days = days
        self.behaviour = behaviour or ShopperBehaviour()
        self.catalogue = [self._product(i) for i in range(catalogue_size)]
        self.tally = Tally()

    def calls(self) -> Iterator[dict[str, Any]]:
        """Every shopper's calls, merged in the order the storefront would send them."""
        generated: list[dict[str, Any]] = []
        for index in range(self.shoppers):
            generated.extend(self._shopper(index))
        generated.sort(key=lambda call: (call["_sent"], call["messageId"]), reverse=True)
        self.tally.calls = len(generated)
        # Popped as given, so a long run's calls are freed as the caller turns them into
        # events (a million call dicts at once took gigabytes in the benchmark).
        while generated:
            call = generated.pop()
            del call["_sent"]
            yield call

    # --- one shopper --------------------------------------------------------------

    def _shopper(self, index: int) -> list[dict[str, Any]]:
        rng, b = self.rng, self.behaviour
        user_id = f"user-{index:06d}"
        devices = [self._uuid()]
        if rng.random() < b.second_device:
            devices.append(self._uuid())
        known = rng.random() < 0.3  # logged in from the first visit
        at = self.start + timedelta(seconds=rng.uniform(0, self.days * 86400 * 0.8))
        calls: list[dict[str, Any]] = []
        if known:
            calls.append(self._identify(user_id, devices[0], at))
        while at < self.start + timedelta(days=self.days):
            device = rng.choice(devices)
            at, visit_calls, identified = self._visit(user_id if known else None, device, at)
            calls.extend(visit_calls)
            if identified:
                known = True
            if rng.random() >= b.return_visit:
                break
            at += timedelta(hours=rng.expovariate(1 / 72))
        customer = user_id if known else f"anon:{devices[0]}"
        self.tally.customers.add(customer)
        return calls

    def _visit(
        self, user_id: str | None, device: str, at: datetime
    ) -> tuple[datetime, list[dict[str, Any]], bool]:
        rng, b = self.rng, self.behaviour
        calls: list[dict[str, Any]] = []
        identified = False

        def step(seconds: float = 40) -> datetime:
            nonlocal at
            at += timedelta(seconds=rng.expovariate(1 / seconds))
            return at

        def emit(call: dict[str, Any]) -> None:
            calls.append(call)

        who = {"userId": user_id} if user_id else {}
        emit(self._page("Home", device, who, step(5)))
        if rng.random() < b.search:
            query = rng.choice(CATEGORIES)
            emit(self._track("Products Searched", device, who, step(), {"query": query}))
        category = rng.choice(CATEGORIES)
        emit(self._track("Product List Viewed", device, who, step(), {"category": category}))
        viewed = [self._pick(category) for _ in range(rng.randint(1, 4))]
        for product in viewed:
            emit(self._track("Product Viewed", device, who, step(), product.properties()))
        if rng.random() >= b.add_to_cart:
            return at, calls, identified

        cart_id = self._uuid()
        cart = viewed[: rng.randint(1, len(viewed))]
        for product in cart:
            emit(
                self._track(
                    "Product Added",
                    device,
                    who,
                    step(),
                    {**product.properties(), "cart_id": cart_id},
                )
            )
        if rng.random() >= b.checkout:
            self.tally.carts_abandoned += 1
            return at, calls, identified

        if not user_id and rng.random() < b.identify_when_anonymous:
            user_id = f"user-{self._uuid()[:12]}"
            who = {"userId": user_id}
            emit(self._identify(user_id, device, step()))
            identified = True
        total = round(sum(p.price for p in cart), 2)
        products = [p.properties() for p in cart]
        checkout = {
            "checkout_id": self._uuid(),
            "cart_id": cart_id,
            "value": total,
            "currency": "USD",
            "products": products,
        }
        emit(self._track("Checkout Started", device, who, step(), checkout))
        emit(
            self._track(
                "Payment Info Entered",
                device,
                who,
                step(),
                {"checkout_id": checkout["checkout_id"]},
            )
        )
        if rng.random() >= b.purchase:
            self.tally.carts_abandoned += 1
            return at, calls, identified

        order_id = f"order-{self._uuid()[:12]}"
        order = {
            "order_id": order_id,
            "checkout_id": checkout["checkout_id"],
            "total": total,
            "revenue": total,
            "currency": "USD",
            "products": products,
        }
        emit(self._track("Order Completed", device, who, step(), order))
        self.tally.orders += 1
        self.tally.revenue = round(self.tally.revenue + total, 2)
        self.tally.buyers.add(user_id or f"anon:{device}")
        if rng.random() < b.support_after_purchase:
            ticket = {
                "ticket_id": f"t-{self._uuid()[:8]}",
                "order_id": order_id,
                "subject": rng.choice(["where is my order", "wrong size", "refund"]),
            }
            emit(self._track("Ticket Created", device, who, step(3600), ticket))
            emit(self._track("Ticket Resolved", device, who, step(86400), ticket))
            emit(
                self._track(
                    "Feedback Submitted",
                    device,
                    who,
                    step(600),
                    {"ticket_id": ticket["ticket_id"], "rating": rng.randint(1, 5)},
                )
            )
        return at, calls, identified

    # --- calls ------------------------------------------------------------------

    def _track(
        self, event: str, device: str, who: dict[str, str], at: datetime, properties: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "type": "track",
            "event": event,
            "properties": properties,
            **self._envelope(device, who, at),
        }

    def _page(self, name: str, device: str, who: dict[str, str], at: datetime) -> dict[str, Any]:
        return {
            "type": "page",
            "name": name,
            "properties": {"path": "/" if name == "Home" else f"/{name.lower()}"},
            **self._envelope(device, who, at),
        }

    def _identify(self, user_id: str, device: str, at: datetime) -> dict[str, Any]:
        traits = {"email": f"{user_id}@example.com", "name": user_id.replace("-", " ").title()}
        return {
            "type": "identify",
            "traits": traits,
            **self._envelope(device, {"userId": user_id}, at),
        }

    def _envelope(self, device: str, who: dict[str, str], at: datetime) -> dict[str, Any]:
        sent = at + timedelta(milliseconds=self.rng.randint(5, 900))
        if self.rng.random() < self.behaviour.late_arrival:
            # An app that was offline: the call reaches us hours after it happened.
            sent += timedelta(hours=self.rng.uniform(1, 12))
            self.tally.late += 1
        stamps = (
            {"originalTimestamp": _iso(at), "sentAt": _iso(sent)}
            if self.live
            else {"timestamp": _iso(at)}
        )
        return {
            "anonymousId": device,
            **who,
            "messageId": self._uuid(),
            **stamps,
            "_sent": sent,
            "context": {
                "library": {"name": "simulation.storefront", "version": "1"},
                "device": {"id": device},
            },
        }

    # --- helpers ----------------------------------------------------------------

    def _product(self, index: int) -> Product:
        category = CATEGORIES[index % len(CATEGORIES)]
        return Product(
            product_id=f"p-{index:05d}",
            sku=f"SKU-{index:05d}",
            name=f"{category.title()} {index}",
            category=category,
            brand=self.rng.choice(BRANDS),
            price=round(self.rng.uniform(5, 400), 2),
        )

    def _pick(self, category: str) -> Product:
        in_category = [p for p in self.catalogue if p.category == category]
        return self.rng.choice(in_category)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
