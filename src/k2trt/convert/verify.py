"""Verify checkpoints: one loads and runs in transformers; two agree tensor by tensor.

Single checkpoint: transformers' `DeepseekV3ForCausalLM` is built on CPU without random
initialisation, our checkpoint is streamed into it tensor by tensor (FP8 dequantized by
`k2trt.checkpoint.fp8`, never transformers' CPU dequantizer, which gets partial edge blocks
wrong), every parameter must be loaded and every tensor used, then a forward pass and a short
greedy generation on a fixed prompt show the model is sane.

Pair (source vs converted, dequantized or sliced): every tensor both hold (a seeded sample when
large) is dequantized to float32 and compared, B against the matching slice of A when B is a
slice; small pairs of equal sizes also compare logits.

Tolerances, per comparison kind (|b - a| <= atol + rtol * |a| elementwise; `VerifyOptions`
atol/rtol override them):

- `exact`: B stores the same dtype as A, or a wider float (F32): atol 0, rtol 0.
- `bf16`: B stores BF16/F16 where A was wider (FP8 dequantized, F32): rtol 2^-8 (one bf16 unit
  in the last place, twice round-to-nearest's 2^-9 bound), atol 2^-126 (bf16 subnormals).
- `fp8`: B stores FP8 where A did not (quantized): rtol 2^-4 (e4m3 half-ulp), atol
  2^-18 * max|A| (half the e4m3 subnormal step at the largest possible block scale).
- logits: identical when every compared tensor was `exact`; otherwise the median over prompt
  positions of ||dlogits|| / ||logits of A|| must be <= 2^-4. The median, not the maximum,
  because a MoE router turns a rounding-sized change into a different expert for the odd token:
  on the `small` preset's bf16 copy one position of 16 moves by 24%, the others by 0.7-1.4%.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.checkpoint.fp8 import dequantize_blocks
from k2trt.checkpoint.reader import Checkpoint
from k2trt.checkpoint.safetensors import LazyTensor
from k2trt.convert.weights import LAYER_RE
from k2trt.errors import K2Error
from k2trt.models.config import ModelConfig
from k2trt.models.params import count_params
from k2trt.models.spec import architecture_for
from k2trt.output import Ticker

if TYPE_CHECKING:
    import torch

SMALL_PARAMS = 200_000_000  # below this a model is built and run on CPU by default
DEFAULT_SAMPLE = 256  # tensors compared in a large pair when no sample size is given
PROMPT_TOKENS = 16  # the fixed prompt: token ids 1..16
WORST_SHOWN = 10
DEFAULT_BLOCK = (128, 128)

# kind -> (atol, rtol); fp8's atol is further multiplied by max|A| (see the module docstring).
TOLERANCES: dict[str, tuple[float, float]] = {
    "exact": (0.0, 0.0),
    "bf16": (2.0**-126, 2.0**-8),
    "fp8": (2.0**-18, 2.0**-4),
}
LOGITS_RTOL = 2.0**-4

# Per-expert checkpoint tensors -> transformers 5.x's fused experts (checked against its own
# loader in tests/test_verify.py). Each expert's matrix fills `part` of `parts` equal row blocks
# of `param[E]`: gate_up_proj is [E, 2*ff, hidden] with gate rows first (its forward splits the
# output with .chunk(2) into gate, up); down_proj is [E, hidden, ff], nn.Linear orientation.
EXPERT_LAYOUT: dict[str, tuple[str, int, int]] = {
    # projection    fused param      part parts
    "gate_proj": ("gate_up_proj", 0, 2),
    "up_proj": ("gate_up_proj", 1, 2),
    "down_proj": ("down_proj", 0, 1),
}
EXPERT_NAME = re.compile(r"^(?P<prefix>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>\w+)\.weight$")
SCALE_SUFFIX = "_scale_inv"
ROTARY_SUFFIX = "rotary_emb.inv_freq"
ROUTER_SUFFIXES = (".mlp.gate.weight", ".mlp.gate.e_score_correction_bias")


@dataclass(frozen=True)
class VerifyOptions:
    """What `verify_checkpoint` checks and how hard.

    >>> VerifyOptions(sample=64, seed=1).sample
    64
    """

    sample: int | None = None  # tensors compared (seeded); None: all when small, else 256
    seed: int = 0
    atol: float | None = None  # None: per comparison kind (module docstring)
    rtol: float | None = None
    max_new_tokens: int = 4
    logits: bool | None = None  # None: only below SMALL_PARAMS parameters


@dataclass(frozen=True)
class TensorDiff:
    """How far B's tensor is from A's (after dequantization to float32)."""

    name: str
    kind: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    ok: bool


@dataclass
class VerifyReport:
    """What `verify_checkpoint` found; `to_dict()` is the --json form.

    >>> VerifyReport(mode="single", checkpoints=["ckpt"]).ok
    True
    """

    mode: str  # single | pair
    checkpoints: list[str]
    tensors_compared: int = 0  # loaded (single) or compared (pair)
    tensors_total: int = 0  # candidates before sampling
    worst: list[TensorDiff] = field(default_factory=list)
    logits: dict[str, Any] | None = None
    greedy_tokens: list[int] | None = None
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


# ---------------------------------------------------------------------------------------------
# transformers at the boundary


def _transformers() -> Any:
    """transformers, imported on demand (slow to import; only verify needs it)."""
    try:
        import transformers
    except ImportError as exc:
        raise K2Error(
            f"cannot import transformers ({type(exc).__name__}: {exc}); the CPU reference model "
            "needs it: pip install transformers"
        ) from exc
    if not hasattr(transformers, "DeepseekV3ForCausalLM"):
        raise K2Error(
            f"transformers {transformers.__version__} has no DeepseekV3ForCausalLM: "
            "pip install -U transformers"
        )
    return transformers


def hf_config(cfg: ModelConfig) -> Any:
    """transformers' DeepseekV3Config for our config.

    kimi_k2 is resolved to deepseek_v3 (transformers keys its per-model behaviour on it), the
    quantization_config is dropped (we dequantize ourselves) and so is auto_map (remote code).

    >>> hf_config(ModelConfig.load(Path("ckpt"))).model_type  # doctest: +SKIP
    'deepseek_v3'
    """
    raw = {k: v for k, v in cfg.raw.items() if k not in ("quantization_config", "auto_map")}
    raw["model_type"] = "deepseek_v3"
    return _transformers().DeepseekV3Config(**raw)


def build_model(cfg: ModelConfig, *, materialize: bool = True) -> Any:
    """An uninitialised float32 DeepseekV3ForCausalLM on CPU (or on `meta`: shapes only).

    Random init is skipped: every parameter is about to be overwritten, and for real sizes
    initialising costs minutes.

    >>> model = build_model(cfg, materialize=False)  # doctest: +SKIP
    """
    import torch

    tf = _transformers()
    no_init = _no_init_weights(tf)
    device = contextlib.nullcontext() if materialize else torch.device("meta")
    with device, no_init:
        model = tf.DeepseekV3ForCausalLM._from_config(
            hf_config(cfg), dtype=torch.float32, attn_implementation="eager"
        )
    return model.eval()


def _no_init_weights(tf: Any) -> Any:
    for where in ("initialization", "modeling_utils"):  # 5.x, then 4.x
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(f"{tf.__name__}.{where}", fromlist=["no_init_weights"])
            return module.no_init_weights()
    return contextlib.nullcontext()


def _targets(model: Any) -> dict[str, Any]:
    """Every tensor a checkpoint must fill: parameters (tied ones once) + persistent buffers."""
    targets = dict(model.named_parameters())
    keys = set(model.state_dict())
    targets.update({n: b for n, b in model.named_buffers() if n in keys})
    return targets


# ---------------------------------------------------------------------------------------------
# Mapping checkpoint tensors onto model parameters


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: `param[expert]`'s row block `part` of `parts`."""

    param: str
    expert: int | None = None
    part: int = 0
    parts: int = 1

    def shape(self, full: tuple[int, ...]) -> tuple[int, ...]:
        if self.expert is None:
            return full
        return (full[1] // self.parts, *full[2:])

    def source(self) -> str:
        """The checkpoint tensor that fills this slot (for findings)."""
        if self.expert is None:
            return self.param
        prefix, _, fused = self.param.rpartition(".")
        proj = next(
            p for p, (f, part, _) in EXPERT_LAYOUT.items() if f == fused and part == self.part
        )
        return f"{prefix}.{self.expert}.{proj}.weight"


def slot_for(name: str, shapes: dict[str, tuple[int, ...]]) -> Slot | None:
    """The model slot a checkpoint tensor fills, or None when the model has no place for it.

    >>> slot_for("model.layers.1.mlp.experts.3.up_proj.weight", shapes)  # doctest: +SKIP
    Slot(param='model.layers.1.mlp.experts.gate_up_proj', expert=3, part=1, parts=2)
    """
    if name in shapes:  # same name (transformers 4.x keeps experts unfused)
        return Slot(name)
    match = EXPERT_NAME.match(name)
    if match is None or match["proj"] not in EXPERT_LAYOUT:
        return None
    fused, part, parts = EXPERT_LAYOUT[match["proj"]]
    param = f"{match['prefix']}.{fused}"
    if param not in shapes or int(match["e"]) >= shapes[param][0]:
        return None
    return Slot(param, int(match["e"]), part, parts)


def expected_slots(param: str, shape: tuple[int, ...]) -> Iterator[Slot]:
    fused = param.rpartition(".")[2]
    layout = [(part, parts) for f, part, parts in EXPERT_LAYOUT.values() if f == fused]
    if not layout or len(shape) != 3:
        yield Slot(param)
        return
    for expert in range(shape[0]):
        for part, parts in layout:
            yield Slot(param, expert, part, parts)


def _skipped(name: str, cfg: ModelConfig) -> bool:
    """Checkpoint tensors the model has no parameter for, by design."""
    if name.endswith((SCALE_SUFFIX, ROTARY_SUFFIX)):  # scales: consumed with their weight
        return True
    layer = LAYER_RE.match(name)
    return layer is not None and int(layer[1]) >= cfg.num_hidden_layers  # MTP layers


def plan_load(
    ckpt: Checkpoint, shapes: dict[str, tuple[int, ...]]
) -> tuple[list[tuple[LazyTensor, Slot]], list[str]]:
    """Map every checkpoint tensor to a model slot from headers alone; findings both ways."""
    plan: list[tuple[LazyTensor, Slot]] = []
    findings: list[str] = []
    filled: set[Slot] = set()
    for lazy in ckpt:
        if _skipped(lazy.name, ckpt.config):
            continue
        slot = slot_for(lazy.name, shapes)
        where = f"{lazy.info.shard}: tensor {lazy.name!r}"
        if slot is None:
            findings.append(f"{where} is not used by DeepseekV3ForCausalLM")
            continue
        want = slot.shape(shapes[slot.param])
        if lazy.shape != want:
            findings.append(f"{where} has shape {list(lazy.shape)}, the model needs {list(want)}")
            continue
        plan.append((lazy, slot))
        filled.add(slot)
    index = ckpt.index.path if ckpt.index else ckpt.root
    for param, shape in shapes.items():
        missing = [s for s in expected_slots(param, shape) if s not in filled]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            findings.append(
                f"{index}: tensor {missing[0].source()!r} is missing: model parameter "
                f"{param!r} left unloaded{more}"
            )
    return plan, findings


# ---------------------------------------------------------------------------------------------
# Reading tensors


def dequantized(ckpt: Checkpoint, lazy: LazyTensor) -> torch.Tensor:
    """One stored tensor as float32 (FP8 through our block dequantizer, edge blocks exact).

    >>> dequantized(ckpt, ckpt.tensor("model.norm.weight")).dtype  # doctest: +SKIP
    torch.float32
    """
    import torch

    if lazy.dtype not in ("F8_E4M3", "F8_E5M2"):
        return lazy.torch().to(torch.float32)
    scale_name = lazy.name + SCALE_SUFFIX
    if scale_name not in ckpt.infos:
        raise K2Error(f"tensor {lazy.name!r} is FP8 but {scale_name!r} is missing", path=ckpt.root)
    block = ckpt.config.fp8_block or DEFAULT_BLOCK
    scale = ckpt.tensor(scale_name)
    rows, cols = lazy.shape
    want = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    if scale.shape != want:
        raise K2Error(
            f"tensor {scale_name!r} has shape {list(scale.shape)}, block {list(block)} needs "
            f"{list(want)}",
            path=scale.info.shard,
        )
    return dequantize_blocks(lazy.torch(), scale.torch(), block)


def _read_bytes(ckpt: Checkpoint, lazy: LazyTensor) -> int:
    scale = ckpt.infos.get(lazy.name + SCALE_SUFFIX)
    return lazy.info.nbytes + (scale.nbytes if scale else 0)


def _sample(items: list[Any], opts: VerifyOptions, large: bool) -> list[Any]:
    """All items, or a seeded sample (kept in checkpoint order for sequential reads)."""
    n = opts.sample if opts.sample is not None else (DEFAULT_SAMPLE if large else None)
    if n is None or n >= len(items):
        return items
    keep = set(random.Random(opts.seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def _is_large(cfg: ModelConfig) -> bool:
    return count_params(cfg).weights >= SMALL_PARAMS


def _why_not_run(cfg: ModelConfig, opts: VerifyOptions) -> str | None:
    """Why the model is not built and run (None: it is)."""
    if opts.logits is False:
        return "logits=False"
    if opts.logits is None and _is_large(cfg):
        n = count_params(cfg).weights
        return f"{n:,} parameters, over {SMALL_PARAMS:,} (logits=True forces it)"
    return None


# ---------------------------------------------------------------------------------------------
# Single checkpoint: load into the model, run it


def load_model(
    ckpt: Checkpoint, progress: Ticker | None = None
) -> tuple[Any, list[str], int, dict[str, float]]:
    """Build the model and stream every checkpoint tensor into it: (model, findings, n, timings).

    >>> model, findings, n, timings = load_model(ckpt)  # doctest: +SKIP
    """
    import torch

    t0 = time.perf_counter()
    model = build_model(ckpt.config)
    targets = _targets(model)
    plan, findings = plan_load(ckpt, {n: tuple(t.shape) for n, t in targets.items()})
    t1 = time.perf_counter()
    if progress:
        progress.total(sum(_read_bytes(ckpt, lazy) for lazy, _ in plan))
    with torch.no_grad():
        for lazy, slot in plan:
            try:
                value = dequantized(ckpt, lazy)
            except K2Error as exc:  # e.g. a missing scale: reported, the rest still loads
                findings.append(str(exc))
                continue
            findings.extend(_finite_findings(lazy, value))
            dest = targets[slot.param].data
            if slot.expert is not None:
                rows = dest.shape[1] // slot.parts
                dest = dest[slot.expert, slot.part * rows : (slot.part + 1) * rows]
            dest.copy_(value)
            del value  # one tensor resident besides the model
            if progress:
                progress(_read_bytes(ckpt, lazy))
    timings = {"build_s": t1 - t0, "load_s": time.perf_counter() - t1}
    return model, findings, len(plan), timings


def _finite_findings(lazy: LazyTensor, value: torch.Tensor) -> list[str]:
    import torch

    bad = int((~torch.isfinite(value)).sum())
    if not bad:
        return []
    return [f"{lazy.info.shard}: tensor {lazy.name!r} has {bad} non-finite values"]


def prompt_ids(cfg: ModelConfig) -> list[int]:
    """The fixed prompt: the first vocabulary ids after 0 (0 is often padding).

    >>> prompt_ids(cfg)[:3]  # doctest: +SKIP
    [1, 2, 3]
    """
    return list(range(1, min(PROMPT_TOKENS + 1, cfg.vocab_size)))


def run_model(model: Any, cfg: ModelConfig, max_new_tokens: int) -> dict[str, Any]:
    """Logits on the fixed prompt and a greedy continuation, with timings."""
    import torch

    ids = torch.tensor([prompt_ids(cfg)])
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, int) else None
    with torch.no_grad():
        t0 = time.perf_counter()
        logits = model(ids).logits.float()
        t1 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=eos)
        t2 = time.perf_counter()
    return {
        "logits": logits,
        "greedy": [int(t) for t in out[0, ids.shape[1] :]],
        "forward_s": t1 - t0,
        "generate_s": t2 - t1,
    }


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' loading and generation warnings off meanwhile (no-op when it is absent)."""
    try:
        log = _transformers().logging
    except K2Error:  # raised again where transformers is actually needed
        yield
        return
    level = log.get_verbosity()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)


def _verify_single(ckpt: Checkpoint, opts: VerifyOptions, progress: Ticker | None) -> VerifyReport:
    report = VerifyReport("single", [str(ckpt.root)])
    cfg = ckpt.config
    skip = _why_not_run(cfg, opts)
    if skip:
        report.notes.append(f"model not run: {skip}; tensors mapped on a meta model instead")
        _check_structure(ckpt, opts, report, progress)
        return report
    model, report.findings, report.tensors_compared, report.timings = load_model(ckpt, progress)
    report.tensors_total = report.tensors_compared
    result = run_model(model, cfg, opts.max_new_tokens)
    del model
    logits = result.pop("logits")
    report.greedy_tokens = result.pop("greedy")
    report.timings.update(result)
    finite = bool(logits.isfinite().all())
    report.logits = {"shape": list(logits.shape), "finite": finite, "std": float(logits.std())}
    if not finite:
        report.findings.append(f"{ckpt.root}: logits on the fixed prompt are not finite")
    return report


def _check_structure(
    ckpt: Checkpoint, opts: VerifyOptions, report: VerifyReport, progress: Ticker | None
) -> None:
    """Large single checkpoint: map every tensor on a meta model; read a sample of values."""
    t0 = time.perf_counter()
    model = build_model(ckpt.config, materialize=False)
    shapes = {n: tuple(t.shape) for n, t in _targets(model).items()}
    plan, report.findings = plan_load(ckpt, shapes)
    report.tensors_total = len(plan)
    chosen = _sample(plan, opts, large=True)
    if progress:
        progress.total(sum(_read_bytes(ckpt, lazy) for lazy, _ in chosen))
    for lazy, _ in chosen:
        try:
            report.findings += _finite_findings(lazy, dequantized(ckpt, lazy))
        except K2Error as exc:
            report.findings.append(str(exc))
        if progress:
            progress(_read_bytes(ckpt, lazy))
    report.tensors_compared = len(chosen)
    report.timings["check_s"] = time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# A pair: tensor by tensor, then logits

# Sizes a pair must share; layers and routed experts may shrink (a slice).
SHARED_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_attention_heads",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "n_shared_experts",
    "first_k_dense_replace",
    "moe_layer_freq",
    "tie_word_embeddings",
)
SLICED_FIELDS = ("num_hidden_layers", "n_routed_experts")


def is_slice(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether B is a slice of A (fewer layers or experts); raises when they are not comparable.

    >>> is_slice(cfg, replace(cfg, n_routed_experts=2))  # doctest: +SKIP
    True
    """
    for name in SHARED_FIELDS:
        if getattr(a, name) != getattr(b, name):
            raise K2Error(
                f"field {name!r} is {getattr(b, name)!r}, {a.path} has {getattr(a, name)!r}: "
                "not comparable",
                path=b.path,
            )
    for name in SLICED_FIELDS:
        if getattr(b, name) > getattr(a, name):
            raise K2Error(
                f"field {name!r} is {getattr(b, name)}, more than {a.path}'s {getattr(a, name)}",
                path=b.path,
            )
    return any(getattr(b, n) < getattr(a, n) for n in SLICED_FIELDS)


@dataclass(frozen=True)
class Pairing:
    """B's tensor `name` against A's, or against A's first `rows` rows (sliced router)."""

    name: str
    rows: int | None = None


def _absent_ok(name: str, b: ModelConfig) -> bool:
    """A tensors a faithful B may lack: scales, rotary caches, sliced-off layers and experts."""
    if name.endswith((SCALE_SUFFIX, ROTARY_SUFFIX)):
        return True
    layer = LAYER_RE.match(name)
    if layer is not None and int(layer[1]) >= b.num_hidden_layers:
        return True
    expert = EXPERT_NAME.match(name)
    return expert is not None and int(expert["e"]) >= b.n_routed_experts


def _router_rows(name: str, a: Checkpoint, b: Checkpoint) -> int | None:
    """B's expert count when `name` is a router tensor whose expert rows B cut, else None."""
    sa, sb = a.infos[name].shape, b.infos[name].shape
    routed = (a.config.n_routed_experts, b.config.n_routed_experts)
    if name.endswith(ROUTER_SUFFIXES) and (sa[0], sb[0]) == routed and sa[1:] == sb[1:]:
        return sb[0]
    return None


def plan_pair(a: Checkpoint, b: Checkpoint) -> tuple[list[Pairing], list[str]]:
    """What to compare (headers only) and what is missing on either side."""
    pairs: list[Pairing] = []
    findings: list[str] = []
    for lazy in b:
        if lazy.name.endswith(SCALE_SUFFIX):  # compared through their weights
            continue
        where = f"{lazy.info.shard}: tensor {lazy.name!r}"
        if lazy.name not in a.infos:
            findings.append(f"{where} is not in {a.root}")
        elif a.infos[lazy.name].shape == lazy.shape:
            pairs.append(Pairing(lazy.name))
        elif (rows := _router_rows(lazy.name, a, b)) is not None:
            pairs.append(Pairing(lazy.name, rows))
        else:
            info = a.infos[lazy.name]
            findings.append(
                f"{where} has shape {list(lazy.shape)}, {info.shard} has {list(info.shape)}"
            )
    for name, info in a.infos.items():
        if name not in b.infos and not _absent_ok(name, b.config):
            findings.append(f"{info.shard}: tensor {name!r} is missing from {b.root}")
    return pairs, findings


def kind_of(a_dtype: str, b_dtype: str) -> str:
    """Comparison kind from the stored dtypes (see the module docstring).

    >>> kind_of("F8_E4M3", "BF16")
    'bf16'
    """
    if a_dtype == b_dtype or b_dtype in ("F32", "F64"):
        return "exact"
    if b_dtype.startswith("F8_"):
        return "fp8"
    if b_dtype in ("BF16", "F16"):
        return "bf16"
    return "exact"


def tolerance(kind: str, ref: torch.Tensor, opts: VerifyOptions) -> tuple[float, float]:
    """(atol, rtol) for one comparison; options override the kind's defaults."""
    atol, rtol = TOLERANCES[kind]
    if kind == "fp8":
        atol *= float(ref.abs().nan_to_num(nan=0.0, posinf=0.0).max()) if ref.numel() else 0.0
    return (
        opts.atol if opts.atol is not None else atol,
        opts.rtol if opts.rtol is not None else rtol,
    )


def diff_stats(
    a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """(max abs error, max rel error, within |b - a| <= atol + rtol*|a| everywhere).

    Equal values (infinities and NaN pairs included) count as no error; a NaN against a
    number counts as an infinite one. Relative error against a zero is infinite unless equal.
    """
    import torch

    if a.numel() == 0:
        return 0.0, 0.0, True
    same = (a == b) | (a.isnan() & b.isnan())
    diff = torch.where(same, 0.0, (b - a).abs()).nan_to_num(nan=math.inf)
    ref = a.abs().nan_to_num(nan=0.0, posinf=0.0)
    ok = bool((diff <= atol + rtol * ref).all())
    rel = torch.where(same, 0.0, diff / a.abs())
    return float(diff.max()), float(rel.nan_to_num(nan=math.inf).max()), ok


def compare_one(a: Checkpoint, b: Checkpoint, pair: Pairing, opts: VerifyOptions) -> TensorDiff:
    """Dequantize both sides (two tensors resident) and compare."""
    la, lb = a.tensor(pair.name), b.tensor(pair.name)
    ta = dequantized(a, la)
    if pair.rows is not None:
        ta = ta[: pair.rows]
    tb = dequantized(b, lb)
    kind = kind_of(la.dtype, lb.dtype)
    atol, rtol = tolerance(kind, ta, opts)
    max_abs, max_rel, ok = diff_stats(ta, tb, atol, rtol)
    return TensorDiff(pair.name, kind, max_abs, max_rel, atol, rtol, ok)


def _diff_finding(a: Checkpoint, b: Checkpoint, d: TensorDiff) -> str:
    return (
        f"{b.infos[d.name].shard}: tensor {d.name!r} differs from {a.infos[d.name].shard}: "
        f"max abs {d.max_abs:.3g}, max rel {d.max_rel:.3g} past the {d.kind} tolerance "
        f"(atol {d.atol:.3g}, rtol {d.rtol:.3g})"
    )


def _worst_key(d: TensorDiff) -> tuple[bool, float, float]:
    rel = math.inf if math.isnan(d.max_rel) else d.max_rel
    return d.ok, -rel, -d.max_abs


def _compare_tensors(
    a: Checkpoint,
    b: Checkpoint,
    pairs: list[Pairing],
    opts: VerifyOptions,
    report: VerifyReport,
    progress: Ticker | None,
) -> set[str]:
    """Compare the chosen pairs; returns the comparison kinds seen."""

    def nbytes(p: Pairing) -> int:
        return _read_bytes(a, a.tensor(p.name)) + _read_bytes(b, b.tensor(p.name))

    if progress:
        progress.total(sum(nbytes(p) for p in pairs))
    diffs: list[TensorDiff] = []
    for pair in pairs:
        try:
            diffs.append(compare_one(a, b, pair, opts))
        except K2Error as exc:
            report.findings.append(str(exc))
        if progress:
            progress(nbytes(pair))
    report.findings += [_diff_finding(a, b, d) for d in diffs if not d.ok]
    report.worst = sorted(diffs, key=_worst_key)[:WORST_SHOWN]
    report.tensors_compared = len(diffs)
    return {d.kind for d in diffs}


def _compare_logits(
    a: Checkpoint, b: Checkpoint, opts: VerifyOptions, report: VerifyReport, kinds: set[str]
) -> None:
    """Run both models on the same prompt, one model resident at a time."""
    runs: list[dict[str, Any]] = []
    for ckpt in (a, b):
        model, findings, _, _ = load_model(ckpt)
        report.findings += findings
        runs.append(run_model(model, ckpt.config, opts.max_new_tokens))
        del model  # before the next one is built
    report.greedy_tokens = runs[0]["greedy"]
    stats = logits_stats(runs[0]["logits"], runs[1]["logits"])
    exact = kinds <= {"exact"}
    stats.update(tolerance=0.0 if exact else LOGITS_RTOL, greedy_tokens_b=runs[1]["greedy"])
    report.logits = stats
    ok = stats["max_abs"] == 0 if exact else stats["median_rel_l2"] <= LOGITS_RTOL
    if not (ok and stats["finite"]):
        report.findings.append(
            f"{b.root}: logits differ from {a.root}: max abs {stats['max_abs']:.3g}, median "
            f"relative L2 {stats['median_rel_l2']:.3g} per position"
            + ("" if exact else f" (tolerance {LOGITS_RTOL:.3g})")
        )


def logits_stats(la: torch.Tensor, lb: torch.Tensor) -> dict[str, Any]:
    """How far B's logits are from A's ([batch, positions, vocab]).

    max_rel is max |dlogit| / max |logit of A|; rel_l2 is per position ||dlogits|| / ||logits||.

    >>> logits_stats(torch.ones(1, 2, 3), torch.ones(1, 2, 3))["max_abs"]  # doctest: +SKIP
    0.0
    """
    max_abs, _, _ = diff_stats(la, lb, 0.0, 0.0)
    peak = float(la.abs().nan_to_num(nan=0.0, posinf=0.0).max())
    rel_l2 = ((lb - la).norm(dim=-1) / la.norm(dim=-1)).nan_to_num(nan=math.inf).flatten()
    return {
        "shape": list(la.shape),
        "finite": bool(la.isfinite().all() and lb.isfinite().all()),
        "max_abs": max_abs,
        "max_rel": max_abs / peak if peak else (0.0 if max_abs == 0 else math.inf),
        "median_rel_l2": float(rel_l2.median()) if max_abs else 0.0,
        "max_rel_l2": float(rel_l2.max()) if max_abs else 0.0,
        "top1_agree": float((la.argmax(-1) == lb.argmax(-1)).float().mean()),
    }


def _verify_pair(
    a: Checkpoint, b: Checkpoint, opts: VerifyOptions, progress: Ticker | None
) -> VerifyReport:
    report = VerifyReport("pair", [str(a.root), str(b.root)])
    sliced = is_slice(a.config, b.config)
    pairs, report.findings = plan_pair(a, b)
    report.tensors_total = len(pairs)
    large = _is_large(a.config)
    t0 = time.perf_counter()
    kinds = _compare_tensors(a, b, _sample(pairs, opts, large), opts, report, progress)
    report.timings["compare_s"] = time.perf_counter() - t0
    skip = "B is a slice of A" if sliced else _why_not_run(a.config, opts)
    if skip:
        report.notes.append(f"logits not compared: {skip}")
        return report
    t1 = time.perf_counter()
    _compare_logits(a, b, opts, report, kinds)
    report.timings["logits_s"] = time.perf_counter() - t1
    return report


def verify_checkpoint(
    a: Path,
    b: Path | None = None,
    opts: VerifyOptions = VerifyOptions(),
    progress: Ticker | None = None,
) -> VerifyReport:
    """Verify one checkpoint (loads and runs) or a pair (B agrees with A, or with its slice).

    >>> verify_checkpoint(Path("tiny")).ok                     # doctest: +SKIP
    True
    >>> verify_checkpoint(Path("tiny"), Path("tiny-bf16")).worst[0].kind  # doctest: +SKIP
    'bf16'
    """
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_transformers())
        ca = stack.enter_context(Checkpoint.open(a, require_weights=True))
        architecture_for(ca.config)  # one-line error for an unsupported model_type
        if b is None:
            report = _verify_single(ca, opts, progress)
        else:
            cb = stack.enter_context(Checkpoint.open(b, require_weights=True))
            architecture_for(cb.config)
            report = _verify_pair(ca, cb, opts, progress)
    report.timings["total_s"] = time.perf_counter() - t0
    return report
