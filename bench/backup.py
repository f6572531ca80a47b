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
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import orjson

from bench.run import storefront_call_stream
from stack.backup import backups_in
from stack.processes import free_port
from stack.settings import Settings

BATCH = 100
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


class Load:
    """Senders of storefront calls, each request re-sent until its 200."""

    def __init__(self, base: str, key: str, events: int, senders: int, seed: int) -> None:
        self.base, self.key = base, key
        self.calls = storefront_call_stream(events, seed=seed)
        self.lock = threading.Lock()
        self.acked = 0
        self.longest = 0.0
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(senders)]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _next(self) -> bytes | None:
        with self.lock:
            chunk = list(itertools.islice(self.calls, BATCH))
        return orjson.dumps({"batch": chunk}) if chunk else None

    def _send(self) -> None:
        with httpx.Client(base_url=self.base, auth=(self.key, ""), timeout=60) as client:
            while (body := self._next()) is not None:
                began = time.monotonic()
                while True:
                    try:
                        answer = client.post(
                            "/v1/batch", content=body, headers={"content-type": "application/json"}
                        )
                        if answer.status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)
                with self.lock:
                    self.acked += body.count(b'"messageId"')
                    self.longest = max(self.longest, time.monotonic() - began)


def _caught_up(base: str) -> bool:
    try:
        components = httpx.get(f"{base}/health", timeout=10).json()["components"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return bool(components["backlog"]["lag_events"] == 0)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
    env["JOURNEYS_API_PORT"] = str(port)
    output = folder / "up.out"
    began = time.perf_counter()
    with open(output, "wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up"],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while not ("is up" in output.read_text(errors="replace") and _caught_up(base_of(port))):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journeys up did not come up:\n{output.read_text()}")
            time.sleep(0.5)
        return time.perf_counter() - began
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()


def base_of(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNEYS_")}
    env |= {"JOURNEYS_API_PORT": str(port), "JOURNEYS_INGEST_RATE_PER_S": "0"}
    (folder / "source").mkdir()
    output = folder / "up.out"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with open(output, "wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "up"],
            cwd=folder / "source",
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    source = Settings(data_dir=folder / "source" / "data", api_port=port)
    try:
        deadline = time.monotonic() + 180
        while "is up" not in output.read_text(errors="replace"):
            if up.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"journeys up did not come up:\n{output.read_text()}")
            time.sleep(0.3)
        found = re.search(r"write key\s+(\S+)", output.read_text(errors="replace"))
        assert found
        key = found.group(1)
        began = time.perf_counter()
        Load(base, key, args.events, args.senders, seed=3).start().join()
        while not _caught_up(base):
            time.sleep(1)
        print(
            f"{args.events:,} storefront calls acknowledged and processed in "
            f"{time.perf_counter() - began:,.0f} s; data folder "
            f"{_folder_mib(source.data_dir):,.1f} MiB",
            flush=True,
        )
        dest = folder / "backups"
        seconds, _ = _cli(source, "backup", str(dest))
        _report("idle", seconds, dest)
        load = Load(base, key, args.events // 10, args.senders, seed=5).start()
        time.sleep(2)
        seconds, _ = _cli(source, "backup", str(dest))
        _report("under load", seconds, dest)
        load.join()
        print(f"  the senders' longest wait for a 200 during that load: {load.longest:.2f} s")
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=180)
        except subprocess.TimeoutExpired:
            up.kill()
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
