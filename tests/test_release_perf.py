"""The perf gate: aiperf exports (real ones, tests/data/aiperf/PROVENANCE.md) checked against
thresholds; the recipe run by bash; `run` with a stand-in aiperf, and (slow) with the real one
against the scripted gateway when aiperf is installed."""

from __future__ import annotations

import doctest
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k2trt.release import perf
from k2trt.release.perf import EXPORT_NAME, LOG_NAME, SCRIPT_NAME, check, recipe, recipe_data, run
from k2trt.release.spec import PerfGate
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.scripted import ScriptedBackend
from k2trt.serve.server import ServerThread

DATA = Path(__file__).parent / "data" / "aiperf"
UPSTREAM = DATA / "upstream-example-run1.json"  # aiperf's own example: 11 cancelled requests
PASSED = DATA / "aiperf-0.13.0-pass.json"  # aiperf 0.13.0 against the scripted gateway
ERRORS = DATA / "aiperf-0.13.0-errors.json"  # the same, 5 of 8 requests refused (HTTP 400)
AIPERF = shutil.which(os.environ.get("K2TRT_AIPERF") or "aiperf")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_doctests() -> None:
    assert doctest.testmod(perf).failed == 0


def test_check_passes_a_real_export() -> None:
    gate = PerfGate(min={"output_token_throughput": 1000}, max={"time_to_first_token.p99": 100})
    assert check(load(PASSED), gate) == {
        "gate": "perf",
        "status": "pass",
        "figures": {
            "error_request_count": 0,  # aiperf leaves it out when no request failed
            "output_token_throughput": 1579.8469873430427,
            "request_count": 8,
            "time_to_first_token.p99": 21.320626889999996,
        },
        "failures": [],
    }


def test_thresholds_fail_with_one_line_each() -> None:
    gate = PerfGate(
        min={"output_token_throughput": 2000, "request_count": 8},
        max={"time_to_first_token.p99": 10, "inter_token_latency": 1},
    )
    result = check(load(PASSED), gate)
    assert result["status"] == "fail"
    assert result["figures"]["inter_token_latency"] == 0.04266344642857143
    assert result["failures"] == [
        "output_token_throughput 1579.85 < min 2000",
        "time_to_first_token.p99 21.3206 > max 10",
    ]


def test_errored_requests_fail_always() -> None:
    result = check(load(ERRORS), PerfGate())
    assert result["figures"]["request_count"] == 3
    assert result["figures"]["error_request_count"] == 5
    assert result["failures"] == ["error_request_count 5 > 0 (5 x 400 Bad Request)"]


def test_upstream_example_in_the_pre_1_0_shape() -> None:
    # metrics under "records", TTFT tagged "ttft" (aiperf before #343)
    result = check(load(UPSTREAM), PerfGate(max={"ttft.p99": 5000}))
    assert result["figures"] == {
        "error_request_count": 11,
        "output_token_throughput": 2320.7222350404572,
        "request_count": 89,
        "ttft.p99": 3833.3894000399996,
    }
    assert result["failures"] == ["error_request_count 11 > 0 (11 x 499 RequestCancellationError)"]


def test_unknown_metrics_and_statistics_fail_by_name() -> None:
    gate = PerfGate(
        min={"output_token_throughput.p99": 1, "schema_version": 1},
        max={"time_to_first_tokn.p99": 100},
    )
    assert check(load(PASSED), gate)["failures"] == [
        "output_token_throughput has no p99 in the aiperf export",
        "unknown metric schema_version (not in the aiperf export)",
        "unknown metric time_to_first_tokn (not in the aiperf export)",
    ]


def test_no_successful_request_and_unfinished_runs_fail() -> None:
    export = {**load(PASSED), "was_cancelled": True, "is_complete": False}
    export["incomplete_reason"] = "record stall"
    del export["request_count"], export["output_token_throughput"]
    result = check(export, PerfGate())
    assert result["figures"] == {"error_request_count": 0, "request_count": 0}
    assert result["failures"] == [
        "the aiperf run was cancelled",
        "the aiperf run is incomplete: record stall",
        "request_count 0: no request succeeded",
    ]


GATE = PerfGate(requests=8, concurrency=2, input_tokens=64, output_tokens=16, seed=7)
EXPECTED_FLAGS = {
    "--endpoint-type": "chat",
    "--synthetic-input-tokens-mean": "64",
    "--synthetic-input-tokens-stddev": "0",
    "--output-tokens-mean": "16",
    "--output-tokens-stddev": "0",
    "--request-count": "8",
    "--concurrency": "2",
    "--random-seed": "7",
    "--ui-type": "none",
}


def test_recipe_is_valid_bash_and_runs_the_recorded_argv(tmp_path: Path) -> None:
    args = {"model": "kimi-k2", "url": "http://127.0.0.1:9/v1", "tokenizer": "/m/tokenizer"}
    script = tmp_path / "aiperf.sh"
    script.write_text(recipe(GATE, **args))
    subprocess.run(["bash", "-n", str(script)], check=True)
    data = recipe_data(GATE, **args)
    argv = data["argv"]
    assert argv[:2] == ["${K2TRT_AIPERF}", "profile"] and "--streaming" in argv
    assert {flag: argv[argv.index(flag) + 1] for flag in EXPECTED_FLAGS} == EXPECTED_FLAGS
    # the script, run with an aiperf that prints its arguments, runs exactly that argv
    env = {**os.environ, "K2TRT_AIPERF": str(fake_aiperf(tmp_path)), "FAKE_AIPERF": "argv"}
    for name in ("K2TRT_PERF_URL", "K2TRT_PERF_MODEL", "K2TRT_PERF_TOKENIZER"):
        env.pop(name, None)
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    defaults = {f"${{{k}}}": v for k, v in data["env"].items()}
    assert json.loads(out.stdout) == [defaults.get(a, a) for a in argv[1:]]
    assert data["env"]["K2TRT_PERF_URL"] == "http://127.0.0.1:9"  # aiperf adds /v1 itself


FAKE = """#!{python}
import json, os, shutil, sys, time
args = sys.argv[1:]
mode = os.environ["FAKE_AIPERF"]
if mode == "argv":
    print(json.dumps(args))
    sys.exit(0)
artifacts = args[args.index("--artifact-dir") + 1]
os.makedirs(artifacts, exist_ok=True)
print("12:00:00.000 ERROR    All 8 inference request(s) failed")
print("Log File: aiperf.log")
if mode == "fail":
    sys.exit(1)
if mode == "sleep":
    time.sleep(60)
if mode != "none":
    shutil.copy(mode, os.path.join(artifacts, "{name}"))
"""


def fake_aiperf(tmp_path: Path) -> Path:
    path = tmp_path / "fake-aiperf"
    path.write_text(FAKE.format(python=sys.executable, name=EXPORT_NAME))
    path.chmod(0o755)
    return path


def fake_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, gate: PerfGate = GATE
) -> dict[str, Any]:
    monkeypatch.setenv("K2TRT_AIPERF", str(fake_aiperf(tmp_path)))
    monkeypatch.setenv("FAKE_AIPERF", mode)
    out = tmp_path / "perf"
    return run(gate, model="kimi-k2", url="http://127.0.0.1:9", tokenizer="t", out_dir=out)


def test_run_checks_the_export_aiperf_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = fake_run(tmp_path, monkeypatch, str(ERRORS))
    assert result["failures"] == ["error_request_count 5 > 0 (5 x 400 Bad Request)"]
    out = tmp_path / "perf"
    assert (out / SCRIPT_NAME).read_text() == recipe(
        GATE, model="kimi-k2", url="http://127.0.0.1:9", tokenizer="t"
    )
    assert "Log File" in (out / LOG_NAME).read_text()
    assert fake_run(tmp_path, monkeypatch, str(PASSED))["status"] == "pass"


def test_run_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fake_run(tmp_path, monkeypatch, "fail")["failures"] == [
        "aiperf exited with 1: 12:00:00.000 ERROR    All 8 inference request(s) failed"
    ]
    artifacts = tmp_path / "perf" / "aiperf"
    assert fake_run(tmp_path, monkeypatch, "none")["failures"] == [
        f"aiperf wrote no {EXPORT_NAME} under {artifacts}"
    ]
    start = time.monotonic()
    slow = PerfGate(timeout_s=1)
    assert fake_run(tmp_path, monkeypatch, "sleep", slow)["failures"] == [
        f"aiperf timed out after 1 s (log: {tmp_path / 'perf' / LOG_NAME})"
    ]
    assert time.monotonic() - start < 20


def test_run_without_aiperf_is_not_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K2TRT_AIPERF", "k2trt-no-such-aiperf")
    result = run(GATE, model="m", url="http://h:1", tokenizer="t", out_dir=tmp_path)
    assert result == {
        "gate": "perf",
        "status": "not executed",
        "figures": {},
        "failures": [],
        "reason": "aiperf is not installed (pip install aiperf, or set K2TRT_AIPERF to it)",
    }
    assert (tmp_path / SCRIPT_NAME).is_file()  # the recipe is written all the same


@pytest.mark.slow
@pytest.mark.skipif(
    AIPERF is None,
    reason="aiperf not installed: pip install aiperf (in a venv of its own) and set "
    "K2TRT_AIPERF to its aiperf",
)
def test_real_aiperf_against_the_scripted_gateway(prepared_ckpt: Path, tmp_path: Path) -> None:
    gate = PerfGate(
        requests=8,
        concurrency=2,
        input_tokens=64,
        output_tokens=16,
        min={"output_token_throughput": 1},
        max={"time_to_first_token.p99": 10_000},
        timeout_s=300,
    )
    backend = ScriptedBackend(["word " * 64], model_id="kimi-k2")
    with ServerThread(create_app(backend, ServeConfig())) as server:
        result = run(
            gate,
            model="kimi-k2",
            url=server.url,
            tokenizer=str(prepared_ckpt / "tokenizer"),
            out_dir=tmp_path,
        )
    assert result["status"] == "pass", (tmp_path / LOG_NAME).read_text()[-3000:]
    assert result["figures"]["request_count"] == 8
    assert result["figures"]["error_request_count"] == 0
    assert len(backend.requests) == 8
