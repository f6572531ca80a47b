"""``journeys funnel`` / ``journeys retention`` against a real API server over HTTP."""

from __future__ import annotations

import csv
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient

from stack.analysis_cli import duration_seconds, filter_body, step_body, trait_filter_body
from stack.cli import main
from tests.integration.test_analytics_api import api  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def served(api: TestClient) -> Iterator[str]:  # noqa: F811
    """The analysis app of the ``api`` fixture behind a real HTTP server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_funnel_prints_a_table_and_writes_csv(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "funnel.csv"
    code = main(
        [
            "funnel",
            "--url",
            served,
            "--read-key",
            "rk_test",
            "--step",
            "browse",
            "--step",
            "cart",
            "--step",
            "Order Completed",
            "--window",
            "1h",
            "--csv",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "from previous" in printed and "Order Completed" in printed
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["group", "step", "customers"]
    assert [r[2] for r in rows[1:]] == ["3", "2", "1"]


def test_funnel_filters_steps_and_exclusions_like_the_api(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "filtered.csv"
    base = ["funnel", "--url", served, "--read-key", "rk_test", "--window", "1h", "--csv", str(out)]

    def customers(*steps: str) -> list[str]:
        code = main([*base, *steps])
        printed = capsys.readouterr()
        assert code == 0, printed
        return [row[2] for row in list(csv.reader(out.open()))[1:]]

    # alice and carol viewed shoes; only alice added at a price >= 20, and bought.
    shoes = ["--step", "browse", "--where", "category=shoes"]
    assert customers(*shoes, "--step", "cart", "--where", "price>=20", "--step", "purchase") == [
        "2",
        "1",
        "1",
    ]
    assert customers("--step", "browse", "--where", "category in bags,hats", "--step", "cart") == [
        "1",
        "1",
    ]
    # alice's cart (price 20) lies between her browse and purchase: excluded only when
    # the exclusion's filter matches it.
    bought = ["--step", "browse", "--step", "purchase", "--exclude", "cart"]
    assert customers(*bought, "--where", "price>=20") == ["3", "0"]
    assert customers(*bought, "--where", "price>=50") == ["3", "1"]


def test_retention_filters_its_events(
    served: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retention.csv"
    args = ["retention", "--url", served, "--read-key", "rk_test", "--period", "day"]
    code = main([*args, "--start-where", "category=shoes", "--csv", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed
    assert [row[:2] for row in list(csv.reader(out.open()))[1:]] == [["2026-03-01", "2"]]


def test_a_bad_filter_is_refused_with_its_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["funnel", "--step", "browse", "--where", "price>cheap", "--step", "cart"])
    assert "price gt 'cheap': give a number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["funnel", "--where", "category=shoes", "--step", "browse", "--step", "cart"])
    assert "--where filters the --step or --exclude before it" in capsys.readouterr().err


def test_retention_prints_cohorts(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["retention", "--url", served, "--read-key", "rk_test", "--period", "day", "--periods", "2"]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "cohort" in printed and "day 1" in printed


def test_an_api_error_is_shown_not_raised(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["funnel", "--url", served, "--read-key", "wrong", "--step", "browse", "--step", "cart"]
    )
    assert code == 1 and "401" in capsys.readouterr().err
    # The trait filter reaches the API (no trait is defined there: its 400 is shown).
    code = main(
        [
            *("funnel", "--url", served, "--read-key", "rk_test"),
            *("--step", "browse", "--step", "cart", "--trait", "lifetime_revenue>5"),
        ]
    )
    assert code == 1 and "trait_filters[0].trait" in capsys.readouterr().err


def test_durations_and_steps_parse() -> None:
    assert [duration_seconds(x) for x in ("7d", "12h", "30m", "45s", "90")] == [
        604800,
        43200,
        1800,
        45,
        90,
    ]
    assert step_body("Cart") == {"event_type": "cart"}
    assert step_body("Order Completed") == {"event": "Order Completed"}
    assert filter_body("price>=10") == {"property": "price", "op": "gte", "value": 10}
    assert filter_body("campaign!=7") == {"property": "campaign", "op": "neq", "value": "7"}
    assert trait_filter_body("lifetime_revenue>500") == {
        "trait": "lifetime_revenue",
        "op": "gt",
        "value": 500,
    }
    assert trait_filter_body("favourite_brand!=acme") == {
        "trait": "favourite_brand",
        "op": "ne",
        "value": "acme",
    }
    assert trait_filter_body("orders_90d in 1,2") == {
        "trait": "orders_90d",
        "op": "in",
        "value": [1, 2],
    }
    assert filter_body("revenue in 10, 25.5") == {
        "property": "revenue",
        "op": "in",
        "value": [10, 25.5],
    }
