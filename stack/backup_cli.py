"""``journeys backup``, ``journeys restore`` and ``journeys verify --backup``.

The backup is taken by the running node (it holds the chdb folder and the
worker), so ``backup`` is an HTTP command with the admin key; ``restore`` and
``verify --backup`` work on files, with the node stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import httpx

from stack import http_commands
from stack.settings import Settings

# A backup of a large data folder takes a while; the node answers when it is done.
BACKUP_TIMEOUT_S = 3600.0


def add_commands(commands: Any) -> None:
    """Register ``backup`` and ``restore`` on the CLI's subparsers."""
    backup = commands.add_parser(
        "backup", help="a consistent backup of the running node's stores into DEST"
    )
    backup.add_argument("dest", type=Path, help="a folder; the backup is a new folder in it")
    backup.add_argument(
        "--also",
        type=Path,
        action="append",
        default=[],
        help="another folder that gets the same backup (repeat for more)",
    )
    backup.add_argument(
        "--keep", type=int, default=None, help="afterwards keep only this many backups in each"
    )
    http_commands.connection(backup, "admin")
    into = commands.add_parser(
        "restore", help="restore a backup into an empty data folder (node stopped)"
    )
    into.add_argument(
        "src", type=Path, help="a backup folder, or a destination (its newest backup)"
    )


COMMANDS = ("backup", "restore")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one of :data:`COMMANDS`; returns the exit code."""
    if args.command == "backup":
        return _backup(args, settings)
    return _restore(args.src, settings)


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    url = args.url or settings.api_base_url
    admin_key = http_commands.key(args, settings, "admin")
    # Absolute here: the node may run in another folder.
    body: dict[str, Any] = {
        "destinations": [str(path.absolute()) for path in [args.dest, *args.also]]
    }
    if args.keep is not None:
        body["keep"] = args.keep
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/v1/admin/backups",
            json=body,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=BACKUP_TIMEOUT_S,
        )
    except httpx.HTTPError as error:
        print(f"cannot reach the node at {url}: {error}", file=sys.stderr)
        return 2
    if http_commands.failed(response):
        return 1
    taken = response.json()
    positions = ", ".join(f"{p}: {n}" for p, n in taken["positions"].items())
    print(
        f"backup {taken['name']}: {taken['files']} files, {taken['bytes']:,} bytes, "
        f"worker held {taken['held_s']:.2f} s, at offsets {{{positions}}}"
    )
    for path in taken["paths"]:
        print(f"  {path}")
    return 0


def _restore(source: Path, settings: Settings) -> int:
    # Here, not at the top: the other commands need no ClickHouse client.
    from stack.backup import BackupError, restore

    try:
        report = restore(source, settings)
    except BackupError as error:
        print(f"restore refused: {error}", file=sys.stderr)
        return 1
    print(
        f"restored {report.backup.name} ({report.files} files, taken "
        f"{report.manifest['created_at']}) into {settings.data_dir} in {report.seconds:.1f} s; "
        "`journeys up` resumes the worker from the backup's offsets and replays its journal"
    )
    return 0


def run_verify_backup(source: Path) -> int:
    """``journeys verify --backup SRC``: the backup's files against its manifest."""
    from stack.backup import BackupError, verify_backup

    try:
        backup, manifest, problems = verify_backup(source)
    except BackupError as error:
        print(error, file=sys.stderr)
        return 1
    for problem in problems:
        print(problem)
    if problems:
        print(f"{backup}: {len(problems)} differences from its manifest", file=sys.stderr)
        return 1
    print(f"{backup}: {len(manifest['files'])} files match the manifest")
    return 0
