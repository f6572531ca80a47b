"""History import: customers and orders from a shop's CSV exports, as Segment calls.

customers.csv  customer_id*, created_at*, email, first_name, last_name, phone
orders.csv     order_id*, customer_id*, created_at*, total*, currency,
               product_id, sku, product_name, quantity, price
               (one row per order, or one per line item: rows of the same
               order_id become one ``Order Completed`` with ``products[]``)

``*`` columns are required. Times are ISO 8601 (``2024-03-01`` or
``2024-03-01T10:15:00Z``; without an offset, UTC). Every call carries
``context.historical = true`` (no outreach fires for it) and a messageId
derived from the row's id, so importing a file twice counts each row once.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CUSTOMER_COLUMNS = ("customer_id", "created_at")
ORDER_COLUMNS = ("order_id", "customer_id", "created_at", "total")
HISTORICAL_CONTEXT = {"historical": True, "library": {"name": "journeys-import"}}


@dataclass(frozen=True, slots=True)
class RowProblem:
    """What is wrong with one row: file, row number (the header is row 1), column, rule."""

    file: str
    row: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}, row {self.row}, column {self.column}: {self.message}"


@dataclass
class ImportPlan:
    """The calls to send and the rows that cannot be imported."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    rows: int = 0


def plan_import(path: Path) -> ImportPlan:
    """Read a customers or orders CSV (told apart by its header) into Segment batch items."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = {name.strip().lower() for name in reader.fieldnames or []}
        rows = [
            (number, {k.strip().lower(): (v or "").strip() for k, v in row.items() if k})
            for number, row in enumerate(reader, start=2)
        ]
    plan = ImportPlan(rows=len(rows))
    if "order_id" in header:
        _plan_orders(path.name, header, rows, plan)
    elif "customer_id" in header:
        _plan_customers(path.name, header, rows, plan)
    else:
        plan.problems.append(
            RowProblem(path.name, 1, "header", "needs customer_id (customers) or order_id (orders)")
        )
    return plan


def _missing_columns(file: str, header: set[str], required: tuple[str, ...]) -> list[RowProblem]:
    return [
        RowProblem(file, 1, c, "required column is missing") for c in required if c not in header
    ]


def _plan_customers(
    file: str, header: set[str], rows: list[tuple[int, dict[str, str]]], plan: ImportPlan
) -> None:
    plan.problems.extend(_missing_columns(file, header, CUSTOMER_COLUMNS))
    if plan.problems:
        return
    for number, row in rows:
        problems: list[RowProblem] = []
        customer = _required(file, number, row, "customer_id", problems)
        created = _time(file, number, row, "created_at", problems, required=True)
        if row.get("email") and "@" not in row["email"]:
            problems.append(RowProblem(file, number, "email", "not an e-mail address"))
        if problems or created is None:
            plan.problems.extend(problems)
            continue
        traits = {k: row[k] for k in ("email", "first_name", "last_name", "phone") if row.get(k)}
        traits["created_at"] = created.isoformat()
        plan.calls.append(
            {
                "type": "identify",
                "userId": customer,
                "messageId": f"import:customer:{customer}",
                "timestamp": created.isoformat(),
                "traits": traits,
                "context": HISTORICAL_CONTEXT,
            }
        )


def _plan_orders(
    file: str, header: set[str], rows: list[tuple[int, dict[str, str]]], plan: ImportPlan
) -> None:
    plan.problems.extend(_missing_columns(file, header, ORDER_COLUMNS))
    if plan.problems:
        return
    orders: dict[str, dict[str, Any]] = {}
    for number, row in rows:
        problems: list[RowProblem] = []
        order_id = _required(file, number, row, "order_id", problems)
        customer = _required(file, number, row, "customer_id", problems)
        created = _time(file, number, row, "created_at", problems, required=True)
        total = _number(file, number, row, "total", problems, required=True)
        price = _number(file, number, row, "price", problems)
        quantity = _count(file, number, row, "quantity", problems)
        currency = row.get("currency", "")
        if currency and not (len(currency) == 3 and currency.isalpha()):
            problems.append(RowProblem(file, number, "currency", "must be a 3-letter ISO code"))
        if problems or created is None:
            plan.problems.extend(problems)
            continue
        order = orders.get(order_id)
        if order is None:
            properties: dict[str, Any] = {"order_id": order_id, "total": total, "revenue": total}
            if currency:
                properties["currency"] = currency.upper()
            order = orders[order_id] = {
                "type": "track",
                "event": "Order Completed",
                "userId": customer,
                "messageId": f"import:order:{order_id}",
                "timestamp": created.isoformat(),
                "properties": properties,
                "context": HISTORICAL_CONTEXT,
            }
        elif order["userId"] != customer:
            plan.problems.append(
                RowProblem(file, number, "customer_id", f"order {order_id} has another customer")
            )
            continue
        product = {
            key: value
            for key, value in (
                ("product_id", row.get("product_id") or None),
                ("sku", row.get("sku") or None),
                ("name", row.get("product_name") or None),
                ("price", price),
                ("quantity", quantity),
            )
            if value is not None
        }
        if product:
            order["properties"].setdefault("products", []).append(product)
    plan.calls.extend(orders.values())


def _required(
    file: str, number: int, row: dict[str, str], column: str, problems: list[RowProblem]
) -> str:
    value = row.get(column, "")
    if not value:
        problems.append(RowProblem(file, number, column, "is required"))
    elif len(value) > 255:
        problems.append(RowProblem(file, number, column, "at most 255 characters"))
    return value


def _cell(
    file: str,
    number: int,
    row: dict[str, str],
    column: str,
    problems: list[RowProblem],
    required: bool,
) -> str:
    """The cell's text; an empty required cell is a problem."""
    value = row.get(column, "")
    if not value and required:
        problems.append(RowProblem(file, number, column, "is required"))
    return value


def _time(
    file: str,
    number: int,
    row: dict[str, str],
    column: str,
    problems: list[RowProblem],
    required: bool = False,
) -> datetime | None:
    value = _cell(file, number, row, column, problems, required)
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.append(
            RowProblem(file, number, column, f"{value!r} is not an ISO 8601 date or time")
        )
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not datetime(1970, 1, 1, tzinfo=UTC) <= moment <= datetime.now(UTC):
        problems.append(RowProblem(file, number, column, f"{value!r} is not a past date"))
        return None
    return moment


def _number(
    file: str,
    number: int,
    row: dict[str, str],
    column: str,
    problems: list[RowProblem],
    required: bool = False,
) -> float | None:
    value = _cell(file, number, row, column, problems, required)
    if not value:
        return None
    try:
        parsed = float(value)
    except ValueError:
        problems.append(RowProblem(file, number, column, f"{value!r} is not a number"))
        return None
    if parsed != parsed or parsed in (float("inf"), float("-inf")) or parsed < 0:
        problems.append(RowProblem(file, number, column, f"{value!r} is not a number ≥ 0"))
        return None
    return parsed


def _count(
    file: str, number: int, row: dict[str, str], column: str, problems: list[RowProblem]
) -> int | None:
    value = row.get(column, "")
    if not value:
        return None
    if not value.isdigit():
        problems.append(RowProblem(file, number, column, f"{value!r} is not a whole number ≥ 0"))
        return None
    return int(value)


def batches(calls: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """``calls`` in slices of ``size`` (a /v1/batch request each)."""
    for start in range(0, len(calls), size):
        yield calls[start : start + size]
