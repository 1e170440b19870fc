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
from k2trt.runtime.types import SamplingParams, never


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
        """Stream generated ids; aborts the request when `cancelled()` turns true."""
        sampling = self._trtllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop_token_ids=list(params.stop_token_ids),
            end_id=params.stop_token_ids[0] if params.stop_token_ids else None,
            detokenize=False,
        )
        result = self._llm.generate_async(list(prompt_ids), sampling, streaming=True)
        for update in result:
            if cancelled():
                result.abort()
                return
            yield from update.outputs[0].token_ids_diff

    def shutdown(self) -> None:
        self._llm.shutdown()


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
