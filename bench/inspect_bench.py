"""`inspect --deep --hash` throughput vs a plain sequential read, and its peak RSS vs size.

    python bench/inspect_bench.py [--workdir DIR] [--keep] [--size-gb 6.5]

Synthesizes k2-slice checkpoints (real Kimi K2 hidden sizes and vocabulary: at least 5.2 GB,
4.7 GB of it the embedding and lm_head) into a work directory, then:
  1. throughput of inspect --deep --hash as a fraction of Python reading the same files in
     16 MiB chunks (target >= 0.8), with the page cache warm and cold (evicted per run);
  2. peak RSS of `k2trt inspect` in a child process at two checkpoint sizes, per mode
     (headers only, --deep, --hash, --deep --hash): target <= 1 GB and no growth with size.
Every timed run waits (up to --patience s) for the 1-minute load to fall under the core count and
records it; contenders alternate order each round; min and median are printed with the load.
Figures are ratios from one run on one machine; nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from _util import (
    MB,
    Runs,
    child_rss,
    dir_bytes,
    doc_summary,
    evict,
    machine_note,
    page_cache_bytes,
    print_table,
    sequential_read,
    sha256_rate,
    timed,
    wait_for_quiet,
)
from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.checkpoint.manifest import checkpoint_files
from k2trt.checkpoint.reader import Checkpoint
from k2trt.models.config import ModelConfig
from k2trt.models.params import count_params
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions, synth_config
from k2trt.synth.tokenizer import write_tokenizer

THROUGHPUT_TARGET = 0.8
RSS_TARGET = 1000 * MB
RSS_GROWTH_LIMIT = 1.10  # large/small peak; above this RSS "grows with size"
MODES = {
    "headers": [],
    "--deep": ["--deep"],
    "--hash": ["--hash"],
    "--deep --hash": ["--deep", "--hash"],
}
CLI = "import sys; from k2trt.cli.app import main; sys.exit(main())"


@dataclass
class Ckpt:
    path: Path
    layers: int
    made: bool

    @property
    def files(self) -> list[Path]:
        return checkpoint_files(self.path)

    @property
    def bytes(self) -> int:
        return dir_bytes(self.files)

    @property
    def scale_tensors(self) -> int:
        with Checkpoint.open(self.path) as opened:
            return sum(name.endswith("_scale_inv") for name in opened.infos)


def predicted_bytes(layers: int, experts: int) -> int:
    """Bytes of tensors a k2-slice of this shape holds, from the config alone."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tokenizer(Path(tmp))
    opts = SynthOptions(preset="k2-slice", layers=layers, experts=experts)
    raw = synth_config(opts, tok.vocab_size, tok.bos_token_id, tok.eos_token_id)
    return count_params(ModelConfig.from_dict(raw)).total_bytes


def layers_for(size_gb: float, experts: int) -> int:
    """Fewest layers whose k2-slice reaches `size_gb` decimal GB."""
    layers = 1
    while predicted_bytes(layers, experts) < size_gb * 1e9:
        layers += 1
    return layers


def ensure_checkpoint(workdir: Path, layers: int, experts: int) -> Ckpt:
    """Reuse a complete checkpoint in `workdir` or synthesize it."""
    path = workdir / f"k2-slice-L{layers}-E{experts}"
    if (path / "model.safetensors.index.json").is_file():
        print(f"reusing    {path}")
        return Ckpt(path, layers, made=False)
    check_space(workdir, predicted_bytes(layers, experts))
    opts = SynthOptions(preset="k2-slice", layers=layers, experts=experts)
    seconds, result = timed(lambda: write_checkpoint(path, opts, force=True))
    print(f"synthesized {path}: {result.bytes / MB:,.0f} MB in {seconds:.0f} s")
    return Ckpt(path, layers, made=True)


def check_space(workdir: Path, need: int) -> None:
    free = shutil.disk_usage(workdir).free
    if free < need + 2 * 10**9:
        sys.exit(f"not enough space in {workdir}: {free / MB:,.0f} MB free, need ~{need / MB:,.0f}")


def inspect_once(ckpt: Ckpt, manifest: Path, deep: bool = True, hash_: bool = True) -> None:
    opts = InspectOptions(deep=deep, hash=hash_, manifest=manifest, workers=2)
    report = inspect_checkpoint(ckpt.path, opts)
    if not report.ok:
        sys.exit(f"inspect found problems in a synthetic checkpoint: {report.findings[:3]}")


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MB / seconds:,.0f}"


def verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


RUNS = {  # label -> (deep, hash) of the in-process inspect; None is the baseline read
    "sequential read": None,
    "inspect --deep --hash": (True, True),
    "  --hash alone": (False, True),
    "  headers + --deep alone": (True, False),
}


def run_once(ckpt: Ckpt, manifest: Path, flags: tuple[bool, bool] | None) -> None:
    if flags is None:
        sequential_read(ckpt.files)
    else:
        inspect_once(ckpt, manifest, *flags)


PATIENCE = [60.0]  # --patience: seconds to wait for a quiet machine before each timed run


def timings(ckpt: Ckpt, manifest: Path, runs: int, cold: bool) -> dict[str, Runs]:
    """Seconds per run of each RUNS entry, interleaved round by round (order reversed every
    other round) so drift and a neighbour's page cache hit all alike; load checked per run."""
    files = ckpt.files
    times = {label: Runs() for label in RUNS}
    sequential_read(files)  # warm the cache (cold runs evict it again)
    for i in range(runs):
        for label in list(RUNS) if i % 2 == 0 else list(RUNS)[::-1]:
            if cold:
                evict(files)
            times[label].loads.append(wait_for_quiet(patience=PATIENCE[0]))
            times[label].times.append(timed(partial(run_once, ckpt, manifest, RUNS[label]))[0])
    return times


def timing_rows(cache: str, total: int, times: dict[str, Runs]) -> list[list[str]]:
    base = times["sequential read"]
    rows = []
    for label, flags in RUNS.items():
        r = times[label]
        row = [f"{label} ({cache})", f"{r.min:.2f} / {r.median:.2f}"]
        row.append(r.rate(total) if flags != (True, False) else "")
        if label == "inspect --deep --hash":
            ratio = base.min / r.min
            target = f">= {THROUGHPUT_TARGET}"
            row += [f"{ratio:.2f} ({base.median / r.median:.2f})", target]
            row.append(verdict(ratio >= THROUGHPUT_TARGET))
        else:
            row += ["", "", ""]
        rows.append([*row, r.load_note()])
    return rows


def throughput(ckpt: Ckpt, manifest: Path, runs: int) -> tuple[list[tuple[str, float]], float]:
    """Warm and cold timings: (cache, read s / inspect s) for each, and the warm read seconds."""
    total, rows, ratios, bases = ckpt.bytes, [], [], []
    for cache in ("warm", "cold"):
        times = timings(ckpt, manifest, runs, cold=cache == "cold")
        rows += timing_rows(cache, total, times)
        bases.append(times["sequential read"].min)
        ratios.append((cache, bases[-1] / times["inspect --deep --hash"].min))
    headers = ["run", "s min / median", "MB/s best / median", "vs read (median)", "target"]
    headers += ["met", "load"]
    print_table(f"throughput over {total / MB:,.0f} MB ({runs} interleaved runs)", headers, rows)
    if bases[1] < 1.1 * bases[0]:
        print("note: evicting did not slow the baseline read: 'cold' is not really cold here")
    return ratios, bases[0]


def eviction_check(ckpt: Ckpt) -> None:
    """Evicting must empty the cache of the files, or 'cold' figures mean nothing."""
    files = ckpt.files
    sequential_read(files)
    before = page_cache_bytes()
    evict(files)
    dropped = before - page_cache_bytes()
    print(
        f"eviction check: page cache fell by {dropped / MB:,.0f} MB "
        f"after evicting {ckpt.bytes / MB:,.0f} MB of checkpoint files"
    )


def deep_read_amplification(ckpt: Ckpt, manifest: Path) -> None:
    """How much a cold --deep scan pulls into the page cache, against the scale bytes it needs."""
    with Checkpoint.open(ckpt.path) as opened:
        scale_bytes = sum(i.nbytes for n, i in opened.infos.items() if n.endswith("_scale_inv"))
    evict(ckpt.files)
    before = page_cache_bytes()
    inspect_once(ckpt, manifest, deep=True, hash_=False)
    pulled = page_cache_bytes() - before
    print(
        f"cold --deep scan: {ckpt.scale_tensors} scale tensors, "
        f"{scale_bytes / MB:.2f} MB of scales; "
        f"page cache grew {pulled / MB:,.0f} MB"
    )


def rss_runs(small: Ckpt, large: Ckpt, manifest: Path) -> dict[tuple[str, int], int]:
    """Peak RSS of `k2trt inspect` per mode at both sizes, keyed by (mode, layers)."""
    rows, peaks = [], {}
    for mode, flags in MODES.items():
        row = [mode]
        for ckpt in (small, large):
            # Same cache state for every run: touched mmap pages count toward RSS, and how many
            # depends on the page cache's folio sizes, which depend on how the pages came in.
            evict(ckpt.files)
            sequential_read(ckpt.files)
            wait_for_quiet(patience=PATIENCE[0])
            argv = [sys.executable, "-c", CLI, "inspect", str(ckpt.path), "--quiet", *flags]
            rc, seconds, peak = child_rss([*argv, "--manifest", str(manifest)])
            if rc:
                sys.exit(f"k2trt inspect exited {rc} on {ckpt.path}")
            peaks[mode, ckpt.layers] = peak
            row += [f"{seconds:.1f}", f"{peak / MB:,.0f}"]
        row.append(f"{peaks[mode, large.layers] / peaks[mode, small.layers]:.2f}")
        rows.append(row)
    s, lg = f"{small.bytes / MB:,.0f} MB", f"{large.bytes / MB:,.0f} MB"
    headers = ["mode (k2trt inspect, child)", f"s @{s}", f"RSS MB @{s}"]
    headers += [f"s @{lg}", f"RSS MB @{lg}", "RSS ratio"]
    title = "peak RSS (child ru_maxrss; files evicted, then read sequentially, before each)"
    print_table(title, headers, rows)
    growth_notes(small, large, peaks)
    return peaks


def growth_notes(small: Ckpt, large: Ckpt, peaks: dict[tuple[str, int], int]) -> None:
    """Name each mode whose peak grows with size, per added scale tensor and per added GB."""
    extra_scales = large.scale_tensors - small.scale_tensors
    extra_gb = (large.bytes - small.bytes) / 1e9
    for mode in MODES:
        grown = peaks[mode, large.layers] - peaks[mode, small.layers]
        if peaks[mode, large.layers] > RSS_GROWTH_LIMIT * peaks[mode, small.layers]:
            print(
                f"note: {mode} peak RSS grows with size: +{grown / MB:.1f} MB for "
                f"+{extra_gb:.2f} GB of checkpoint and +{extra_scales} scale tensors "
                f"({grown / max(extra_scales, 1) / 1024:.0f} KiB per scale tensor)"
            )


def summary(ratios: list[tuple[str, float]], small: int, large: int, ceiling: float) -> None:
    """The targets: throughput ratios, and the --deep --hash peaks at the two sizes."""
    growth = large / small
    rows = [
        [f"throughput vs read ({c})", f"{r:.2f}", f">= {THROUGHPUT_TARGET}", verdict(r >= 0.8)]
        for c, r in ratios
    ]
    rows.append(["  warm ceiling: sha256 on 2 threads / read", f"{ceiling:.2f}", "", ""])
    rows += [
        [
            "peak RSS, --deep --hash, larger (MB)",
            f"{large / MB:,.0f}",
            "<= 1,000",
            verdict(large <= RSS_TARGET),
        ],
        [
            "peak RSS growth, --deep --hash",
            f"{growth:.2f}",
            f"<= {RSS_GROWTH_LIMIT}",
            verdict(growth <= RSS_GROWTH_LIMIT),
        ],
    ]
    print_table("targets", ["figure", "value", "target", "met"], rows)


def context() -> float:
    """Prints hashlib's sha256 rates; returns the 2-thread MB/s (the warm-case bound)."""
    one, two = sha256_rate(1), sha256_rate(2)
    print(f"sha256 (hashlib, 256 MB buffer): {one:,.0f} MB/s on 1 thread, {two:,.0f} MB/s on 2")
    return two


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc_summary(__doc__))
    p.add_argument("--workdir", type=Path, help="reuse checkpoints here (created if absent)")
    p.add_argument("--keep", action="store_true", help="keep what this run synthesized")
    p.add_argument("--size-gb", type=float, default=6.5, help="throughput checkpoint size (GB)")
    p.add_argument("--small-layers", type=int, default=1, help="layers of the smaller RSS ckpt")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--runs", type=int, default=3, help="runs per figure (min and median shown)")
    p.add_argument("--patience", type=float, default=60.0, help="max wait for a quiet machine")
    return p.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path, made: list[Path]) -> None:
    PATIENCE[0] = args.patience
    print(f"machine: {machine_note()}")
    layers = layers_for(args.size_gb, args.experts)
    large = ensure_checkpoint(workdir, layers, args.experts)
    small = ensure_checkpoint(workdir, args.small_layers, args.experts)
    made += [c.path for c in (large, small) if c.made]
    manifest = workdir / "bench-manifest.json"
    made.append(manifest)
    sha_two_threads = context()
    eviction_check(large)
    deep_read_amplification(large, manifest)
    ratios, warm_read = throughput(large, manifest, args.runs)
    peaks = rss_runs(small, large, manifest)
    full = "--deep --hash"
    ceiling = sha_two_threads / (large.bytes / MB / warm_read)
    summary(ratios, peaks[full, small.layers], peaks[full, large.layers], ceiling)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="k2trt-bench-"))
    own_dir = args.workdir is None or not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        run(args, workdir, made)
    finally:
        if args.keep:
            print(f"\nkept {workdir}")
        elif own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for path in made:
                remove(path)


if __name__ == "__main__":
    main()
