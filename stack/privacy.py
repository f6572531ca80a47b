"""Personal data: the master key, the vault, erasure across every store, export.

The master key comes from ``JOURNEYS_MASTER_KEY`` (base64, 32 bytes) or the file
``JOURNEYS_MASTER_KEY_FILE``, else ``data/keys/master.key`` (generated on first
start). It wraps every customer's data key: lose it and no personal field of
any customer opens again; the analytics (which never need the values) still work.

Every erasure is appended to ``data/keys/erasures.jsonl`` (who, when, which ids:
no data) and the ledger is re-applied at every node start, so a store restored
from before an erasure and replayed does not bring the customer back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from journeys.application import JourneyApplication
from projections.customer_stages import StagesInFlight
from projections.privacy.cipher import decode_master_key, encode_key, new_key
from projections.privacy.fields import PersonalFields
from projections.privacy.keystore import KeyStore
from projections.privacy.vault import Vault
from projections.profiles import ProfileView
from projections.segment_store import SegmentStore
from stack.settings import Settings
from streams.outreach.store import OutreachStore

log = logging.getLogger(__name__)

# Every ClickHouse table with a row per customer (or per customer's event).
CUSTOMER_TABLES = (
    "events",
    "stage_changes",
    "customer_stages",
    "customer_orders",
    "customer_profiles",
    "customer_timelines",
    "customer_type_times",
    "segment_changes",
)


class MasterKeyMissing(Exception):
    """No master key is configured and the key store already holds keys."""


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, 0600 (a new file, renamed over the old)."""
    _private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def ensure_master_key(settings: Settings) -> Path | None:
    """The master key file, generated when none is configured and none exists yet;
    None when the key comes from ``JOURNEYS_MASTER_KEY``.

    Refuses (MasterKeyMissing) to generate one beside a key store that has keys:
    those were wrapped by a key that is lost or misplaced, and a new one would
    silently open none of them.
    """
    if settings.master_key:
        return None
    path = settings.master_key_path
    if path.exists():
        return path
    if settings.master_key_file is None and _store_has_keys(settings):
        raise MasterKeyMissing(
            f"{path} is missing but the key store already holds data keys: restore the "
            "master key file (or set JOURNEYS_MASTER_KEY); without it no personal field opens"
        )
    if settings.master_key_file is not None:
        raise MasterKeyMissing(f"JOURNEYS_MASTER_KEY_FILE={path} does not exist")
    write_private(path, encode_key(new_key()) + "\n")
    log.warning("generated a master key in %s: back it up, losing it loses personal data", path)
    return path


def _store_has_keys(settings: Settings) -> bool:
    if settings.event_store == "postgres":
        return False  # the key store's own check (KeyStoreLocked) refuses a wrong key
    import sqlite3

    path = settings.key_store_path
    if not path.exists():
        return False
    with sqlite3.connect(path) as connection:
        try:
            return bool(connection.execute("SELECT count(*) FROM privacy_data_keys").fetchone()[0])
        except sqlite3.OperationalError:
            return False


def master_key(settings: Settings) -> bytes:
    """The master key, from the environment or its file (generated if need be)."""
    if settings.master_key:
        return decode_master_key(settings.master_key)
    path = ensure_master_key(settings)
    assert path is not None
    return decode_master_key(path.read_text())


def open_key_store(settings: Settings, master: bytes) -> KeyStore:
    """The key store of the configured event store: SQLite beside it, or PostgreSQL tables."""
    if settings.event_store == "postgres":
        return KeyStore(master, postgres_dsn=settings.postgres_dsn)
    _private_dir(settings.key_store_path.parent)
    return KeyStore(master, sqlite_path=settings.key_store_path)


def open_vault(settings: Settings) -> Vault:
    """The vault over the key store, with the configured personal fields."""
    keys = open_key_store(settings, master_key(settings))
    return Vault(keys, PersonalFields.from_setting(settings.personal_fields))


def rotate_master_key(settings: Settings) -> int:
    """Re-wrap every data key under a new master key; the number of keys re-wrapped.

    The old key file is kept as ``master.key.old`` until every key is re-wrapped,
    then removed; the new one is written atomically. With ``JOURNEYS_MASTER_KEY``
    the new key is printed for the operator to set instead.
    """
    old = master_key(settings)
    store = open_key_store(settings, old)
    fresh = new_key()
    try:
        if settings.master_key:
            count = store.rewrap(fresh)
            print(f"set JOURNEYS_MASTER_KEY={encode_key(fresh)} before the next start")
            return count
        path = settings.master_key_path
        backup = path.with_name(path.name + ".old")
        write_private(backup, encode_key(old) + "\n")
        # The new key is on disk before any data key depends on it.
        pending = path.with_name(path.name + ".new")
        write_private(pending, encode_key(fresh) + "\n")
        count = store.rewrap(fresh)
        os.replace(pending, path)
        backup.unlink()
        return count
    finally:
        store.close()


class Privacy:
    """Erasure and export over every store holding a customer (the node's side of it)."""

    def __init__(
        self,
        settings: Settings,
        vault: Vault,
        clickhouse: Client,
        database: str,
        outreach: OutreachStore,
        journeys: JourneyApplication | None = None,
        segments: SegmentStore | None = None,
        stages_in_flight: StagesInFlight | None = None,
    ) -> None:
        self.settings = settings
        self._stages_in_flight = stages_in_flight
        self._segments = segments
        self.vault = vault
        self._client = clickhouse
        self._db = database
        self._outreach = outreach
        self._journeys = journeys

    # --- reads ---------------------------------------------------------------------

    def is_erased(self, customer_id: str) -> bool:
        """True for an erased id."""
        return self.vault.is_suppressed(customer_id)

    def open_tree(self, value: Any) -> Any:
        """``value`` with its sealed fields opened (for readers allowed to see them)."""
        return self.vault.open_tree(value)

    def identities(self, customer_id: str) -> list[str]:
        """The id and every id merged with it (anonymous devices, aliases); [] if unknown."""
        params = {"id": customer_id}
        rows = self._client.query(
            f"SELECT customer_key FROM {self._db}.customer_stages FINAL "
            "WHERE customer_key = {id:String} OR merged_into = {id:String} "
            f"UNION DISTINCT SELECT anonymous_id FROM {self._db}.events "
            "WHERE user_id = {id:String} AND anonymous_id != '' "
            f"UNION DISTINCT SELECT user_id FROM {self._db}.events "
            "WHERE anonymous_id = {id:String} AND user_id != '' "
            f"UNION DISTINCT SELECT customer_key FROM {self._db}.events "
            "WHERE customer_key = {id:String}",
            parameters=params,
        ).result_rows
        found = {row[0] for row in rows if row[0]}
        if not found and self._journeys is not None and self._journeys.journey(customer_id):
            found = {customer_id}
        if not found:
            return []
        return [customer_id, *sorted(found - {customer_id})]

    def traits(self, customer_ids: Sequence[str]) -> dict[str, Any]:
        """The latest value of each identify trait of the customer, opened."""
        rows = self._client.query(
            f"SELECT properties FROM {self._db}.events "
            "WHERE customer_key IN {ids:Array(String)} AND call_type = 'identify' "
            "ORDER BY timestamp",
            parameters={"ids": list(customer_ids)},
        ).result_rows
        traits: dict[str, Any] = {}
        for (properties,) in rows:
            for name, text in properties.items():
                traits[name] = self.vault.open_value(orjson.loads(text))
        return traits

    def export(self, customer_id: str) -> dict[str, Any] | None:
        """Everything held about the customer, personal fields opened; None if unknown."""
        if self.is_erased(customer_id):
            return None
        ids = self.identities(customer_id)
        if not ids:
            return None
        profile = ProfileView(self._client, self._db).get(customer_id)
        events = self._rows(
            "SELECT event_id, customer_key, user_id, anonymous_id, call_type, event_name, "
            "timestamp, properties FROM {db}.events FINAL "
            "WHERE customer_key IN {ids:Array(String)} ORDER BY timestamp",
            ids,
        )
        for event in events:
            event["properties"] = {
                name: self.vault.open_value(orjson.loads(text))
                for name, text in event["properties"].items()
            }
        timeline: list[dict[str, Any]] = []
        if self._journeys is not None:
            journey = self._journeys.journey(customer_id)
            if journey is not None:
                timeline = self._journeys.timeline(journey, datetime.now(UTC))
        triggers = [
            self.vault.open_tree(t)
            for key in ids
            for t in self._outreach.recent_triggers(limit=10_000, customer_key=key)
        ]
        timers = [t for key in ids for t in self._outreach.flow_waits(key, limit=10_000)]
        # Every flow state and decision (fact) kept, opened: the flows' "why" as stored.
        flows = {
            "states": [
                self.vault.open_tree(s) for key in ids for s in self._outreach.flow_states(key)
            ],
            "facts": [
                self.vault.open_tree(fact)
                for key in ids
                for fact in self._outreach.flow_facts(key, limit=None)
            ],
        }
        # The segments' states (memberships, computed traits' folds, lists, identify
        # traits) and every recorded entry and exit.
        states = self._segments.states(ids) if self._segments is not None else {}
        segments = {
            "states": [
                {"customer_key": key, "state": self.vault.open_tree(state.to_dict())}
                for key, state in sorted(states.items())
            ],
            "changes": self._rows(
                "SELECT segment, customer_key, at, entered, event_id, backfill "
                "FROM {db}.segment_changes FINAL "
                "WHERE customer_key IN {ids:Array(String)} ORDER BY at, segment",
                ids,
            ),
        }
        return _plain(
            {
                "customer_id": customer_id,
                "identities": ids,
                "exported_at": datetime.now(UTC),
                "traits": self.traits(ids),
                "profile": profile,
                "stages": self._rows(
                    "SELECT customer_key, stage, previous_stage, reason, event_id, at "
                    "FROM {db}.stage_changes WHERE customer_key IN {ids:Array(String)} ORDER BY at",
                    ids,
                ),
                "orders": self._rows(
                    "SELECT * FROM {db}.customer_orders FINAL "
                    "WHERE customer_key IN {ids:Array(String)}",
                    ids,
                ),
                "events": events,
                "timeline": timeline,
                "segments": segments,
                "outreach": {"triggers": triggers, "timers": timers, "flows": flows},
            }
        )

    def _rows(self, sql: str, ids: Sequence[str]) -> list[dict[str, Any]]:
        result = self._client.query(sql.replace("{db}", self._db), parameters={"ids": list(ids)})
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    # --- erasure -------------------------------------------------------------------

    def erase(self, customer_id: str, actor: str) -> dict[str, Any] | None:
        """Erase the customer and every identity merged with them; None if unknown.

        Keys first (from that moment nothing of theirs opens, anywhere), then
        the rows, then the ledger entry.
        """
        if self.is_erased(customer_id):
            return None
        ids = self.identities(customer_id)
        if not ids:
            return None
        erased_at = time.time()
        destroyed = self.vault.erase(ids, erased_at)
        if self._stages_in_flight is not None:
            self._stages_in_flight.forget(ids)
        deleted = self._delete_rows(ids)
        entry = {
            "at": datetime.fromtimestamp(erased_at, UTC).isoformat(),
            "actor": actor,
            "customer_id": customer_id,
            "ids": ids,
        }
        self._append_ledger(entry)
        log.info("erased customer %s (%d ids) by %s", customer_id, len(ids), actor)
        return {**entry, "keys_destroyed": destroyed, "rows_deleted": deleted}

    def _delete_rows(self, ids: Sequence[str]) -> dict[str, int]:
        """Delete the ids' rows from ClickHouse and the outreach store; counts by table."""
        wheres = {table: "customer_key IN {ids:Array(String)}" for table in CUSTOMER_TABLES}
        wheres["events"] += (
            " OR user_id IN {ids:Array(String)} OR anonymous_id IN {ids:Array(String)}"
        )
        wheres["dead_letters"] = (
            "JSONExtractString(payload, 'userId') IN {ids:Array(String)} "
            "OR JSONExtractString(payload, 'anonymousId') IN {ids:Array(String)}"
        )
        deleted = {table: self._delete_where(table, where, ids) for table, where in wheres.items()}
        deleted.update(self._outreach.forget_customers(ids))
        if self._segments is not None:
            deleted.update(self._segments.forget_customers(ids))
        return deleted

    def _delete_where(self, table: str, where: str, ids: Sequence[str]) -> int:
        """Delete ``table``'s rows matching ``where`` (over the ``ids`` parameter); how many."""
        params = {"ids": list(ids)}
        count = int(
            self._client.query(
                f"SELECT count() FROM {self._db}.{table} WHERE {where}", parameters=params
            ).result_rows[0][0]
        )
        if count:
            # A mutation, waited for: the parts are rewritten without the rows.
            self._client.command(
                f"ALTER TABLE {self._db}.{table} DELETE WHERE {where} SETTINGS mutations_sync = 2",
                parameters=params,
            )
        return count

    def _append_ledger(self, entry: dict[str, Any]) -> None:
        path = self.settings.erasure_ledger_path
        _private_dir(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, orjson.dumps(entry) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def ledger(self) -> list[dict[str, Any]]:
        """Every erasure recorded, oldest first."""
        path = self.settings.erasure_ledger_path
        if not path.exists():
            return []
        entries = []
        for line in path.read_bytes().splitlines():
            if line.strip():
                entries.append(orjson.loads(line))
        return entries

    def reapply_ledger(self) -> int:
        """Erase again every id the ledger names (a restored store may hold them); ids."""
        ids = list(dict.fromkeys(i for entry in self.ledger() for i in entry["ids"]))
        if not ids:
            return 0
        self.vault.erase(ids, time.time())
        deleted = self._delete_rows(ids)
        brought_back = {table: n for table, n in deleted.items() if n}
        if brought_back:
            log.warning("re-applied %d erased ids; rows deleted again: %s", len(ids), brought_back)
        return len(ids)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data (datetimes as ISO text)."""
    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))
