"""What the benchmarks share: the events data, generated deterministically, its data
source, and a py-spy wrapper. Imported by the scripts beside it (``import corpus``)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: The 4-column events shape of the issues' benchmarks.
DATASOURCE = """SCHEMA >
    `ts` DateTime `json:$.ts`,
    `user_id` UInt64 `json:$.user_id`,
    `event` LowCardinality(String) `json:$.event`,
    `value` Float64 `json:$.value`

ENGINE "MergeTree"
ENGINE_SORTING_KEY "event, ts"
"""

EVENTS = ["page_view", "click", "signup", "purchase", "scroll", "search", "logout"]

#: Events start here (2023-11-14 22:13:20 UTC), ten per second.
BASE_TS = 1_700_000_000


def event_lines(count: int, seed: int = 42, base_ts: int = BASE_TS) -> Iterator[bytes]:
    """``count`` NDJSON events, the same for the same seed."""
    rng = random.Random(seed)
    for i in range(count):
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(base_ts + i // 10))
        yield json.dumps({"ts": ts, "user_id": rng.randrange(1 << 40),
                          "event": EVENTS[rng.randrange(len(EVENTS))],
                          "value": round(rng.random() * 1000, 3)},
                         separators=(",", ":")).encode() + b"\n"


class Profiler:
    """``py-spy record`` on a pid (and its children) for a ``with`` block, or nothing
    when ``directory`` or ``pid`` is None."""

    def __init__(self, directory: Path | None, name: str, pid: int | None) -> None:
        self.directory, self.name, self.pid = directory, name, pid
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.directory is not None and self.pid is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._proc = subprocess.Popen(
                [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                 "record", "--pid", str(self.pid), "--subprocesses", "--rate", "100",
                 "--format", "raw", "--nonblocking",
                 "--output", str(self.directory / f"{self.name}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
