"""Deterministic storefront traffic for the benchmark, generated inside ClickHouse.

``INSERT … SELECT … FROM numbers(n)``: ten million rows take seconds, where a
Python loop feeding JSON would take minutes. Every random choice is a hash of
``(seed, row number, purpose)``, so the same seed gives the same rows on any
engine and any machine.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

# Share of each canonical type, in per mille, and the Segment names used for it.
_MIX = (
    ("browse", 550, "Product Viewed"),
    ("cart", 200, "Product Added"),
    ("checkout", 120, "Checkout Started"),
    ("purchase", 80, "Order Completed"),
    ("support", 30, "Ticket Created"),
    ("custom", 20, "Newsletter Signed Up"),
)
START = "2026-01-01 00:00:00"
SPAN_DAYS = 90


def _case(draw: str, column: int) -> str:
    """A multiIf picking from ``_MIX`` by the per-mille ``draw``."""
    arms, bound = [], 0
    for entry in _MIX[:-1]:
        bound += entry[1]
        arms.append(f"{draw} < {bound}, '{entry[column]}'")
    return f"multiIf({', '.join(arms)}, '{_MIX[-1][column]}')"


def generate_events(
    client: Client, database: str, events: int, customers: int, seed: int = 42
) -> None:
    """Insert ``events`` rows from ``customers`` customers into ``database.events``.

    Each customer's events spread over 90 days from 2026-01-01 at millisecond
    resolution; types follow ``_MIX``; purchases carry an order id and revenue,
    product events a product, category and price.
    """
    h = f"cityHash64({int(seed)}, number"
    client.command(
        f"""
        INSERT INTO {database}.events
            (event_id, customer_key, user_id, anonymous_id, call_type, event_type, event_name,
             timestamp, received_at, product_id, sku, category, brand, price, quantity,
             cart_id, order_id, revenue, currency, coupon, properties)
        SELECT
            concat('e', toString(number)) AS event_id,
            concat('c', toString({h}, 1) % {int(customers)})) AS customer_key,
            customer_key AS user_id,
            '' AS anonymous_id,
            'track' AS call_type,
            {_case("draw", 0)} AS event_type,
            {_case("draw", 2)} AS event_name,
            toDateTime64('{START}', 3, 'UTC')
                + toIntervalMillisecond({h}, 3) % ({SPAN_DAYS} * 86400000)) AS timestamp,
            timestamp AS received_at,
            if(event_type IN ('browse', 'cart'), concat('p', toString({h}, 4) % 5000)), '')
                AS product_id,
            product_id AS sku,
            if(product_id != '', ['shoes', 'shirts', 'bags', 'hats', 'books'][1 + {h}, 5) % 5], '')
                AS category,
            if(product_id != '', ['acme', 'globex', 'initech'][1 + {h}, 6) % 3], '') AS brand,
            if(product_id != '', toFloat64(5 + {h}, 7) % 200), NULL) AS price,
            if(event_type = 'cart', toInt64(1 + {h}, 8) % 3), NULL) AS quantity,
            '' AS cart_id,
            if(event_type = 'purchase', concat('o', toString(number)), '') AS order_id,
            if(event_type = 'purchase', toFloat64(10 + {h}, 9) % 500), NULL) AS revenue,
            if(event_type = 'purchase', 'EUR', '') AS currency,
            '' AS coupon,
            map() AS properties
        FROM (SELECT number, {h}, 2) % 1000 AS draw FROM numbers({int(events)}))
        """,
        settings={"max_insert_threads": 2},
    )
