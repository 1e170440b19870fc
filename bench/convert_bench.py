"""`k2trt convert` against a durable `cp -r`, FP8 -> BF16 against memcpy, peak RSS vs size.

Like for like: every copy baseline is durable (`cp -r` then `sync -f`, as convert syncs its
output once), and convert runs that hash in user space are set against a baseline that hashes
too. Every contender runs `--runs` times, interleaved (ABBA) with the 1-minute load checked just
before each run; min and median are printed with the load range. Before each run the previous
outputs are removed, dirty pages written back (`sync -f`) and the source read once (warm cache),
so one contender never inherits another's writeback or freshly freed page cache.

The full Kimi K2 times printed last are EXTRAPOLATED from the warm-cache rates measured here.
Never asserts timings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from _util import (
    MB,
    Runs,
    child_rss,
    doc_summary,
    evict,
    interleaved,
    machine_note,
    print_table,
    sequential_read,
    settle,
    wait_for_quiet,
)
from inspect_bench import Ckpt, ensure_checkpoint
from k2trt.checkpoint.fp8 import iter_dequantized, quantize_blocks
from k2trt.checkpoint.manifest import MANIFEST_NAME
from k2trt.models.config import ModelConfig
from k2trt.models.kimi_k2 import kimi_k2_config
from k2trt.models.params import count_params

K2TRT = [sys.executable, "-m", "k2trt.cli.app"]
COPY_TARGET, LINK_TARGET, DEQUANT_TARGET = 0.7, 2.0, 0.2
VOCAB_TENSOR = 163_840 * 7168 * 2  # one BF16 embedding or lm_head: 2.35 GB
COPY_HEADERS = ["run", "s min / median", "MB/s best / median", "vs baseline best / median"]
COPY_HEADERS += ["target", "load"]
PATIENCE = [60.0]  # seconds to wait for a quiet machine before each run (--patience)


def k2trt(*args: str) -> None:
    subprocess.run([*K2TRT, "-q", *args], check=True)


def without_manifest(ckpt: Ckpt, work: Path) -> Path:
    """A twin of the source made of hard links, minus its manifest (no disk used)."""
    twin = work / f"{ckpt.path.name}-no-manifest"
    shutil.rmtree(twin, ignore_errors=True)
    twin.mkdir()
    for path in ckpt.path.iterdir():
        if path.is_file() and path.name != MANIFEST_NAME:
            os.link(path, twin / path.name)
    return twin


def hash_all(paths: list[Path], threads: int = 2) -> None:
    """sha256 of every file, `threads` at a time (what a manifest costs in user space)."""

    def one(path: Path) -> None:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(16 << 20):
                digest.update(chunk)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))


def copy_contenders(ckpt: Ckpt, bare: Path, work: Path) -> dict[str, Callable[[], object]]:
    cp_out, conv = work / "cp-out", work / "conv-out"

    def cp_sync() -> None:
        subprocess.run(["cp", "-r", str(ckpt.path), str(cp_out)], check=True)
        settle(cp_out)

    def cp_sync_hash() -> None:
        cp_sync()
        hash_all([p for p in cp_out.iterdir() if p.is_file()])

    def convert(src: Path, *flags: str) -> Callable[[], None]:
        return lambda: k2trt("convert", str(src), str(conv), *flags)

    return {
        "cp -r + sync": cp_sync,
        "cp -r + sync + sha256 every file": cp_sync_hash,
        "convert --mode copy (source manifest)": convert(ckpt.path, "--mode", "copy"),
        "convert --mode copy (no manifest)": convert(bare, "--mode", "copy"),
        "convert (default: link; source manifest)": convert(ckpt.path),
        "convert (default: link; no manifest)": convert(bare),
        "convert --drop-extra (rewrite every shard)": convert(ckpt.path, "--drop-extra"),
    }


# contender -> (baseline it is compared with, target ratio or None)
COPY_BASELINE = {
    "convert --mode copy (source manifest)": ("cp -r + sync", COPY_TARGET),
    "convert --mode copy (no manifest)": ("cp -r + sync + sha256 every file", COPY_TARGET),
    "convert (default: link; source manifest)": ("cp -r + sync", LINK_TARGET),
    "convert (default: link; no manifest)": ("cp -r + sync + sha256 every file", None),
    "convert --drop-extra (rewrite every shard)": ("cp -r + sync + sha256 every file", None),
}


def copy_figures(ckpt: Ckpt, work: Path, runs: int) -> tuple[list[list[str]], dict[str, Runs]]:
    """Durable copies against convert's modes, interleaved; warm source, settled writeback."""
    k2trt("inspect", "--hash", str(ckpt.path))  # the source manifest (size + mtime pinned)
    bare = without_manifest(ckpt, work)
    outs = [work / "cp-out", work / "conv-out", work / ".conv-out.partial"]

    def before() -> None:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)
        settle(work)
        sequential_read(ckpt.files)

    results = interleaved(copy_contenders(ckpt, bare, work), runs, before, PATIENCE[0])
    before()
    shutil.rmtree(bare, ignore_errors=True)
    rows = []
    for name, r in results.items():
        base_name, target = COPY_BASELINE.get(name, (None, None))
        ratio = results[base_name].min / r.min if base_name else None
        verdict, versus = "", ""
        if ratio is not None:
            versus = f"{ratio:.2f} / {results[str(base_name)].median / r.median:.2f}"
        if ratio is not None and target is not None:
            verdict = f"{'ok' if ratio >= target else 'NO'} (>= {target}, best)"
        rows.append(
            [
                name,
                f"{r.min:.2f} / {r.median:.2f}",
                r.rate(ckpt.bytes),
                versus,
                verdict,
                r.load_note(),
            ]
        )
    return rows, results


def dequant_figures(runs: int) -> list[list[str]]:
    """Streaming FP8->BF16 of Kimi's largest dense shape against a memcpy of its output."""
    q, s = quantize_blocks(torch.randn(18432, 7168, generator=torch.Generator().manual_seed(0)))
    out_bytes = q.numel() * 2
    src = np.empty(out_bytes, dtype=np.uint8)
    dst = np.empty_like(src)
    src.fill(1)
    dst.fill(0)  # touch pages first: memcpy is measured, not page faults

    def dequant() -> None:
        for _ in iter_dequantized(q, s, dtype=torch.bfloat16):
            pass

    contenders = {"memcpy": lambda: np.copyto(dst, src), "dequant": dequant}
    res = interleaved(contenders, runs, patience=PATIENCE[0])
    mem, deq = res["memcpy"], res["dequant"]
    ratio, ratio_med = mem.min / deq.min, mem.median / deq.median
    return [
        ["memcpy (numpy)", mem.rate(out_bytes), "", "1.00", "", mem.load_note()],
        [
            "dequantize fp8 -> bf16",
            deq.rate(out_bytes),
            f"{q.numel() / deq.min / 1e9:.2f}",
            f"{ratio:.2f} (median {ratio_med:.2f})",
            f"{'ok' if ratio >= DEQUANT_TARGET else 'NO'} (>= {DEQUANT_TARGET})",
            deq.load_note(),
        ],
    ]


RSS_RUNS = (
    ("convert (link)", ()),
    ("convert --drop-extra", ("--drop-extra",)),
    ("convert --dtype bf16", ("--dtype", "bf16")),
)


def rss_figures(small: Ckpt, large: Ckpt, work: Path) -> list[list[str]]:
    rows = []
    for label, flags in RSS_RUNS:
        peaks, loads = [], []
        for ckpt in (small, large):
            out = work / "rss-out"
            shutil.rmtree(out, ignore_errors=True)
            settle(work)
            evict(ckpt.files)
            loads.append(wait_for_quiet(patience=PATIENCE[0]))
            code, _, rss = child_rss([*K2TRT, "-q", "convert", str(ckpt.path), str(out), *flags])
            if code:
                sys.exit(f"convert failed ({code}) on {ckpt.path}")
            peaks.append(rss)
        shutil.rmtree(work / "rss-out", ignore_errors=True)
        rows.append(
            [
                label,
                f"{small.bytes / MB:,.0f}",
                f"{peaks[0] / MB:,.0f}",
                f"{large.bytes / MB:,.0f}",
                f"{peaks[1] / MB:,.0f}",
                f"{peaks[1] / peaks[0]:.2f}",
                f"load {min(loads):.1f}-{max(loads):.1f}",
            ]
        )
    return rows


def bf16_figures(ckpt: Ckpt, work: Path, runs: int) -> tuple[list[list[str]], float]:
    out = work / "bf16-out"

    def before() -> None:
        shutil.rmtree(out, ignore_errors=True)
        settle(work)
        sequential_read(ckpt.files)

    res = interleaved(
        {"bf16": lambda: k2trt("convert", str(ckpt.path), str(out), "--dtype", "bf16")},
        runs,
        before,
        PATIENCE[0],
    )["bf16"]
    before()
    params = count_params(ModelConfig.from_dict(_config(ckpt))).weights
    rate = params / res.min
    rows = [
        [
            "convert --dtype bf16 (whole checkpoint)",
            f"{res.min:.1f} / {res.median:.1f}",
            f"{rate / 1e9:.2f}",
            res.load_note(),
        ]
    ]
    return rows, rate


def _config(ckpt: Ckpt) -> dict[str, object]:
    return dict(json.loads((ckpt.path / "config.json").read_text()))


def estimates(copy_rate: float, link_s: float, bf16_params_per_s: float) -> list[list[str]]:
    """Full Kimi K2, EXTRAPOLATED from this run's warm-cache rates (not measured)."""
    counts = count_params(ModelConfig.from_dict(kimi_k2_config()))
    return [
        [
            "convert --mode copy, 958.5 GiB (extrapolated)",
            f"{counts.total_bytes / copy_rate / 3600:.1f} h",
        ],
        [
            "convert default (link, manifest), 61 shards (extrapolated)",
            f"~{link_s:.0f} s + metadata",
        ],
        [
            "convert --dtype bf16, 1.03T params (extrapolated)",
            f"{counts.weights / bf16_params_per_s / 3600:.1f} h",
        ],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--workdir", type=Path, help="reuse checkpoints here")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument(
        "--patience", type=float, default=60.0, help="seconds to wait for load < cores per run"
    )
    args = parser.parse_args(argv)
    PATIENCE[0] = args.patience
    work = args.workdir or Path(tempfile.mkdtemp(prefix="k2trt-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine_note()}")
    large = ensure_checkpoint(work, 4, 8)  # the k2-slice preset: real vocabulary, 6.7 GB
    copy_rows, copy_runs = copy_figures(large, work, args.runs)
    print_table(
        f"copy over {large.bytes / MB:,.0f} MB, warm page cache, {args.runs} interleaved runs",
        COPY_HEADERS,
        copy_rows,
    )
    print_table(
        "FP8 -> BF16, one 18432 x 7168 tensor (Kimi's dense MLP shape)",
        ["path", "MB/s out best / median", "Gparam/s", "vs memcpy", "target", "load"],
        dequant_figures(max(args.runs, 5)),
    )
    bf16_rate = 0.0
    if not args.skip_bf16:
        rows, bf16_rate = bf16_figures(large, work, max(1, args.runs - 1))
        print_table(
            "whole-checkpoint dequantization", ["run", "s min / median", "Gparam/s", "load"], rows
        )
    if not args.skip_memory:
        small = ensure_checkpoint(work, 1, 8)
        print_table(
            f"peak RSS (child ru_maxrss, page cache evicted first); one vocabulary tensor is "
            f"{VOCAB_TENSOR / MB:,.0f} MB",
            ["command", "MB @small", "RSS MB", "MB @large", "RSS MB", "ratio", "load"],
            rss_figures(small, large, work),
        )
    copy_rate = large.bytes / copy_runs["convert --mode copy (source manifest)"].min
    link_s = copy_runs["convert (default: link; source manifest)"].min
    if bf16_rate:
        print_table(
            "full Kimi K2 on this machine: EXTRAPOLATED from the warm-cache rates above",
            ["job", "time"],
            estimates(copy_rate, link_s, bf16_rate),
        )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
