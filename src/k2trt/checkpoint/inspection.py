"""`k2trt inspect`: what a checkpoint is, and everything wrong with it."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.checkpoint.manifest import MANIFEST_NAME, checkpoint_files, hash_files, write_manifest
from k2trt.checkpoint.reader import Checkpoint
from k2trt.checkpoint.safetensors import DTYPES
from k2trt.errors import K2Error, show
from k2trt.models.config import LIMITS, ModelConfig, finite_number
from k2trt.models.kimi_k2 import release_of
from k2trt.models.params import ParamCounts, count_params
from k2trt.models.spec import TensorSpec, architecture_for


@dataclass(frozen=True)
class Finding:
    """One problem: a short code, the file it is in, and a one-line message naming the tensor."""

    code: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class Report:
    path: str
    architecture: str
    model_type: str
    release: str
    params: ParamCounts
    has_weights: bool
    shards: int = 0
    tensors: int = 0
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    manifest: str | None = None
    scales_scanned: int = 0

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"]["total_bytes"] = self.params.total_bytes
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class InspectOptions:
    deep: bool = False
    hash: bool = False
    manifest: Path | None = None  # default: CKPT/k2trt-manifest.json
    workers: int = 2


def config_findings(cfg: ModelConfig) -> Iterator[Finding]:
    """Consistency checks a config can fail while still parsing."""
    file = Path(cfg.path).name

    def bad(field_name: str, message: str) -> Finding:
        return Finding("config", file, f"field {field_name!r}: {message}")

    if cfg.architectures is not None and "DeepseekV3ForCausalLM" not in cfg.architectures:
        yield bad("architectures", f"expected DeepseekV3ForCausalLM, got {show(cfg.architectures)}")
    if cfg.num_key_value_heads not in (None, cfg.num_attention_heads):
        yield bad(
            "num_key_value_heads",
            f"MLA needs {cfg.num_attention_heads} (the head count), got {cfg.num_key_value_heads}",
        )
    if not 0 < cfg.num_experts_per_tok <= cfg.n_routed_experts:
        yield bad(
            "num_experts_per_tok",
            f"must be 1..n_routed_experts ({cfg.n_routed_experts}), got {cfg.num_experts_per_tok}",
        )
    if cfg.n_group < 1 or cfg.n_routed_experts % cfg.n_group:
        yield bad(
            "n_group", f"must divide n_routed_experts ({cfg.n_routed_experts}), got {cfg.n_group}"
        )
    if not 0 < cfg.topk_group <= cfg.n_group:
        yield bad("topk_group", f"must be 1..n_group ({cfg.n_group}), got {cfg.topk_group}")
    if cfg.first_k_dense_replace > cfg.num_hidden_layers:
        yield bad("first_k_dense_replace", f"exceeds num_hidden_layers ({cfg.num_hidden_layers})")
    if cfg.qk_rope_head_dim % 2:
        yield bad("qk_rope_head_dim", f"must be even, got {cfg.qk_rope_head_dim}")
    yield from _rope_findings(cfg, bad)
    yield from _quant_findings(cfg, bad)
    for name in ("bos_token_id", "eos_token_id"):
        ids = getattr(cfg, name)
        for token in ids if isinstance(ids, list) else [ids]:
            if token is not None and not 0 <= token < cfg.vocab_size:
                yield bad(name, f"{token} is outside the vocabulary (vocab_size {cfg.vocab_size})")


def _rope_findings(cfg: ModelConfig, bad: Callable[[str, str], Finding]) -> Iterator[Finding]:
    rope = cfg.rope_scaling
    if not rope:
        return
    kind = rope.get("type", rope.get("rope_type"))
    if kind != "yarn":
        yield bad("rope_scaling", f"expected type 'yarn', got {show(kind)}")
        return
    factor, original = cfg.rope_factor, rope.get("original_max_position_embeddings")
    if factor is None or factor <= 0:
        yield bad(
            "rope_scaling.factor", f"must be a positive number, got {show(rope.get('factor'))}"
        )
    elif (
        isinstance(original, bool)
        or not isinstance(original, int)
        or not 0 < original <= LIMITS["max_position_embeddings"]
        or original * factor != cfg.max_position_embeddings
    ):
        yield bad(
            "max_position_embeddings",
            f"expected original_max_position_embeddings "
            f"({show(original)}) x factor ({show(rope.get('factor'))}), "
            f"got {cfg.max_position_embeddings}",
        )
    for beta in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if finite_number(rope.get(beta)) is None:
            yield bad(
                f"rope_scaling.{beta}", f"must be a finite number, got {show(rope.get(beta))}"
            )


def _quant_findings(cfg: ModelConfig, bad: Callable[[str, str], Finding]) -> Iterator[Finding]:
    q = cfg.quantization_config
    if q is None:
        return
    if q.get("quant_method") != "fp8":
        yield bad(
            "quantization_config.quant_method", f"expected 'fp8', got {show(q.get('quant_method'))}"
        )
        return
    if q.get("fmt", "e4m3") != "e4m3":
        yield bad("quantization_config.fmt", f"expected 'e4m3', got {show(q.get('fmt'))}")
    if cfg.fp8_block != (128, 128):
        yield bad(
            "quantization_config.weight_block_size",
            f"TensorRT-LLM reads block FP8 only as [128, 128], got {list(cfg.fp8_block or [])}",
        )
    if q.get("activation_scheme", "dynamic") != "dynamic":
        yield bad(
            "quantization_config.activation_scheme",
            f"expected 'dynamic', got {show(q.get('activation_scheme'))}",
        )


def _fmt(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype}{show(list(shape))}"


def inventory_findings(ckpt: Checkpoint, specs: list[TensorSpec]) -> Iterator[Finding]:
    """Every expected tensor present with the right dtype and shape; nothing unexpected."""
    expected = {s.name for s in specs}
    for spec in specs:
        info = ckpt.infos.get(spec.name)
        if info is None:
            if not spec.optional:
                yield Finding(
                    "missing",
                    ckpt.index.path.name if ckpt.index else "",
                    f"tensor {spec.name!r} is missing (expected {_fmt(spec.dtype, spec.shape)})",
                )
            continue
        if (info.dtype, info.shape) != (spec.dtype, spec.shape):
            what = "scale shape" if spec.scale_for and info.dtype == spec.dtype else "tensor"
            code = (
                "scale-shape"
                if what == "scale shape"
                else ("dtype" if info.dtype != spec.dtype else "shape")
            )
            yield Finding(
                code,
                info.shard.name,
                f"tensor {show(spec.name)}: wrong {what}: expected "
                f"{_fmt(spec.dtype, spec.shape)}, found {_fmt(info.dtype, info.shape)}",
            )
    for name, info in ckpt.infos.items():
        if name not in expected:
            yield Finding(
                "unexpected",
                info.shard.name,
                f"tensor {show(name)} ({_fmt(info.dtype, info.shape)}) is not part of the "
                "architecture",
            )


def size_findings(ckpt: Checkpoint) -> Iterator[Finding]:
    declared = ckpt.index.metadata.get("total_size") if ckpt.index else None
    actual = sum(i.nbytes for i in ckpt.infos.values())
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        yield Finding(
            "total-size",
            ckpt.index.path.name if ckpt.index else "",
            f"field 'metadata.total_size': must be an integer, got {show(declared)}",
        )
    elif declared is not None and declared != actual:
        yield Finding(
            "total-size",
            ckpt.index.path.name if ckpt.index else "",
            f"field 'metadata.total_size': {declared} but the tensors hold {actual} bytes",
        )


def bad_scales(values: NDArray[Any]) -> str | None:
    """What is wrong with a block-scale tensor (NaN, Inf, <= 0 corrupt their block), or None.

    >>> bad_scales(np.array([[1.0, 0.0]], dtype=np.float32))
    '1 bad scale value(s) (non-positive), first at [0, 1]'
    """
    bad = ~np.isfinite(values) | (values <= 0)
    if not bad.any():
        return None
    pos = [int(p) for p in np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)]
    kinds = sorted(
        {
            ("NaN" if np.isnan(v) else "Inf" if np.isinf(v) else "non-positive")
            for v in values[bad][:64]
        }
    )
    return f"{int(bad.sum())} bad scale value(s) ({', '.join(kinds)}), first at {pos}"


def scale_findings(ckpt: Checkpoint, specs: list[TensorSpec]) -> tuple[int, list[Finding]]:
    """--deep: every block scale finite and positive."""
    found: list[Finding] = []
    scanned = 0
    for spec in specs:
        info = ckpt.infos.get(spec.name)
        if spec.scale_for is None or info is None or info.dtype != "F32":
            continue
        scanned += 1
        problem = bad_scales(ckpt.tensor(spec.name).raw())
        if problem:
            found.append(
                Finding("scale-value", info.shard.name, f"tensor {spec.name!r}: {problem}")
            )
    return scanned, found


def _bytes_by_dtype(ckpt: Checkpoint) -> dict[str, int]:
    counter: Counter[str] = Counter()
    for info in ckpt.infos.values():
        counter[info.dtype] += info.nbytes
    return dict(sorted(counter.items()))


def inspect_checkpoint(
    path: Path,
    opts: InspectOptions = InspectOptions(),
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Inspect a checkpoint directory (or a bare config.json): report plus findings.

    >>> opts = InspectOptions(deep=True)
    >>> report = inspect_checkpoint(Path("Kimi-K2-Instruct"), opts)  # doctest: +SKIP
    >>> report.ok, report.params.activated  # doctest: +SKIP
    """
    if os.path.lexists(path) and not path.is_dir():  # a config.json alone (or a FIFO, ...)
        return _report_for_config(ModelConfig.load(path), str(path))
    with Checkpoint.open(path) as ckpt:
        report = _report_for_config(ckpt.config, str(path))
        if not ckpt.has_weights:
            return report
        report.has_weights = True
        report.shards = len(ckpt.shard_paths)
        report.tensors = len(ckpt.infos)
        report.bytes_by_dtype = _bytes_by_dtype(ckpt)
        too_many = _spec_far_larger(ckpt, report.params.tensors)
        if too_many:  # listing millions of missing tensors helps nobody and takes minutes
            report.findings += [too_many, *size_findings(ckpt)]
            return report
        specs = list(architecture_for(ckpt.config).tensors(ckpt.config))
        report.findings += inventory_findings(ckpt, specs)
        report.findings += size_findings(ckpt)
        if opts.deep:
            report.scales_scanned, deep = scale_findings(ckpt, specs)
            report.findings += deep
    if opts.hash:
        report.manifest = str(_hash(path, opts, progress))
    return report


# More expected tensors than stored by this much: the config is not this checkpoint's.
MAX_MISSING_LISTED = 100_000


def _spec_far_larger(ckpt: Checkpoint, expected: int) -> Finding | None:
    if expected - len(ckpt.infos) <= MAX_MISSING_LISTED:
        return None
    return Finding(
        "missing",
        ckpt.index.path.name if ckpt.index else "",
        f"config.json describes {expected:,} tensors but the checkpoint stores "
        f"{len(ckpt.infos):,}: not listed one by one (a config for another model?)",
    )


def _report_for_config(cfg: ModelConfig, path: str) -> Report:
    arch = architecture_for(cfg)
    params = count_params(cfg)
    report = Report(
        path=path,
        architecture=arch.name,
        model_type=cfg.model_type,
        release=release_of(cfg.rope_factor),
        params=params,
        has_weights=False,
        bytes_by_dtype=params.bytes_by_dtype,
    )
    report.findings += config_findings(cfg)
    return report


def _hash(path: Path, opts: InspectOptions, progress: Callable[[int], None] | None) -> Path:
    target = opts.manifest or path / MANIFEST_NAME
    files = checkpoint_files(path)
    if opts.manifest is not None:
        files = [f for f in files if f.resolve() != target.resolve()]
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}  # before hashing: a write moves it
    hashes = hash_files(files, opts.workers, progress)
    try:
        write_manifest(target, hashes, mtimes)
    except OSError as exc:
        raise K2Error(
            f"cannot write manifest: {exc.strerror or exc} (choose another path with --manifest)",
            path=target,
        ) from exc
    return target


def total_file_bytes(path: Path) -> int:
    """Bytes `--hash` will read, for progress totals."""
    return sum(f.stat().st_size for f in checkpoint_files(path)) if path.is_dir() else 0


__all__ = ["DTYPES", "Finding", "InspectOptions", "Report", "inspect_checkpoint"]
