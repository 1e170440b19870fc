"""Shared bench helpers: load checks, interleaved repeats (min/median), page cache control,
baseline reads, child RSS, tables. Stdlib only."""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
MB = 1_000_000  # decimal, as disk sizes and throughputs are quoted
READ_CHUNK = 16 << 20


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(
    runs: int, fn: Callable[[], object], before: Callable[[], object] | None = None
) -> float:
    """Fastest of `runs` calls, in seconds; `before()` runs untimed ahead of each call."""
    times = []
    for _ in range(runs):
        if before:
            before()
        times.append(timed(fn)[0])
    return min(times)


@dataclass
class Runs:
    """Seconds of repeated runs, and the 1-minute load average seen before each."""

    times: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def rate(self, nbytes: int) -> str:
        """'best / median' MB/s."""
        return f"{nbytes / MB / self.min:,.0f} / {nbytes / MB / self.median:,.0f}"

    def load_note(self) -> str:
        return f"load {min(self.loads):.1f}-{max(self.loads):.1f}" if self.loads else ""


def load_now() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def wait_for_quiet(limit: float | None = None, patience: float = 60.0) -> float:
    """Wait (up to `patience` s) until the 1-minute load falls under `limit` (default: the core
    count; the bench's own previous run keeps the average near 1 for a minute, so a lower limit
    only waits on itself); returns the load when the run starts, so a busy machine is reported,
    not hidden."""
    limit = float(os.cpu_count() or 1) if limit is None else limit
    deadline = time.monotonic() + patience
    while (load := load_now()) > limit and time.monotonic() < deadline:
        time.sleep(2.0)
    return load


def machine_note() -> str:
    """One line for a bench's header: cores, memory, load now."""
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return f"{os.cpu_count()} cores, {int(mem) / 1e6:.0f} GB RAM, 1-min load {load_now():.2f}"


def interleaved(
    contenders: dict[str, Callable[[], object]],
    runs: int,
    before: Callable[[], object] | None = None,
    patience: float = 60.0,
) -> dict[str, Runs]:
    """Run every contender `runs` times, alternating their order each round (ABBA...), with
    `before()` untimed ahead of each run and the load checked just before timing it; so a
    page cache freed or dirtied by one contender does not always fall on the same other one."""
    out = {name: Runs() for name in contenders}
    names = list(contenders)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            if before:
                before()
            out[name].loads.append(wait_for_quiet(patience=patience))
            out[name].times.append(timed(contenders[name])[0])
    return out


def settle(root: Path) -> None:
    """Write back dirty pages of `root`'s filesystem (syncfs), so a run does not pay for the
    writeback of the run before it (dirty-page throttling can cut write rates 10x)."""
    subprocess.run(["sync", "-f", str(root)], check=True)


def evict(paths: Sequence[Path]) -> None:
    """Drop the files' pages from the page cache (no root needed for clean pages)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped; make them clean first
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def page_cache_bytes() -> int:
    """The kernel's `Cached` figure (/proc/meminfo), to check that `evict` dropped pages."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return int(line.split()[1]) * 1024
    return 0


def sequential_read(paths: Sequence[Path], chunk: int = READ_CHUNK) -> int:
    """Read every file front to back in big chunks into one reused buffer; bytes read."""
    buf = bytearray(chunk)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


def sha256_rate(threads: int = 1, size: int = 256 << 20, runs: int = 3) -> float:
    """hashlib sha256 MB/s over an in-memory buffer, `threads` hashing at once; best of runs."""
    data = os.urandom(1 << 20) * (size >> 20)

    def one(_: int) -> None:
        hashlib.sha256(data).digest()

    with ThreadPoolExecutor(threads) as pool:
        seconds = best_of(runs, lambda: list(pool.map(one, range(threads))))
    return threads * size / MB / seconds


# A forked child starts with its parent's peak RSS (exec records the old address space's
# high-water mark), so a big bench process would inflate every child's ru_maxrss. Children are
# therefore started by this small launcher, which reports the child's own wait4 rusage.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def child_rss(argv: Sequence[str]) -> tuple[int, float, int]:
    """Run a command to completion: (exit code, wall seconds, its own peak RSS in bytes)."""
    launcher = [sys.executable, "-c", _LAUNCHER, *argv]
    seconds, done = timed(lambda: subprocess.run(launcher, capture_output=True, text=True))
    if done.returncode:
        raise RuntimeError(f"launcher failed: {done.stderr.strip()}")
    code, maxrss_kib = (int(x) for x in done.stdout.split())
    if code:
        print(done.stderr.strip())
    return code, seconds, maxrss_kib * 1024  # Linux reports KiB


def dir_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain fixed-width table: first column left-aligned, the rest right-aligned.

    Short rows are padded with empty cells.
    """
    rows = [[*r, *[""] * (len(headers) - len(r))] for r in rows]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def doc_summary(doc: str | None) -> str:
    """A script docstring's first paragraph as one line (for argparse's description)."""
    return " ".join((doc or "").split("\n\n")[0].split())
