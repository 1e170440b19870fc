"""`k2trt convert`, `k2trt slice`, `k2trt verify`: TensorRT-LLM-ready checkpoints, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import typer

from k2trt.errors import K2Error
from k2trt.output import OUTPUT
from k2trt.units import human_bytes, parse_size

EXIT_FAILED = 1


def _size(text: str | None) -> int | None:
    """--shard-size: '5GB', '500MiB', '1000000' -> bytes."""
    if text is None:
        return None
    size = parse_size(text)
    if size is None or size <= 0:
        raise K2Error(f"--shard-size: expected a size such as 5GB or 500MiB, got {text!r}")
    return size


def _run(src: Path, out: Path, opts: Any) -> None:
    from k2trt.convert.pipeline import convert_checkpoint

    with OUTPUT.progress(f"convert -> {out.name}") as ticker:
        result = convert_checkpoint(src, out, opts, progress=ticker)
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(result).items()}
    OUTPUT.result(data, lambda d: _render(d))


def _render(d: dict[str, Any]) -> str:
    lines = [
        f"wrote {d.get('out')}: {d.get('tensors')} tensors, {human_bytes(d.get('bytes', 0))} "
        f"in {d.get('seconds', 0):.1f} s"
        + (f"; dropped {d['dropped']} tensors" if d.get("dropped") else "")
    ]
    shards = [f"{d[k]} {k}" for k in ("written", "linked", "copied", "skipped") if d.get(k)]
    if shards:
        lines.append("  shards: " + ", ".join(shards))
    for c in d.get("config_changes") or []:
        after = "removed" if c["after"] is None else repr(c["after"])
        before = "" if isinstance(c["before"], (dict, list)) else f"{c['before']!r} -> "
        lines.append(f"  config {c['field']}: {before}{after} ({c['why']})")
    lines += [f"  note: {n}" for n in d.get("notes") or []]
    return "\n".join(lines)


def convert(
    src: Path = typer.Argument(..., help="Source checkpoint directory (HF, block-FP8)."),
    out: Path = typer.Argument(..., help="Output directory (created atomically)."),
    dtype: str = typer.Option("fp8", "--dtype", help="fp8 (as shipped) or bf16 (dequantized)."),
    mode: str = typer.Option(
        "auto", "--mode", help="Unchanged shards: auto (hard-link, else copy), link, copy, reshard."
    ),
    shard_size: str = typer.Option(None, "--shard-size", help="Re-shard to about this size (5GB)."),
    drop_extra: bool = typer.Option(
        False,
        "--drop-extra",
        help="Drop rotary_emb.inv_freq (unused by engines; kept by default so that unchanged "
        "shards are linked, not rewritten).",
    ),
    kv_cache_fp8: bool = typer.Option(
        False, "--kv-cache-fp8", help="Write hf_quant_config.json declaring an FP8 KV cache."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Shards processed in parallel."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """Prepare the checkpoint directory TensorRT-LLM's PyTorch backend loads.

    Validated weights, normalized config, generation config that stops on <|im_end|>,
    remote-code-free tokenizer, pinned chat template, manifest written last. Re-running after
    a kill resumes finished shards."""
    from k2trt.convert.pipeline import ConvertOptions

    opts = ConvertOptions(
        dtype=cast(Any, dtype),  # checked by the pipeline's check_options
        mode=cast(Any, mode),
        shard_size=_size(shard_size),
        drop_extra=drop_extra,
        kv_cache_fp8=kv_cache_fp8,
        workers=workers,
        force=force,
    )
    _run(src, out, opts)


def slice_(
    src: Path = typer.Argument(..., help="Source checkpoint directory."),
    out: Path = typer.Argument(..., help="Output directory."),
    layers: int = typer.Option(
        ..., "--layers", min=1, help="Layers kept: dense layer 0 + N-1 MoE."
    ),
    experts: int = typer.Option(
        ..., "--experts", min=1, help="Experts kept per MoE layer (0..E-1)."
    ),
    dtype: str = typer.Option("fp8", "--dtype", help="fp8 or bf16."),
    workers: int = typer.Option(2, "--workers", min=1),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """Cut a self-consistent mini model from a big checkpoint, for smoke tests on one GPU.

    Router rows and correction bias are cut to match, top-k clipped, config and tokenizer
    carried over."""
    from k2trt.convert.pipeline import ConvertOptions

    opts = ConvertOptions(
        dtype=cast(Any, dtype),  # checked by the pipeline's check_options
        layers=layers,
        experts=experts,
        workers=workers,
        force=force,
    )
    _run(src, out, opts)


def verify(
    a: Path = typer.Argument(..., help="Checkpoint to load and run (or the source of a pair)."),
    b: Path = typer.Argument(None, help="Converted / dequantized / sliced checkpoint to compare."),
    sample: int = typer.Option(None, "--sample", help="Tensors compared when large (seeded)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Check a checkpoint numerically through transformers' DeepseekV3ForCausalLM on CPU.

    One checkpoint: load, forward, short greedy generation. A pair: tensor-by-tensor errors
    after dequantization (and logits when small). Exit 1 past tolerance."""
    from k2trt.convert.verify import VerifyOptions, verify_checkpoint

    with OUTPUT.progress("verify") as ticker:
        report = verify_checkpoint(a, b, VerifyOptions(sample=sample, seed=seed), ticker)
    data = report.to_dict()
    OUTPUT.result(data, lambda d: _render_verify(d))
    if not report.ok:
        raise typer.Exit(EXIT_FAILED)


# Shown in human mode: the --json report holds every field.
_LOGIT_FIELDS = (
    ("max_abs", "max |d|", "{:.3g}"),
    ("max_rel", "max rel", "{:.3g}"),
    ("median_rel_l2", "median rel L2", "{:.3g}"),
    ("top1_agree", "top-1 agree", "{:.1%}"),
    ("std", "std", "{:.3g}"),
)


def _render_verify(d: dict[str, Any]) -> str:
    compared = f"{d.get('tensors_compared', 0):,} of {d.get('tensors_total') or 0:,}"
    lines = [
        f"verify ({d.get('mode')}): {'ok' if d.get('ok') else 'FAILED'}",
        f"  tensors      {compared} {'compared' if d.get('mode') == 'pair' else 'loaded'}",
    ]
    if d.get("greedy_tokens") is not None:
        lines.append(f"  greedy ids   {' '.join(str(t) for t in d['greedy_tokens'])}")
    if d.get("logits"):
        lines.append(f"  logits       {_render_logits(d['logits'])}")
    # only tensors that differ at all; identical ones say nothing
    for w in [w for w in d.get("worst") or [] if w["max_abs"] > 0][:5]:
        mark = "ok" if w["ok"] else "OVER"
        lines.append(
            f"  differs      {w['name']} ({w['kind']}): max |d| {w['max_abs']:.3g}, "
            f"max rel {w['max_rel']:.3g} (atol {w['atol']:.3g}, rtol {w['rtol']:.3g}) {mark}"
        )
    lines += [f"  - {f}" for f in d.get("findings") or []]
    return "\n".join(lines)


def _render_logits(logits: dict[str, Any]) -> str:
    shape = "x".join(str(n) for n in logits.get("shape", []))
    parts = [shape, "finite" if logits.get("finite") else "NOT finite"]
    parts += [
        f"{label} {fmt.format(logits[key])}"
        for key, label, fmt in _LOGIT_FIELDS
        if logits.get(key) is not None
    ]
    return ", ".join(parts)
