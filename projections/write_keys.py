"""Write keys per source, kept in ClickHouse as sha256 digests, never in the clear.

A key reads ``wk_<key id>_<secret>``. The key id is shown to users (lists,
dead letters, the envelope's ``source``); the whole key is shown once, when it
is created. ClickHouse serves both shapes (chdb in the node, a server behind
many API replicas), so keys need no store of their own; see
docs/architecture.md for why.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from projections.clickhouse import as_utc

_KEY = re.compile(r"^wk_([0-9a-f]{8})_[A-Za-z0-9_-]{16,}$")
_COLUMNS = [
    "key_id",
    "name",
    "secret_sha256",
    "created_at",
    "revoked_at",
    "allowed_origins",
    "version",
]


@dataclass(frozen=True, slots=True)
class WriteKey:
    """A source's write key, without its secret."""

    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    # Browser origins (``https://shop.example``) that may send with this key;
    # empty: the gateway's default (settings).
    allowed_origins: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


def key_id_of(key: str) -> str | None:
    """The key id of a presented key, or None when it is not shaped like one of ours."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def digest(key: str) -> str:
    """What is stored of a key: the hex sha256 of all of it.

    The secret has 144 random bits, so a fast hash suffices: there is nothing
    to guess, unlike a password.
    """
    return hashlib.sha256(key.encode()).hexdigest()


class WriteKeyStore:
    """Creates, lists and revokes write keys in ``<database>.write_keys``."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._table = f"{database}.write_keys"

    def create(self, name: str, origins: tuple[str, ...] = ()) -> tuple[WriteKey, str]:
        """A new active key for source ``name``; returns it and the full key (shown once)."""
        key_id = secrets.token_hex(4)
        key = f"wk_{key_id}_{secrets.token_urlsafe(18)}"
        created = WriteKey(
            key_id=key_id, name=name, created_at=_now(), allowed_origins=tuple(origins)
        )
        self._client.insert(
            self._table,
            [[key_id, name, digest(key), created.created_at, None, list(origins), 1]],
            column_names=_COLUMNS,
        )
        return created, key

    def set_origins(self, key_id: str, origins: tuple[str, ...]) -> WriteKey | None:
        """Replace the browser origins of a key (a newer row version); None when unknown."""
        rows = self._rows("WHERE key_id = {key_id:String}", {"key_id": key_id})
        if not rows:
            return None
        found, secret_sha256, version = rows[0]
        changed = replace(found, allowed_origins=tuple(origins))
        self._write(changed, secret_sha256, version + 1)
        return changed

    def revoke(self, key_id: str) -> WriteKey | None:
        """Revoke a key (a newer row version); None when there is no such key."""
        rows = self._rows("WHERE key_id = {key_id:String}", {"key_id": key_id})
        if not rows:
            return None
        found, secret_sha256, version = rows[0]
        if not found.active:
            return found
        revoked = replace(found, revoked_at=_now())
        self._write(revoked, secret_sha256, version + 1)
        return revoked

    def _write(self, key: WriteKey, secret_sha256: str, version: int) -> None:
        self._client.insert(
            self._table,
            [
                [
                    key.key_id,
                    key.name,
                    secret_sha256,
                    key.created_at,
                    key.revoked_at,
                    list(key.allowed_origins),
                    version,
                ]
            ],
            column_names=_COLUMNS,
        )

    def all_keys(self) -> list[WriteKey]:
        """Every key, newest first, revoked ones included."""
        return [key for key, _, _ in self._rows("", {})]

    def active_digests(self) -> dict[str, tuple[str, str, tuple[str, ...]]]:
        """Key id → (digest, name, origins) of every active key: what the gateway checks."""
        return {
            key.key_id: (secret_sha256, key.name, key.allowed_origins)
            for key, secret_sha256, _ in self._rows("", {})
            if key.active
        }

    def _rows(self, where: str, parameters: dict[str, str]) -> list[tuple[WriteKey, str, int]]:
        result = self._client.query(
            f"SELECT {', '.join(_COLUMNS)} FROM {self._table} FINAL {where} "
            "ORDER BY created_at DESC, key_id",
            parameters=parameters,
        )
        rows = []
        for (
            key_id,
            name,
            secret_sha256,
            created_at,
            revoked_at,
            origins,
            version,
        ) in result.result_rows:
            key = WriteKey(
                key_id=key_id,
                name=name,
                created_at=as_utc(created_at),
                revoked_at=as_utc(revoked_at) if revoked_at is not None else None,
                allowed_origins=tuple(origins),
            )
            rows.append((key, secret_sha256, int(version)))
        return rows


def _now() -> datetime:
    # Millisecond precision, as the column keeps it: what we return equals what we read.
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
