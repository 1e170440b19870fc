"""`k2trt plan`: per-GPU memory and KV capacity of TensorRT-LLM layouts for a checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from k2trt.build.gpus import GpuSet, parse_gpus
from k2trt.build.planner import LayoutPlan, PlanReport, make_layout, plan
from k2trt.models.config import ModelConfig
from k2trt.output import OUTPUT
from k2trt.units import human_bytes

EXIT_NO_FIT = 1


def command(
    ckpt: Path = typer.Argument(..., help="Checkpoint directory, or a config.json alone."),
    gpus: str = typer.Option(
        ...,
        "--gpus",
        help="NAMExCOUNT (H100, H200, H20, B200, GB200), or a size: 80GBx8, custom:96GiBx16.",
    ),
    context: int = typer.Option(
        None, "--context", help="Tokens per request (default: max_position_embeddings)."
    ),
    concurrency: int = typer.Option(1, "--concurrency", help="Requests of --context held at once."),
    kv_dtype: str = typer.Option("fp8", "--kv-dtype", help="KV cache dtype: fp8 or bf16."),
    tp: int = typer.Option(None, "--tp", help="Evaluate one layout: TP size (default GPUs/PP)."),
    ep: int = typer.Option(None, "--ep", help="Expert parallel size (default 1: MoE-TP = TP)."),
    pp: int = typer.Option(None, "--pp", help="Pipeline stages (default 1)."),
    attention_dp: bool = typer.Option(
        None, "--attention-dp/--no-attention-dp", help="Attention data-parallel (one layout)."
    ),
    mtp: bool = typer.Option(
        False, "--mtp", help="Count MTP layers (loaded only for MTP speculative decoding)."
    ),
    top: int = typer.Option(10, "--top", min=1, help="Layouts shown (--json lists all)."),
) -> None:
    """Plan a TensorRT-LLM deployment: weights, reserves and KV cache per GPU for each layout.

    Weights come from config.json through the architecture's tensor tables (nothing is
    read). Ranks layouts: fit first, then fewer PP stages, then most KV tokens. Exit 0 when a
    layout fits --context x --concurrency, 1 when none does, 2 on bad input."""
    cfg = ModelConfig.load(ckpt)
    gpu_set = parse_gpus(gpus)
    explicit = any(v is not None for v in (tp, ep, pp, attention_dp))
    layout = make_layout(cfg, gpu_set, tp, ep, pp, bool(attention_dp)) if explicit else None
    report = plan(
        cfg,
        gpu_set,
        cfg.max_position_embeddings if context is None else context,
        concurrency,
        kv_dtype,
        layout,
        mtp=mtp,
    )
    OUTPUT.result(report.to_dict(), lambda _: render(report, top))
    if not report.ok:
        if explicit:
            OUTPUT.error(verdict(report))
        raise typer.Exit(EXIT_NO_FIT)


def verdict(r: PlanReport) -> str:
    """One line: the best layout and what it holds, or why nothing fits (with the numbers)."""
    best = r.best
    if best is None:
        return "no layout: nothing divides this GPU count"
    holds = (
        f"{best.sequences} sequence(s) of {r.context:,} tokens "
        f"({best.kv_tokens_total:,} KV tokens), {r.concurrency} requested"
    )
    if best.request_fit:
        fitting = sum(p.request_fit for p in r.layouts)
        return f"{fitting} of {len(r.layouts)} layout(s) fit; best {best.layout.label}: {holds}"
    if best.weights_fit:
        return (
            f"no layout fits the request on {r.gpus.label}: best {best.layout.label} holds {holds}"
        )
    weights = best.binding.weights_total
    reserves = best.activation + best.cuda_graphs + best.runtime
    return (
        f"no layout holds the weights and reserves on {r.gpus.label}: {best.layout.label} needs "
        f"{human_bytes(weights)} of weights + {human_bytes(reserves)} of reserves per GPU "
        f"> {human_bytes(r.gpus.gpu.memory_bytes)}"
    )


def render(r: PlanReport, top: int = 10) -> str:
    m = r.model
    arch = (
        m["architecture"]
        if m["model_type"] == m["architecture"]
        else (f"{m['model_type']} -> {m['architecture']}")
    )
    mtp = m["num_nextn_predict_layers"] if r.mtp else 0
    lines = [
        f"model        {arch}: {m['num_hidden_layers']} layers (+{mtp} MTP), "
        f"{m['num_attention_heads']} heads, {m['n_routed_experts']} experts; "
        f"loads {human_bytes(r.loaded_bytes)}",
        f"gpus         {_gpus_line(r.gpus)}",
        f"request      {r.context:,}-token context x {r.concurrency} concurrent, KV {r.kv_dtype}: "
        f"{r.kv_bytes_per_token:,} B per token per model replica",
        f"verdict      {verdict(r)}",
        "",
        _table(r.layouts[:top]),
    ]
    if len(r.layouts) > top:
        lines.append(f"({len(r.layouts) - top} more; --json lists all)")
    res = r.reserves
    lines += [
        "",
        f"assumptions  per GPU: runtime {human_bytes(res.runtime_bytes)}, CUDA graphs "
        f"{human_bytes(res.cuda_graph_bytes)} + batch {res.cuda_graph_batch}, activations of "
        f"{res.max_num_tokens:,} tokens; KV gets {res.kv_fraction} of the rest in "
        f"{res.tokens_per_block}-token blocks (--json: values, sources, splitting rules)",
    ]
    return "\n".join(lines)


def _gpus_line(gpus: GpuSet) -> str:
    g = gpus.gpu
    fp8 = "FP8" if g.fp8 else "no FP8"
    return (
        f"{gpus.count} x {g.name}: {human_bytes(g.memory_bytes)} each ({g.hbm}), "
        f"{g.generation}, {fp8}"
    )


def _table(plans: tuple[LayoutPlan, ...]) -> str:
    rows = [("#", "layout", "weights/GPU", "reserves", "KV/GPU", "KV tokens", "seqs", "fits")]
    for i, p in enumerate(plans, 1):
        stage = p.binding
        rows.append(
            (
                str(i),
                p.layout.label,
                human_bytes(stage.weights_total),
                human_bytes(p.activation + p.cuda_graphs + p.runtime),
                human_bytes(stage.kv_bytes),
                f"{p.kv_tokens_total:,}",
                str(p.sequences),
                "yes" if p.request_fit else "no: KV" if p.weights_fit else "no: memory",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    left = {1, 7}  # text columns; numbers align right
    return "\n".join(
        "  ".join(
            cell.ljust(w) if c in left else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    )
