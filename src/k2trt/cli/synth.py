"""`k2trt synth`: write a Kimi-K2-format checkpoint at any scale."""

from __future__ import annotations

from pathlib import Path

import typer

from k2trt.output import OUTPUT
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import PRESETS, SynthOptions
from k2trt.units import human_bytes


def command(
    out: Path = typer.Argument(
        ..., help="Directory to create (refused if it exists, see --force)."
    ),
    preset: str = typer.Option(
        "tiny",
        "--preset",
        help=f"Size: {' | '.join(PRESETS)}. k2-slice keeps the real hidden "
        "sizes (7168, 2048, 18432, MLA ranks) with few layers/experts.",
    ),
    release: str = typer.Option(
        "0711",
        "--release",
        help="0711 (YaRN x32, unpadded shard names, Kimi-K2-Instruct's tool-calling chat "
        "template) or 0905 (x64, padded, Kimi-K2-Instruct-0905's template).",
    ),
    layers: int = typer.Option(None, "--layers", help="Decoder layers (layer 0 dense, rest MoE)."),
    experts: int = typer.Option(None, "--experts", help="Routed experts per MoE layer."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """Write a checkpoint in exactly Kimi K2's on-disk format, from seeded random weights.

    FP8 blocks with scales, shards and index, tokenizer, chat template."""
    opts = SynthOptions(preset=preset, release=release, layers=layers, experts=experts, seed=seed)
    with OUTPUT.progress(f"synth {preset}") as ticker:
        result = write_checkpoint(out, opts, force=force, progress=ticker)
    OUTPUT.result(
        {
            "path": str(result.path),
            "preset": preset,
            "release": release,
            "seed": seed,
            "shards": result.shards,
            "tensors": result.tensors,
            "bytes": result.bytes,
        },
        lambda d: (
            f"wrote {d['path']}: {d['preset']} (release {d['release']}, seed {d['seed']}), "
            f"{d['tensors']} tensors in {len(d['shards'])} shards, {human_bytes(d['bytes'])}"
        ),
    )
