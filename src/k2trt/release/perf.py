"""The perf gate: an aiperf profile of the served chat API, checked against the gate's min/max.

`recipe()` is the bash script that runs `aiperf profile` (streaming chat, synthetic prompts of
the gate's input/output token means, its request count, concurrency and seed), generated from
argv data with `k2trt.triton_repo.launch.Script`; `run()` writes it, runs it and `check()`s
aiperf's summary, profile_export_aiperf.json:

    perf: {requests: 200, concurrency: 16, input_tokens: 1024, output_tokens: 256,
           min: {output_token_throughput: 2000}, max: {time_to_first_token.p99: 800}}

A threshold key is an aiperf metric tag with a statistic after a dot (avg when none; p1..p99,
min, max, std), in the export's units: ms for latencies, tokens/sec for throughputs. Every run
also needs request_count > 0 and error_request_count == 0.

Upstream facts, checked against aiperf 0.13.0 (PyPI; `aiperf profile --help`, and its
config/artifacts.py, exporters/metrics_json_exporter.py, common/models/export_models.py,
metrics/types/error_request_count.py), ai-dynamo/aiperf docs/reference/json-export-schema.md
@ 1554b478, and the 0.1.1 source (ai-dynamo/aiperf v0.1.1, aiperf/common/config) for the flags:
- every flag the recipe uses exists under the same name in 0.1.1 and 0.13.0;
- the export has one block per metric tag at the top level, {unit, avg, p1..p99, min, max,
  std, count, sum}, unset fields left out; counts and throughputs carry only unit and avg;
- request_count counts successful requests; error_request_count is computed from errored
  requests only, so it is absent when there were none (seen in a real 0.13.0 run);
- aiperf exits 0 when some requests failed (the export says how many), 1 when all did (no
  export is written);
- before ai-dynamo/aiperf #343 (Oct 2025, releases 0.1.x) the blocks sat under "records" and
  TTFT was tagged "ttft"; `check()` reads that shape too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from k2trt.release.evalgate import (
    is_number,
    last_line,
    not_executed,
    run_bounded,
    thresholds,
    verdict,
)
from k2trt.release.spec import PerfGate
from k2trt.triton_repo.launch import Arg, Env, Script, Var
from k2trt.typed import to_plain

AIPERF_CHECKED = "0.13.0"
EXPORT_NAME = "profile_export_aiperf.json"
SCRIPT_NAME = "aiperf-run.sh"  # what run() runs (the release keeps its recipe beside it)
LOG_NAME = "aiperf.log"
ARTIFACTS_DIR = "aiperf"


def script(gate: PerfGate, *, model: str, url: str, tokenizer: str) -> Script:
    """The recipe as data: one `aiperf profile` argv, its variables with these defaults."""
    argv: list[Arg] = [
        Var("K2TRT_AIPERF"), "profile",
        "--model", Var("K2TRT_PERF_MODEL"),
        "--url", Var("K2TRT_PERF_URL"),
        "--endpoint-type", "chat",
        "--streaming",
        "--tokenizer", Var("K2TRT_PERF_TOKENIZER"),
        "--synthetic-input-tokens-mean", str(gate.input_tokens),
        "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(gate.output_tokens),
        "--output-tokens-stddev", "0",
        "--request-count", str(gate.requests),
        "--concurrency", str(gate.concurrency),
        "--random-seed", str(gate.seed),
        "--artifact-dir", Var("K2TRT_PERF_ARTIFACTS"),
        "--ui-type", "none",  # no live dashboard: the output is a log file
    ]  # fmt: skip
    env = (
        Env("K2TRT_AIPERF", "aiperf", "the aiperf command (pip install aiperf)"),
        Env("K2TRT_PERF_URL", server_url(url), "the server; aiperf adds /v1/chat/completions"),
        Env("K2TRT_PERF_MODEL", model, "the served model name"),
        Env("K2TRT_PERF_TOKENIZER", tokenizer, "a tokenizer directory: aiperf counts tokens"),
        Env("K2TRT_PERF_ARTIFACTS", ARTIFACTS_DIR, f"where aiperf writes {EXPORT_NAME}"),
    )
    comments = (
        f"k2trt perf gate: aiperf profile of {model}'s streaming chat API: {gate.requests} "
        f"requests, {gate.concurrency} at a time,",
        f"{gate.input_tokens} tokens in and {gate.output_tokens} out (means), seed {gate.seed}. "
        f"Checked against aiperf {AIPERF_CHECKED}.",
    )
    return Script(comments=comments, env=env, commands=(tuple(argv),))


def recipe(gate: PerfGate, *, model: str, url: str, tokenizer: str) -> str:
    r"""The bash script that runs the profile (see `script`).

    >>> text = recipe(PerfGate(), model="kimi-k2", url="http://127.0.0.1:8080/v1",
    ...               tokenizer="/models/k2/tokenizer")
    >>> print(text.splitlines()[-1])
        --ui-type none
    >>> [line for line in text.splitlines() if line.startswith("K2TRT_PERF_URL")]
    ['K2TRT_PERF_URL=${K2TRT_PERF_URL:-http://127.0.0.1:8080}']
    """
    return script(gate, model=model, url=url, tokenizer=tokenizer).text()


def recipe_data(gate: PerfGate, *, model: str, url: str, tokenizer: str) -> dict[str, Any]:
    """The recipe's facts for the release record: argv ("${NAME}" for variables), the
    variables' defaults, where the export lands, and the gate.

    >>> data = recipe_data(PerfGate(requests=8), model="m", url="http://h:1", tokenizer="t")
    >>> data["argv"][:2], data["env"]["K2TRT_PERF_URL"], data["gate"]["requests"]
    (['${K2TRT_AIPERF}', 'profile'], 'http://h:1', 8)
    """
    recipe_script = script(gate, model=model, url=url, tokenizer=tokenizer)
    (argv,) = recipe_script.commands
    return {
        "tool": "aiperf",
        "checked_against": AIPERF_CHECKED,
        "argv": [f"${{{a.name}}}" if isinstance(a, Var) else a for a in argv],
        "env": {var.name: var.default for var in recipe_script.env},
        "export": f"${{K2TRT_PERF_ARTIFACTS}}/{EXPORT_NAME}",
        "gate": to_plain(gate),
    }


def run(gate: PerfGate, *, model: str, url: str, tokenizer: str, out_dir: Path) -> dict[str, Any]:
    """Write OUT_DIR/aiperf-run.sh, run it (log: OUT_DIR/aiperf.log, artifacts: OUT_DIR/aiperf/)
    and `check` the export. "not executed" when aiperf is not installed: the command is
    $K2TRT_AIPERF (a path, e.g. into a virtual environment of its own) or `aiperf` on PATH.

    >>> run(gate, model="kimi-k2", url=server.url, tokenizer="ckpt/tokenizer",
    ...     out_dir=Path("gates/perf"))["status"]  # doctest: +SKIP
    'pass'
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SCRIPT_NAME
    path.write_text(recipe(gate, model=model, url=url, tokenizer=tokenizer), encoding="utf-8")
    path.chmod(0o755)
    aiperf = shutil.which(os.environ.get("K2TRT_AIPERF") or "aiperf")
    if aiperf is None:
        return not_executed(
            "perf", "aiperf is not installed (pip install aiperf, or set K2TRT_AIPERF to it)"
        )
    artifacts = out_dir / ARTIFACTS_DIR
    shutil.rmtree(artifacts, ignore_errors=True)  # an earlier run's export must not pass this one
    env = {  # the arguments win over variables left in the caller's environment
        **os.environ,
        "K2TRT_AIPERF": aiperf,
        "K2TRT_PERF_URL": server_url(url),
        "K2TRT_PERF_MODEL": model,
        "K2TRT_PERF_TOKENIZER": tokenizer,
        "K2TRT_PERF_ARTIFACTS": str(artifacts),
    }
    log = out_dir / LOG_NAME
    # aiperf leaves its dataset memory map (aiperf_mmap_<id>/) in the temp dir: give it one
    # of its own, removed afterwards (short: the path may name sockets)
    with tempfile.TemporaryDirectory(prefix="k2trt-aiperf-") as tmp:
        env["TMPDIR"] = tmp
        code = run_bounded(["bash", str(path)], env, log, None, gate.timeout_s, cwd=out_dir)
    if code is None:
        return verdict("perf", {}, [f"aiperf timed out after {gate.timeout_s:g} s (log: {log})"])
    if code != 0:  # e.g. every request failed: aiperf then writes no export
        return verdict("perf", {}, [f"aiperf exited with {code}: {last_line(log, ' ERROR ')}"])
    export = find_export(artifacts)
    if export is None:
        return verdict("perf", {}, [f"aiperf wrote no {EXPORT_NAME} under {artifacts}"])
    try:
        data = json.loads(export.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return verdict("perf", {}, [f"{export} is not JSON: {err}"])
    if not isinstance(data, dict):
        return verdict("perf", {}, [f"{export} is not a JSON object"])
    return check(data, gate)


def check(export: Mapping[str, Any], gate: PerfGate) -> dict[str, Any]:
    """Figures (request_count, error_request_count, output_token_throughput, every threshold
    key) and the gate's verdict on an aiperf export.

    >>> export = {"request_count": {"unit": "requests", "avg": 100.0},
    ...           "output_token_throughput": {"unit": "tokens/sec", "avg": 812.3}}
    >>> check(export, PerfGate(min={"output_token_throughput": 1000}))["failures"]
    ['output_token_throughput 812.3 < min 1000']
    """
    metrics = metrics_of(export)
    figures: dict[str, float] = {
        "request_count": counted(metrics, "request_count"),
        "error_request_count": counted(metrics, "error_request_count"),
    }
    throughput = stat(metrics, "output_token_throughput")
    if not isinstance(throughput, str):
        figures["output_token_throughput"] = throughput
    failures = run_failures(export)
    if figures["request_count"] <= 0:
        failures.append("request_count 0: no request succeeded")
    if figures["error_request_count"] > 0:
        errors = figures["error_request_count"]
        failures.append(f"error_request_count {errors:g} > 0 ({error_kinds(export)})")
    failures += thresholds(figures, gate.min, gate.max, lambda key: stat(metrics, key))
    return verdict("perf", figures, failures)


def metrics_of(export: Mapping[str, Any]) -> Mapping[str, Any]:
    """Metric tag -> stats block: the top level, or "records" in exports before schema 1.0."""
    records = export.get("records")
    return records if isinstance(records, Mapping) else export


def stat(metrics: Mapping[str, Any], key: str) -> float | str:
    """The number `key` names ("tag" or "tag.stat", avg by default), or a one-line failure.

    >>> metrics = {"time_to_first_token": {"unit": "ms", "avg": 40.0, "p99": 95.5}}
    >>> stat(metrics, "time_to_first_token.p99"), stat(metrics, "ttft")
    (95.5, 'unknown metric ttft (not in the aiperf export)')
    """
    tag, _, name = key.partition(".")
    block = metrics.get(tag)
    if not isinstance(block, Mapping) or "unit" not in block:  # not a metric (schema_version…)
        return f"unknown metric {tag} (not in the aiperf export)"
    value = block.get(name or "avg")
    if not is_number(value):
        return f"{tag} has no {name or 'avg'} in the aiperf export"
    return float(value)


def counted(metrics: Mapping[str, Any], tag: str) -> int:
    """A request count; 0 when absent, which is how aiperf exports a count of none."""
    value = stat(metrics, tag)
    return 0 if isinstance(value, str) else int(value)


def run_failures(export: Mapping[str, Any]) -> list[str]:
    """A run aiperf itself marks as cancelled or incomplete fails, whatever its figures."""
    failures = []
    if export.get("was_cancelled") is True:
        failures.append("the aiperf run was cancelled")
    if export.get("is_complete") is False:
        failures.append(f"the aiperf run is incomplete: {export.get('incomplete_reason')}")
    return failures


def error_kinds(export: Mapping[str, Any]) -> str:
    """aiperf's error_summary in a few words, most frequent first.

    >>> error_kinds({"error_summary": [{"error_details": {"code": 499,
    ...     "type": "RequestCancellationError", "message": "..."}, "count": 11}]})
    '11 x 499 RequestCancellationError'
    """
    kinds: Counter[str] = Counter()
    for entry in export.get("error_summary") or ():
        details = entry.get("error_details") or {}
        kinds[f"{details.get('code')} {details.get('type')}"] += int(entry.get("count") or 0)
    shown = [f"{n} x {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ", ".join(shown[:3]) or "no error_summary"


def find_export(artifacts: Path) -> Path | None:
    """The export under the artifact dir: its top level first (named multi-phase runs add
    phases/<name>/ copies; the root one covers the whole run)."""
    found = sorted(artifacts.rglob(EXPORT_NAME), key=lambda p: (len(p.parts), str(p)))
    return found[0] if found else None


def server_url(url: str) -> str:
    """The server's URL as aiperf's --url wants it: without the /v1 it adds itself.

    >>> server_url("http://127.0.0.1:8080/v1/")
    'http://127.0.0.1:8080'
    """
    url = url.rstrip("/")
    return url.removesuffix("/v1")
