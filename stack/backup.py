"""Backups of the embedded stack that restore: taken by the running node, checked, restored.

chdb opens a data folder in one process only, so the node takes the backup
(``POST /v1/admin/backups``, which ``journeys backup`` calls). It holds the
journey worker between two batches while it copies the stores, so the event
store's tracked positions, the ClickHouse projections and the journal describe
one moment; the positions go into ``manifest.json`` with a size and a sha256
per file. ``journeys restore`` checks those before it writes anything, into an
empty folder only.

A backup folder::

    manifest.json
    data/events.sqlite      every SQLite file under the data folder (online backup API)
    data/keys/...           the key store's files, whatever they are
    data/dev-keys.json      the development keys, when there are any
    clickhouse/             BACKUP DATABASE ... TO File(...) of the node's database
    journal/...             the node's ingest journal: what was accepted, not yet processed
    gateways/N/journal/...  the same of each ingest gateway's journal (`journeys up`)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from api.dependencies import BackupInProgress
from projections.clickhouse import connect, database_name
from stack.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "journeys-backup-"
MANIFEST = "manifest.json"
FORMAT = 1
_SQLITE_HEADER = b"SQLite format 3\x00"
# SQLite's side files: their content is in what the online backup API reads.
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# Plain files copied as they are, besides every SQLite file.
_KEY_FOLDER = "keys"
_DEV_KEYS = "dev-keys.json"


class BackupError(ValueError):
    """A backup or restore that cannot be done, and why (a sentence naming what)."""


class BackupBusy(BackupInProgress):
    """Another backup is being taken by this node."""


@dataclass(frozen=True)
class BackupResult:
    """A backup taken: where its copies are, and its manifest."""

    name: str
    paths: list[Path]
    manifest: dict[str, Any]


# --- files --------------------------------------------------------------------------


def _secure(root: Path) -> None:
    """Folders 0700, files 0600: a backup holds what storefronts send about people."""
    root.chmod(0o700)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            (Path(folder) / name).chmod(0o700)
        for name in files:
            (Path(folder) / name).chmod(0o600)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> Iterator[Path]:
    """Every file under ``root`` but the manifest, in a stable order."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).as_posix() != MANIFEST:
            yield path


def is_sqlite(path: Path) -> bool:
    """A SQLite database file (by its header), not one of its side files."""
    if path.name.endswith(_SQLITE_SIDE_FILES) or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    except OSError:
        return False


def sqlite_files(data_dir: Path, skip: list[Path]) -> list[Path]:
    """Every SQLite file under ``data_dir`` outside the ``skip`` folders (ClickHouse, journal)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(data_dir):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not any(here / d == s for s in skip))
        found.extend(here / name for name in sorted(files) if is_sqlite(here / name))
    return found


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (its online backup API, in one step).

    One step reads the whole database in one read transaction: a writer in
    another thread or process (the trigger consumer) is neither stopped nor seen
    half-way.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    reading = sqlite3.connect(source, timeout=30)
    try:
        writing = sqlite3.connect(target)
        try:
            reading.backup(writing)
        finally:
            writing.close()
    finally:
        reading.close()


def _literal(path: Path) -> str:
    """``path`` as a ClickHouse string literal."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def apply_patches(clickhouse: Client, database: str) -> list[str]:
    """Fold every table's patch parts into its data parts; the tables that had some.

    BACKUP leaves patch parts out (chdb 4.4, measured: a lightweight-update DELETE's
    rows came back after RESTORE), and the event log deletes a merged anonymous
    key's rows with one (projections/event_log.py), so they are applied first.
    """
    tables = [
        str(row[0])
        for row in clickhouse.query(
            "SELECT DISTINCT table FROM system.parts WHERE database = {db:String} "
            "AND active AND startsWith(name, 'patch-')",
            parameters={"db": database},
        ).result_rows
    ]
    for table in tables:
        clickhouse.command(
            f"ALTER TABLE {database}.{database_name(table)} APPLY PATCHES",
            settings={"mutations_sync": 2},
        )
    return tables


def _copy_tree(source: Path, target: Path) -> None:
    """Copy the files under ``source``; one deleted meanwhile (a trimmed segment) is skipped."""
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(path, destination)


# --- taking a backup ------------------------------------------------------------------


def embedded_only(settings: Settings) -> None:
    """Refuse the shapes whose stores this command does not copy, saying what to use."""
    if settings.event_store != "sqlite" or not settings.uses_embedded_clickhouse:
        raise BackupError(
            "journeys backup copies the embedded stack (SQLite event store, chdb); with "
            "PostgreSQL use pg_dump --format=custom (pg_restore), with a ClickHouse server "
            "its own BACKUP DATABASE ... TO Disk(...)/S3(...)"
        )


def _destinations(paths: list[Path]) -> list[Path]:
    checked: list[Path] = []
    for index, path in enumerate(paths):
        if not path.is_absolute():
            raise BackupError(f"destinations[{index}]: {path}: must be an absolute path")
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise BackupError(
                f"destinations[{index}]: {path}: cannot create ({error.strerror})"
            ) from None
        if not os.access(path, os.W_OK):
            raise BackupError(f"destinations[{index}]: {path}: not writable")
        if path.resolve() in (p.resolve() for p in checked):
            raise BackupError(f"destinations[{index}]: {path}: named twice")
        checked.append(path)
    return checked


def take_backup(
    settings: Settings,
    clickhouse: Client,
    positions: Callable[[], dict[int, int]],
    hold: Callable[[], AbstractContextManager[None]],
    destinations: list[Path],
    keep: int | None = None,
) -> BackupResult:
    """Back the node's stores up into each of ``destinations`` (a folder per backup).

    ``hold`` keeps the journey worker between two batches while the stores are
    copied; ``positions`` reads its tracked position per partition then.
    ``keep``: afterwards, keep only that many backups in each destination.
    """
    embedded_only(settings)
    targets = _destinations(destinations)
    if not targets:
        raise BackupError("destinations: at least one is required")
    started = datetime.now(UTC)
    name = PREFIX + started.strftime("%Y%m%dT%H%M%S.%fZ")
    staging = targets[0] / f"{name}.partial"
    staging.mkdir(mode=0o700)
    try:
        data_dir = settings.data_dir
        skip = [settings.chdb_path, settings.journal_path]
        database = database_name(settings.clickhouse_database)
        began = time.monotonic()
        with hold():
            held_from = time.monotonic()
            at = positions()
            # In the hold: no batch deletes (writes a patch) while the patches are applied.
            apply_patches(clickhouse, database)
            for path in sqlite_files(data_dir, skip):
                copy_sqlite(path, staging / "data" / path.relative_to(data_dir))
            clickhouse.command(
                f"BACKUP DATABASE {database} TO File({_literal(staging / 'clickhouse')})"
            )
            keys = data_dir / _KEY_FOLDER
            if keys.is_dir():
                for path in sorted(keys.rglob("*")):
                    # SQLite files there were copied above, through the backup API.
                    plain = not path.name.endswith(_SQLITE_SIDE_FILES) and not is_sqlite(path)
                    if path.is_file() and plain:
                        target = staging / "data" / path.relative_to(data_dir)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, target)
            if (data_dir / _DEV_KEYS).is_file():
                shutil.copyfile(data_dir / _DEV_KEYS, staging / "data" / _DEV_KEYS)
            # Inside the hold: its positions cannot move, so no segment holding an
            # unprocessed record is trimmed before it is copied.
            if settings.journal_path.is_dir():
                _copy_tree(settings.journal_path, staging / "journal")
            # The gateways' journals too: what they accepted and the worker has not
            # processed is only there. (A record being appended meanwhile is either
            # whole or a torn tail, which a journal's replay drops: its 200 had not left.)
            for index, journal in settings.gateway_journal_paths().items():
                _copy_tree(journal, staging / "gateways" / str(index) / "journal")
            held_s = time.monotonic() - held_from
        waited_s = held_from - began
        files = {
            path.relative_to(staging).as_posix(): {
                "size": path.stat().st_size,
                "sha256": _sha256(path),
            }
            for path in _files(staging)
        }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "name": name,
            "created_at": started.isoformat(),
            "kafka_epoch": settings.kafka_epoch,
            "events_topic": settings.events_topic,
            "positions": {str(p): n for p, n in sorted(at.items())},
            "clickhouse_database": database,
            "held_s": round(held_s, 3),
            "waited_for_batch_s": round(waited_s, 3),
            "bytes": sum(f["size"] for f in files.values()),
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _secure(staging)
        first = targets[0] / name
        staging.rename(first)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    paths = [first]
    for target in targets[1:]:
        paths.append(_copy_backup(first, target / name, manifest))
    if keep is not None:
        for target in targets:
            prune(target, keep)
    return BackupResult(name=name, paths=paths, manifest=manifest)


def _copy_backup(source: Path, target: Path, manifest: dict[str, Any]) -> Path:
    """A second copy of a backup, checked against the manifest before it is named."""
    staging = target.with_name(target.name + ".partial")
    try:
        shutil.copytree(source, staging)
        problems = check_files(staging, manifest)
        if problems:
            raise BackupError(f"the copy in {target.parent} differs: {'; '.join(problems)}")
        _secure(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def backups_in(folder: Path) -> list[Path]:
    """The complete backups in ``folder``, oldest first (names sort by time)."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.name.startswith(PREFIX)
        and not path.name.endswith(".partial")
        and (path / MANIFEST).is_file()
    )


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups in ``folder``; the deleted ones."""
    removed = backups_in(folder)[:-keep] if keep > 0 else []
    for path in removed:
        shutil.rmtree(path)
    return removed


# --- checking and restoring -----------------------------------------------------------


def find_backup(source: Path) -> Path:
    """``source`` itself when it is a backup, else the newest backup in it."""
    if (source / MANIFEST).is_file():
        return source
    found = backups_in(source)
    if not found:
        raise BackupError(f"{source}: no backup here (no {MANIFEST}, no {PREFIX}* folder)")
    return found[-1]


def read_manifest(backup: Path) -> dict[str, Any]:
    """The backup's manifest; BackupError when it is missing or not one."""
    try:
        manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{backup}: no {MANIFEST}") from None
    except (OSError, ValueError) as error:
        raise BackupError(f"{backup / MANIFEST}: not readable ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{backup / MANIFEST}: not a format-{FORMAT} backup manifest")
    return manifest


def check_files(backup: Path, manifest: dict[str, Any]) -> list[str]:
    """Every difference between the files of ``backup`` and its manifest, as sentences."""
    problems = []
    listed: dict[str, dict[str, Any]] = manifest.get("files", {})
    present = {path.relative_to(backup).as_posix(): path for path in _files(backup)}
    for name, expected in sorted(listed.items()):
        path = present.get(name)
        if path is None:
            problems.append(f"{name}: missing")
        elif path.stat().st_size != expected["size"]:
            problems.append(
                f"{name}: {path.stat().st_size} bytes, manifest says {expected['size']}"
            )
        elif _sha256(path) != expected["sha256"]:
            problems.append(f"{name}: sha256 does not match the manifest")
    problems.extend(f"{name}: not in the manifest" for name in sorted(set(present) - set(listed)))
    return problems


def verify_backup(source: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """The backup at ``source`` (or the newest in it), its manifest and its differences."""
    backup = find_backup(source)
    manifest = read_manifest(backup)
    return backup, manifest, check_files(backup, manifest)


def _not_empty(folder: Path) -> bool:
    return folder.exists() and (not folder.is_dir() or any(folder.iterdir()))


@dataclass(frozen=True)
class RestoreReport:
    """What a restore put where."""

    backup: Path
    manifest: dict[str, Any]
    files: int
    seconds: float


def restore(source: Path, settings: Settings) -> RestoreReport:
    """Restore the backup at ``source`` into ``settings``' (empty) data folder.

    Nothing is written unless every file matches the manifest and the folder is
    empty. The worker then resumes from the manifest's positions, and the node
    produces the journal's unprocessed records into its new broker.
    """
    embedded_only(settings)
    began = time.monotonic()
    backup, manifest, problems = verify_backup(source)
    if problems:
        raise BackupError(
            f"{backup}: the files do not match the manifest, nothing restored: "
            + "; ".join(problems)
        )
    data_dir = settings.data_dir
    for folder in (data_dir, settings.journal_path):
        if _not_empty(folder):
            raise BackupError(
                f"{folder} is not empty: a backup is restored into an empty data folder "
                "only (move it aside, or set JOURNEYS_DATA_DIR to a new one)"
            )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (backup / "data").is_dir():
        _copy_tree(backup / "data", data_dir)
    if (backup / "journal").is_dir():
        _copy_tree(backup / "journal", settings.journal_path)
    for journal in sorted((backup / "gateways").glob("*/journal")):
        _copy_tree(journal, settings.gateway_journal_path(int(journal.parent.name)))
    client = connect("", settings.chdb_path)
    try:
        stored = database_name(str(manifest["clickhouse_database"]))
        database = database_name(settings.clickhouse_database)
        client.command(
            f"RESTORE DATABASE {stored} AS {database} FROM File({_literal(backup / 'clickhouse')})"
        )
    finally:
        client.close()
    _secure(data_dir)
    if settings.journal_path.is_dir():
        _secure(settings.journal_path)
    return RestoreReport(
        backup=backup,
        manifest=manifest,
        files=len(manifest["files"]),
        seconds=time.monotonic() - began,
    )


# --- the node's side ------------------------------------------------------------------


class NodeBackups:
    """The node's backups: one at a time, on request (the admin API) or on a schedule."""

    def __init__(
        self,
        settings: Settings,
        clickhouse: Client,
        positions: Callable[[], dict[int, int]],
        hold: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self.settings = settings
        self._clickhouse = clickhouse
        self._positions = positions
        self._hold = hold
        self._taking = threading.Lock()

    def take(self, destinations: list[str], keep: int | None = None) -> dict[str, Any]:
        """Take a backup into each destination (blocking: call from a thread)."""
        if not self._taking.acquire(blocking=False):
            raise BackupBusy("a backup is being taken; try again when it is done")
        try:
            result = take_backup(
                self.settings,
                self._clickhouse,
                self._positions,
                self._hold,
                [Path(d) for d in destinations],
                keep,
            )
        finally:
            self._taking.release()
        manifest = result.manifest
        return {
            "name": result.name,
            "paths": [str(p) for p in result.paths],
            "created_at": manifest["created_at"],
            "positions": manifest["positions"],
            "held_s": manifest["held_s"],
            "files": len(manifest["files"]),
            "bytes": manifest["bytes"],
        }

    async def scheduled(self) -> None:
        """Every ``backup_every_h``: a backup into each ``backup_dirs``, ``backup_keep`` kept."""
        settings = self.settings
        while True:
            await asyncio.sleep(settings.backup_every_h * 3600)
            try:
                taken = await asyncio.to_thread(
                    self.take, settings.backup_dir_list, settings.backup_keep
                )
                log.info("scheduled backup %s taken into %s", taken["name"], taken["paths"])
            except Exception:
                log.exception("the scheduled backup failed")
