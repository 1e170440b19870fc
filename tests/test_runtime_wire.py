"""The Triton `chat` model's wire format: chunks and requests through tensors and back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from k2trt.runtime.types import ChatChunk, ChatRequest, RequestRejected
from k2trt.runtime.wire import (
    CHAT_OUTPUTS,
    NUMPY_TYPES,
    chunk_to_outputs,
    inputs_to_request,
    outputs_to_chunk,
    parse_rejection,
    rejection_message,
    request_to_inputs,
    scalar,
    strings,
)

LAST = ChatChunk(
    content="fin é",
    finish_reason="stop",
    prompt_tokens=12,
    completion_tokens=4,
    stop_sequence="Ende ü",
)
CALL = ChatChunk(
    tool_calls=[{"index": 0, "id": "functions.f:0", "type": "function", "function": {"name": "f"}}]
)


@pytest.mark.parametrize("chunk", [LAST, CALL, ChatChunk(content="x"), ChatChunk()])
def test_chunk_round_trip(chunk: ChatChunk) -> None:
    assert outputs_to_chunk(chunk_to_outputs(chunk)) == chunk


def test_every_output_is_one_tensor_of_its_declared_type() -> None:
    outputs = chunk_to_outputs(LAST)
    assert list(outputs) == [f.name for f in CHAT_OUTPUTS]
    for f in CHAT_OUTPUTS:
        assert outputs[f.name].shape == (1,)
        assert outputs[f.name].dtype == np.dtype(NUMPY_TYPES[f.triton_type]), f.name
    assert outputs["stop_sequence"][0] == "Ende ü".encode()


def test_chunk_fields_and_outputs_agree() -> None:
    fields = [f.name for f in dataclasses.fields(ChatChunk)]
    assert sorted(fields) == sorted(f.name for f in CHAT_OUTPUTS)


def test_no_stop_sequence_is_empty_on_the_wire() -> None:
    outputs = chunk_to_outputs(ChatChunk(finish_reason="length"))
    assert outputs["stop_sequence"].tolist() == [b""]
    assert outputs_to_chunk(outputs).stop_sequence is None


def test_request_round_trip() -> None:
    req = ChatRequest(
        messages=[{"role": "user", "content": "hé"}],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        max_tokens=9,
        temperature=0.3,
        top_p=0.9,
        seed=7,
        stop=("END", "ü"),
    )
    assert inputs_to_request(request_to_inputs(req)) == req


def test_bad_json_input_names_the_field() -> None:
    arrays = request_to_inputs(ChatRequest([{"role": "user", "content": "x"}]))
    arrays["stop"] = np.array([b'["ok", 3]'], dtype=np.object_)
    with pytest.raises(RequestRejected) as exc:
        inputs_to_request(arrays)
    assert exc.value.field == "stop"


def test_rejection_text_round_trips() -> None:
    exc = RequestRejected("the prompt is 9 tokens; the context is 8", "messages")
    back = parse_rejection("in model 'chat': " + rejection_message(exc))
    assert back is not None and (back.field, str(back)) == ("messages", str(exc))
    assert parse_rejection("something else") is None


def test_scalar_of_any_shape_and_its_errors() -> None:
    arrays = {"n": np.array([[7]], dtype=np.int64), "s": strings(["é"], (1, 1))}
    assert (scalar(arrays, "n"), scalar(arrays, "s")) == (7, "é")
    bad = {"two": np.array([1, 2]), "latin": np.array([b"\xe9"], dtype=np.object_)}
    with pytest.raises(RequestRejected, match="two: expected one value, got 2"):
        scalar(bad, "two")
    with pytest.raises(RequestRejected, match="latin: not UTF-8 text") as exc:
        scalar(bad, "latin")
    assert exc.value.field == "latin"
