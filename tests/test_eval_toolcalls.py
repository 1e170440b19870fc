"""`k2trt eval toolcalls`: K2-Vendor-Verifier's tool-call eval, run for real against the k2trt
gateway on 127.0.0.1 (scripted backends, so every answer is known), streamed and not, plus a
tiny HTTP server for 429s and dropped connections. Expected figures are counted by hand from
the inputs written here; K2VV's own run of tests/data/k2vv/scripted-samples.jsonl (see
PROVENANCE.md there) is reproduced key by key."""

from __future__ import annotations

import dataclasses
import doctest
import json
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from cli_run import run as cli
from k2trt.chat.toolcalls import parse_tool_calls
from k2trt.errors import K2Error
from k2trt.evaluate import client as client_mod
from k2trt.evaluate import dataset, metrics, run_eval, samples
from k2trt.evaluate import run as run_mod
from k2trt.evaluate.client import ChatClient, ClientConfig
from k2trt.evaluate.dataset import MAX_TOOLS
from k2trt.evaluate.metrics import call_problem, summarize, trigger_metrics
from k2trt.evaluate.samples import SAMPLE_PATH, build_cases
from k2trt.release import evalgate
from k2trt.runtime.types import ChatChunk, ChatRequest
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend, estimate_prompt_tokens, reply_chunks
from k2trt.serve.server import ServerThread

K2VV = Path(__file__).parent / "data" / "k2vv"
# K2VV's keys, in the order its compute_summary / process_request write them (@ 0bc5061b)
SUMMARY_KEYS = [
    "model", "success_count", "failure_count", "finish_stop", "finish_tool_calls",
    "finish_others", "finish_others_detail", "schema_validation_error_count",
    "successful_tool_call_count", "usage", "eval_started_at", "eval_finished_at",
    "eval_duration_ms",
]  # fmt: skip
RESULT_KEYS = [
    "data_index", "request", "extra_body", "response", "status", "finish_reason",
    "tool_calls_valid", "last_run_at", "duration_ms", "hash",
]  # fmt: skip
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "when": {"type": "object", "properties": {"days": {"type": "integer",
                         "minimum": 1, "maximum": 7}}, "required": ["days"]},
            },
            "required": ["city"],
        },
    },
}  # fmt: skip
NOTE: Any = {"type": "function", "function": {"name": "note"}}  # no parameters


def call(name: str, args: str) -> str:
    return (
        f"<|tool_calls_section_begin|><|tool_call_begin|>functions.{name}:0"
        f"<|tool_call_argument_begin|>{args}<|tool_call_end|><|tool_calls_section_end|>"
    )


class KeyedBackend:
    """Answers each request with the reply keyed by its last message's content."""

    model_id = "kimi-k2"
    max_context = 131072

    def __init__(self, replies: dict[str, str]) -> None:
        self.plans = {key: reply_chunks(text) for key, text in replies.items()}
        self.asked: list[str] = []

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass

    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        key = request.messages[-1]["content"]
        self.asked.append(key)
        return self._play(self.plans[key], estimate_prompt_tokens(request))

    async def _play(self, plan: list[ChatChunk], prompt: int) -> AsyncIterator[ChatChunk]:
        for chunk in plan[:-1]:
            yield chunk
        yield dataclasses.replace(plan[-1], prompt_tokens=prompt)


@pytest.fixture(scope="module")
def sample_server() -> Iterator[tuple[str, KeyedBackend]]:
    """The gateway answering k2trt's sample set as a correct model would."""
    cases = build_cases()
    backend = KeyedBackend({c.request["messages"][-1]["content"]: c.reply for c in cases})
    with ServerThread(create_app(backend, ServeConfig())) as server:
        yield server.url + "/v1", backend


def request(question: str, stream: bool, tools: list[Any] | None = None) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "tools": [WEATHER, NOTE] if tools is None else tools,
        "stream": stream,
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_doctests() -> None:
    for module in (client_mod, dataset, metrics, run_mod, samples):
        assert doctest.testmod(module).failed == 0, module.__name__


# ---------------------------------------------------------------------------------------------
# Validity and figures on small inputs, counted by hand


@pytest.mark.parametrize(
    ("name", "args", "why"),
    [
        ("get_weather", '{"city": "Oslo"}', None),
        ("get_weather", {"city": "Oslo", "when": {"days": 7}}, None),  # an object is taken too
        ("get_weather", '{"city": "Oslo", "unit": "k"}',
         "get_weather: arguments fail the schema at unit: 'k' is not one of ['c', 'f']"),
        ("get_weather", '{"city": "Oslo", "when": {}}',
         "get_weather: arguments fail the schema at when: 'days' is a required property"),
        ("get_weather", '{"city": "Oslo", "when": {"days": 8}}',
         "get_weather: arguments fail the schema at when.days: 8 is greater than the maximum of 7"),
        ("get_weather", '{"unit": "c"}',
         "get_weather: arguments fail the schema at (top): 'city' is a required property"),
        ("get_weather", '{"city": "Oslo"', "get_weather: arguments are not JSON: Expecting ',' "
         "delimiter: line 1 column 16 (char 15)"),
        ("get_time", "{}", "get_time: no tool of that name in the request"),
        ("note", '{"anything": [1, 2]}', None),  # declared without parameters
    ],
)  # fmt: skip
def test_call_problem(name: str, args: Any, why: str | None) -> None:
    assert call_problem({"function": {"name": name, "arguments": args}}, [WEATHER, NOTE]) == why


def test_summary_counts_by_hand() -> None:
    results = [
        {"status": "success", "finish_reason": "tool_calls", "tool_calls_valid": True,
         "response": {"usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}},
        {"status": "success", "finish_reason": "tool_calls", "tool_calls_valid": False},
        {"status": "success", "finish_reason": "tool_calls", "tool_calls_valid": None},
        {"status": "success", "finish_reason": "stop",
         "response": {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}},
        {"status": "success", "finish_reason": "length"},
        {"status": "success", "finish_reason": "content_filter"},
        {"status": "success", "finish_reason": "length"},
        {"status": "failed", "finish_reason": None, "response": {"error": "x"}},
    ]  # fmt: skip
    s = summarize(results, "m")
    assert list(s)[: len(SUMMARY_KEYS)] == SUMMARY_KEYS
    assert (s["success_count"], s["failure_count"], s["finish_stop"]) == (7, 1, 1)
    assert (s["finish_tool_calls"], s["successful_tool_call_count"]) == (3, 1)
    assert s["schema_validation_error_count"] == 2
    assert s["finish_others"] == 3
    assert s["finish_others_detail"] == {"length": 2, "content_filter": 1}
    assert s["usage"] == {"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20}
    assert s["schema_accuracy"] == 1 / 3
    assert "schema_accuracy" not in summarize(results[3:], "m")  # undefined: left out


def test_trigger_metrics_by_hand() -> None:
    # ours vs reference: TP TP TP FP FN FN TN TN, one failed (unpaired), one not in the reference
    ours = ["tool_calls"] * 4 + ["stop", "length", "stop", "length", "tool_calls", "tool_calls"]
    theirs = ["tool_calls"] * 3 + ["stop", "tool_calls", "tool_calls", "stop", "length"]
    run = [{"data_index": i, "status": "success", "finish_reason": r} for i, r in enumerate(ours)]
    run[8]["status"] = "failed"
    ref = [{"data_index": i, "status": "success", "finish_reason": r} for i, r in enumerate(theirs)]
    ref.append({"data_index": 8, "status": "success", "finish_reason": "tool_calls"})
    m = trigger_metrics(run, ref)
    assert [m[f"tool_call_{k}"] for k in ("tp", "fp", "fn", "tn", "unpaired")] == [3, 1, 2, 2, 2]
    assert m["tool_call_precision"] == 3 / 4
    assert m["tool_call_recall"] == 3 / 5
    assert m["tool_call_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    other = [{**r, "request": {"messages": [{"role": "user", "content": "x"}]}} for r in run]
    assert trigger_metrics(other, [{**r, "request": {"messages": []}} for r in ref])[
        "tool_call_unpaired"
    ] == len(run)
    nothing = trigger_metrics(run[4:8], ref)  # no tool call either side: ratios undefined
    assert (nothing["tool_call_precision"], nothing["tool_call_f1"]) == (None, None)


# ---------------------------------------------------------------------------------------------
# Against the gateway


def test_k2vv_scripted_run_reproduced(tmp_path: Path) -> None:
    """K2VV's own run (PROVENANCE.md): same replies, same gateway, same summary counts."""
    valid = call("get_weather", '{"city": "Paris"}')
    backend = ScriptedBackend(
        [valid, "Hello there!", valid, call("get_weather", '{"city": 7}'), "word " * 40, valid],
        model_id="kimi-k2",
    )
    with ServerThread(create_app(backend, ServeConfig(max_tokens_cap=30))) as server:
        got = run_eval(
            K2VV / "scripted-samples.jsonl", server.url + "/v1", model="kimi-k2",
            concurrency=1, output=tmp_path / "r.jsonl", summary=tmp_path / "s.json",
        )  # fmt: skip
    theirs = json.loads((K2VV / "k2vv-0bc5061-scripted-summary.json").read_text())
    ours = json.loads((tmp_path / "s.json").read_text())
    assert ours == got.summary
    assert list(ours)[: len(SUMMARY_KEYS)] == SUMMARY_KEYS == list(theirs)
    timeless = SUMMARY_KEYS[:9]  # through successful_tool_call_count
    assert {k: ours[k] for k in timeless} == {k: theirs[k] for k in timeless}
    results = read_jsonl(tmp_path / "r.jsonl")
    assert [list(r) for r in results] == [RESULT_KEYS] * 3 + [
        [*RESULT_KEYS, "tool_call_errors"], RESULT_KEYS, RESULT_KEYS]  # fmt: skip
    assert results[3]["tool_call_errors"] == [
        "get_weather: arguments fail the schema at city: 7 is not of type 'string'"
    ]
    assert [r["data_index"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert results[0]["request"]["stream_options"] == {"include_usage": True}
    # K2VV drops a streamed answer's usage; we keep it (so ours counts more)
    assert all(r["response"]["usage"]["total_tokens"] > 0 for r in results)
    assert ours["usage"]["total_tokens"] > theirs["usage"]["total_tokens"]


def test_sample_set_streamed_and_not(
    sample_server: tuple[str, KeyedBackend], tmp_path: Path
) -> None:
    url, _ = sample_server
    got = run_eval(SAMPLE_PATH, url, output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")
    s = got.summary
    assert s["model"] == "kimi-k2"  # the first /models lists
    assert (s["success_count"], s["failure_count"], s["malformed_count"]) == (120, 0, 0)
    assert (s["finish_tool_calls"], s["successful_tool_call_count"], s["finish_stop"]) == (
        108,
        108,
        12,
    )
    assert s["schema_accuracy"] == 1.0
    cases = build_cases()
    results = read_jsonl(tmp_path / "r.jsonl")
    assert len(results) == 120
    for case, result in zip(cases, results, strict=True):
        expected = parse_tool_calls(case.reply).tool_calls
        message = result["response"]["choices"][0]["message"]
        calls = message["tool_calls"] or []
        assert result["request"]["stream"] is case.request["stream"]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
            (e.name, json.loads(e.arguments)) for e in expected
        ]
        assert [c["id"] for c in calls] == [e.id for e in expected]
        assert result["response"]["usage"]["completion_tokens"] > 0
        system = [m for m in result["request"]["messages"] if m["role"] in ("system", "_input")]
        assert all(m["role"] == "system" for m in system)


def test_http_errors_are_failures_not_retried(tmp_path: Path) -> None:
    backend = KeyedBackend({"hi": "Hello."})
    data = write_jsonl(tmp_path / "d.jsonl", [request("hi", False), request("hi", True)])
    with ServerThread(create_app(backend, ServeConfig(api_keys=("k",)))) as server:
        got = run_eval(data, server.url + "/v1", model="kimi-k2", backoff_s=0,
                       output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")  # fmt: skip
        assert (got.summary["failure_count"], got.summary["success_count"]) == (2, 0)
        results = read_jsonl(tmp_path / "r.jsonl")
        assert {r["response"]["error_type"] for r in results} == {"AuthenticationError"}
        assert results[0]["response"]["error_message"].startswith("Error code: 401 - ")
        assert set(results[0]["response"]) == {"error_type", "error_message", "error"}
        assert backend.asked == []
        keyed = run_eval(data, server.url + "/v1", api_key="k", output=tmp_path / "r.jsonl",
                         summary=tmp_path / "s.json")  # fmt: skip
    assert keyed.summary["finish_stop"] == 2


# ---------------------------------------------------------------------------------------------
# Retries: a tiny real server that answers 429, drops connections, then answers


ANSWER = {
    "id": "x", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "", "tool_calls": [{"id": "functions.note:0",
        "type": "function", "function": {"name": "note", "arguments": "{}"}}]}}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}  # fmt: skip


class Flaky:
    """Plays `script` in turn (`429`, `drop`, `500`, `400`, `ok`), then `ok` for ever."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.seen: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.reply(200, {"data": [{"id": "flaky"}]})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    step = outer.script.pop(0) if outer.script else "ok"
                    outer.seen.append(step)
                if step == "drop":
                    self.close_connection = True
                    return  # no answer at all: the client sees the connection go
                status = 200 if step == "ok" else int(step)
                self.reply(status, ANSWER if status == 200 else {"error": {"message": step}})

            def reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Flaky:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_retries_on_429_and_dropped_connections(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [request("a", False)])
    with Flaky(["429", "drop", "503"]) as flaky:
        got = run_eval(data, flaky.url, concurrency=1, backoff_s=0.01,
                       output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")  # fmt: skip
    assert flaky.seen == ["429", "drop", "503", "ok"]
    assert got.summary["model"] == "flaky"
    assert (got.summary["success_count"], got.summary["successful_tool_call_count"]) == (1, 1)


def test_retries_are_bounded_and_4xx_is_not_retried() -> None:
    config = ClientConfig("", retries=2, backoff_s=0.01)
    with Flaky(["429"] * 5) as flaky:
        status, error = ChatClient(dataclasses.replace(config, base_url=flaky.url)).send({})
        assert flaky.seen == ["429"] * 3
    assert (status, error["error_type"]) == ("failed", "RateLimitError")
    with Flaky(["400"]) as flaky:
        status, error = ChatClient(dataclasses.replace(config, base_url=flaky.url)).send({})
        assert flaky.seen == ["400"]
    assert (status, error["error_type"]) == ("failed", "BadRequestError")


def test_timeout_bounds_a_streamed_attempt(tmp_path: Path) -> None:
    backend = ScriptedBackend(["one two three four five six seven"], delay_s=0.1)
    data = write_jsonl(tmp_path / "d.jsonl", [request("a", True), request("b", False)])
    with ServerThread(create_app(backend, ServeConfig())) as server:
        got = run_eval(data, server.url + "/v1", timeout_s=0.35, retries=1, backoff_s=0,
                       output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")  # fmt: skip
    results = read_jsonl(tmp_path / "r.jsonl")
    assert [r["response"]["error_type"] for r in results] == ["APITimeoutError"] * 2
    assert got.summary["failure_count"] == 2
    assert len(got.failures) == 2 and got.failures[0].startswith("line 1: Request timed out")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_endpoint_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [request("a", False)])
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(K2Error, match=r"^http://127\.0\.0\.1:\d+/v1/models: Connection error"):
        run_eval(data, url, model="m", output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")
    assert not (tmp_path / "r.jsonl").exists()
    code, _, err = cli(capsys, "eval", "toolcalls", str(data), "--base-url", url, "--model", "m",
                       "--output", str(tmp_path / "r.jsonl"))  # fmt: skip
    assert code == 2 and err.startswith("error: http://127.0.0.1:") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Bad input, resume, CLI, the release gate


def test_malformed_lines_are_named_counted_and_skipped(
    sample_server: tuple[str, KeyedBackend], tmp_path: Path
) -> None:
    url, _ = sample_server
    good = build_cases()[0].request
    huge = {**good, "tools": [WEATHER] * (MAX_TOOLS + 1)}
    bad_schema = {**good, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objekt"}}}]}  # fmt: skip
    lines = [good, "{oops", "", "[1, 2]", {"tools": []}, {**good, "tools": [{"type": "x"}]},
             huge, bad_schema, {**good, "stream": "yes"}, good]  # fmt: skip
    data = write_jsonl(tmp_path / "d.jsonl", lines)
    got = run_eval(data, url, output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")
    assert [(b.line, b.reason.split(":")[0]) for b in got.malformed] == [
        (2, "not JSON"), (4, "expected a JSON object (a chat request), got list"),
        (5, "messages"), (6, "tools[0].function"), (7, "tools"),
        (8, "tools[0].function.parameters"), (9, "stream"),
    ]  # fmt: skip
    assert (
        str(got.malformed[4])
        == f"line 7: tools: {MAX_TOOLS + 1} tools, more than the limit of {MAX_TOOLS}"
    )
    assert got.summary["malformed_count"] == 7
    assert got.summary["success_count"] == 2
    assert [r["data_index"] for r in read_jsonl(tmp_path / "r.jsonl")] == [1, 10]
    nothing = write_jsonl(tmp_path / "bad.jsonl", ["{oops"])
    with pytest.raises(K2Error, match="no usable request in the file; line 1: not JSON"):
        run_eval(nothing, url, output=tmp_path / "r.jsonl", summary=tmp_path / "s.json")


def test_incremental_resumes_an_interrupted_run(
    sample_server: tuple[str, KeyedBackend], tmp_path: Path
) -> None:
    url, backend = sample_server
    data = write_jsonl(tmp_path / "d.jsonl", [c.request for c in build_cases()[:30]])
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"
    run_eval(data, url, output=out, summary=summary)
    first = read_jsonl(out)
    # as an interrupted run leaves it: some results, one failed, the last line cut short
    kept = first[:20]
    kept[10] = {**kept[10], "status": "failed", "response": {"error": "x"}}
    text = "".join(json.dumps(r) + "\n" for r in kept) + json.dumps(first[20])[:40]
    out.write_text(text)
    asked = len(backend.asked)
    got = run_eval(data, url, output=out, summary=summary, incremental=True)
    assert (got.reused, got.sent) == (19, 11)
    assert len(backend.asked) - asked == 11
    results = read_jsonl(out)
    assert [r["data_index"] for r in results] == list(range(1, 31))
    assert results[:10] == first[:10]  # kept as they were
    assert results[10]["status"] == "success"
    assert got.summary["success_count"] == 30 and got.summary["schema_accuracy"] == 1.0
    again = run_eval(data, url, output=out, summary=summary, incremental=True)
    assert (again.reused, again.sent) == (30, 0)
    # a changed request (another model name: another hash) is sent again
    other = run_eval(data, url, model="k2", output=out, summary=summary, incremental=True)
    assert (other.reused, other.sent) == (0, 30)


def test_an_interrupted_run_stops_at_once_and_resumes(tmp_path: Path) -> None:
    # replies alternate: a short one, then one of 200 chunks (4 s), still in flight when the
    # short one's result interrupts the run
    backend = ScriptedBackend(["Done.", "word " * 200], delay_s=0.02, chars_per_token=5)
    data = write_jsonl(tmp_path / "d.jsonl", [request(f"q{i}", i % 2 == 0) for i in range(6)])
    out, summary = tmp_path / "r.jsonl", tmp_path / "s.json"

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with ServerThread(create_app(backend, ServeConfig())) as server:
        url = server.url + "/v1"
        with pytest.raises(KeyboardInterrupt):
            run_eval(data, url, concurrency=2, output=out, summary=summary, progress=interrupt)
        assert len(read_jsonl(out)) == 1  # what came before the interrupt is kept
        backend.delay_s = 0
        got = run_eval(data, url, concurrency=2, output=out, summary=summary, incremental=True)
    assert (got.reused, got.sent, got.summary["success_count"]) == (1, 5, 6)
    assert backend.cancelled  # the other request in flight was cut off, not waited for


def test_cli_json_reference_and_thresholds(
    sample_server: tuple[str, KeyedBackend], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = sample_server
    reference = tmp_path / "ref.jsonl"
    # the reference called a tool on lines 1-4 and answered in text on 5-8
    write_jsonl(reference, [{"data_index": i, "status": "success", "finish_reason":
                             "tool_calls" if i <= 4 else "stop"} for i in range(1, 9)])  # fmt: skip
    data = write_jsonl(tmp_path / "d.jsonl", [c.request for c in build_cases()[:8]])
    # ours: case 7 (line 8) answers in text, every other one calls a tool
    args = ["eval", "toolcalls", str(data), "--base-url", url, "--json",
            "--output", str(tmp_path / "r.jsonl"), "--summary", str(tmp_path / "s.json"),
            "--reference", str(reference), "--extra-body", '{"top_p": 0.9}']  # fmt: skip
    code, out, _ = cli(capsys, *args)
    assert code == 0, out
    s = json.loads(out)["summary"]
    assert [s[f"tool_call_{k}"] for k in ("tp", "fp", "fn", "tn", "unpaired")] == [4, 3, 0, 1, 0]
    assert (s["tool_call_precision"], s["tool_call_recall"]) == (4 / 7, 1.0)
    assert s["tool_call_f1"] == pytest.approx(2 * (4 / 7) / (4 / 7 + 1))
    assert read_jsonl(tmp_path / "r.jsonl")[0]["extra_body"] == {"top_p": 0.9}
    assert json.loads((tmp_path / "s.json").read_text()) == s
    gate = tmp_path / "gate.yaml"
    gate.write_text("command: [x]\nmin: {tool_call_f1: 0.8, schema_accuracy: 1.0}\n")
    code, out, err = cli(capsys, *args, "--thresholds", str(gate))
    assert code == 1
    assert json.loads(out)["thresholds"]["failures"] == ["tool_call_f1 0.727273 < min 0.8"]
    assert err == "error: eval thresholds failed: tool_call_f1 0.727273 < min 0.8\n"
    code, out, err = cli(capsys, *args[:-2], "--extra-body", "[1]")
    assert code == 2 and "--extra-body: expected a JSON object, got list" in out + err


def test_human_output(sample_server: tuple[str, KeyedBackend], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    url, _ = sample_server
    data = write_jsonl(tmp_path / "d.jsonl", [build_cases()[0].request, "nope"])
    files = ["--output", str(tmp_path / "r.jsonl"), "--summary", str(tmp_path / "s.json")]
    code, out, _ = cli(capsys, "eval", "toolcalls", str(data), "--base-url", url, *files)
    assert code == 0
    assert out.splitlines()[:4] == [
        "malformed lines, skipped (1):",
        "  line 2: not JSON: Expecting value: line 1 column 1 (char 0)",
        "kimi-k2: 1 answered, 0 failed (1 sent, 0 kept from an earlier run)",
        "finish_reason: stop 0, tool_calls 1, others 0 {}",
    ]
    assert "schema_accuracy 100.00%" in out


def test_sample_set_is_generated_and_covers_the_cases() -> None:
    cases = build_cases()
    assert SAMPLE_PATH.read_text(encoding="utf-8") == samples.render(cases)
    assert len(cases) >= 100
    requests = [c.request for c in cases]
    assert sum(r["stream"] for r in requests) == 60
    assert sum(len(r["tools"]) > 1 for r in requests) >= 50
    assert any(m["role"] == "_input" for r in requests for m in r["messages"])
    tool_results = [m for r in requests for m in r["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 30
    assert all(m["tool_call_id"].startswith("functions.") for m in tool_results)
    schemas = json.dumps([t for r in requests for t in r["tools"]])
    for keyword in ('"enum"', '"required"', '"minimum"', '"maxItems"', '"items"', '"pattern"',
                    '"exclusiveMinimum"', '"additionalProperties"'):  # fmt: skip
        assert keyword in schemas


@pytest.mark.slow
def test_the_shipped_gate_passes_through_the_release_hook(
    sample_server: tuple[str, KeyedBackend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = sample_server
    bin_dir = str(Path(sys.executable).parent)  # where `k2trt` is installed
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    gate = evalgate.load_gate(evalgate.GATE_FILE)
    result = evalgate.run(gate, base_url=url.removesuffix("/v1"), model="kimi-k2", out_dir=tmp_path)
    assert result["status"] == "pass", result
    assert result["figures"]["schema_accuracy"] == 1.0
    assert result["figures"]["malformed_count"] == 0
    assert len(read_jsonl(tmp_path / "eval-results.jsonl")) == 120
