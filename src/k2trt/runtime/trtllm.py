"""The one module that touches TensorRT-LLM (imported lazily; absent on CPU machines).

`TrtllmEngine` runs a bundle's LLM API options through `tensorrt_llm.LLM` on the PyTorch
backend and implements the runtime `Engine` protocol: token ids in, streamed token ids out
(`skip_tokenizer_init`: k2trt's own tokenizer, template and parser do the text side).
`smoke` is what `k2trt build --run` records: load time, warm-up, one short answer.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error
from k2trt.runtime.types import SamplingParams, TokenMask, never


def unavailable() -> str | None:
    """Why TensorRT-LLM cannot run here, or None when it can (import + a CUDA device)."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return "tensorrt_llm is not installed; NVIDIA ships it in tritonserver *-trtllm-python-py3"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def _tensorrt_llm() -> Any:
    reason = unavailable()
    if reason is not None:
        raise K2Error(f"TensorRT-LLM cannot run here: {reason}")
    return importlib.import_module("tensorrt_llm")


class TrtllmEngine:
    """An LLM API instance loaded from a checkpoint and options (one per process)."""

    def __init__(self, llm: Any, module: Any) -> None:
        self._llm = llm
        self._trtllm = module

    @classmethod
    def from_options(cls, model: str | Path, options: Mapping[str, Any]) -> TrtllmEngine:
        """`LLM(model, **options)`; the options come from a validated bundle."""
        trtllm = _tensorrt_llm()
        args = {k: v for k, v in options.items() if k != "model"}
        args["skip_tokenizer_init"] = True  # ids in, ids out
        return cls(trtllm.LLM(model=str(model), **args), trtllm)

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]:
        """Stream generated ids; aborts the request when `cancelled()` turns true.

        A constraint (the tool-call grammar) runs as this request's logits processor: the
        LLM API's own guided decoding needs a tokenizer, which skip_tokenizer_init leaves out.
        A grammar failure aborts this request only (GrammarFailed raised here)."""
        processor = None
        extra: dict[str, Any] = {}
        if params.constraint is not None:
            processor = self._processor(params.constraint.start())
            extra["logits_processor"] = processor
        sampling = self._trtllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop_token_ids=list(params.stop_token_ids),
            end_id=params.stop_token_ids[0] if params.stop_token_ids else None,
            detokenize=False,
            **extra,
        )
        result = self._llm.generate_async(list(prompt_ids), sampling, streaming=True)
        for update in result:
            if cancelled() or (processor is not None and processor.failed is not None):
                result.abort()
                if processor is not None and processor.failed is not None:
                    raise processor.failed
                return
            yield from update.outputs[0].token_ids_diff

    def _processor(self, mask: TokenMask) -> GrammarLogitsProcessor:
        """Our processor, registered as TensorRT-LLM's LogitsProcessor (an ABC) when it has one."""
        base = getattr(getattr(self._trtllm, "sampling_params", None), "LogitsProcessor", None)
        if base is None:
            return GrammarLogitsProcessor(mask)
        cls = type("K2GrammarLogitsProcessor", (GrammarLogitsProcessor, base), {})
        processor: GrammarLogitsProcessor = cls(mask)
        return processor

    def shutdown(self) -> None:
        self._llm.shutdown()


class GrammarLogitsProcessor:
    """TensorRT-LLM's per-request logits processor protocol (`sampling_params.LogitsProcessor`:
    called before each sampling step with the request's logits, edited in place, and its token
    ids so far): advance the grammar by the ids generated since the last call, then mask.

    It never raises into TensorRT-LLM's executor (a grammar bug must not take the server down,
    as upstream saw in PR #17845): a failure is kept in `failed`, the logits are left alone,
    and `TrtllmEngine.generate` aborts the request and raises it there.

    >>> processor = GrammarLogitsProcessor(factory.start())  # doctest: +SKIP
    >>> processor(0, logits, [prompt_and_generated_ids], None, None)  # doctest: +SKIP
    """

    def __init__(self, mask: TokenMask) -> None:
        self.mask = mask
        self.failed: Exception | None = None
        self._seen: int | None = None  # token count at the first call: the prompt

    def __call__(
        self,
        req_id: int,
        logits: Any,
        token_ids: list[list[int]],
        stream_ptr: int | None,
        client_id: int | None,
    ) -> None:
        if self.failed is not None:
            return
        try:
            ids = token_ids[0]
            if self._seen is None:
                self._seen = len(ids)
            for token in ids[self._seen :]:
                self.mask.accept(token)
            self._seen = len(ids)
            with _on_stream(stream_ptr):
                self.mask.apply(logits.view(-1, logits.shape[-1])[0])
        except Exception as exc:  # kept for generate(); see the class docstring
            self.failed = exc


def _on_stream(stream_ptr: int | None) -> Any:
    """TensorRT-LLM's CUDA stream for the processor's kernels (none on CPU)."""
    import contextlib

    if not stream_ptr:
        return contextlib.nullcontext()
    import torch

    return torch.cuda.stream(torch.cuda.ExternalStream(stream_ptr))  # type: ignore[no-untyped-call]


def smoke(
    model: str | Path,
    options: Mapping[str, Any],
    prompt_ids: Sequence[int],
    stop_ids: Sequence[int],
) -> dict[str, Any]:
    """Load, warm up, answer one prompt greedily; timings in seconds and the ids generated."""
    started = time.perf_counter()
    engine = TrtllmEngine.from_options(model, options)
    loaded = time.perf_counter()
    greedy = SamplingParams(max_tokens=8, temperature=0.0, stop_token_ids=tuple(stop_ids))
    list(engine.generate(prompt_ids, greedy))  # warm-up: first-request allocations, graphs
    warmed = time.perf_counter()
    answer = SamplingParams(max_tokens=64, temperature=0.0, stop_token_ids=tuple(stop_ids))
    ids = list(engine.generate(prompt_ids, answer))
    done = time.perf_counter()
    engine.shutdown()
    return {
        "tensorrt_llm": str(getattr(engine._trtllm, "__version__", "unknown")),
        "load_s": round(loaded - started, 3),
        "warmup_s": round(warmed - loaded, 3),
        "generate_s": round(done - warmed, 3),
        "tokens": len(ids),
        "ids": ids,
    }
