"""`k2trt eval toolcalls`: K2-Vendor-Verifier's tool-call eval against any OpenAI endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from k2trt.errors import CheckFailed, K2Error
from k2trt.output import OUTPUT

if TYPE_CHECKING:  # the eval library (requests, jsonschema) loads when the command runs
    from k2trt.evaluate.run import EvalRun
    from k2trt.evaluate.run import Progress as ProgressFn

app = typer.Typer(help="Evaluate a served model.", no_args_is_help=True)

SHOWN = 20  # bad lines and failed requests listed in human mode; --json lists them all


def extra_body_of(text: str | None) -> dict[str, Any]:
    """--extra-body: a JSON object merged into every request body."""
    if not text:
        return {}
    try:
        body = json.loads(text)
    except ValueError as err:
        raise K2Error(f"--extra-body: not JSON: {err}") from None
    if not isinstance(body, dict):
        raise K2Error(f"--extra-body: expected a JSON object, got {type(body).__name__}")
    return body


@contextmanager
def request_progress() -> Iterator[ProgressFn]:
    """A requests-done bar on stderr (OUTPUT.progress: human mode on a TTY only)."""
    with OUTPUT.progress("requests", unit="items") as ticker:
        seen = 0

        def update(done: int, total: int) -> None:
            nonlocal seen
            ticker.total(total)
            ticker.advance(done - seen)
            seen = done

        yield update


@app.command("toolcalls")
def toolcalls(
    data: Path = typer.Argument(
        None, help="JSONL of chat request bodies (K2VV's format). Default: k2trt's sample set."
    ),
    base_url: str = typer.Option(..., "--base-url", help="OpenAI base URL, e.g. http://h:8000/v1."),
    model: str = typer.Option(None, "--model", help="Model name (default: the first /models)."),
    api_key: str = typer.Option(
        None, "--api-key", help="Bearer key (default: $OPENAI_API_KEY, else none)."
    ),
    concurrency: int = typer.Option(5, "--concurrency", help="Requests in flight (1..256)."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds per attempt, stream included."),
    retries: int = typer.Option(3, "--retries", help="More attempts on 408/409/429/5xx/network."),
    backoff: float = typer.Option(2.0, "--backoff", help="First retry delay, doubling, cap 60 s."),
    extra_body: str = typer.Option(None, "--extra-body", help="JSON object added to each body."),
    temperature: float = typer.Option(None, "--temperature", help="Override every request's."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="Override every request's."),
    incremental: bool = typer.Option(
        False, "--incremental", help="Keep OUTPUT's successful results; send only the rest."
    ),
    output: Path = typer.Option(Path("results.jsonl"), "--output", help="Per-request results."),
    summary: Path = typer.Option(Path("summary.json"), "--summary", help="K2VV's summary."),
    reference: Path = typer.Option(
        None, "--reference", help="Reference results.jsonl: adds tool_call_precision/recall/f1."
    ),
    thresholds: Path = typer.Option(
        None, "--thresholds", help="Eval gate YAML (min/max): exit 1 when the summary fails it."
    ),
) -> None:
    """Send every request, check each tool call against its JSON Schema, write K2VV's files."""
    from k2trt.evaluate.run import run_eval
    from k2trt.evaluate.samples import SAMPLE_PATH

    with request_progress() as progress:
        run = run_eval(
            data or SAMPLE_PATH, base_url, model=model, api_key=api_key,
            concurrency=concurrency, timeout_s=timeout, retries=retries, backoff_s=backoff,
            extra_body=extra_body_of(extra_body), incremental=incremental, output=output,
            summary=summary, reference=reference, temperature=temperature,
            max_tokens=max_tokens, progress=progress,
        )  # fmt: skip
    verdict = None
    if thresholds is not None:
        from k2trt.release.evalgate import check, load_gate

        verdict = check(run.summary, load_gate(thresholds))
    OUTPUT.result(result_json(run, verdict), render)
    if verdict is not None and verdict["status"] != "pass":
        raise CheckFailed(f"eval thresholds failed: {'; '.join(verdict['failures'])}")


def result_json(run: EvalRun, verdict: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "summary": run.summary,
        "output": str(run.output),
        "summary_path": str(run.summary_path),
        "sent": run.sent,
        "reused": run.reused,
        "malformed": [{"line": b.line, "reason": b.reason} for b in run.malformed],
        "failures": run.failures,
    }
    if verdict is not None:
        data["thresholds"] = verdict
    return data


def listed(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    more = [f"  ... and {len(items) - SHOWN} more"] if len(items) > SHOWN else []
    return [f"{title} ({len(items)}):", *(f"  {i}" for i in items[:SHOWN]), *more]


def render(data: dict[str, Any]) -> str:
    s = data["summary"]
    lines = listed("malformed lines, skipped", [f"line {m['line']}: {m['reason']}"
                                                for m in data["malformed"]])  # fmt: skip
    lines += listed("failed requests", data["failures"])
    accuracy = s.get("schema_accuracy")
    lines += [
        f"{s['model']}: {s['success_count']} answered, {s['failure_count']} failed "
        f"({data['sent']} sent, {data['reused']} kept from an earlier run)",
        f"finish_reason: stop {s['finish_stop']}, tool_calls {s['finish_tool_calls']}, "
        f"others {s['finish_others']} {json.dumps(s['finish_others_detail'])}",
        f"tool calls valid {s['successful_tool_call_count']}, "
        f"invalid {s['schema_validation_error_count']}, schema_accuracy "
        + ("n/a" if accuracy is None else f"{accuracy:.2%}"),
        f"usage: {s['usage']['prompt_tokens']} prompt, {s['usage']['completion_tokens']} "
        "completion tokens",
    ]
    if "tool_call_f1" in s:
        lines.append(
            "vs reference: "
            + ", ".join(f"{k} {pct(s[f'tool_call_{k}'])}" for k in ("precision", "recall", "f1"))
            + f" ({s['tool_call_unpaired']} unpaired)"
        )
    if "thresholds" in data:
        t = data["thresholds"]
        lines.append(f"thresholds: {t['status']}" + "".join(f"; {f}" for f in t["failures"]))
    lines.append(f"wrote {data['output']} and {data['summary_path']}")
    return "\n".join(lines)


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"
