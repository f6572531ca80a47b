"""A stopping node drains what its own worker adds: identity merges in flight are finished.

Visitors browse anonymously, then identify, and the node is stopped at once. The
identify's link goes to the anonymous journey's partition, which then sends the
merged history to the customer's: two more messages on the events topic, produced
by the worker while it drains. A drain that waits only for the end offsets read
when it began stops between those hops, and the stopped stores disagree (the
event log already files the anonymous rows under the customer whose journey has
not absorbed them). Here every merge is complete after the stop, and `journeys
verify` agrees.
"""

from __future__ import annotations

import httpx
import pytest

from stack.settings import Settings
from tests.node_process import query_chdb_folder, run_cli, started_node

pytestmark = pytest.mark.integration

VISITORS = 150
BROWSED = 3


def test_a_stopped_node_has_finished_the_merges_its_last_identifies_began(
    settings: Settings,
) -> None:
    node = started_node(settings)
    browsing = [
        {
            "type": "track",
            "anonymousId": f"anon-{v}",
            "event": "Product Viewed",
            "messageId": f"view-{v}-{n}",
            "properties": {"product_id": f"p{n}"},
        }
        for v in range(VISITORS)
        for n in range(BROWSED)
    ]
    identifies = [
        {
            "type": "identify",
            "userId": f"user-{v}",
            "anonymousId": f"anon-{v}",
            "messageId": f"identify-{v}",
        }
        for v in range(VISITORS)
    ]
    try:
        with httpx.Client(base_url=node.base, auth=(settings.write_key, ""), timeout=60) as api:
            for batch in (browsing, identifies):
                answer = api.post("/v1/batch", json={"batch": batch})
                assert answer.status_code == 200, answer.text
    finally:
        log = node.log_tail(80)
        # At once: the links and merged histories are produced during the drain.
        assert node.stop() == 0, node.log_tail(80)
    assert "Traceback" not in log, log

    counted = query_chdb_folder(
        settings.chdb_path,
        f"SELECT customer_key, event_count FROM {settings.clickhouse_database}.customer_stages "
        "FINAL WHERE customer_key LIKE 'user-%' ORDER BY customer_key",
    )
    # Each customer's journey holds its identify and the history it absorbed.
    assert len(counted) == VISITORS, counted[:5]
    short = [(key, n) for key, n in counted if n != BROWSED + 1]
    assert not short, f"{len(short)} customers without their merged history: {short[:5]}"
    verified = run_cli(settings, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the stores agree" in verified.stdout
