"""The CLI's HTTP commands against a real node: write keys per source, then a history import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from stack.processes import wait_until
from stack.settings import Settings
from streams.topics import ensure_topics
from tests.node_process import NodeProcess, query_chdb_folder

pytestmark = pytest.mark.integration


def journeys(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_keys_and_history_import_through_the_cli(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings.kafka_bootstrap_servers, settings.all_topics, 2, 1)
    customers = tmp_path / "customers.csv"
    customers.write_text(
        "customer_id,email,created_at\n"
        "h1,h1@example.com,2023-01-05\n"
        "h2,not-an-email,2023-01-06\n"
        "h3,,2023-01-07\n"
    )
    orders = tmp_path / "orders.csv"
    orders.write_text(
        "order_id,customer_id,created_at,total,sku,quantity,price\n"
        "o1,h1,2023-02-01T10:00:00Z,20,S1,2,10\n"
        "o2,h1,2023-09-01T10:00:00Z,15,S2,1,15\n"
        "o3,h3,2023-03-01T10:00:00Z,abc,S1,1,10\n"
    )
    node = NodeProcess(settings, settings.data_dir / "node.log")
    admin = ["--url", node.base, "--admin-key", settings.admin_key]
    node.start()
    try:
        created = journeys("keys", "create", "shop-history", *admin)
        key = created.stdout.strip().splitlines()[-1]
        key_id = key.split("_")[1]
        assert key_id in created.stdout.splitlines()[0]
        assert "shop-history" in journeys("keys", "list", *admin).stdout

        imported = journeys(
            "import", "--url", node.base, "--write-key", key, str(customers), str(orders),
            check=False,
        )  # fmt: skip
        assert imported.returncode == 1, imported.stderr  # bad rows were skipped
        assert "customers.csv, row 3, column email: not an e-mail address" in imported.stderr
        assert "orders.csv, row 4, column total: 'abc' is not a number" in imported.stderr
        assert "sent 4/4 events" in imported.stdout

        def stage(customer: str, as_of: str = "") -> str | None:
            query = f"?as_of={as_of}" if as_of else ""
            response = node.read("GET", f"/v1/customers/{customer}{query}")
            return response.json()["stage"] if response.is_success else None

        # h1's second order (2023-09-01) made them loyal; with no order since,
        # loyalty has lapsed by now (the rules file's lapse window).
        wait_until(lambda: stage("h1") == "lapsed", timeout=60, alive=lambda: True)
        assert stage("h1") == "lapsed" and stage("h3") == "awareness"
        assert stage("h1", as_of="2023-09-02T00:00:00Z") == "loyalty"
        assert stage("h1", as_of="2023-02-02T00:00:00Z") == "purchase"
        assert node.read("GET", "/v1/customers/h1").json()["event_count"] == 3

        # Importing again counts nothing twice (messageIds come from the rows' ids),
        # not even through another source's key: the rows name the same orders.
        journeys("import", "--url", node.base, "--write-key", key, str(orders), check=False)
        other = journeys("keys", "create", "shop-history-2", *admin).stdout.strip()
        other_key = other.splitlines()[-1]
        journeys("import", "--url", node.base, "--write-key", other_key, str(orders), check=False)
        # One live event after the imports, on h1's partition: once it is counted,
        # everything imported before it was processed.
        after = {"userId": "h1", "event": "Product Viewed", "messageId": "after-imports"}
        posted = httpx.post(f"{node.base}/v1/track", json=after, auth=(key, ""), timeout=30)
        assert posted.status_code == 200, posted.text
        wait_until(
            lambda: node.read("GET", "/v1/customers/h1").json()["event_count"] == 4,
            timeout=60,
            alive=lambda: True,
        )

        journeys("keys", "revoke", key_id, *admin)
        refused = httpx.post(
            f"{node.base}/v1/track",
            json={"userId": "h1", "event": "x"},
            auth=(key, ""),
            timeout=30,
        )
        assert refused.status_code == 401
    finally:
        assert node.stop() == 0, node.log_tail()

    rows = query_chdb_folder(
        settings.chdb_path,
        f"SELECT event_id, toString(timestamp), historical, source, count() "
        f"FROM {settings.clickhouse_database}.events "
        "WHERE event_id LIKE 'import:%' GROUP BY ALL ORDER BY event_id",
    )
    assert rows == [
        ["import:customer:h1", "2023-01-05 00:00:00.000", True, key_id, 1],
        ["import:customer:h3", "2023-01-07 00:00:00.000", True, key_id, 1],
        ["import:order:o1", "2023-02-01 10:00:00.000", True, key_id, 1],
        ["import:order:o2", "2023-09-01 10:00:00.000", True, key_id, 1],
    ]
