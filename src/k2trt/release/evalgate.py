"""The eval gate: a tool-call evaluation command (K2-Vendor-Verifier compatible) runs against
the served API, and the summary JSON it writes is checked against the gate's min/max.

The command is argv, run without a shell. In each word these are replaced, and nothing else
(a word holding JSON, like K2VV's --extra-body, stays as written):
- `{base_url}`: the OpenAI base URL (the server's URL with /v1, added when missing);
- `{model}`: the served model name;
- `{out}`: OUT_DIR/eval-summary.json, where the command must write its summary;
- `{out_dir}`: OUT_DIR, for anything else it writes.
The environment has K2TRT_EVAL_BASE_URL, K2TRT_EVAL_MODEL and K2TRT_EVAL_OUT. It runs in the
caller's working directory, its output in OUT_DIR/eval.log and eval.stderr.log. With
MoonshotAI/K2-Vendor-Verifier's script (its OpenAI client wants a key even where the gateway
asks for none: --api-key or OPENAI_API_KEY):

    eval:
      command: [python, k2vv/tool_calls_eval.py, k2vv/samples.jsonl, --base-url, "{base_url}",
                --model, "{model}", --api-key, unused, --summary, "{out}",
                --output, "{out_dir}/eval-results.jsonl"]
      min: {schema_accuracy: 0.99}
      max: {failure_count: 0}

The summary `tool_calls_eval.py` writes (K2-Vendor-Verifier @ 0bc5061b, compute_summary), as
read here; thresholds name any number in it by a dotted path (`usage.completion_tokens`):

    model, success_count, failure_count          requests answered / failed (after retries)
    finish_stop, finish_tool_calls, finish_others, finish_others_detail: {reason: count}
    successful_tool_call_count                   finish_reason tool_calls, every call valid
    schema_validation_error_count                finish_reason tool_calls, a call invalid/none
    usage: {prompt_tokens, completion_tokens, total_tokens}      (non-streamed requests only)
    eval_started_at, eval_finished_at, eval_duration_ms

Every tool_calls answer is counted once, valid or not, so finish_tool_calls =
successful_tool_call_count + schema_validation_error_count. Derived figures, used where the
summary has no key of that name:
- `schema_accuracy` = successful_tool_call_count / finish_tool_calls: the README's
  "count_successful_tool_call / count_finish_reason_tool_calls" (ToolCall-Schema Accuracy);
  undefined when no answer finished with tool_calls.
- `success_rate` = success_count / (success_count + failure_count).
K2VV's other headline figure, tool_call_f1, compares against the official API's results and is
not in the summary: a wrapper command that adds it to the summary can gate on it by name.
`k2trt eval toolcalls` writes the same summary (plus schema_accuracy, malformed_count, and
tool_call_f1 with --reference); k2trt ships a gate for it, `load_gate(GATE_FILE)`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

from k2trt.release.spec import EvalGate
from k2trt.typed import from_mapping, load_yaml

SUMMARY_NAME = "eval-summary.json"
GATE_FILE = Path(__file__).parent.parent / "evaluate" / "data" / "toolcalls-gate.yaml"
STDOUT_LOG, STDERR_LOG = "eval.log", "eval.stderr.log"
COUNTS = (
    "success_count",
    "failure_count",
    "finish_tool_calls",
    "successful_tool_call_count",
    "schema_validation_error_count",
)
# Counts K2VV adds only once they are non-zero: a reason it has not seen is 0, not missing.
ZERO_WHEN_ABSENT = frozenset({"finish_others_detail"})


def run(gate: EvalGate, *, base_url: str, model: str, out_dir: Path) -> dict[str, Any]:
    """Run the gate's command, then `check` the summary it wrote (see the module docstring).

    >>> import sys, tempfile
    >>> gate = EvalGate((sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write("
    ...     "'{\\"success_count\\": 1, \\"failure_count\\": 0}')", "{out}"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     run(gate, base_url="http://h:8000", model="m", out_dir=Path(tmp))["status"]
    'pass'
    """
    base_url = openai_base(base_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / SUMMARY_NAME
    out.unlink(missing_ok=True)  # a summary left by an earlier run must not pass this one
    values = {"base_url": base_url, "model": model, "out": str(out), "out_dir": str(out_dir)}
    argv = [fill(word, values) for word in gate.command]
    env = {
        **os.environ,
        "K2TRT_EVAL_BASE_URL": base_url,
        "K2TRT_EVAL_MODEL": model,
        "K2TRT_EVAL_OUT": str(out),
    }
    stderr = out_dir / STDERR_LOG
    try:
        code = run_bounded(argv, env, out_dir / STDOUT_LOG, stderr, gate.timeout_s)
    except OSError as err:  # not found, not executable
        return verdict("eval", {}, [f"eval command {argv[0]!r} did not start: {err.strerror}"])
    if code is None:
        return verdict("eval", {}, [f"eval command timed out after {gate.timeout_s:g} s"])
    if code != 0:
        return verdict("eval", {}, [f"eval command exited with {code}: {last_line(stderr)}"])
    summary = load_summary(out)
    if isinstance(summary, str):
        return verdict("eval", {}, [summary])
    return check(summary, gate)


def load_gate(path: Path) -> EvalGate:
    """An eval gate from a YAML file holding what release.yaml's `gates.eval` holds.

    >>> load_gate(GATE_FILE).min["schema_accuracy"]
    0.99
    """
    return from_mapping(EvalGate, load_yaml(path, "eval gate"), str(path))


def check(summary: Mapping[str, Any], gate: EvalGate) -> dict[str, Any]:
    """Figures (K2VV's counts, derived rates, every threshold key) and the gate's verdict.

    >>> summary = {"success_count": 10, "failure_count": 0, "finish_tool_calls": 4,
    ...            "successful_tool_call_count": 3, "schema_validation_error_count": 1}
    >>> result = check(summary, EvalGate(("true",), min={"schema_accuracy": 0.9}))
    >>> result["figures"]["schema_accuracy"], result["failures"]
    (0.75, ['schema_accuracy 0.75 < min 0.9'])
    """
    figures: dict[str, float] = {n: summary[n] for n in COUNTS if is_number(summary.get(n))}
    derived = {k: v for k, v in derived_rates(figures).items() if k not in summary}
    figures.update((k, v) for k, v in derived.items() if not isinstance(v, str))
    failures = []
    counted = "success_count" in figures and "failure_count" in figures
    if counted and figures["success_count"] + figures["failure_count"] == 0:
        failures.append("the eval summary counts no request (success + failure = 0)")

    def find(key: str) -> float | str:
        return derived[key] if key in derived else lookup(summary, key)

    failures += thresholds(figures, gate.min, gate.max, find)
    return verdict("eval", figures, failures)


def derived_rates(counts: Mapping[str, float]) -> dict[str, float | str]:
    """schema_accuracy and success_rate, each a number or why it is undefined.

    >>> derived_rates({"finish_tool_calls": 0, "successful_tool_call_count": 0})
    {'schema_accuracy': 'schema_accuracy undefined: no answer finished with tool_calls'}
    """
    rates: dict[str, float | str] = {}
    if "finish_tool_calls" in counts and "successful_tool_call_count" in counts:
        calls = counts["finish_tool_calls"]
        rates["schema_accuracy"] = (
            counts["successful_tool_call_count"] / calls
            if calls
            else "schema_accuracy undefined: no answer finished with tool_calls"
        )
    if "success_count" in counts and "failure_count" in counts:
        answered = counts["success_count"] + counts["failure_count"]
        rates["success_rate"] = (
            counts["success_count"] / answered
            if answered
            else "success_rate undefined: the summary counts no request"
        )
    return rates


def lookup(summary: Mapping[str, Any], key: str) -> float | str:
    """The number at dotted path `key`, or a one-line failure naming it.

    >>> lookup({"usage": {"total_tokens": 7}}, "usage.total_tokens")
    7
    >>> lookup({"finish_others_detail": {}}, "finish_others_detail.length")
    0
    >>> lookup({}, "tool_call_f1")
    'the eval summary has no tool_call_f1'
    """
    node: Any = summary
    walked: list[str] = []
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if isinstance(node, Mapping) and ".".join(walked) in ZERO_WHEN_ABSENT:
                return 0
            return f"the eval summary has no {key}"
        node = node[part]
        walked.append(part)
    if not is_number(node):
        return f"{key} is not a number in the eval summary: {node!r}"[:200]
    return float(node) if isinstance(node, float) else int(node)


def openai_base(url: str) -> str:
    """The OpenAI base URL OpenAI clients (and K2VV's --base-url) take: the server's URL with
    /v1, where k2trt serves the OpenAI API.

    >>> openai_base("http://127.0.0.1:8080"), openai_base("http://127.0.0.1:8080/v1/")
    ('http://127.0.0.1:8080/v1', 'http://127.0.0.1:8080/v1')
    """
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def load_summary(path: Path) -> Mapping[str, Any] | str:
    """The summary object, or a one-line failure saying why there is none."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"the eval command wrote no summary at {path}"
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"eval summary {path} is not JSON: {err}"
    if not isinstance(summary, dict):
        return f"eval summary {path} is not a JSON object"
    return summary


# ---------------------------------------------------------------------------------------------
# Shared by the gates that run a command (perf imports these)


def fill(word: str, values: Mapping[str, str]) -> str:
    """`word` with each `{name}` of `values` replaced; other braces stay (no str.format).

    >>> fill('{"x": 1} {out}', {"out": "/o.json"})
    '{"x": 1} /o.json'
    """
    for name, value in values.items():
        word = word.replace("{" + name + "}", value)
    return word


def run_bounded(
    argv: Sequence[str],
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path | None,
    timeout_s: float,
    cwd: Path | None = None,
) -> int | None:
    """Run `argv` with its output in files (stderr None: into stdout's); its exit status, or
    None when it ran past `timeout_s`: then it is killed with its whole session (a session of
    its own), so the workers it started die with it."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(stdout.open("wb"))
        err = files.enter_context(stderr.open("wb")) if stderr else subprocess.STDOUT
        proc = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
            stderr=err, start_new_session=True,
        )  # fmt: skip
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if proc.returncode is None:  # past its time, or we were interrupted: not yet
                with contextlib.suppress(ProcessLookupError):  # reaped, so the id is its own
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def last_line(log: Path, prefer: str = "") -> str:
    """The last non-empty line of `log` (the last one containing `prefer`, if any does),
    progress-bar carriage returns resolved, cut to 200 characters."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no output)"
    lines = [ln.rsplit("\r")[-1].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    preferred = [ln for ln in lines if prefer and prefer in ln]
    return ((preferred or lines or ["(no output)"])[-1])[:200]


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (bool is not one), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def thresholds(
    figures: dict[str, float],
    low: Mapping[str, float],
    high: Mapping[str, float],
    find: Callable[[str], float | str],
) -> list[str]:
    """Look up every threshold key not in `figures` yet (`find` gives the number, or a
    one-line failure), add it, then `compare`; the failures."""
    failures = []
    for key in sorted({*low, *high} - figures.keys()):
        value = find(key)
        if isinstance(value, str):
            failures.append(value)
        else:
            figures[key] = value
    return failures + compare(figures, low, high)


def compare(
    figures: Mapping[str, float], low: Mapping[str, float], high: Mapping[str, float]
) -> list[str]:
    """One failure per figure outside its min/max (keys not in `figures` are skipped: the
    caller has said why they are missing).

    >>> compare({"a": 812.3}, {"a": 1000}, {})
    ['a 812.3 < min 1000']
    """
    failures = []
    for key in sorted(low):
        if key in figures and figures[key] < low[key]:
            failures.append(f"{key} {number(figures[key])} < min {number(low[key])}")
    for key in sorted(high):
        if key in figures and figures[key] > high[key]:
            failures.append(f"{key} {number(figures[key])} > max {number(high[key])}")
    return failures


def number(value: float) -> str:
    """Six significant digits: 2320.72, 0.75, 1000."""
    return f"{value:.6g}"


def verdict(gate: str, figures: Mapping[str, float], failures: list[str]) -> dict[str, Any]:
    """A gate's result: pass when nothing failed; figures sorted by name."""
    return {
        "gate": gate,
        "status": "fail" if failures else "pass",
        "figures": dict(sorted(figures.items())),
        "failures": failures,
    }


def not_executed(gate: str, reason: str) -> dict[str, Any]:
    """A gate's result when it could not run here (no tool, no GPU): neither pass nor fail."""
    return {"gate": gate, "status": "not executed", "figures": {}, "failures": [], "reason": reason}
