"""`k2trt build`: the engine bundle (LLM API options + build record) for a prepared checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from k2trt.build.bundle import (
    OPTIONS_NAME,
    RECORD_NAME,
    Bundle,
    build_bundle,
    checkpoint_entries,
    record_execution,
)
from k2trt.build.spec import BuildSpec
from k2trt.output import OUTPUT
from k2trt.runtime import trtllm
from k2trt.units import human_bytes


def command(
    ckpt: Path = typer.Argument(..., help="Prepared checkpoint (the output of `k2trt convert`)."),
    out: Path = typer.Argument(..., help="Bundle directory to create."),
    spec_file: Path = typer.Option(
        None, "--spec", help="Build spec YAML (fields as the flags below); flags override it."
    ),
    gpus: str = typer.Option(None, "--gpus", help="Target GPUs, e.g. H200x16 (as `k2trt plan`)."),
    context: int = typer.Option(None, "--context", help="max_seq_len (default: the config's)."),
    concurrency: int = typer.Option(
        None, "--concurrency", help="Requests of --context the KV cache must hold (default 1)."
    ),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Default 128."),
    max_num_tokens: int = typer.Option(None, "--max-num-tokens", help="Default 8192."),
    kv_dtype: str = typer.Option(None, "--kv-dtype", help="KV cache dtype: fp8 (default), bf16."),
    kv_fraction: float = typer.Option(
        None, "--kv-fraction", help="kv_cache_config.free_gpu_memory_fraction (default 0.9)."
    ),
    tp: int = typer.Option(None, "--tp", help="Pin the TP size (default: the plan's best)."),
    ep: int = typer.Option(None, "--ep", help="Pin the expert-parallel size."),
    pp: int = typer.Option(None, "--pp", help="Pin the pipeline-parallel size."),
    attention_dp: bool = typer.Option(
        None, "--attention-dp/--no-attention-dp", help="Pin attention data-parallel."
    ),
    moe_backend: str = typer.Option(
        None,
        "--moe-backend",
        help="moe_config.backend (default: CUTLASS Hopper, DEEPGEMM Blackwell).",
    ),
    model_name: str = typer.Option(
        None, "--model-name", help="Served model id (default: checkpoint directory name)."
    ),
    run: bool = typer.Option(
        None,
        "--run/--no-run",
        help="Load with TensorRT-LLM, warm up and answer once (default: when it can run here).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle."),
) -> None:
    """Build the engine bundle: LLM API options for TensorRT-LLM's PyTorch backend, and a record.

    The layout comes from the plan (best fit) unless pinned; a spec that does not fit is
    refused with the plan's numbers. The options are generated from typed data and validated
    against the pinned TensorRT-LLM option schema. The record pins the checkpoint's file
    hashes and says `executed: no` unless TensorRT-LLM really loaded it here (--run)."""
    flags = {
        "gpus": gpus,
        "context": context,
        "concurrency": concurrency,
        "max_batch_size": max_batch_size,
        "max_num_tokens": max_num_tokens,
        "kv_dtype": kv_dtype,
        "kv_fraction": kv_fraction,
        "tp": tp,
        "ep": ep,
        "pp": pp,
        "attention_dp": attention_dp,
        "moe_backend": moe_backend,
        "model_name": model_name,
    }
    spec = _spec(spec_file, flags)
    # The same files build_bundle hashes (tokenizer/ included), for an honest progress total.
    total = sum(p.stat().st_size for p in checkpoint_entries(ckpt)) if ckpt.is_dir() else 0
    with OUTPUT.progress("hashing checkpoint", total) as ticker:
        bundle = build_bundle(ckpt, out, spec, force=force, progress=ticker.advance)
    bundle = _maybe_run(bundle, run)
    OUTPUT.result(summary(bundle), lambda _: render(bundle))


def _spec(spec_file: Path | None, flags: dict[str, Any]) -> BuildSpec:
    if spec_file is not None:
        return BuildSpec.load(spec_file).merged(flags)
    if flags["gpus"] is None:
        raise typer.BadParameter("give --gpus (e.g. --gpus H200x16) or --spec SPEC.yaml")
    return BuildSpec.from_mapping({k: v for k, v in flags.items() if v is not None}, "flags")


def _maybe_run(bundle: Bundle, run: bool | None) -> Bundle:
    reason = trtllm.unavailable()
    if run is False or (run is None and reason is not None):
        if reason is not None and run is None:
            OUTPUT.note(f"not executed: {reason}")
        return bundle
    from k2trt.runtime.chat import ModelFiles, prepare
    from k2trt.runtime.types import ChatRequest

    files = ModelFiles.load(bundle.checkpoint)
    hello = ChatRequest(messages=[{"role": "user", "content": "Say hello in one sentence."}])
    prompt = prepare(files, hello)
    with OUTPUT.progress("loading with TensorRT-LLM", None):
        result = trtllm.smoke(
            bundle.checkpoint, bundle.options, prompt.prompt_ids, files.stop_token_ids
        )
    result["answer"] = files.tokenizer.decode(result["ids"], skip_special_tokens=True)
    return record_execution(bundle, result)


def summary(bundle: Bundle) -> dict[str, Any]:
    r = bundle.record
    return {
        "bundle": str(bundle.path),
        "checkpoint": str(bundle.checkpoint),
        "model_id": bundle.model_id,
        "gpus": f"{r['gpus']['name']}x{r['gpus']['count']}",
        "layout": r["layout"],
        "world_size": bundle.world_size,
        "nodes": bundle.nodes,
        "plan": r["plan"],
        "options_file": str(bundle.path / OPTIONS_NAME),
        "record": str(bundle.path / RECORD_NAME),
        "executed": r["executed"],
        "execution": r["execution"],
    }


def render(bundle: Bundle) -> str:
    r = bundle.record
    p = r["plan"]
    o = bundle.options
    lines = [
        f"bundle       {bundle.path}",
        f"checkpoint   {bundle.checkpoint} ({len(r['checkpoint']['files'])} files hashed)",
        f"gpus         {r['gpus']['name']} x {r['gpus']['count']} ({bundle.nodes} node(s)): "
        f"{r['layout']['label']}, world size {bundle.world_size}",
        f"memory       {human_bytes(p['weights_per_gpu'])} of weights per GPU; KV holds "
        f"{p['kv_tokens_total']:,} tokens = {p['sequences']} x {p['context']:,}",
        f"options      moe {o['moe_config']['backend']}, KV {o['kv_cache_config']['dtype']}, "
        f"max_batch_size {o['max_batch_size']}, max_num_tokens {o['max_num_tokens']}, "
        f"max_seq_len {o['max_seq_len']} -> {OPTIONS_NAME}",
        f"executed     {r['executed']}" + _execution(r["execution"]),
    ]
    return "\n".join(lines)


def _execution(execution: dict[str, Any] | None) -> str:
    if not execution:
        return " (the bundle has not been loaded by TensorRT-LLM; `--run` on a GPU node does)"
    return (
        f": loaded in {execution['load_s']} s, warm-up {execution['warmup_s']} s, "
        f"{execution['tokens']} tokens in {execution['generate_s']} s: {execution['answer']!r}"
    )
