"""Write keys and dead letters in the real ClickHouse engine (chdb); no broker needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from clickhouse_connect.driver.client import Client

from api.write_keys import DEV_SOURCE, WriteKeyRegistry
from projections.dead_letters import DeadLetter, DeadLetterLog
from projections.migrations import migrate
from projections.write_keys import WriteKeyStore, digest, key_id_of
from streams.dead_letters import DeadLetterRecord, store_dead_letters, to_dead_letter

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def database(clickhouse: Client, unique: str) -> str:
    name = f"stores_{unique}"
    migrate(clickhouse, name)
    return name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_keys_are_stored_as_digests_and_revoked_by_a_newer_version(
    clickhouse: Client, database: str
) -> None:
    store = WriteKeyStore(clickhouse, database)
    created, key = store.create("shop-eu")
    assert key_id_of(key) == created.key_id and created.active
    stored = clickhouse.query(f"SELECT secret_sha256 FROM {database}.write_keys").result_rows
    assert stored == [(digest(key),)] and key not in str(stored)
    assert store.active_digests() == {created.key_id: (digest(key), "shop-eu", ())}
    # Browser origins: a newer version of the row; revoking keeps them.
    shop = ("https://shop.example", "https://www.shop.example")
    changed = store.set_origins(created.key_id, shop)
    assert changed is not None and changed.allowed_origins == shop and changed.active
    assert store.active_digests() == {created.key_id: (digest(key), "shop-eu", shop)}
    assert store.set_origins("00000000", shop) is None
    revoked = store.revoke(created.key_id)
    assert revoked is not None and not revoked.active
    assert revoked.allowed_origins == shop
    assert store.active_digests() == {}
    assert [(k.key_id, k.active) for k in store.all_keys()] == [(created.key_id, False)]
    assert store.revoke("00000000") is None


async def test_registry_checks_keys_and_honours_its_cache_period(
    clickhouse: Client, database: str
) -> None:
    store = WriteKeyStore(clickhouse, database)
    clock = Clock()
    registry = WriteKeyRegistry(store, {"dev-key": DEV_SOURCE}, cache_seconds=5, clock=clock)
    assert await registry.source_of("dev-key") == DEV_SOURCE
    created, key = store.create("app")
    registry.invalidate()  # as the replica that created it does
    assert await registry.source_of(key) == created.key_id
    assert await registry.source_of(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert await registry.source_of(None) is None
    assert await registry.source_of("wk_zzzz") is None

    store.revoke(created.key_id)  # through another replica: this one's cache still has it
    assert await registry.source_of(key) == created.key_id
    clock.now += 5
    assert await registry.source_of(key) is None


def test_dead_letters_page_newest_first_and_collapse_repeats(
    clickhouse: Client, database: str
) -> None:
    log = DeadLetterLog(clickhouse, database)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    letters = [
        DeadLetter(f"id-{i}", start + timedelta(seconds=i // 2), "s", [{"rule": f"r{i}"}], "{}")
        for i in range(7)
    ]
    log.append(letters)
    log.append(letters[:3])  # at least once: the agent may insert a batch again
    assert log.count() == 7
    pages, before = [], None
    while True:
        page = log.page(3, before)
        pages.append([d.id for d in page])
        if len(page) < 3:
            break
        before = page[-1].cursor
    assert pages == [["id-6", "id-5", "id-4"], ["id-3", "id-2", "id-1"], ["id-0"]]
    with pytest.raises(ValueError):
        log.page(3, "yesterday")
    log.append([DeadLetter("other", start, "s2", [], "{}")])
    assert [d.id for d in log.page(10, source="s2")] == ["other"]
    assert [d.id for d in log.page(2, letters[5].cursor, source="s")] == ["id-4", "id-3"]


def test_foreign_and_worker_records_become_dead_letters_too(
    clickhouse: Client, database: str
) -> None:
    gateway = orjson.dumps(
        {"id": "g-1", "source": "abcd1234", "rejected_at": "2026-03-01T10:00:00+00:00",
         "reasons": [{"field": "userId"}], "payload": "{}"}
    )  # fmt: skip
    worker = orjson.dumps({"reasons": [{"field": "payload"}], "payload": "garbage"})
    records = [
        DeadLetterRecord(partition=0, offset=4, value=gateway, timestamp=1.7e9),
        DeadLetterRecord(partition=1, offset=9, value=worker, timestamp=1.7e9),
        DeadLetterRecord(partition=1, offset=10, value=b"\xff not json", timestamp=1.7e9),
    ]
    first = to_dead_letter(records[0], "e1")
    assert (first.id, first.source, first.rejected_at.hour) == ("g-1", "abcd1234", 10)
    assert to_dead_letter(records[1], "e1").id == "e1#1:9"
    foreign = to_dead_letter(records[2], "e1")
    assert foreign.reasons[0]["rule"] == "dead_letter" and "not json" in foreign.payload
    log = DeadLetterLog(clickhouse, database)
    assert store_dead_letters(log, records, "e1") == 3
    store_dead_letters(log, records, "e1")  # re-consumed after a restart
    assert log.count() == 3
