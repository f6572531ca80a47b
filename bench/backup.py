"""Benchmark: backup and restore of a data folder of a few hundred thousand events.

    .venv/bin/python -m bench.backup [--events 300000] [--senders 4]

`journeys up` in a temporary folder is fed ``events`` storefront calls (100 per
/v1/batch, re-sent until 200) and left to catch up. Then `journeys backup` is
taken twice: idle, and while a load of a tenth as many events again is being
sent. Each prints the backup's size per part, how long the journey worker was
held (the manifest's ``held_s``), how long the command took, and for the one
under load the longest a sender waited for a 200 meanwhile. Finally the stack is
stopped and the backup restored into an empty folder (`journeys restore`, then
`journeys verify` on it), both timed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.stack_load import Senders, caught_up, journeys_up, stack_env
from stack.backup import backups_in
from stack.processes import free_port
from stack.settings import Settings

MIB = 1024 * 1024


def _cli(settings: Settings, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"journeys {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - began, done


def _folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MIB


def _parts(backup: Path) -> dict[str, float]:
    manifest = json.loads((backup / "manifest.json").read_text())
    parts: dict[str, float] = defaultdict(float)
    for name, entry in manifest["files"].items():
        head = name.split("/")[0]
        part = name if head == "data" and name.endswith(".sqlite") else head
        parts[part] += entry["size"] / MIB
    return dict(parts)


def _report(label: str, seconds: float, dest: Path) -> None:
    backup = backups_in(dest)[-1]
    manifest = json.loads((backup / "manifest.json").read_text())
    parts = ", ".join(f"{name} {mib:,.1f}" for name, mib in sorted(_parts(backup).items()))
    print(
        f"{label}: {manifest['bytes'] / MIB:,.1f} MiB ({parts}); worker held "
        f"{manifest['held_s']:.2f} s (waited {manifest['waited_for_batch_s']:.2f} s for the "
        f"batch in progress); `journeys backup` took {seconds:.1f} s; offsets "
        f"{sum(manifest['positions'].values()):,}",
        flush=True,
    )


def _verify(settings: Settings) -> str:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stack.cli", "verify"],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    lines = done.stdout.strip().splitlines() or [""]
    # The summary, and the first differences if there are any.
    shown = "\n    ".join([lines[-1], *[line[:200] for line in lines[:-1][:5]]])
    return f"exit {done.returncode} in {time.perf_counter() - began:.1f} s: {shown}"


def _start_and_stop(folder: Path, port: int) -> float:
    """`journeys up` in ``folder`` until healthy with no backlog (its journal replayed)."""
    began = time.perf_counter()
    with journeys_up(folder, stack_env(port), timeout_s=600, ready=caught_up):
        return time.perf_counter() - began


def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    port = free_port()
    (folder / "source").mkdir()
    source = Settings(data_dir=folder / "source" / "data", api_port=port)
    dest = folder / "backups"
    with journeys_up(folder / "source", stack_env(port, JOURNEYS_INGEST_RATE_PER_S="0")) as stack:
        began = time.perf_counter()
        Senders(stack, args.events, args.senders, seed=3).start().join()
        while not caught_up(stack.base):
            time.sleep(1)
        print(
            f"{args.events:,} storefront calls acknowledged and processed in "
            f"{time.perf_counter() - began:,.0f} s; data folder "
            f"{_folder_mib(source.data_dir):,.1f} MiB",
            flush=True,
        )
        seconds, _ = _cli(source, "backup", str(dest))
        _report("idle", seconds, dest)
        load = Senders(stack, args.events // 10, args.senders, seed=5).start()
        time.sleep(2)
        seconds, _ = _cli(source, "backup", str(dest))
        _report("under load", seconds, dest)
        load.join()
        print(f"  the senders' longest wait for a 200 during that load: {load.longest:.2f} s")
    print(f"journeys verify on the source, stopped: {_verify(source)}")
    restored = Settings(data_dir=folder / "restored" / "data")
    seconds, _ = _cli(restored, "restore", str(dest))
    print(f"restore of the backup under load: {seconds:.1f} s (the command, start to end)")
    before = _verify(restored)
    print(f"journeys verify on the restored folder, before it starts: {before}")
    seconds = _start_and_stop(folder / "restored", port)
    print(f"journeys up on the restored folder: healthy and caught up in {seconds:.1f} s")
    print(f"journeys verify after it ran: {_verify(restored)}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
