"""The engine bundle: TensorRT-LLM LLM API options for a prepared checkpoint, and a build record.

TensorRT-LLM's PyTorch backend builds its runtime from the checkpoint at load time, so the
"engine" we can ship is the checkpoint (referenced, with its hashes) plus a validated options
file. The record says what went in (spec, plan numbers, file hashes, versions) and whether a
real load ran (`executed: no` unless TensorRT-LLM and GPUs were there and it did).

    BUNDLE/
      llm_api_options.yaml   what `trtllm-serve --config` and Triton's model.yaml take
      k2trt-build.json       the build record

>>> bundle = build_bundle(Path("kimi-k2-prepared"), Path("bundle"), BuildSpec(gpus="H200x16"))
... # doctest: +SKIP
>>> Bundle.load(Path("bundle")).world_size  # doctest: +SKIP
16
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k2trt import __version__
from k2trt.build.gpus import GpuSet, parse_gpus
from k2trt.build.options import (
    DEFAULT_STREAM_INTERVAL,
    AttentionDpConfig,
    CudaGraphConfig,
    KvCacheConfig,
    LlmApiOptions,
    MoeConfig,
    ensure_valid,
    load_schema,
    moe_backend_for,
)
from k2trt.build.planner import LayoutPlan, PlanReport, Reserves, make_layout, plan
from k2trt.build.spec import BuildSpec
from k2trt.checkpoint.manifest import FileHash, pin_changed, pin_files
from k2trt.errors import K2Error
from k2trt.fsutil import atomic_dir, read_json, write_json_atomic, write_text_atomic
from k2trt.models.config import ModelConfig
from k2trt.units import human_bytes

RECORD_NAME = "k2trt-build.json"
OPTIONS_NAME = "llm_api_options.yaml"
RECORD_FORMAT = "k2trt.build/1"
TOKENIZER_DIR = "tokenizer"  # written by `k2trt convert`; see convert/metadata.py
NOT_EXECUTED = "no"
# TensorRT-LLM's default decode CUDA-graph capture limit, and where we stop capturing.
CUDA_GRAPH_CAP = 128


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: where its checkpoint is and what options serve it."""

    path: Path
    checkpoint: Path
    options: dict[str, Any]
    world_size: int
    gpus_per_node: int
    gpu: str
    model_id: str
    record: dict[str, Any]

    @property
    def nodes(self) -> int:
        """Hosts needed: world size over GPUs per node, rounded up."""
        return -(-self.world_size // self.gpus_per_node)

    @property
    def serve_path(self) -> str:
        """Where the serving nodes see the checkpoint (the options' paths point there)."""
        return str(self.record["checkpoint"].get("serve_path") or self.checkpoint)

    @classmethod
    def load(cls, path: Path, check_hashes: bool = True, rehash: bool = False) -> Bundle:
        """Read and check a bundle: record format, options (parsed back and validated, and
        unchanged since the build), and the checkpoint's files against their recorded hashes
        (size and mtime first; a file whose size or mtime moved is re-hashed; `rehash` hashes
        every file)."""
        record = read_json(path / RECORD_NAME, "build record")
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise K2Error(
                f"not a k2trt bundle record (expected format {RECORD_FORMAT})",
                path=path / RECORD_NAME,
            )
        options = _read_options(path / OPTIONS_NAME, record)
        ckpt = Path(record["checkpoint"]["path"])
        if check_hashes:
            check_checkpoint(ckpt, record["checkpoint"]["files"], rehash=rehash)
        layout = record["layout"]
        return cls(
            path=path,
            checkpoint=ckpt,
            options=options,
            world_size=int(layout["world_size"]),
            gpus_per_node=int(record["gpus"]["gpus_per_node"]),
            gpu=str(record["gpus"]["name"]),
            model_id=str(record["model_id"]),
            record=record,
        )


def _read_options(path: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise K2Error(f"cannot read the options file: {exc}", path=path) from exc
    if hashlib.sha256(text.encode("utf-8")).hexdigest() != record["options"]["sha256"]:
        raise K2Error(
            "options file changed since the build (sha256 differs from the record); "
            "rebuild the bundle",
            path=path,
        )
    data = yaml.safe_load(text)
    ensure_valid(data, path=str(path))
    return dict(data)


# ---- the checkpoint's files ----


def checkpoint_entries(root: Path) -> list[Path]:
    """The files a bundle pins: top-level files and the tokenizer directory, sorted."""
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    tok = root / TOKENIZER_DIR
    if tok.is_dir():
        files += [p for p in tok.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files)


def hash_checkpoint(
    root: Path,
    progress: Callable[[int], None] | None = None,
    workers: int = 2,
    known: Mapping[str, FileHash] | None = None,
) -> dict[str, Any]:
    """{relative name: {bytes, sha256, mtime_ns}} for every pinned file (hashed in parallel).

    `known` holds hashes already taken (a manifest the caller has checked): a file listed
    there with the same size is not read again."""
    return pin_files(root, checkpoint_entries(root), known, workers, progress)


def check_checkpoint(root: Path, files: Mapping[str, Any], rehash: bool = False) -> None:
    """K2Error naming the first file that is missing, added or changed."""
    if not root.is_dir():
        raise K2Error("the bundle's checkpoint directory is gone", path=root)
    now = {p.relative_to(root).as_posix() for p in checkpoint_entries(root)}
    missing, added = sorted(set(files) - now), sorted(now - set(files))
    if missing:
        raise K2Error(
            f"checkpoint no longer matches the bundle: {missing[0]} is missing", path=root
        )
    if added:
        raise K2Error(f"checkpoint no longer matches the bundle: {added[0]} was added", path=root)
    for name in sorted(files):
        _check_file(root / name, files[name], rehash)


def _check_file(path: Path, want: Mapping[str, Any], rehash: bool) -> None:
    why = pin_changed(path, want, rehash)
    if why is not None:
        raise K2Error(f"checkpoint no longer matches the bundle: {why}", path=path)


# ---- layout and options ----


def choose_layout(cfg: ModelConfig, gpus: GpuSet, spec: BuildSpec) -> tuple[PlanReport, LayoutPlan]:
    """The spec's layout, or the plan's best; K2Error with the plan's numbers if none fits."""
    pinned = any(v is not None for v in (spec.tp, spec.ep, spec.pp, spec.attention_dp))
    layout = (
        make_layout(cfg, gpus, spec.tp, spec.ep, spec.pp, bool(spec.attention_dp))
        if pinned
        else None
    )
    context = spec.context or cfg.max_position_embeddings
    report = plan(
        cfg, gpus, context, spec.concurrency, spec.kv_dtype, layout, reserves=reserves_for(spec)
    )
    best = report.best
    if best is None or not best.request_fit:
        raise K2Error(no_fit_message(report, best))
    return report, best


def reserves_for(spec: BuildSpec) -> Reserves:
    """The planner's reserves with this spec's token budget, graph batch and KV fraction."""
    return Reserves(
        max_num_tokens=spec.max_num_tokens,
        cuda_graph_batch=max(cuda_graph_sizes(spec)),
        kv_fraction=spec.kv_fraction,
    )


def no_fit_message(report: PlanReport, best: LayoutPlan | None) -> str:
    """One line with the numbers: weights vs memory per GPU, KV tokens vs what was asked."""
    want = f"{report.concurrency} x {report.context:,} tokens"
    if best is None:
        m = report.model
        return (
            f"{report.gpus.label}: no layout of {report.gpus.count} GPUs divides this model "
            f"({m['num_attention_heads']} attention heads, {m['n_routed_experts']} experts, "
            f"{m['num_hidden_layers']} layers)"
        )
    stage = best.binding
    memory = report.gpus.gpu.memory_bytes
    if not best.weights_fit:
        return (
            f"does not fit {report.gpus.label}: best layout {best.layout.label} needs "
            f"{human_bytes(stage.weights_total)} of weights + "
            f"{human_bytes(best.activation + best.cuda_graphs + best.runtime)} reserves per GPU, "
            f"{human_bytes(memory)} available (see `k2trt plan`)"
        )
    return (
        f"does not fit {report.gpus.label}: best layout {best.layout.label} leaves "
        f"{human_bytes(stage.kv_bytes)} per GPU for KV = {best.kv_tokens_total:,} tokens, "
        f"{best.sequences} sequence(s) of {report.context:,}; asked for {want} "
        f"(see `k2trt plan`)"
    )


def cuda_graph_sizes(spec: BuildSpec) -> tuple[int, ...]:
    """Captured decode batch sizes: the spec's, or 1, 2, 4, then multiples of 8 up to the
    batch limit (capped at 128, TensorRT-LLM's default capture limit)."""
    if spec.cuda_graph_batch_sizes:
        return tuple(sorted(set(spec.cuda_graph_batch_sizes)))
    top = min(spec.max_batch_size, CUDA_GRAPH_CAP)
    sizes = {s for s in (1, 2, 4, *range(8, top + 1, 8)) if s <= top} | {top}
    return tuple(sorted(sizes))


def llm_options(
    cfg: ModelConfig, gpus: GpuSet, lay: LayoutPlan, spec: BuildSpec, ckpt: Path
) -> LlmApiOptions:
    """The LLM API options for one layout, as typed data."""
    layout = lay.layout
    moe_backend = spec.moe_backend or _moe_backend(gpus)
    return LlmApiOptions(
        backend="pytorch",
        tensor_parallel_size=layout.tp,
        pipeline_parallel_size=layout.pp,
        moe_expert_parallel_size=layout.ep,
        moe_tensor_parallel_size=layout.moe_tp,
        enable_attention_dp=layout.attention_dp,
        attention_dp_config=AttentionDpConfig(enable_balance=True) if layout.attention_dp else None,
        max_batch_size=spec.max_batch_size,
        max_num_tokens=spec.max_num_tokens,
        max_seq_len=spec.context or cfg.max_position_embeddings,
        kv_cache_config=KvCacheConfig(
            dtype="fp8" if spec.kv_dtype == "fp8" else "auto",
            free_gpu_memory_fraction=spec.kv_fraction,
            enable_block_reuse=spec.block_reuse,
        ),
        cuda_graph_config=CudaGraphConfig(enable_padding=True, batch_sizes=cuda_graph_sizes(spec)),
        moe_config=MoeConfig(backend=moe_backend),
        # transformers' AutoTokenizer cannot read a config.json that says kimi_k2; `k2trt
        # convert` writes a remote-code-free fast tokenizer into tokenizer/ for this.
        tokenizer=str(ckpt / TOKENIZER_DIR),
        trust_remote_code=False,
        # throughput default (see DEFAULT_STREAM_INTERVAL) unless the spec's options set it
        stream_interval=None if "stream_interval" in spec.options else DEFAULT_STREAM_INTERVAL,
        extra=dict(spec.options),
    )


def _moe_backend(gpus: GpuSet) -> str:
    if gpus.gpu.generation == "custom":
        raise K2Error(
            f"--gpus {gpus.label}: a custom GPU has no known generation; set "
            f"moe_backend in the spec (CUTLASS on Hopper, DEEPGEMM on Blackwell)"
        )
    return moe_backend_for(gpus.gpu.generation)


# ---- the bundle ----


def _prepared(ckpt: Path) -> ModelConfig:
    cfg = ModelConfig.load(ckpt)
    if not (ckpt / TOKENIZER_DIR).is_dir():
        raise K2Error(
            f"not a prepared checkpoint: no {TOKENIZER_DIR}/ directory; run "
            f"`k2trt convert` on it first",
            path=ckpt,
        )
    if cfg.fp8_block is not None and list(cfg.fp8_block) != [128, 128]:
        raise K2Error(
            f"quantization_config.weight_block_size: TensorRT-LLM's FP8 block-scale "
            f"path needs [128, 128], got {list(cfg.fp8_block)}",
            path=ckpt / "config.json",
        )
    return cfg


def build_bundle(
    ckpt: Path,
    out: Path,
    spec: BuildSpec,
    *,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    serve_path: str | None = None,
    known: Mapping[str, FileHash] | None = None,
) -> Bundle:
    """Plan, generate and validate the options, hash the checkpoint, write the bundle.

    `serve_path` is where the serving nodes see the checkpoint (default: where it is here);
    the options point there. `known`: hashes the caller has already checked (no re-read)."""
    ckpt = ckpt.resolve()
    cfg = _prepared(ckpt)
    gpus = parse_gpus(spec.gpus)
    report, best = choose_layout(cfg, gpus, spec)
    served = Path(serve_path) if serve_path else ckpt
    options = llm_options(cfg, gpus, best, spec, served)
    text = options.to_yaml()
    ensure_valid(yaml.safe_load(text))  # parsed back, as TensorRT-LLM will read it
    files = hash_checkpoint(ckpt, progress, known=known)
    record = build_record(ckpt, cfg, spec, report, best, text, files)
    record["checkpoint"]["serve_path"] = str(served)
    with atomic_dir(out, force=force) as tmp:
        write_text_atomic(tmp / OPTIONS_NAME, text)
        write_json_atomic(tmp / RECORD_NAME, record)
    return Bundle.load(out, check_hashes=False)


def build_record(
    ckpt: Path,
    cfg: ModelConfig,
    spec: BuildSpec,
    report: PlanReport,
    best: LayoutPlan,
    options_text: str,
    files: dict[str, Any],
) -> dict[str, Any]:
    """What went in and what came out; `executed: no` until a real load fills `execution`."""
    gpu = report.gpus.gpu
    schema = load_schema()["provenance"]
    return {
        "format": RECORD_FORMAT,
        "model_id": spec.model_name or ckpt.name,
        "checkpoint": {
            "path": str(ckpt),
            "model_type": cfg.model_type,
            "files": files,
        },
        "spec": spec.to_dict(),
        "gpus": {
            "name": gpu.name,
            "count": report.gpus.count,
            "generation": gpu.generation,
            "memory_bytes": gpu.memory_bytes,
            "gpus_per_node": gpu.gpus_per_node,
        },
        "layout": {**best.layout.to_dict(), "world_size": best.layout.world},
        "plan": {
            "context": report.context,
            "concurrency": report.concurrency,
            "kv_dtype": report.kv_dtype,
            "weights_per_gpu": best.binding.weights_total,
            "kv_tokens_per_rank": best.kv_tokens_per_rank,
            "kv_tokens_total": best.kv_tokens_total,
            "sequences": best.sequences,
            "reserves": best.to_dict()["reserves"],
        },
        "options": {
            "file": OPTIONS_NAME,
            "sha256": hashlib.sha256(options_text.encode("utf-8")).hexdigest(),
            "schema": {"repo": schema["repo"], "commit": schema["commit"], "tag": schema["tag"]},
        },
        "versions": {"k2trt": __version__, "python": platform.python_version()},
        "executed": NOT_EXECUTED,
        "execution": None,
    }


def record_execution(bundle: Bundle, execution: Mapping[str, Any]) -> Bundle:
    """Write what a real TensorRT-LLM load measured into the record (`executed: yes`)."""
    record = {**bundle.record, "executed": "yes", "execution": dict(execution)}
    write_json_atomic(bundle.path / RECORD_NAME, record)
    return Bundle.load(bundle.path, check_hashes=False)
