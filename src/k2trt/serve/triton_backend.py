"""`TritonBackend`: the packaged Triton `chat` model, streamed over gRPC.

One `ModelStreamInfer` call per request, built from `runtime.wire` (the chat model's input
tensors), asking for `triton_enable_empty_final_response`; every response with outputs is
one `ChatChunk`; the response flagged `triton_final_response` ends the answer (the chat
model sends its last chunk with the flag, or Triton an empty final response). Closing the
iterator before that (the HTTP client went away) cancels the gRPC call, which Triton passes
to the model as `request.is_cancelled()`.

Errors: connection failures, a missing or unready model -> BackendUnavailable; a model error
`request rejected (FIELD): MESSAGE` (what the chat model sends for a bad request; Triton may
wrap it) -> RequestRejected(MESSAGE, FIELD); anything else -> TritonError.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from numpy.typing import NDArray
from tritonclient.grpc import InferResult, service_pb2, service_pb2_grpc
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from k2trt.runtime.types import BackendUnavailable, ChatChunk, ChatRequest
from k2trt.runtime.wire import (
    CHAT_MODEL,
    CHAT_OUTPUTS,
    outputs_to_chunk,
    parse_rejection,
    request_to_inputs,
)

FINAL = "triton_final_response"
EMPTY_FINAL = "triton_enable_empty_final_response"
# Error texts of a Triton that is up without the model (load failed, unloaded, loading).
UNAVAILABLE_TEXT = re.compile(r"unknown model|is not found|not ready|unavailable", re.I)
UNAVAILABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND}
)
MAX_MESSAGE = 2**31 - 1  # Triton's own limit; gRPC's 4 MB default is too small for long chats


class TritonError(RuntimeError):
    """Triton or the chat model failed for a reason that is not the request's fault."""


def _tensor(name: str, array: NDArray[Any]) -> tuple[Any, bytes]:
    """One input tensor and its raw bytes (BYTES: Triton's length-prefixed strings)."""
    datatype = np_to_triton_dtype(array.dtype)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=list(array.shape)
    )
    raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
    return tensor, raw


def infer_request(request: ChatRequest, request_id: str, model: str = CHAT_MODEL) -> Any:
    """The ModelInferRequest for one chat request (every chat output requested)."""
    msg = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in request_to_inputs(request).items():
        tensor, raw = _tensor(name, array)
        msg.inputs.append(tensor)
        msg.raw_input_contents.append(raw)
    for field in CHAT_OUTPUTS:
        msg.outputs.add(name=field.name)
    msg.parameters[EMPTY_FINAL].bool_param = True
    return msg


def response_chunk(response: Any) -> ChatChunk | None:
    """The chunk in one ModelInferResponse (None for Triton's empty final response)."""
    if not response.outputs:
        return None
    result = InferResult(response)
    return outputs_to_chunk({f.name: result.as_numpy(f.name) for f in CHAT_OUTPUTS})


def is_final(response: Any) -> bool:
    return FINAL in response.parameters and bool(response.parameters[FINAL].bool_param)


def model_error(text: str) -> Exception:
    """The exception for an error a stream response carries.

    >>> e = model_error("in chat: request rejected (messages): the prompt is 9 tokens")
    >>> type(e).__name__, e.field, str(e)
    ('RequestRejected', 'messages', 'the prompt is 9 tokens')
    """
    rejected = parse_rejection(text)
    if rejected is not None:
        return rejected
    if UNAVAILABLE_TEXT.search(text):
        return BackendUnavailable(text)
    return TritonError(text)


def rpc_error(exc: grpc.aio.AioRpcError) -> Exception:
    """The exception for a failed gRPC call."""
    details = exc.details() or exc.code().name
    if exc.code() in UNAVAILABLE_CODES:
        return BackendUnavailable(f"triton: {details}")
    return model_error(details)


class TritonBackend:
    """A ChatBackend over Triton's gRPC endpoint (`host:port`, usually port 8001).

    >>> backend = TritonBackend("localhost:8001", model_id="kimi-k2")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        model_id: str = "kimi-k2",
        max_context: int = 0,
        model: str = CHAT_MODEL,
        check_timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.model_id = model_id
        self.max_context = max_context  # 0: not known here (the chat model enforces it)
        self.model = model
        self.check_timeout_s = check_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _service(self) -> Any:
        # Created on first use, inside the event loop that serves requests.
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
            ]
            self._channel = grpc.aio.insecure_channel(self.url, options=options)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def ready(self) -> bool:
        """Server live and the chat model ready."""
        stub = self._service()
        try:
            live = await stub.ServerLive(
                service_pb2.ServerLiveRequest(), timeout=self.check_timeout_s
            )
            if not live.live:
                return False
            request = service_pb2.ModelReadyRequest(name=self.model)
            return bool((await stub.ModelReady(request, timeout=self.check_timeout_s)).ready)
        except grpc.aio.AioRpcError:
            return False

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """The answer's chunks; closing the iterator early cancels the Triton request."""
        return self._chunks(infer_request(request, uuid.uuid4().hex, self.model))

    async def _chunks(self, msg: Any) -> AsyncIterator[ChatChunk]:
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield msg
            await done.wait()  # keep our side open until the answer is complete

        call = self._service().ModelStreamInfer(requests())
        finished = False
        try:
            async for response in call:
                if response.error_message:
                    raise model_error(response.error_message)
                chunk = response_chunk(response.infer_response)
                if chunk is not None:
                    yield chunk
                if is_final(response.infer_response):
                    finished = True
                    return
            raise TritonError("triton: the stream ended without a final response")
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from None
        finally:
            done.set()
            if not finished:
                call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
