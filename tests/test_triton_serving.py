"""The packaged models run in-process: the four model.py files as installed, wired together
through a stand-in for triton_python_backend_utils (BLS included), with a scripted engine."""

from __future__ import annotations

import importlib
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from k2trt.errors import K2Error
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.deltas import DeltaStream
from k2trt.runtime.scripted import ScriptedEngine
from k2trt.runtime.types import ChatChunk, ChatRequest, RequestRejected, SamplingParams
from k2trt.runtime.wire import outputs_to_chunk, parse_rejection, request_to_inputs
from k2trt.triton_repo import spec
from k2trt.triton_repo.repository import REPOSITORY_DIR
from k2trt.triton_repo.serving.chat import ChatModel, files_dir
from k2trt.triton_repo.serving.llm import (
    Job,
    LlmModel,
    Piece,
    batched,
    generate,
    parse_job,
    stream_interval,
)
from k2trt.triton_repo.serving.post import DeltaStates, PostprocessingModel, post_request
from k2trt.triton_repo.serving.pre import PreprocessingModel
from k2trt.triton_repo.serving.roles import role_of
from triton_fixtures import (
    ARGUMENTS,
    CONTENT,
    REPLY,
    TOOLS,
    FakePb,
    FakeRequest,
    FakeResponse,
    load_models,
    serving,
    tiny_package,  # noqa: F401  (fixture)
)

USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def models(tiny_package: Path) -> dict[str, Any]:  # noqa: F811
    """The serving model behind each loaded model.py, by model name."""
    pb = FakePb()
    load_models(tiny_package / REPOSITORY_DIR, pb)
    return {name: serving(pb, name) for name in spec.MODELS}


@pytest.fixture(scope="module")
def files(tiny_package: Path) -> ModelFiles:  # noqa: F811
    return ModelFiles.load(tiny_package / REPOSITORY_DIR / spec.PRE_MODEL / spec.MODEL_FILES_DIR)


@pytest.fixture
def pb(models: dict[str, Any], files: ModelFiles) -> FakePb:
    """The harness with a fresh script: every generation plays REPLY (slowly enough to cancel)."""
    pb_: FakePb = models[spec.CHAT_MODEL].pb
    models[spec.LLM_MODEL].engine = ScriptedEngine(files.tokenizer, [REPLY] * 4, delay_s=0.002)
    models[spec.LLM_MODEL].interval = 1
    pb_.log.clear()
    pb_.bls_calls.clear()
    return pb_


def run_chat(pb: FakePb, req: ChatRequest, cancel_after: int | None = None) -> FakeRequest:
    """Send a chat request; wait for its final response (optionally cancel mid-stream)."""
    request = FakeRequest(request_to_inputs(req))
    pb.models[spec.CHAT_MODEL].execute([request])
    if cancel_after is not None:
        while len(request.sender.sent) < cancel_after:
            time.sleep(0.001)
        request.cancelled.set()
    assert request.sender.finished.wait(30), "no final response"
    return request


def chunks(request: FakeRequest) -> list[ChatChunk]:
    return [outputs_to_chunk(r.arrays()) for r in request.sender.responses() if not r.has_error()]


def test_chat_streams_a_scripted_tool_call(pb: FakePb, files: ModelFiles) -> None:
    req = ChatRequest(USER, tools=TOOLS, max_tokens=100)
    request = run_chat(pb, req)
    got = chunks(request)
    flags = [f for _, f in request.sender.sent]
    assert flags[-1] == 1 and not any(flags[:-1])  # final flag on the last response only
    assert "".join(c.content for c in got) == CONTENT
    assert all(c.content or c.tool_calls or c.finish_reason for c in got)  # nothing empty
    assert not any(c.content and c.tool_calls for c in got)
    calls = [d for c in got for d in c.tool_calls]
    assert calls[0] == {
        "index": 0,
        "id": "functions.get_weather:0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(d["function"]["arguments"] for d in calls[1:]) == ARGUMENTS
    last = got[-1]
    assert last.finish_reason == "tool_calls"
    assert last.prompt_tokens == len(prepare(files, req).prompt_ids)
    assert last.completion_tokens == len(files.tokenizer.encode_with_specials(REPLY)) + 1
    # preprocessing once, tensorrt_llm once; the ids are detokenized and parsed in chat
    assert pb.bls_calls == [spec.PRE_MODEL, spec.LLM_MODEL]
    assert len(serving(pb, spec.POST_MODEL).states) == 0


def test_rejection_names_the_field_and_never_reaches_the_llm(pb: FakePb) -> None:
    request = run_chat(pb, ChatRequest(USER, max_tokens=0))
    [(response, flags)] = request.sender.sent
    assert flags == 1 and isinstance(response, FakeResponse) and response.has_error()
    exc = parse_rejection(response.error().message())
    assert exc is not None and exc.field == "max_tokens"
    assert pb.bls_calls == [spec.PRE_MODEL]


def test_bad_json_is_rejected_naming_the_field(pb: FakePb) -> None:
    inputs = request_to_inputs(ChatRequest(USER))
    inputs["tools"] = np.array([b"{not json"], dtype=np.object_)
    request = FakeRequest(inputs)
    pb.models[spec.CHAT_MODEL].execute([request])
    assert request.sender.finished.wait(10)
    [(response, _)] = request.sender.sent
    assert response is not None
    exc = parse_rejection(response.error().message())
    assert exc is not None and exc.field == "tools"


def test_stop_string_ends_the_turn_and_the_llm_stops_itself(pb: FakePb) -> None:
    request = run_chat(pb, ChatRequest(USER, tools=TOOLS, max_tokens=100, stop=("weather",)))
    got = chunks(request)
    assert "".join(c.content for c in got) == "Let me check the "
    assert got[-1].finish_reason == "stop" and not any(c.tool_calls for c in got)
    assert [c.stop_sequence for c in got] == [None] * (len(got) - 1) + ["weather"]
    assert got[-1].completion_tokens < len(REPLY) // 4
    # The LLM saw the stop string itself: no cancel request was needed.
    assert pb.bls_calls.count(spec.LLM_MODEL) == 1
    assert len(serving(pb, spec.POST_MODEL).states) == 0


def test_client_cancel_stops_generation(pb: FakePb, models: dict[str, Any]) -> None:
    engine = models[spec.LLM_MODEL].engine
    request = run_chat(pb, ChatRequest(USER, tools=TOOLS, max_tokens=100), cancel_after=2)
    response, flags = request.sender.sent[-1]
    assert flags == 1 and response is not None and response.has_error()
    assert response.error().message() == "cancelled by the client"
    deadline = time.monotonic() + 10
    while not any("generation" in line and "cancelled" in line for line in pb.log):
        assert time.monotonic() < deadline, pb.log
        time.sleep(0.01)
    assert any("cancelled by the client" in line for line in pb.log)
    assert engine.remaining == 3  # one reply started, cut short
    assert len(serving(pb, spec.POST_MODEL).states) == 0


def test_llm_error_reaches_the_client(pb: FakePb, models: dict[str, Any]) -> None:
    models[spec.LLM_MODEL].engine = ScriptedEngine(models[spec.LLM_MODEL].files.tokenizer, [])
    request = run_chat(pb, ChatRequest(USER, max_tokens=4))
    response, flags = request.sender.sent[-1]
    assert flags == 1 and response is not None and response.has_error()
    assert response.error().message().startswith("generation failed: RuntimeError")
    assert len(serving(pb, spec.POST_MODEL).states) == 0


def test_no_cancel_check_after_the_final_response(pb: FakePb, models: dict[str, Any]) -> None:
    """tritonserver 2.51 segfaults when is_cancelled() is asked of a finished request."""
    llm = models[spec.LLM_MODEL]
    ids = [1, 2, 3]
    request = FakeRequest({"input_ids": np.array([ids], dtype=np.int32), "streaming": [[True]]})
    llm.execute([request])
    assert request.sender.finished.wait(10)
    time.sleep(0.05)
    assert request.cancel_checks_after_final == 0


# ---- tensorrt_llm on its own ----


def _llm(pb: FakePb, inputs: dict[str, Any]) -> FakeRequest:
    request = FakeRequest(inputs)
    pb.models[spec.LLM_MODEL].execute([request])
    assert request.sender.finished.wait(10)
    return request


def test_llm_text_prompt_streams_text_deltas(pb: FakePb, files: ModelFiles) -> None:
    prompt = "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>"
    request = _llm(
        pb,
        {
            "text_input": np.array([[prompt.encode()]], dtype=np.object_),
            "stream": np.array([[True]]),
            "return_num_input_tokens": np.array([[True]]),
            "return_num_output_tokens": np.array([[True]]),
        },
    )
    out = [r.arrays() for r in request.sender.responses()]
    ids = [int(i) for o in out for i in o["output_ids"].reshape(-1)]
    text = "".join(o["text_output"].reshape(-1)[0].decode() for o in out)
    assert ids == [*files.tokenizer.encode_with_specials(REPLY), files.stop_token_ids[0]]
    assert text == files.tokenizer.decode(ids, skip_special_tokens=True)
    assert sum(int(o["num_output_tokens"].reshape(-1)[0]) for o in out) == len(ids)
    prompt_len = len(files.tokenizer.encode_with_specials(prompt))
    assert {int(o["num_input_tokens"].reshape(-1)[0]) for o in out} == {prompt_len}
    reasons = [o["finish_reason"].reshape(-1)[0].decode() for o in out]
    assert reasons[-1] == "stop" and not any(reasons[:-1])
    assert all(o["output_ids"].shape[0] == 1 for o in out)  # the batch dimension


def test_llm_without_streaming_answers_once(pb: FakePb, files: ModelFiles) -> None:
    request = _llm(pb, {"input_ids": np.array([[5, 6, 7]], dtype=np.int32), "max_tokens": [[4]]})
    [(response, flags)] = request.sender.sent
    assert flags == 1 and response is not None
    out = response.arrays()
    assert out["output_ids"].tolist() == [files.tokenizer.encode_with_specials(REPLY)[:4]]
    assert out["finish_reason"].reshape(-1)[0] == b"length"
    assert "text_output" not in out  # ids in, ids out


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("presence_penalty", np.float32([[0.5]])),
        ("frequency_penalty", np.float32([[0.1]])),
        ("exclude_input_in_output", np.array([[False]])),
        ("guided_decoding_guide", np.array([[b"{}"]], dtype=np.object_)),
    ],
)
def test_llm_refuses_what_it_cannot_honour(pb: FakePb, name: str, value: Any) -> None:
    request = _llm(pb, {"text_input": np.array([[b"hi"]], dtype=np.object_), name: value})
    [(response, flags)] = request.sender.sent
    assert flags == 1 and response is not None
    exc = parse_rejection(response.error().message())
    assert exc is not None and exc.field.startswith(name.split("_guide")[0])


def test_llm_cancel_by_key(pb: FakePb, models: dict[str, Any], files: ModelFiles) -> None:
    models[spec.LLM_MODEL].engine = ScriptedEngine(files.tokenizer, [REPLY], delay_s=0.02)
    first = FakeRequest(
        {
            "input_ids": np.array([[1, 2]], dtype=np.int32),
            "streaming": np.array([[True]]),
            "request_key": np.array([[b"k1"]], dtype=np.object_),
        }
    )
    models[spec.LLM_MODEL].execute([first])
    while len(first.sender.sent) < 2:
        time.sleep(0.001)
    control = _llm(
        pb, {"request_key": np.array([[b"k1"]], dtype=np.object_), "cancel": np.array([[True]])}
    )
    assert control.sender.sent == [(None, 1)]
    assert first.sender.finished.wait(10)
    last = first.sender.responses()[-1].arrays()
    assert last["finish_reason"].reshape(-1)[0] == b"cancelled"
    assert len(first.sender.sent) < len(files.tokenizer.encode_with_specials(REPLY)) // 2


def _ids(request: FakeRequest) -> list[list[int]]:
    return [r.arrays()["output_ids"].reshape(-1).tolist() for r in request.sender.responses()]


def test_llm_streams_stream_interval_ids_per_response(
    pb: FakePb, models: dict[str, Any], files: ModelFiles
) -> None:
    """As TensorRT-LLM's stream_interval: the first id at once, then `interval` ids a response,
    the rest with the finish reason; the ids are the same as one a response."""
    inputs = {"input_ids": np.array([[1, 2]], dtype=np.int32), "streaming": np.array([[True]])}
    one = _ids(_llm(pb, inputs))
    models[spec.LLM_MODEL].interval = 4
    four = _ids(_llm(pb, inputs))
    assert [i for r in four for i in r] == [i for r in one for i in r]
    assert len(one) == len(reply_ids(files)) + 2  # each id, the stop id, the empty last
    n = len(reply_ids(files)) + 1  # the reply and the stop id
    assert [len(r) for r in four] == [1] + [4] * ((n - 1) // 4) + [(n - 1) % 4]


def reply_ids(files: ModelFiles) -> list[int]:
    return files.tokenizer.encode_with_specials(REPLY)


def test_chat_answer_does_not_depend_on_stream_interval(
    pb: FakePb, models: dict[str, Any], files: ModelFiles
) -> None:
    """Larger LLM responses: fewer chat responses, the same text, tool call and usage."""
    req = ChatRequest(USER, tools=TOOLS, max_tokens=100)
    answers = {}
    for interval in (1, 5):
        models[spec.LLM_MODEL].interval = interval
        answers[interval] = chunks(run_chat(pb, req))
    for got in answers.values():
        assert "".join(c.content for c in got) == CONTENT
        calls = [d for c in got for d in c.tool_calls]
        assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
        assert "".join(d["function"]["arguments"] for d in calls[1:]) == ARGUMENTS
        assert not any(c.content and c.tool_calls for c in got)
        last = got[-1]
        assert (last.finish_reason, last.completion_tokens) == (
            "tool_calls",
            len(reply_ids(files)) + 1,
        )
    assert len(answers[5]) < len(answers[1]) / 2


def test_stop_string_with_a_stream_interval(pb: FakePb, models: dict[str, Any]) -> None:
    models[spec.LLM_MODEL].interval = 8
    got = chunks(run_chat(pb, ChatRequest(USER, tools=TOOLS, max_tokens=100, stop=("weather",))))
    assert "".join(c.content for c in got) == "Let me check the "
    assert got[-1].finish_reason == "stop" and got[-1].stop_sequence == "weather"


def test_stream_interval_option(tmp_path: Path) -> None:
    yaml_path = tmp_path / "model.yaml"
    assert stream_interval({}, yaml_path) == 1
    assert stream_interval({"stream_interval": 8}, yaml_path) == 8
    for bad in (0, True, "8", 2.0):
        with pytest.raises(K2Error, match="stream_interval: expected an integer >= 1"):
            stream_interval({"stream_interval": bad}, yaml_path)


def test_batched_flushes_pending_ids_with_the_last_piece() -> None:
    pieces = [Piece([i]) for i in range(6)] + [Piece([], "", "length")]
    got = list(batched(iter(pieces), 4))
    assert [p.ids for p in got] == [[0], [1, 2, 3, 4], [5]]
    assert [p.finish_reason for p in got] == ["", "", "length"]
    assert [p.ids for p in batched(iter([Piece([], "", "cancelled")]), 4)] == [[]]


def test_chat_reads_its_own_model_files_else_postprocessing_s(tmp_path: Path) -> None:
    name = spec.MODEL_FILES_DIR
    chat, post = tmp_path / "chat", tmp_path / "postprocessing"
    (post / name).mkdir(parents=True)
    assert files_dir(chat, 2, name, "postprocessing") == post / name
    (post / "2" / name).mkdir(parents=True)
    assert files_dir(chat, 2, name, "postprocessing") == post / "2" / name
    (chat / name).mkdir(parents=True)
    assert files_dir(chat, 2, name, "postprocessing") == chat / name
    (chat / "2" / name).mkdir(parents=True)
    assert files_dir(chat, 2, name, "postprocessing") == chat / "2" / name


# ---- pieces ----


def test_generate_cuts_at_a_stop_word_across_tokens(files: ModelFiles) -> None:
    engine = ScriptedEngine(files.tokenizer, ["alpha beta gamma"])
    job = Job(
        prompt_ids=[1],
        params=SamplingParams(max_tokens=50, stop_token_ids=files.stop_token_ids),
        text=True,
        streaming=True,
        stop_words=("a gam",),
    )
    pieces = list(generate(engine, files, job, lambda: False))
    assert "".join(p.text for p in pieces) == "alpha bet"
    assert pieces[-1].finish_reason == "stop"


def test_parse_job_defaults_and_context(files: ModelFiles) -> None:
    job = parse_job(files, {"input_ids": np.array([[1, 2, 3]], dtype=np.int32)})
    assert job.params.max_tokens == files.max_context - 3
    assert job.params.stop_token_ids == files.stop_token_ids
    assert not job.streaming and not job.text
    extra = parse_job(
        files,
        {"input_ids": np.array([[1]], dtype=np.int32), "stop_token_ids": np.array([[7]])},
    )
    assert extra.params.stop_token_ids == (*files.stop_token_ids, 7)
    with pytest.raises(RequestRejected, match="needs input_ids or text_input"):
        parse_job(files, {})
    with pytest.raises(RequestRejected, match="not a token id"):
        parse_job(files, {"input_ids": np.array([[10**7]], dtype=np.int32)})
    one = {"input_ids": np.array([[1]], dtype=np.int32)}
    with pytest.raises(RequestRejected, match=r"top_p must be in \(0, 1\]") as info:
        parse_job(files, {**one, "top_p": np.float32([[0]])})
    assert info.value.field == "top_p"
    with pytest.raises(RequestRejected, match="temperature must be >= 0"):
        parse_job(files, {**one, "temperature": np.float32([[-1]])})
    with pytest.raises(RequestRejected, match="max_tokens must be at least 1"):
        parse_job(files, {**one, "max_tokens": np.int32([[0]])})


def test_delta_states_expire_and_unknown_keys_are_refused(files: ModelFiles) -> None:
    now = [0.0]
    states = DeltaStates(files, ttl_s=10, clock=lambda: now[0])
    request = json.dumps({"tools": None, "tool_choice": "auto", "stop": []})
    states.step("a", [], request=request, prompt_tokens=3)
    now[0] = 11
    states.step("b", [], request=request)  # sweeps the idle "a"
    assert len(states) == 1
    with pytest.raises(RequestRejected, match="unknown") as info:
        states.step("a", [1])
    assert info.value.field == "request_key"


def test_delta_states_match_a_delta_stream(files: ModelFiles) -> None:
    req = ChatRequest(USER, tools=TOOLS)
    ids = [*files.tokenizer.encode_with_specials(REPLY), files.stop_token_ids[0]]
    states = DeltaStates(files)
    request = json.dumps({"tools": TOOLS, "tool_choice": "auto", "stop": []})
    got = states.step("k", [], request=request, prompt_tokens=9).chunks
    for token in ids:
        got += states.step("k", [token]).chunks
    got += states.step("k", [], final=True, reason="stop").chunks
    ref = DeltaStream(files, req, 9)
    want = [*ref.feed(ids), ref.finish("stop")]
    assert "".join(c.content for c in got) == "".join(c.content for c in want)
    assert got[-1] == want[-1]
    assert post_request(request).tools == TOOLS


def test_each_model_runs_the_class_its_config_names(models: dict[str, Any]) -> None:
    assert {name: type(model) for name, model in models.items()} == {
        spec.CHAT_MODEL: ChatModel,
        spec.PRE_MODEL: PreprocessingModel,
        spec.LLM_MODEL: LlmModel,
        spec.POST_MODEL: PostprocessingModel,
    }
    assert all(model.pb is models[spec.CHAT_MODEL].pb for model in models.values())


@pytest.mark.parametrize("params", [{}, {"k2trt_model": {"string_value": "tensorrt"}}])
def test_a_config_without_a_known_role_is_refused(params: dict[str, Any]) -> None:
    config = {"name": "llm", "parameters": params}
    with pytest.raises(ValueError, match=r"llm: config\.pbtxt parameter 'k2trt_model' must be"):
        role_of(config)


def test_model_py_bootstrap_adds_k2trt_pythonpath(tmp_path: Path, monkeypatch: Any) -> None:
    """The stub ignores PYTHONPATH: model.py must add K2TRT_PYTHONPATH with addsitedir, which
    also runs .pth files there (as an editable install needs)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "k2trt_probe.pth").write_text("import os; os.environ['K2TRT_PROBE'] = '1'\n")
    monkeypatch.setenv("K2TRT_PYTHONPATH", str(site_dir))
    monkeypatch.delenv("K2TRT_PROBE", raising=False)
    fake = types.ModuleType("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "k2trt.triton_repo.model", raising=False)
    module = importlib.import_module("k2trt.triton_repo.model")
    assert module.pb_utils is fake
    assert str(site_dir) in sys.path
    import os

    assert os.environ.get("K2TRT_PROBE") == "1"
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(site_dir)])


def test_threads_do_not_leak(pb: FakePb) -> None:
    before = threading.active_count()
    run_chat(pb, ChatRequest(USER, max_tokens=3))
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_llm_that_runs_past_the_end_is_cancelled(pb: FakePb, monkeypatch: Any) -> None:
    """If the LLM does not stop where postprocessing says the turn ended (here: it is not told
    the stop strings), chat cancels it by key after one extra piece."""
    from k2trt.triton_repo.serving import chat

    plain = chat.llm_arrays
    monkeypatch.setattr(
        chat,
        "llm_arrays",
        lambda pre, key: {k: v for k, v in plain(pre, key).items() if k != "stop_words"},
    )
    request = run_chat(pb, ChatRequest(USER, tools=TOOLS, max_tokens=100, stop=("weather",)))
    got = chunks(request)
    assert "".join(c.content for c in got) == "Let me check the "
    assert got[-1].finish_reason == "stop"
    assert pb.bls_calls.count(spec.LLM_MODEL) == 2  # the stream, then the cancel request
    deadline = time.monotonic() + 10
    while not any("generation" in line and "cancelled" in line for line in pb.log):
        assert time.monotonic() < deadline, pb.log
        time.sleep(0.01)


def test_named_tool_choice_streams_the_forced_call(
    pb: FakePb, models: dict[str, Any], files: ModelFiles
) -> None:
    """The prompt opens the call; its id/name delta comes from postprocessing's first call."""
    reply = f"{ARGUMENTS}<|tool_call_end|><|tool_calls_section_end|>"
    models[spec.LLM_MODEL].engine = ScriptedEngine(files.tokenizer, [reply])
    choice = {"type": "function", "function": {"name": "get_weather"}}
    got = chunks(run_chat(pb, ChatRequest(USER, tools=TOOLS, tool_choice=choice, max_tokens=50)))
    calls = [d for c in got for d in c.tool_calls]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(d["function"]["arguments"] for d in calls[1:]) == ARGUMENTS
    assert got[-1].finish_reason == "tool_calls" and not any(c.content for c in got)
