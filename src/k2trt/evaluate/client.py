"""HTTP to an OpenAI-compatible `/chat/completions`: retries with backoff, streamed answers
rebuilt into one chat.completion, errors recorded the way K2-Vendor-Verifier records them.

Upstream-defined (MoonshotAI/K2-Vendor-Verifier @ 0bc5061b, `tool_calls_eval.py`): the backoff
(2 s doubling per attempt, capped at 60 s, plus up to 25 % jitter), the rebuilt response of a
streamed request (content and reasoning_content joined, tool calls gathered by index, names
set, argument pieces appended; finish_reason "stop" when none came), and a failure's fields
`error_type` / `error_message` / `error`. Error type names and the retried statuses (408, 409,
429, 5xx, connection errors, timeouts) are the openai-python SDK's, which K2VV runs on.

Ours: retries are bounded (`retries` more attempts, then the request is failed; K2VV retries
429 and connection errors forever), Retry-After is honoured (up to the cap), `timeout_s`
bounds a whole attempt (a stream included), an answer is cut off past MAX_RESPONSE_BYTES, and a
streamed answer's usage (the chunk without choices that include_usage asks for) is kept; K2VV
drops it.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

BACKOFF_BASE_S, BACKOFF_MAX_S = 2.0, 60.0
CONNECT_TIMEOUT_S = 60.0
MAX_RESPONSE_BYTES = 32 << 20
READ_CHUNK = 64 << 10
# openai-python's exception class for each status it raises on (what K2VV's error_type shows)
STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


class Failure(Exception):
    """One failed attempt: the error type K2VV would record, and whether to try again."""

    def __init__(
        self, error_type: str, message: str, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable
        self.retry_after = retry_after

    def record(self) -> dict[str, str]:
        """K2VV's `_serialize_error` fields."""
        return {"error_type": self.error_type, "error_message": str(self), "error": str(self)}


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to send: `base_url` is the OpenAI base (…/v1)."""

    base_url: str
    api_key: str | None = None
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = BACKOFF_BASE_S
    max_backoff_s: float = BACKOFF_MAX_S
    extra_body: dict[str, Any] = field(default_factory=dict)


def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """K2VV's delay before retry `attempt` (0-based): base * 2**attempt, capped, + <=25 %.

    >>> 8.0 <= backoff_delay(2, 2.0, 60.0) <= 10.0, 60.0 <= backoff_delay(9, 2.0, 60.0) <= 75.0
    (True, True)
    """
    delay = min(base_s * 2.0**attempt, cap_s)
    return float(delay + delay * random.uniform(0, 0.25))


def retryable_status(status: int) -> bool:
    """The statuses openai-python retries."""
    return status in (408, 409, 429) or status >= 500


def status_error(status: int) -> str:
    """openai-python's exception name for an HTTP error status.

    >>> status_error(429), status_error(503), status_error(418)
    ('RateLimitError', 'InternalServerError', 'APIStatusError')
    """
    if status >= 500:
        return "InternalServerError"
    return STATUS_ERRORS.get(status, "APIStatusError")


class ChatClient:
    """Sends chat requests with retries; thread-safe (one HTTP session per thread).

    >>> client = ChatClient(ClientConfig("http://127.0.0.1:8000/v1"))  # doctest: +SKIP
    >>> client.send({"model": "m", "messages": [{"role": "user", "content": "hi"}]})  # doctest: +SKIP
    ('success', {'id': ..., 'choices': [...], ...})
    """  # noqa: E501

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.closed = False
        key = config.api_key or os.environ.get("OPENAI_API_KEY")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def url(self, path: str) -> str:
        return self.config.base_url.rstrip("/") + path

    def send(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """("success", the chat.completion) or ("failed", K2VV's error fields), after retries."""
        attempt = 0
        while True:
            try:
                return "success", self._once(body)
            except Failure as failure:
                if self.closed or not failure.retryable or attempt >= self.config.retries:
                    return "failed", failure.record()
                delay = backoff_delay(attempt, self.config.backoff_s, self.config.max_backoff_s)
                if failure.retry_after is not None:
                    delay = min(failure.retry_after, self.config.max_backoff_s)
                attempt += 1
                time.sleep(delay)

    def models(self) -> list[str]:
        """The ids GET /models lists (one attempt; Failure when the endpoint is not reached)."""
        with self._request("GET", "/models", None) as response:
            data = json.loads(self._read(response, time.monotonic() + self.config.timeout_s))
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            return []
        return [m["id"] for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def close(self) -> None:
        """Close every connection (requests in flight fail at once) and stop retrying."""
        self.closed = True
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _session(self) -> requests.Session:
        if self.closed:
            raise Failure("APIConnectionError", "Connection error: the client is closed", False)
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> requests.Response:
        timeout = (min(CONNECT_TIMEOUT_S, self.config.timeout_s), self.config.timeout_s)
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = self._session().request(
                method, self.url(path), data=data, headers=self._headers, timeout=timeout,
                stream=True,
            )  # fmt: skip
        except requests.Timeout as err:
            raise Failure("APITimeoutError", f"Request timed out: {err}", True) from None
        except requests.RequestException as err:
            raise Failure("APIConnectionError", f"Connection error: {err}", True) from None
        if response.status_code >= 400:
            with response:
                text = self._read(response, time.monotonic() + self.config.timeout_s, 4096)
            raise Failure(
                status_error(response.status_code),
                f"Error code: {response.status_code} - {text.decode('utf-8', 'replace')}"[:1000],
                retryable_status(response.status_code),
                retry_after(response),
            )
        return response

    def _read(self, response: requests.Response, deadline: float, limit: int = 0) -> bytes:
        """The body, bounded in time and size (`limit`: keep that much and stop quietly)."""
        parts, size = [], 0
        for chunk in self._chunks(response.iter_content(READ_CHUNK), deadline):
            parts.append(chunk)
            size += len(chunk)
            if limit and size >= limit:
                break
            if size > MAX_RESPONSE_BYTES:
                raise Failure("APIError", f"answer longer than {MAX_RESPONSE_BYTES} bytes", False)
        return b"".join(parts)[: limit or None]

    def _chunks(self, pieces: Iterator[bytes], deadline: float) -> Iterator[bytes]:
        try:
            for piece in pieces:
                yield piece
                if time.monotonic() > deadline:
                    raise Failure(
                        "APITimeoutError",
                        f"Request timed out after {self.config.timeout_s:g} s",
                        True,
                    )
        except requests.Timeout as err:
            raise Failure("APITimeoutError", f"Request timed out: {err}", True) from None
        except requests.RequestException as err:
            raise Failure("APIConnectionError", f"Connection error: {err}", True) from None

    def _once(self, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.config.timeout_s
        with self._request("POST", "/chat/completions", {**body, **self.config.extra_body}) as r:
            if body.get("stream", False):
                return rebuild_stream(self._events(r, deadline), str(body.get("model", "")))
            text = self._read(r, deadline)
        try:
            answer = json.loads(text)
        except ValueError as err:
            raise Failure(
                "APIResponseValidationError", f"answer is not JSON: {err}", False
            ) from None
        if not isinstance(answer, dict):
            raise Failure("APIResponseValidationError", "answer is not a JSON object", False)
        return answer

    def _events(self, response: requests.Response, deadline: float) -> Iterator[dict[str, Any]]:
        """The JSON objects of an SSE stream's `data:` lines, up to `[DONE]`."""
        size = 0
        lines = response.iter_lines(chunk_size=READ_CHUNK)
        for line in self._chunks(lines, deadline):
            size += len(line)
            if size > MAX_RESPONSE_BYTES:
                raise Failure("APIError", f"answer longer than {MAX_RESPONSE_BYTES} bytes", False)
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as err:
                raise Failure("APIError", f"stream event is not JSON: {err}", False) from None
            if isinstance(event, dict) and "error" in event:
                message = f"error in stream: {json.dumps(event['error'])}"[:1000]
                raise Failure("APIError", message, False)
            if isinstance(event, dict):
                yield event


def retry_after(response: requests.Response) -> float | None:
    """Seconds from a Retry-After header given in seconds (dates are ignored)."""
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None


def rebuild_stream(events: Iterator[dict[str, Any]], model: str) -> dict[str, Any]:
    """One chat.completion from stream chunks, as K2VV's `_handle_stream_request` builds it.

    >>> events = [{"id": "c1", "created": 5, "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
    ...     {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "functions.f:0",
    ...      "type": "function", "function": {"name": "f", "arguments": "{\\"a\\""}}]}}]},
    ...     {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0,
    ...      "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]},
    ...     {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}]
    >>> answer = rebuild_stream(iter(events), "m")
    >>> answer["choices"][0]["message"]["tool_calls"][0]["function"], answer["usage"]["total_tokens"]
    ({'name': 'f', 'arguments': '{"a": 1}'}, 7)
    """  # noqa: E501
    request_id = created = finish_reason = usage = None
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        request_id = event.get("id") or request_id
        created = event.get("created") or created
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            continue
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("content"):
                content.append(str(delta["content"]))
            if delta.get("reasoning_content"):
                reasoning.append(str(delta["reasoning_content"]))
            if isinstance(delta.get("tool_calls"), list):
                gather_tool_calls(delta["tool_calls"], calls)
        elif choice.get("text"):
            content.append(str(choice["text"]))
        finish_reason = choice.get("finish_reason") or finish_reason
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(content),
        "tool_calls": list(calls.values()) if calls else None,
    }
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason or "stop"}],
        "usage": usage,
    }


def gather_tool_calls(deltas: list[Any], calls: dict[int, dict[str, Any]]) -> None:
    """Add one chunk's tool-call deltas to `calls` (by index: name set, arguments appended)."""
    for delta in deltas:
        if not isinstance(delta, dict):
            continue
        index = delta["index"] if isinstance(delta.get("index"), int) else 0
        call = calls.setdefault(
            index,
            {
                "id": delta.get("id"),
                "type": delta.get("type") or "function",
                "function": {"name": "", "arguments": ""},
            },
        )
        function = delta.get("function")
        if isinstance(function, dict):
            if function.get("name"):
                call["function"]["name"] = function["name"]
            if function.get("arguments"):
                call["function"]["arguments"] += str(function["arguments"])
