"""CSV history import: shop exports → historical Segment calls, with a message per bad row."""

from __future__ import annotations

from pathlib import Path

from events.history import batches, plan_import
from events.segment import CALL_MODELS, validate_call


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_customers_become_historical_identify_calls(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "customers.csv",
        "customer_id,email,first_name,created_at\n"
        "c1,ann@example.com,Ann,2023-05-01\n"
        "c2,,Bo,2023-06-01T10:00:00+02:00\n",
    )
    plan = plan_import(path)
    assert plan.problems == [] and plan.rows == 2
    first, second = plan.calls
    assert first["type"] == "identify" and first["userId"] == "c1"
    assert first["messageId"] == "import:customer:c1"
    assert first["timestamp"] == "2023-05-01T00:00:00+00:00"
    assert first["context"]["historical"] is True
    assert first["traits"]["email"] == "ann@example.com"
    assert "email" not in second["traits"]
    for call in plan.calls:  # what the importer sends passes the gateway's own validation
        validate_call(CALL_MODELS[call["type"]], call)


def test_line_items_of_one_order_become_one_order_with_products(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "orders.csv",
        "order_id,customer_id,created_at,total,currency,sku,product_name,quantity,price\n"
        "o1,c1,2024-01-02T10:00:00Z,30,eur,S1,Mug,2,10\n"
        "o1,c1,2024-01-02T10:00:00Z,30,eur,S2,Tea,1,10\n"
        "o2,c2,2024-02-03,12.5,,,,,\n",
    )
    plan = plan_import(path)
    assert plan.problems == []
    o1, o2 = plan.calls
    assert o1["event"] == "Order Completed" and o1["messageId"] == "import:order:o1"
    assert o1["properties"]["currency"] == "EUR"
    assert o1["properties"]["products"] == [
        {"sku": "S1", "name": "Mug", "price": 10.0, "quantity": 2},
        {"sku": "S2", "name": "Tea", "price": 10.0, "quantity": 1},
    ]
    assert o2["properties"] == {"order_id": "o2", "total": 12.5, "revenue": 12.5}
    for call in plan.calls:
        validate_call(CALL_MODELS[call["type"]], call)


def test_every_bad_row_is_named_with_row_column_and_rule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "orders.csv",
        "order_id,customer_id,created_at,total,quantity,currency\n"
        "o1,c1,2024-01-02,30,1,EUR\n"
        ",c1,2024-01-02,30,1,EUR\n"
        "o3,c1,last tuesday,30,1,EUR\n"
        "o4,c1,2024-01-02,thirty,1,EUR\n"
        "o5,c1,2024-01-02,30,1.5,EUR\n"
        "o6,c1,2024-01-02,30,1,euros\n"
        "o7,c1,2999-01-01,30,1,EUR\n",
    )
    plan = plan_import(path)
    assert [call["messageId"] for call in plan.calls] == ["import:order:o1"]
    assert [(p.row, p.column) for p in plan.problems] == [
        (3, "order_id"),
        (4, "created_at"),
        (5, "total"),
        (6, "quantity"),
        (7, "currency"),
        (8, "created_at"),
    ]
    assert str(plan.problems[1]) == (
        "orders.csv, row 4, column created_at: 'last tuesday' is not an ISO 8601 date or time"
    )


def test_missing_required_columns_are_reported_on_the_header(tmp_path: Path) -> None:
    plan = plan_import(write(tmp_path, "orders.csv", "order_id,total\no1,3\n"))
    assert [(p.row, p.column) for p in plan.problems] == [(1, "customer_id"), (1, "created_at")]
    assert plan.calls == []
    unknown = plan_import(write(tmp_path, "x.csv", "name\nx\n"))
    assert unknown.problems[0].column == "header"


def test_batches_slice_calls() -> None:
    calls = [{"n": i} for i in range(5)]
    assert [len(b) for b in batches(calls, 2)] == [2, 2, 1]
