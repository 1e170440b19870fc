"""Release gates on the real CPU tritonserver: smoke, the eval hook, perf (not executed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli_run import run
from k2trt.errors import K2Error
from k2trt.release import gates
from k2trt.release import smoke as smoke_turns
from k2trt.release.spec import SmokeGate
from release_fixtures import build, make_project
from triton_fixtures import require_cpu_triton

# An eval hook: one forced tool call through the served OpenAI API, counted the way
# K2-Vendor-Verifier's summary counts (finish reasons, schema-valid calls).
EVAL_SCRIPT = """
import json, sys, urllib.request
base, out = sys.argv[1], sys.argv[2]
tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
body = {"model": sys.argv[3], "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi"}], "tools": [tool]}
req = urllib.request.Request(base + "/chat/completions", data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"})
choice = json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]
finish = choice["finish_reason"]
summary = {"success_count": 1, "failure_count": 0, "finish_stop": int(finish == "stop"),
           "finish_tool_calls": int(finish == "tool_calls"),
           "finish_others": int(finish not in ("stop", "tool_calls")),
           "schema_validation_error_count": 0, "successful_tool_call_count": 0}
json.dump(summary, open(out, "w"))
"""


def test_engine_choice_and_the_stand_in_size_limit(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gates.engine_for(SmokeGate()) == "cpu-standin"  # no TensorRT-LLM here
    assert gates.engine_for(SmokeGate(engine="trtllm")) == "trtllm"
    import k2trt.runtime.reference as reference

    monkeypatch.setattr(reference, "MAX_WEIGHT_BYTES", 1024)
    spec = make_project(tmp_path, tiny_ckpt, gates={"smoke": {"engine": "cpu-standin"}})
    with pytest.raises(K2Error, match=r"^gates.smoke: the CPU stand-in runs checkpoints up to"):
        build(spec, tmp_path / "out")
    assert not (tmp_path / "out/kimi-k2-tiny").exists()


@pytest.mark.triton
def test_smoke_eval_and_perf_gates(tiny_ckpt: Path, tmp_path: Path) -> None:
    require_cpu_triton()
    hook = tmp_path / "eval_hook.py"
    hook.write_text(EVAL_SCRIPT)
    declared = {
        "smoke": {"engine": "cpu-standin"},
        "eval": {
            "command": [sys.executable, str(hook), "{base_url}", "{out}", "{model}"],
            "min": {"success_rate": 1.0},
            "max": {"schema_validation_error_count": 0},
        },
        "perf": {"requests": 16, "concurrency": 4, "min": {"output_token_throughput": 100}},
    }
    spec = make_project(tmp_path, tiny_ckpt, gates=declared)
    release = build(spec, tmp_path / "out")
    results = release.manifest["gates"]
    smoke = results["smoke"]
    assert smoke["status"] == "pass" and smoke["failures"] == []
    assert smoke["figures"]["tool_call"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert smoke["figures"]["tool_finish_reason"] == "tool_calls"
    assert smoke["figures"]["answer"] == gates.SCRIPT[1]
    assert (
        smoke["figures"]["chat_completion_tokens"] == smoke_turns.CHAT_TOKENS
    )  # the real tiny model
    assert results["eval"]["status"] == "pass"
    assert results["eval"]["figures"]["success_rate"] == 1.0
    assert results["perf"]["status"] == "not executed"
    assert results["perf"]["reason"].startswith("no GPU")
    recipe = (release.path / "gates/perf/aiperf.sh").read_text()
    assert "aiperf" in recipe and "--request-count" in recipe
    assert json.loads((release.path / "gates/smoke.json").read_text()) == smoke
    notes = (release.path / "RELEASE_NOTES.md").read_text()
    assert "| smoke | tool_call.name | get_weather |" in notes
    assert "| perf | status | not executed |" in notes


@pytest.mark.triton
def test_a_failing_gate_fails_the_release(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_cpu_triton()
    failing = {
        "smoke": {"enabled": False},
        "eval": {"command": [sys.executable, "-c", "import sys; sys.exit(3)"]},
    }
    spec = make_project(tmp_path, tiny_ckpt, gates=failing)
    code, _, err = run(capsys, "release", "build", str(spec), str(tmp_path / "out"))
    assert code == 1
    last = err.splitlines()[-1]
    assert last.startswith("error: gate eval failed: ")
    assert "exit" in last and "gates/eval.json" in last
    assert not (tmp_path / "out/kimi-k2-tiny").exists()  # nothing that looks like a release
    report = json.loads((tmp_path / "out/.work/kimi-k2-tiny/1.0.0/gates/eval.json").read_text())
    assert report["status"] == "fail"
