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
        cells = _RowReader(file, number, row)
        customer = cells.identifier("customer_id")
        created = cells.time("created_at", required=True)
        if row.get("email") and "@" not in row["email"]:
            cells.problem("email", "not an e-mail address")
        if cells.problems or created is None:
            plan.problems.extend(cells.problems)
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
        cells = _RowReader(file, number, row)
        order_id = cells.identifier("order_id")
        customer = cells.identifier("customer_id")
        created = cells.time("created_at", required=True)
        total = cells.amount("total", required=True)
        price = cells.amount("price")
        quantity = cells.count("quantity")
        currency = row.get("currency", "")
        if currency and not (len(currency) == 3 and currency.isalpha()):
            cells.problem("currency", "must be a 3-letter ISO code")
        if cells.problems or created is None:
            plan.problems.extend(cells.problems)
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


@dataclass(slots=True)
class _RowReader:
    """Reads one CSV row's cells, collecting a problem for each bad one."""

    file: str
    number: int
    row: dict[str, str]
    problems: list[RowProblem] = field(default_factory=list)

    def problem(self, column: str, message: str) -> None:
        """Note that ``column`` breaks a rule."""
        self.problems.append(RowProblem(self.file, self.number, column, message))

    def cell(self, column: str, required: bool = False) -> str:
        """The cell's text; an empty required cell is a problem."""
        value = self.row.get(column, "")
        if not value and required:
            self.problem(column, "is required")
        return value

    def identifier(self, column: str) -> str:
        """A required id of at most 255 characters."""
        value = self.cell(column, required=True)
        if len(value) > 255:
            self.problem(column, "at most 255 characters")
        return value

    def time(self, column: str, required: bool = False) -> datetime | None:
        """An ISO 8601 moment in the past (UTC without an offset), or None."""
        value = self.cell(column, required)
        if not value:
            return None
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.problem(column, f"{value!r} is not an ISO 8601 date or time")
            return None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        if not datetime(1970, 1, 1, tzinfo=UTC) <= moment <= datetime.now(UTC):
            self.problem(column, f"{value!r} is not a past date")
            return None
        return moment

    def amount(self, column: str, required: bool = False) -> float | None:
        """A finite number ≥ 0, or None."""
        value = self.cell(column, required)
        if not value:
            return None
        try:
            parsed = float(value)
        except ValueError:
            self.problem(column, f"{value!r} is not a number")
            return None
        if parsed != parsed or parsed in (float("inf"), float("-inf")) or parsed < 0:
            self.problem(column, f"{value!r} is not a number ≥ 0")
            return None
        return parsed

    def count(self, column: str) -> int | None:
        """A whole number ≥ 0, or None."""
        value = self.cell(column)
        if not value:
            return None
        if not value.isdigit():
            self.problem(column, f"{value!r} is not a whole number ≥ 0")
            return None
        return int(value)


def batches(calls: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """``calls`` in slices of ``size`` (a /v1/batch request each)."""
    for start in range(0, len(calls), size):
        yield calls[start : start + size]
