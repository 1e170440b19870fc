"""Plain data passed between engines, the chat turn, the Triton models and the gateway.

An `Engine` turns prompt token ids into generated token ids (CPU reference, scripted, or
TensorRT-LLM). A `ChatBackend` turns a `ChatRequest` into `ChatChunk`s (the local backend runs
an engine in-process; the Triton backend streams from the packaged `chat` model). Chunks are
deltas, never cumulative text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class TokenMask(Protocol):
    """One generation's constraint state: mask the logits, then accept the sampled id."""

    def apply(self, logits: Any) -> None: ...

    def accept(self, token: int) -> None: ...


class TokenConstraint(Protocol):
    """A per-request constraint (a compiled tool-call grammar); `start()` once per generation."""

    def start(self) -> TokenMask: ...


@dataclass(frozen=True)
class SamplingParams:
    """What an engine needs besides the prompt. temperature 0 means greedy.

    `constraint` (k2trt.chat.grammar_engine.MaskFactory): engines that sample mask every
    step with it (the CPU reference engine; TensorRT-LLM gets the grammar itself)."""

    max_tokens: int
    temperature: float = 0.6
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    constraint: TokenConstraint | None = None


def never() -> bool:
    return False


class Engine(Protocol):
    """Token ids in, generated ids out one at a time.

    Generation ends after yielding a stop id, after `max_tokens` ids, or soon after
    `cancelled()` turns true (checked at least once per token)."""

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] = never,
    ) -> Iterator[int]: ...


# tool_choice as OpenAI spells it: "auto" | "none" | "required" | {"type": "function",
# "function": {"name": NAME}}.
ToolChoice = str | Mapping[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request, API-neutral (OpenAI and Anthropic requests map onto it).

    `max_tokens` None means "up to the context limit"; the gateway caps it before this point."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = "auto"
    max_tokens: int | None = None
    temperature: float = 0.6
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class ChatChunk:
    """One streamed piece of an answer.

    `tool_calls` holds OpenAI stream tool-call deltas: the first for a call carries `index`,
    `id`, `type` and `function.name` (arguments ""), later ones `index` and an
    `function.arguments` piece. `prompt_tokens` may be set on every chunk (the prompt is known
    before the first; Anthropic's `message_start` reports it); `finish_reason` ("stop" |
    "length" | "tool_calls") and `completion_tokens` are set on the last chunk only, and so is
    `stop_sequence`: the request's stop string that ended the turn, exactly as listed (None
    when none did)."""

    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_sequence: str | None = None


class BackendUnavailable(Exception):
    """The backend cannot be reached or has no model loaded (HTTP 503)."""


class RequestRejected(Exception):
    """The request is invalid for this model, e.g. the prompt exceeds the context (HTTP 400).

    `field` names the request field at fault ("messages", "max_tokens", ...)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class ChatBackend(Protocol):
    """What the HTTP gateway drives."""

    model_id: str
    max_context: int  # tokens: prompt + completion

    async def ready(self) -> bool: ...

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Chunks until (and including) the one with `finish_reason`. Closing the iterator
        (client gone) cancels generation. Raises BackendUnavailable or RequestRejected."""
        ...

    async def close(self) -> None: ...
