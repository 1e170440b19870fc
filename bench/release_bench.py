"""`k2trt release build` against the same stages run one by one; re-runs; peak RSS vs size.

Prints, from one run:
1. on the `small` preset: the stages called one after another through the library (inspect
   --deep --hash, convert, verify single + pair, build, package) against one fresh
   `build_release` of the same spec without gates (target: overhead < 5%); then a re-run with
   unchanged inputs (`--force`: every stage checked by size + mtime, nothing re-read; target:
   seconds) and one with `--rehash` (every recorded output read again), for scale;
2. peak RSS of `k2trt release build` (a child process) on two k2-slice checkpoints of
   different sizes (target: flat).

Never asserts timings. `python bench/release_bench.py [--workdir DIR] [--size-gb 1.0,2.1]`
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from _util import MB, child_rss, doc_summary, print_table, timed
from inspect_bench import ensure_checkpoint, layers_for
from k2trt.build.bundle import build_bundle
from k2trt.build.spec import BuildSpec
from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.checkpoint.manifest import checkpoint_files
from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint
from k2trt.convert.verify import verify_checkpoint
from k2trt.release.pipeline import ReleaseOptions, build_release
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions
from k2trt.triton_repo.repository import package

K2TRT = [sys.executable, "-m", "k2trt.cli.app"]
BUILD = {"gpus": "H100x1", "context": 4096, "max_batch_size": 8}
EXPERTS = 8


def write_spec(root: Path, ckpt: Path, name: str = "release.yaml") -> Path:
    spec = {
        "name": "bench",
        "version": "1.0.0",
        "checkpoint": {"path": str(ckpt)},
        "build": BUILD,
        "gates": {"smoke": {"enabled": False}},
    }
    path = root / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def one_by_one(ckpt: Path, work: Path) -> float:
    """The release's stages as separate library calls; seconds."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    def stages() -> None:
        opts = InspectOptions(deep=True, hash=True, manifest=work / "source-manifest.json")
        inspect_checkpoint(ckpt, opts)
        convert_checkpoint(ckpt, work / "prepared", ConvertOptions())
        verify_checkpoint(work / "prepared")
        verify_checkpoint(ckpt, work / "prepared")
        bundle = build_bundle(work / "prepared", work / "bundle", BuildSpec.from_mapping(BUILD))
        package(bundle, work / "triton")

    return timed(stages)[0]


def release(spec: Path, out: Path, **opts: object) -> float:
    if not opts.get("force"):
        shutil.rmtree(out, ignore_errors=True)
    return timed(lambda: build_release(spec, out, ReleaseOptions(**opts)))[0]  # type: ignore[arg-type]


def overhead_figures(root: Path) -> None:
    ckpt = root / "small"
    if not (ckpt / "model.safetensors.index.json").is_file():
        write_checkpoint(ckpt, SynthOptions(preset="small"), force=True)
    size = sum(p.stat().st_size for p in checkpoint_files(ckpt))
    spec = write_spec(root, ckpt)
    verify_checkpoint(ckpt)  # imports transformers once, for both contenders alike
    base = min(one_by_one(ckpt, root / "stages") for _ in range(2))
    fresh = min(release(spec, root / "out") for _ in range(2))
    rerun = release(spec, root / "out", force=True)
    rehash = release(spec, root / "out", force=True, rehash=True)
    rows = [
        ["stages one by one", f"{base:.2f}", "1.00", ""],
        ["release build (fresh)", f"{fresh:.2f}", f"{fresh / base:.3f}", "overhead < 5%"],
        ["re-run, unchanged inputs", f"{rerun:.2f}", f"{rerun / base:.3f}", "seconds, no re-read"],
        ["re-run --rehash", f"{rehash:.2f}", f"{rehash / base:.3f}", "reads every output"],
    ]
    title = f"small preset ({size / MB:,.0f} MB), best of 2 for the first two rows"
    print_table(title, ["what", "seconds", "vs one by one", "target"], rows)


def memory_figures(root: Path, sizes: list[float]) -> None:
    rows = []
    for size_gb in sizes:
        ckpt = ensure_checkpoint(root, layers_for(size_gb, EXPERTS), EXPERTS)
        spec = write_spec(root, ckpt.path, f"release-{ckpt.layers}.yaml")
        out = root / f"mem-out-{ckpt.layers}"
        shutil.rmtree(out, ignore_errors=True)
        code, seconds, rss = child_rss([*K2TRT, "-q", "release", "build", str(spec), str(out)])
        rows.append([f"{ckpt.bytes / MB:,.0f} MB", str(code), f"{seconds:.0f}", f"{rss / MB:,.0f}"])
        shutil.rmtree(out, ignore_errors=True)
    print_table(
        "peak RSS of `k2trt release build` (no gates) by checkpoint size",
        ["checkpoint", "exit", "seconds", "peak RSS MB"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--workdir", type=Path, help="reuse checkpoints here (default: temp)")
    parser.add_argument("--size-gb", default="1.0,2.1", help="k2-slice sizes for peak RSS")
    parser.add_argument("--skip-memory", action="store_true", help="only the small preset")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="k2trt-release-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        overhead_figures(root)
        if not args.skip_memory:
            memory_figures(root, [float(s) for s in args.size_gb.split(",")])
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
