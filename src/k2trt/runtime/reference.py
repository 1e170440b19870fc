"""The CPU reference engine: transformers' DeepseekV3ForCausalLM running a small checkpoint.

The model is built and filled by `k2trt.convert.verify` (our FP8 dequantization, every tensor
checked), then generates incrementally: one forward pass over the prompt, then one token per
step reusing the KV cache. It is the stand-in for TensorRT-LLM wherever there is no GPU
(tests, `k2trt serve` on a laptop, the Triton repository's CPU stand-in model), so it is meant
for tiny and sliced checkpoints: more than `MAX_WEIGHT_BYTES` of stored weights is refused.

One engine holds one model and one lock: concurrent `generate()` calls run one after the
other, each holding the lock from its first token until it ends or is closed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.checkpoint.reader import Checkpoint
from k2trt.convert.verify import _quiet_transformers, load_model
from k2trt.errors import K2Error
from k2trt.models.spec import architecture_for
from k2trt.runtime.scripted import script_from_env
from k2trt.runtime.types import Engine, SamplingParams, never
from k2trt.units import human_bytes

if TYPE_CHECKING:
    import torch

MAX_WEIGHT_BYTES = 2 << 30  # stored bytes; dequantized to float32 that is up to 4x in RAM


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One id from last-position logits [vocab]: greedy at temperature 0, else top-p."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass ahead of each id
        sorted_probs[before >= params.top_p] = 0.0  # the first id always stays
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def stored_bytes(ckpt: Checkpoint) -> int:
    """Bytes of stored weights, from the shard headers: what `MAX_WEIGHT_BYTES` limits."""
    return sum(info.nbytes for info in ckpt.infos.values())


class ReferenceEngine:
    """Incremental CPU generation with transformers (see the module docstring).

    >>> engine = ReferenceEngine.load("tiny")  # doctest: +SKIP
    >>> list(engine.generate([1, 2, 3], SamplingParams(max_tokens=4, temperature=0)))
    ... # doctest: +SKIP
    [841, 333, 1510, 1441]
    """

    def __init__(self, model: Any, vocab_size: int) -> None:
        self.model = model
        self._cache_keyword = cache_keyword(model)  # looked up once, not per request
        self.vocab_size = vocab_size
        self._lock = threading.Lock()

    @classmethod
    def load(cls, ckpt: str | Path, dtype: torch.dtype | None = None) -> ReferenceEngine:
        """Build the model from a checkpoint (float32 unless `dtype`); refuses large ones."""
        import torch

        with _quiet_transformers(), Checkpoint.open(Path(ckpt), require_weights=True) as c:
            architecture_for(c.config)
            stored = stored_bytes(c)
            if stored > MAX_WEIGHT_BYTES:
                raise K2Error(
                    f"{human_bytes(stored)} of weights is too large for the CPU reference "
                    f"engine (limit {human_bytes(MAX_WEIGHT_BYTES)}); make a smaller copy with "
                    "`k2trt slice` (fewer layers and experts)",
                    path=c.root,
                )
            model, findings, _, _ = load_model(c)
            if findings:
                more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
                raise K2Error(f"cannot run this checkpoint: {findings[0]}{more}")
            vocab = c.config.vocab_size
        if dtype is not None and dtype != torch.float32:
            model = model.to(dtype)
        return cls(model, vocab)

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]:
        """Generated ids one at a time; ends after a stop id, max_tokens ids or cancellation."""
        if not prompt_ids:
            raise K2Error("reference engine: empty prompt")
        bad = next((i for i in prompt_ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise K2Error(f"reference engine: prompt id {bad} outside 0..{self.vocab_size - 1}")
        return self._generate(list(prompt_ids), params, cancelled)

    def _generate(
        self, prompt_ids: list[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[int]:
        import torch

        generator = None
        if params.seed is not None:
            generator = torch.Generator().manual_seed(params.seed)
        stops = frozenset(params.stop_token_ids)
        # The tool-call grammar, if any: forbidden ids -> -inf before sampling, every step.
        mask = None if params.constraint is None else params.constraint.start()
        with self._lock, torch.no_grad():
            step = torch.tensor([prompt_ids])
            cache = {self._cache_keyword: new_cache(self.model)}  # updated in place
            for _ in range(params.max_tokens):
                if cancelled():
                    return
                out = self.model(input_ids=step, use_cache=True, **cache)
                logits = out.logits[0, -1]
                if mask is not None:
                    logits = logits.float()  # a copy for other dtypes: masked in place
                    mask.apply(logits)
                token = _sample(logits, params, generator)
                if mask is not None:
                    mask.accept(token)
                yield token
                if token in stops:
                    return
                step = torch.tensor([[token]])


def cache_keyword(model: Any) -> str:
    """The KV-cache argument of the model's forward: `cache` from transformers 5.x (where
    `past_key_values` is deprecated, removed in 5.40), `past_key_values` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model: Any) -> Any:
    """An empty DynamicCache for the model (its config where the constructor takes one)."""
    import inspect

    from transformers import DynamicCache

    if "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=model.config)
    return DynamicCache()


def engine_for(ckpt: str | Path) -> Engine:
    """The engine `k2trt serve` runs on CPU: ReferenceEngine, behind $K2TRT_SCRIPT if set.

    >>> engine = engine_for("tiny")  # doctest: +SKIP
    """
    from k2trt.runtime.chat import ModelFiles

    engine = ReferenceEngine.load(ckpt)
    return script_from_env(ModelFiles.load(ckpt).tokenizer, engine)
