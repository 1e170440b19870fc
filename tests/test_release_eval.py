"""The eval gate: K2-Vendor-Verifier summaries (real ones, tests/data/k2vv/PROVENANCE.md)
checked against thresholds, and the hook run for real with small Python commands."""

from __future__ import annotations

import doctest
import json
import sys
import time
from pathlib import Path
from typing import Any

from k2trt.release import evalgate
from k2trt.release.evalgate import SUMMARY_NAME, check, run
from k2trt.release.spec import EvalGate

DATA = Path(__file__).parent / "data" / "k2vv"


def summary(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


SCRIPTED = "k2vv-0bc5061-scripted-summary.json"  # the current script's shape
PR6 = "upstream-pr6-medium_summary.json"  # a vendor's run, September 2025 shape


def gate(command: tuple[str, ...] = ("true",), **kw: Any) -> EvalGate:
    return EvalGate(command, **kw)


def test_doctests() -> None:
    assert doctest.testmod(evalgate).failed == 0


def test_check_passes_the_upstream_vendor_summary() -> None:
    result = check(summary(PR6), gate(min={"schema_accuracy": 1.0}, max={"failure_count": 1}))
    assert result == {
        "gate": "eval",
        "status": "pass",
        "figures": {
            "failure_count": 1,
            "finish_tool_calls": 30,
            "schema_accuracy": 1.0,
            "schema_validation_error_count": 0,
            "success_count": 98,
            "success_rate": 98 / 99,
            "successful_tool_call_count": 30,
        },
        "failures": [],
    }


def test_check_fails_schema_accuracy_of_the_real_script_run() -> None:
    # 4 answers finished with tool_calls, 3 of them valid: 0.75
    result = check(summary(SCRIPTED), gate(min={"schema_accuracy": 0.9, "success_rate": 1.0}))
    assert result["status"] == "fail"
    assert result["figures"]["schema_accuracy"] == 0.75
    assert result["figures"]["success_rate"] == 1.0
    assert result["failures"] == ["schema_accuracy 0.75 < min 0.9"]
    assert json.loads(json.dumps(result)) == result


def test_dotted_paths_and_counts_k2vv_leaves_out() -> None:
    thresholds = {
        "usage.completion_tokens": 50,
        "finish_others_detail.length": 0,
        "finish_others_detail.content_filter": 0,  # never seen: 0, not missing
    }
    result = check(summary(SCRIPTED), gate(max=thresholds))
    assert result["figures"]["usage.completion_tokens"] == 55
    assert result["figures"]["finish_others_detail.content_filter"] == 0
    assert result["failures"] == [
        "finish_others_detail.length 1 > max 0",
        "usage.completion_tokens 55 > max 50",
    ]


def test_missing_and_non_numeric_keys_fail_by_name() -> None:
    result = check(summary(SCRIPTED), gate(min={"tool_call_f1": 0.73, "model": 1}))
    assert result["failures"] == [
        "model is not a number in the eval summary: 'kimi-k2'",
        "the eval summary has no tool_call_f1",
    ]
    assert "tool_call_f1" not in result["figures"]


def test_schema_accuracy_undefined_without_tool_calls() -> None:
    no_calls = {**summary(PR6), "finish_tool_calls": 0, "successful_tool_call_count": 0}
    result = check(no_calls, gate(min={"schema_accuracy": 0.9}))
    assert "schema_accuracy" not in result["figures"]
    assert result["failures"] == ["schema_accuracy undefined: no answer finished with tool_calls"]


def test_a_summary_of_no_request_fails() -> None:
    empty = {**summary(PR6), "success_count": 0, "failure_count": 0}
    assert check(empty, gate())["failures"] == [
        "the eval summary counts no request (success + failure = 0)"
    ]


def test_the_summary_wins_over_a_derived_rate_of_the_same_name() -> None:
    own = {**summary(SCRIPTED), "schema_accuracy": 0.5}
    assert check(own, gate(min={"schema_accuracy": 0.6}))["failures"] == [
        "schema_accuracy 0.5 < min 0.6"
    ]


def test_the_shipped_k2trt_gate_reads_k2trt_summaries() -> None:
    gate = evalgate.load_gate(evalgate.GATE_FILE)
    assert gate.command[:4] == ("k2trt", "--quiet", "eval", "toolcalls")
    ours = {**summary(SCRIPTED), "schema_accuracy": 0.75, "malformed_count": 1}
    assert check(ours, gate)["failures"] == [
        "schema_accuracy 0.75 < min 0.99",
        "malformed_count 1 > max 0",
    ]


WRITE = """
import json, os, sys
base_url, model, out, out_dir, extra = sys.argv[1:]
assert os.environ["K2TRT_EVAL_OUT"] == out and out_dir in out
json.dump({"success_count": 2, "failure_count": 0, "finish_tool_calls": 2,
           "successful_tool_call_count": 2, "schema_validation_error_count": 0,
           "seen": [base_url, model, os.environ["K2TRT_EVAL_BASE_URL"],
                    os.environ["K2TRT_EVAL_MODEL"], extra]}, open(out, "w"))
"""


def test_run_fills_placeholders_and_checks_the_summary(tmp_path: Path) -> None:
    command = (sys.executable, "-c", WRITE, "{base_url}", "{model}", "{out}", "{out_dir}")
    command += ('{"temperature": 0.6}',)  # JSON in a word stays as written
    result = run(
        gate(command, min={"schema_accuracy": 1.0}),
        base_url="http://127.0.0.1:9",
        model="kimi-k2",
        out_dir=tmp_path,
    )
    assert result["status"] == "pass", result
    assert result["figures"]["schema_accuracy"] == 1.0
    seen = json.loads((tmp_path / SUMMARY_NAME).read_text())["seen"]
    url = "http://127.0.0.1:9/v1"
    assert seen == [url, "kimi-k2", url, "kimi-k2", '{"temperature": 0.6}']


def test_run_non_zero_exit_names_code_and_last_stderr_line(tmp_path: Path) -> None:
    code = "import sys; print('starting', file=sys.stderr); sys.exit('no samples.jsonl')"
    result = run(gate((sys.executable, "-c", code)), base_url="u", model="m", out_dir=tmp_path)
    assert result == {
        "gate": "eval",
        "status": "fail",
        "figures": {},
        "failures": ["eval command exited with 1: no samples.jsonl"],
    }


def test_run_without_a_summary_fails(tmp_path: Path) -> None:
    (tmp_path / SUMMARY_NAME).write_text('{"success_count": 1, "failure_count": 0}')  # stale
    result = run(gate((sys.executable, "-c", "pass")), base_url="u", model="m", out_dir=tmp_path)
    assert result["failures"] == [f"the eval command wrote no summary at {tmp_path / SUMMARY_NAME}"]


def test_run_with_a_summary_that_is_not_json_fails(tmp_path: Path) -> None:
    write = "import sys; open(sys.argv[1], 'w').write('{oops')"
    result = run(
        gate((sys.executable, "-c", write, "{out}")), base_url="u", model="m", out_dir=tmp_path
    )
    assert result["status"] == "fail"
    assert result["failures"][0].startswith(f"eval summary {tmp_path / SUMMARY_NAME} is not JSON")


def test_run_times_out(tmp_path: Path) -> None:
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    start = time.monotonic()
    result = run(gate(sleeper, timeout_s=0.5), base_url="u", model="m", out_dir=tmp_path)
    assert time.monotonic() - start < 10
    assert result["failures"] == ["eval command timed out after 0.5 s"]


def test_run_of_a_missing_command_fails(tmp_path: Path) -> None:
    result = run(gate(("k2trt-no-such-eval",)), base_url="u", model="m", out_dir=tmp_path)
    assert result["failures"] == [
        "eval command 'k2trt-no-such-eval' did not start: No such file or directory"
    ]
