"""Who may do what: users with roles, their sign-in sessions, and the audit log.

Kept in ``data/access.sqlite`` in the embedded shape, or in the event store's
PostgreSQL database where many API processes share it. Passwords are scrypt
hashes; a session is stored as the sha256 of its id, so a copy of the file
signs nobody in. The audit table refuses updates and deletes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from projections.sql_tables import SqlTables

USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD = 10
# scrypt at N=2^15, r=8 (32 MiB, ~50 ms here): OWASP's minimum for interactive sign-in.
_SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


class Role(IntEnum):
    """What a person or key may see and change; each role includes those below it."""

    viewer = 1  # aggregate analytics only
    analyst = 2  # plus customer-level (personal) data
    marketer = 3  # plus outreach rules, endpoints and flows
    admin = 4  # plus keys, users, erase, the audit log

    @classmethod
    def named(cls, name: str) -> Role:
        """The role called ``name``; ValueError naming the choices otherwise."""
        try:
            return cls[name]
        except KeyError:
            raise ValueError(f"role must be one of {', '.join(r.name for r in cls)}") from None


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in; never carries the password hash out of the store."""

    name: str
    role: Role
    disabled: bool
    created_at: str

    def summary(self) -> dict[str, Any]:
        """The user as the API and the CLI show them."""
        return {
            "name": self.name,
            "role": self.role.name,
            "disabled": self.disabled,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited act: who (and as what), did what to what, from where, with what outcome."""

    actor: str
    role: str
    action: str
    target: str
    source: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: str = ""
    seq: int = 0

    def summary(self) -> dict[str, Any]:
        """The entry as ``GET /v1/audit`` shows it."""
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target": self.target,
            "source": self.source,
            "outcome": self.outcome,
            "detail": self.detail,
        }


class UserExists(ValueError):
    """A user of that name exists already."""


class UnknownUser(KeyError):
    """No user of that name."""


_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS access_users (name TEXT PRIMARY KEY, role TEXT NOT NULL, "
    "password_hash TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS access_sessions (digest TEXT PRIMARY KEY, "
    "user_name TEXT NOT NULL, csrf TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS access_audit (seq {serial}, at TEXT NOT NULL, "
    "actor TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, "
    "source TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT NOT NULL)",
]
# Append-only: the database itself refuses to change or remove an entry.
_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER IF NOT EXISTS access_audit_no_update BEFORE UPDATE ON access_audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS access_audit_no_delete BEFORE DELETE ON access_audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
]
_POSTGRES_APPEND_ONLY = [
    "CREATE OR REPLACE FUNCTION access_audit_refuse() RETURNS trigger AS $$ BEGIN "
    "RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS access_audit_append_only ON access_audit",
    "CREATE TRIGGER access_audit_append_only BEFORE UPDATE OR DELETE ON access_audit "
    "FOR EACH ROW EXECUTE FUNCTION access_audit_refuse()",
]


def hash_password(password: str) -> str:
    """``scrypt$<log2 n>$<r>$<p>$<salt>$<hash>``, the salt random per password."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "$".join(["scrypt", "15", "8", "1", _b64(salt), _b64(digest)])


def password_matches(password: str, stored: str) -> bool:
    """True when ``password`` hashes to ``stored`` (constant-time comparison)."""
    try:
        kind, log_n, r, p, salt, expected = stored.split("$")
        if kind != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=2 ** int(log_n),
            r=int(r),
            p=int(p),
            maxmem=_SCRYPT["maxmem"],
            dklen=32,
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, base64.b64decode(expected))


@functools.cache
def _decoy() -> str:
    # Checked against when the user is unknown: a wrong name costs what a wrong password does.
    return hash_password(secrets.token_urlsafe(16))


class AccessStore:
    """Users, sessions and the audit log in SQLite or PostgreSQL."""

    def __init__(self, sqlite_path: Path | None = None, postgres_dsn: str = "") -> None:
        self._db = SqlTables(_SCHEMA, sqlite_path=sqlite_path, postgres_dsn=postgres_dsn)
        with self._db.transaction():
            for statement in _POSTGRES_APPEND_ONLY if self._db.postgres else _SQLITE_APPEND_ONLY:
                self._db.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    # --- users --------------------------------------------------------------------

    def add_user(self, name: str, role: Role, password: str) -> User:
        """A new enabled user; UserExists if the name is taken."""
        check_user_name(name)
        check_password(password)
        with self._db.transaction():
            if self._db.rows("SELECT 1 FROM access_users WHERE name = ?", [name]):
                raise UserExists(f"a user named {name!r} exists already")
            created = _now()
            self._db.execute(
                "INSERT INTO access_users (name, role, password_hash, disabled, created_at) "
                "VALUES (?, ?, ?, 0, ?)",
                [name, role.name, hash_password(password), created],
            )
        return User(name=name, role=role, disabled=False, created_at=created)

    def users(self) -> list[User]:
        """Every user, by name."""
        rows = self._db.rows(
            "SELECT name, role, disabled, created_at FROM access_users ORDER BY name"
        )
        return [_user(row) for row in rows]

    def user(self, name: str) -> User | None:
        """The user called ``name``, if any."""
        rows = self._db.rows(
            "SELECT name, role, disabled, created_at FROM access_users WHERE name = ?", [name]
        )
        return _user(rows[0]) if rows else None

    def change_user(
        self,
        name: str,
        role: Role | None = None,
        disabled: bool | None = None,
        password: str | None = None,
    ) -> User:
        """Change a user's role, state or password; UnknownUser if there is none.

        Disabling a user or changing their password ends their sessions.
        """
        if password is not None:
            check_password(password)
        with self._db.transaction():
            if self.user(name) is None:
                raise UnknownUser(name)
            if role is not None:
                self._db.execute(
                    "UPDATE access_users SET role = ? WHERE name = ?", [role.name, name]
                )
            if disabled is not None:
                self._db.execute(
                    "UPDATE access_users SET disabled = ? WHERE name = ?", [int(disabled), name]
                )
            if password is not None:
                self._db.execute(
                    "UPDATE access_users SET password_hash = ? WHERE name = ?",
                    [hash_password(password), name],
                )
            if disabled or password is not None:
                self._db.execute("DELETE FROM access_sessions WHERE user_name = ?", [name])
        changed = self.user(name)
        assert changed is not None
        return changed

    def signed_in(self, name: str, password: str) -> User | None:
        """The enabled user when name and password match; None otherwise, whichever was wrong."""
        rows = self._db.rows(
            "SELECT name, role, disabled, created_at, password_hash FROM access_users "
            "WHERE name = ?",
            [name],
        )
        stored = rows[0][4] if rows else _decoy()
        matches = password_matches(password, stored)
        if not rows or not matches:
            return None
        user = _user(rows[0][:4])
        return None if user.disabled else user

    # --- sessions -----------------------------------------------------------------

    def open_session(self, user: User, hours: float) -> tuple[str, str]:
        """A new session for ``user``: (session id, CSRF token); only the id's digest is kept."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        with self._db.transaction():
            # Expired sessions go as new ones come: no sweeper needed.
            self._db.execute("DELETE FROM access_sessions WHERE expires_at < ?", [time.time()])
            self._db.execute(
                "INSERT INTO access_sessions (digest, user_name, csrf, expires_at) "
                "VALUES (?, ?, ?, ?)",
                [_digest(session_id), user.name, csrf, time.time() + hours * 3600],
            )
        return session_id, csrf

    def session(self, session_id: str) -> tuple[User, str] | None:
        """The session's enabled user and its CSRF token, while it lasts."""
        rows = self._db.rows(
            "SELECT u.name, u.role, u.disabled, u.created_at, s.csrf FROM access_sessions s "
            "JOIN access_users u ON u.name = s.user_name WHERE s.digest = ? AND s.expires_at > ?",
            [_digest(session_id), time.time()],
        )
        if not rows:
            return None
        user = _user(rows[0][:4])
        return None if user.disabled else (user, rows[0][4])

    def close_session(self, session_id: str) -> None:
        """End a session (signing out)."""
        self._db.execute("DELETE FROM access_sessions WHERE digest = ?", [_digest(session_id)])

    # --- audit --------------------------------------------------------------------

    def record(self, entry: AuditEntry) -> None:
        """Append an entry to the audit log."""
        self._db.execute(
            "INSERT INTO access_audit (at, actor, role, action, target, source, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                entry.at or _now(),
                entry.actor,
                entry.role,
                entry.action,
                entry.target,
                entry.source,
                entry.outcome,
                json.dumps(entry.detail, sort_keys=True),
            ],
        )

    def audit(
        self, limit: int = 100, actor: str | None = None, action: str | None = None
    ) -> list[AuditEntry]:
        """The newest entries first, optionally of one actor or one action."""
        where, params = [], []
        if actor is not None:
            where.append("actor = ?")
            params.append(actor)
        if action is not None:
            where.append("action = ?")
            params.append(action)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = self._db.rows(
            "SELECT seq, at, actor, role, action, target, source, outcome, detail "
            f"FROM access_audit {clause}ORDER BY seq DESC LIMIT ?",
            [*params, limit],
        )
        return [
            AuditEntry(
                seq=int(seq),
                at=at,
                actor=actor_,
                role=role,
                action=action_,
                target=target,
                source=source,
                outcome=outcome,
                detail=json.loads(detail),
            )
            for seq, at, actor_, role, action_, target, source, outcome, detail in rows
        ]


def check_user_name(name: str) -> None:
    """ValueError naming the rule when ``name`` is not a valid user name."""
    if not USER_NAME.match(name):
        raise ValueError(
            "name must be 1-64 characters of a-z, 0-9, '.', '_', '@', '-', "
            "starting with a letter or digit"
        )


def check_password(password: str) -> None:
    """ValueError naming the rule when ``password`` is too short."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"password must be at least {MIN_PASSWORD} characters")


def _user(row: tuple[Any, ...]) -> User:
    name, role, disabled, created_at = row
    return User(name=name, role=Role[role], disabled=bool(disabled), created_at=created_at)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
