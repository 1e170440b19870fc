"""`tensorrt_llm`: the LLM, streaming deltas (ids, and text for text prompts).

The engine is TensorRT-LLM's LLM API built from `model.yaml` (`k2trt.runtime.trtllm`), or,
when config.pbtxt says `engine: reference`, the CPU reference engine on a small checkpoint
(`k2trt.runtime.reference.engine_for`, which honours $K2TRT_SCRIPT). Same inputs and outputs
either way (spec.LLM_INPUTS / LLM_OUTPUTS).

Every response is a delta: `output_ids` holds only new ids and `text_output` only their text
(incremental detokenization: multi-byte characters and spaces come out whole, once). The last
response carries `finish_reason`. A streaming request gets its ids in responses of
`stream_interval` ids (model.yaml's LLM API option; TensorRT-LLM's default 1): the first id at
once, then every `stream_interval` ids, and whatever is pending with the last. Fewer, larger
responses cost every layer above less CPU per token. Each request runs in its own thread; it
stops soon after Triton reports it cancelled, or after a `cancel` request names its
`request_key` (the `chat` model's way to stop it on servers whose BLS iterators have no
cancel()).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from k2trt.chat.grammar import SchemaRejected
from k2trt.chat.grammar_engine import MaskFactory, ToolGrammar
from k2trt.errors import K2Error
from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.deltas import StopStrings
from k2trt.runtime.types import Engine, RequestRejected, SamplingParams
from k2trt.runtime.wire import rejection_message, scalar, strings
from k2trt.triton_repo.serving.common import TritonModel
from k2trt.triton_repo.spec import (
    ENGINE_REFERENCE,
    ENGINE_TRTLLM,
    LLM_INPUTS,
    LLM_MAX_BATCH_SIZE,
    P_CHECKPOINT,
    P_ENGINE,
)

MODEL_YAML = "model.yaml"
CONFIG_ENV = "LLM_CONFIG_PATH"  # as upstream's LLM-API model: another model.yaml
NOT_LLM_OPTIONS = ("model", "triton_config")
GUIDE_STRUCTURAL_TAG = "structural_tag"
STREAM_INTERVAL = "stream_interval"  # LLM API option: generated ids per streamed response
UNSUPPORTED_IF_SET = {  # input: the value that means "not used"
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "exclude_input_in_output": True,
}


@dataclass(frozen=True)
class Job:
    """One generation request, parsed and checked."""

    prompt_ids: list[int]
    params: SamplingParams
    text: bool  # the prompt came as text_input: answer with text_output too
    streaming: bool
    stop_words: tuple[str, ...] = ()
    key: str | None = None


@dataclass(frozen=True)
class Piece:
    """What one response carries: new ids, their text, and the reason on the last one."""

    ids: list[int]
    text: str = ""
    finish_reason: str = ""


def _opt(arrays: Mapping[str, NDArray[Any]], name: str, default: Any) -> Any:
    return scalar(arrays, name) if name in arrays else default


def parse_job(
    files: ModelFiles, arrays: Mapping[str, NDArray[Any]], grammar: ToolGrammar | None = None
) -> Job:
    """A Job from the input tensors; RequestRejected names a bad or unsupported input.
    A `structural_tag` guide (what `chat` sends for a constrained tool call) is compiled with
    `grammar` into the job's constraint; other guide types are refused."""
    for name, unused in UNSUPPORTED_IF_SET.items():
        if name in arrays and _opt(arrays, name, unused) != unused:
            raise RequestRejected(f"{name} is not supported by this model", name)
    constraint = _guide(arrays, grammar)
    ids, text = _prompt(files, arrays)
    if not ids:
        raise RequestRejected("the prompt is empty", "input_ids")
    room = files.max_context - len(ids)
    if room < 1:
        raise RequestRejected(
            f"the prompt is {len(ids)} tokens; the context is {files.max_context}", "input_ids"
        )
    wanted = int(_opt(arrays, "max_tokens", room))
    if wanted < 1:
        raise RequestRejected(f"max_tokens must be at least 1, got {wanted}", "max_tokens")
    extra = [int(i) for i in np.asarray(arrays.get("stop_token_ids", [])).reshape(-1)]
    seed = _opt(arrays, "seed", None)
    temperature = float(_opt(arrays, "temperature", SamplingParams.temperature))
    top_p = float(_opt(arrays, "top_p", SamplingParams.top_p))
    if not (math.isfinite(temperature) and temperature >= 0):
        raise RequestRejected(f"temperature must be >= 0, got {temperature}", "temperature")
    if not 0 < top_p <= 1:
        raise RequestRejected(f"top_p must be in (0, 1], got {top_p}", "top_p")
    params = SamplingParams(
        max_tokens=min(wanted, room),
        temperature=temperature,
        top_p=top_p,
        seed=None if seed is None else int(seed),
        stop_token_ids=tuple(dict.fromkeys([*files.stop_token_ids, *extra])),
        constraint=constraint,
    )
    words = [w.decode("utf-8") for w in np.asarray(arrays.get("stop_words", [])).reshape(-1)]
    streaming = bool(_opt(arrays, "streaming", _opt(arrays, "stream", False)))
    key = _opt(arrays, "request_key", None)
    return Job(ids, params, text, streaming, tuple(words), key)


def _guide(arrays: Mapping[str, NDArray[Any]], grammar: ToolGrammar | None) -> MaskFactory | None:
    if "guided_decoding_guide" not in arrays and "guided_decoding_guide_type" not in arrays:
        return None
    kind = _opt(arrays, "guided_decoding_guide_type", "")
    if kind != GUIDE_STRUCTURAL_TAG or grammar is None or "guided_decoding_guide" not in arrays:
        raise RequestRejected(
            f"guided decoding: only guided_decoding_guide_type {GUIDE_STRUCTURAL_TAG!r} with a "
            f"guided_decoding_guide is supported (the chat model's tool calls), got {kind!r}",
            "guided_decoding_guide_type",
        )
    try:
        return grammar.from_tag(scalar(arrays, "guided_decoding_guide"))
    except SchemaRejected as exc:
        raise RequestRejected(str(exc), exc.field) from None


def _prompt(files: ModelFiles, arrays: Mapping[str, NDArray[Any]]) -> tuple[list[int], bool]:
    if "input_ids" in arrays:
        ids = [int(i) for i in np.asarray(arrays["input_ids"]).reshape(-1)]
        bad = next((i for i in ids if not 0 <= i < files.tokenizer.vocab_size), None)
        if bad is not None:
            raise RequestRejected(f"input_ids: {bad} is not a token id", "input_ids")
        return ids, False
    if "text_input" in arrays:
        # A rendered prompt (Triton's OpenAI frontend applies the chat template itself): its
        # markers are special tokens. Nothing is prepended: the template has its own BOS.
        return files.tokenizer.encode_with_specials(scalar(arrays, "text_input")), True
    raise RequestRejected("needs input_ids or text_input", "input_ids")


def generate(
    engine: Engine, files: ModelFiles, job: Job, cancelled: Callable[[], bool]
) -> Iterator[Piece]:
    """Pieces for one job: one per generated id (with its text if `job.text`), then the last
    one with what the detokenizer held back and the finish reason (stop | length |
    cancelled). Text is decoded when the job wants it or has stop strings to find."""
    stops = frozenset(job.params.stop_token_ids)
    decode = job.text or bool(job.stop_words)
    decoder = files.tokenizer.incremental_decoder(skip_special_tokens=True)
    words = StopStrings(job.stop_words)
    count, last = 0, None

    def stop_now() -> bool:
        return words.matched is not None or cancelled()

    for token in engine.generate(job.prompt_ids, job.params, stop_now):
        if words.matched is not None:
            continue  # the engine stops at its next check; these ids are not the answer
        count, last = count + 1, token
        text = words.feed(decoder.feed([token])) if decode and token not in stops else ""
        yield Piece([token], text if job.text else "")
    tail = words.feed(decoder.flush()) + words.flush() if decode and words.matched is None else ""
    if words.matched is not None or last in stops:
        reason = "stop"
    elif cancelled():
        reason = "cancelled"
    else:
        reason = "length" if count >= job.params.max_tokens else "stop"
    yield Piece([], tail if job.text else "", reason)


def piece_arrays(piece: Piece, job: Job, prompt_tokens: int) -> dict[str, NDArray[Any]]:
    """The response tensors for a piece, with the batch dimension (max_batch_size 1)."""
    out = {
        "output_ids": np.array([piece.ids], dtype=np.int32).reshape(1, len(piece.ids)),
        "finish_reason": strings([piece.finish_reason], (1, 1)),
        "num_input_tokens": np.array([[prompt_tokens]], dtype=np.int32),
        "num_output_tokens": np.array([[len(piece.ids)]], dtype=np.int32),
    }
    if job.text:
        out["text_output"] = strings([piece.text], (1, 1))
    return out


def merge(pieces: list[Piece]) -> Piece:
    """All pieces as one (a request that did not ask to stream gets one response)."""
    return Piece(
        [i for p in pieces for i in p.ids],
        "".join(p.text for p in pieces),
        pieces[-1].finish_reason if pieces else "",
    )


def batched(pieces: Iterator[Piece], interval: int) -> Iterator[Piece]:
    """`pieces` regrouped into responses of `interval` ids: the first id alone (time to first
    token does not wait), then every `interval` ids; the last piece carries what is pending.

    >>> [p.ids for p in batched(iter([Piece([i]) for i in range(5)] + [Piece([], "", "stop")]), 2)]
    [[0], [1, 2], [3, 4], []]
    """
    pending: list[Piece] = []
    count, sent = 0, False
    for piece in pieces:
        pending.append(piece)
        count += len(piece.ids)
        if piece.finish_reason or (count and not sent) or count >= interval:
            yield merge(pending)
            pending, count, sent = [], 0, sent or bool(count)
    if pending:
        yield merge(pending)


def stream_interval(options: Mapping[str, Any], path: Path) -> int:
    """model.yaml's stream_interval (1 when absent); K2Error naming the file otherwise."""
    value = options.get(STREAM_INTERVAL, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise K2Error(f"{STREAM_INTERVAL}: expected an integer >= 1, got {value!r}", path=path)
    return value


def read_model_yaml(path: Path) -> dict[str, Any]:
    """model.yaml as a dict; K2Error naming the file when it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise K2Error(f"cannot read the LLM API options: {exc}", path=path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise K2Error("expected a mapping with `model: <checkpoint>`", path=path)
    return data


class LlmModel(TritonModel):
    """Decoupled: responses are sent from one thread per request."""

    def setup(self) -> None:
        self.files = self.model_files()
        self.grammar = ToolGrammar(self.files.tokenizer, self.files.stop_token_ids)
        self.model_yaml = read_model_yaml(self._yaml_path())
        self._check_triton_config()
        self.interval = stream_interval(self.model_yaml, self._yaml_path())
        self.engine = self._engine()
        self._keys: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def _yaml_path(self) -> Path:
        return self.version_dir / os.environ.get(CONFIG_ENV, MODEL_YAML)

    def _check_triton_config(self) -> None:
        """model.yaml's triton_config must say what config.pbtxt says (upstream's launcher
        disables auto-complete, so config.pbtxt is what Triton uses)."""
        want = {
            "max_batch_size": int(self.config.get("max_batch_size", 0)),
            "decoupled": bool(self.config.get("model_transaction_policy", {}).get("decoupled")),
        }
        got = self.model_yaml.get("triton_config", want)
        if want["max_batch_size"] != LLM_MAX_BATCH_SIZE or not want["decoupled"] or got != want:
            raise K2Error(
                f"triton_config {got} does not match config.pbtxt (max_batch_size "
                f"{want['max_batch_size']}, decoupled {want['decoupled']}; expected "
                f"{LLM_MAX_BATCH_SIZE} and true)",
                path=self._yaml_path(),
            )

    def _engine(self) -> Engine:
        kind = self.param(P_ENGINE, ENGINE_TRTLLM)
        if kind == ENGINE_REFERENCE:
            from k2trt.runtime.reference import engine_for

            checkpoint = self.param(P_CHECKPOINT)
            self.log(f"k2trt: CPU reference engine on {checkpoint}")
            return engine_for(checkpoint)
        if kind != ENGINE_TRTLLM:
            raise K2Error(f"engine {kind!r}: expected {ENGINE_TRTLLM} or {ENGINE_REFERENCE}")
        from k2trt.runtime.trtllm import TrtllmEngine

        options = {k: v for k, v in self.model_yaml.items() if k not in NOT_LLM_OPTIONS}
        return TrtllmEngine.from_options(self.model_yaml["model"], options)

    def execute(self, requests: list[Any]) -> None:
        """Triton's entry point: start each request's thread and return at once."""
        for request in requests:
            self._start(request)

    def _start(self, request: Any) -> None:
        sender = request.get_response_sender()
        arrays = self.inputs(request, [t.name for t in LLM_INPUTS])
        try:
            if "cancel" in arrays and bool(scalar(arrays, "cancel")):
                self._cancel(_opt(arrays, "request_key", ""))
                sender.send(flags=self.final)
                return
            job = parse_job(self.files, arrays, self.grammar)
        except RequestRejected as exc:
            sender.send(self.error(rejection_message(exc)), flags=self.final)
            return
        thread = threading.Thread(target=self._run, args=(request, sender, job), daemon=True)
        thread.start()

    def _cancel(self, key: str) -> None:
        with self._lock:
            event = self._keys.get(key)
        if event is not None:
            event.set()

    def _run(self, request: Any, sender: Any, job: Job) -> None:
        event = threading.Event()
        if job.key:
            with self._lock:
                self._keys[job.key] = event
        # Only asked before the final response: afterwards Triton has released the request,
        # and tritonserver 2.51 crashes (SIGSEGV in TRITONBACKEND_ResponseFactoryIsCancelled).
        cancelled = lambda: event.is_set() or bool(request.is_cancelled())  # noqa: E731
        try:
            reason = self._respond(sender, job, generate(self.engine, self.files, job, cancelled))
            if reason == "cancelled":
                self.log(f"k2trt: generation {job.key or ''} cancelled")
        except Exception as exc:
            message = f"generation failed: {type(exc).__name__}: {exc}"
            sender.send(self.error(message), flags=self.final)
        finally:
            if job.key:
                with self._lock:
                    self._keys.pop(job.key, None)

    def _respond(self, sender: Any, job: Job, pieces: Iterator[Piece]) -> str:
        """Send the pieces (one response unless streaming); the finish reason."""
        prompt = len(job.prompt_ids)
        if not job.streaming:
            whole = merge(list(pieces))
            sender.send(self.response(piece_arrays(whole, job, prompt)), flags=self.final)
            return whole.finish_reason
        for piece in batched(pieces, self.interval):
            flags = self.final if piece.finish_reason else 0
            sender.send(self.response(piece_arrays(piece, job, prompt)), flags=flags)
            if piece.finish_reason:
                return piece.finish_reason
        return ""

    def finalize(self) -> None:
        """Triton unloads the model: stop every generation, release the engine."""
        with self._lock:
            for event in self._keys.values():
                event.set()
        shutdown = getattr(self.engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
