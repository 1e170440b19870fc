"""One evaluation run: read the requests, send them (a pool of `concurrency` threads), judge
each answer, keep results.jsonl and summary.json as K2-Vendor-Verifier writes them.

As K2VV (@ 0bc5061b, `validate_file`): results are appended to the output file as they come
(so an interrupted run keeps what it got), then rewritten once, one record per request sorted
by data_index; `incremental` keeps the successful results whose request hash is unchanged and
sends the rest; the summary is written when the run starts and when it ends. Ours: those
rewrites go through a temp file + rename; the endpoint is tried (GET /models) before any request
is sent, so an unreachable one fails at once instead of once per request; without `model`
the first model it lists is used; bad lines are counted (`malformed_count`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from k2trt.errors import K2Error
from k2trt.evaluate.client import ChatClient, ClientConfig, Failure
from k2trt.evaluate.dataset import BadLine, Overrides, Sample, read_samples
from k2trt.evaluate.metrics import judge, summarize, trigger_metrics
from k2trt.fsutil import write_text_atomic

MAX_CONCURRENCY = 256
Progress = Callable[[int, int], None]  # (done, total) after each request


@dataclass
class EvalRun:
    """What a run produced: K2VV's summary (plus our keys), the bad lines, where files went."""

    summary: dict[str, Any]
    malformed: list[BadLine]
    output: Path
    summary_path: Path
    sent: int = 0  # requests sent in this run
    reused: int = 0  # successful results kept from an earlier run (incremental)
    failures: list[str] = field(default_factory=list)  # "line N: error" of failed requests


def run_eval(
    data_path: str | Path,
    base_url: str,
    *,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 5,
    timeout_s: float = 600.0,
    retries: int = 3,
    backoff_s: float = 2.0,
    extra_body: Mapping[str, Any] | None = None,
    incremental: bool = False,
    output: str | Path = "results.jsonl",
    summary: str | Path = "summary.json",
    reference: str | Path | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    progress: Progress | None = None,
) -> EvalRun:
    """Evaluate the requests of `data_path` against the OpenAI API at `base_url` (…/v1).

    >>> run = run_eval("samples.jsonl", "http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> run.summary["successful_tool_call_count"], run.summary["schema_accuracy"]  # doctest: +SKIP
    (41, 1.0)
    """
    check_options(concurrency, timeout_s, retries, backoff_s, max_tokens, temperature)
    config = ClientConfig(
        base_url, api_key, timeout_s, retries, backoff_s, extra_body=dict(extra_body or {})
    )
    client = ChatClient(config)
    ref = read_results(Path(reference), "reference results") if reference else None
    model = served_model(client, model)
    samples, bad = read_samples(Path(data_path), Overrides(model, temperature, max_tokens))
    if not samples:
        first = f"; {bad[0]}" if bad else ""
        raise K2Error(f"no usable request in the file{first}", path=data_path)
    out, summary_path = Path(output), Path(summary)
    for path in (out, summary_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    earlier = earlier_successes(out) if incremental else {}
    kept = [earlier[s.hash] for s in samples if s.hash in earlier]
    todo = [s for s in samples if s.hash not in earlier]
    started, start_s = datetime.now().isoformat(), time.monotonic()
    run = EvalRun({}, bad, out, summary_path, len(todo), len(kept))

    def write_summary(results: list[dict[str, Any]], finished: str | None) -> None:
        run.summary = {
            **summarize(results, model),
            "eval_started_at": started,
            "eval_finished_at": finished,
            "eval_duration_ms": int(max(0.0, time.monotonic() - start_s) * 1000),
        }
        if ref is not None:
            run.summary.update(trigger_metrics(results, ref))
        run.summary["malformed_count"] = len(bad)
        write_text_atomic(summary_path, json.dumps(run.summary, ensure_ascii=False, indent=4))

    write_summary(kept, None)
    results = kept + send_all(client, todo, out, concurrency, incremental, extra_body, progress)
    results.sort(key=lambda r: r["data_index"])
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    write_summary(results, datetime.now().isoformat())
    run.failures = [
        f"line {r['data_index']}: {(r.get('response') or {}).get('error', '?')}"[:300]
        for r in results
        if r.get("status") != "success"
    ]
    return run


def check_options(
    concurrency: int,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """One K2Error naming the first option out of range."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise K2Error(f"--concurrency: expected 1..{MAX_CONCURRENCY}, got {concurrency}")
    if not timeout_s > 0:
        raise K2Error(f"--timeout: expected seconds > 0, got {timeout_s}")
    if retries < 0:
        raise K2Error(f"--retries: expected 0 or more, got {retries}")
    if backoff_s < 0:
        raise K2Error(f"--backoff: expected seconds >= 0, got {backoff_s}")
    if max_tokens is not None and max_tokens < 1:
        raise K2Error(f"--max-tokens: expected 1 or more, got {max_tokens}")
    if temperature is not None and temperature < 0:
        raise K2Error(f"--temperature: expected 0 or more, got {temperature}")


def served_model(client: ChatClient, model: str | None) -> str:
    """`model`, or the first the endpoint lists; K2Error when the endpoint is not reached."""
    try:
        models = client.models()
    except Failure as failure:
        http_error = failure.error_type not in ("APIConnectionError", "APITimeoutError")
        if model and http_error:
            return model  # reached; some endpoints have no /models
        raise K2Error(f"{client.url('/models')}: {failure}"[:300]) from None
    except ValueError:
        models = []
    if model:
        return model
    if not models:
        raise K2Error(f"{client.url('/models')} lists no model: give --model")
    return models[0]


def read_results(path: Path, what: str) -> list[dict[str, Any]]:
    """The records of a results JSONL file (lines that are not JSON objects are skipped, as
    K2VV's `read_result_jsonl` does)."""
    try:
        with path.open("rb") as f:
            records = [parse_record(line) for line in f if line.strip()]
    except FileNotFoundError:
        raise K2Error(f"no such {what} file", path=path) from None
    except OSError as err:
        raise K2Error(f"cannot read the {what}: {err.strerror}", path=path) from None
    return [r for r in records if r is not None]


def parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "data_index" in record else None


def earlier_successes(out: Path) -> dict[str, dict[str, Any]]:
    """Successful results of an earlier run by request hash (the last one of each wins)."""
    if not out.exists():
        return {}
    found = {}
    for record in read_results(out, "results"):
        if record.get("status") == "success" and isinstance(record.get("hash"), str):
            found[record["hash"]] = record
    return found


def send_all(
    client: ChatClient,
    todo: list[Sample],
    out: Path,
    concurrency: int,
    append: bool,
    extra_body: Mapping[str, Any] | None,
    progress: Progress | None,
) -> list[dict[str, Any]]:
    """Every request of `todo`, each result appended to `out` as it comes."""
    results: list[dict[str, Any]] = []
    with out.open("a" if append else "w", encoding="utf-8") as sink:
        for result in completed(client, todo, concurrency, extra_body):
            results.append(result)
            sink.write(json.dumps(result, ensure_ascii=False) + "\n")
            sink.flush()
            if progress is not None:
                progress(len(results), len(todo))
    return results


def completed(
    client: ChatClient,
    todo: list[Sample],
    concurrency: int,
    extra_body: Mapping[str, Any] | None,
) -> Iterator[dict[str, Any]]:
    """Results in the order they finish; at most `concurrency` requests in flight, and no more
    than that queued (an interrupted run leaves nothing unsent behind in a queue)."""
    pending = iter(todo)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="k2trt-eval")
    running: set[Future[dict[str, Any]]] = set()
    finished = False
    try:
        while True:
            while len(running) < concurrency:
                sample = next(pending, None)
                if sample is None:
                    break
                running.add(pool.submit(evaluate_one, client, sample, extra_body))
            if not running:
                finished = True
                return
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        if not finished:  # interrupted: requests in flight end now, not at their timeout
            client.close()
        pool.shutdown(wait=finished, cancel_futures=True)


def evaluate_one(
    client: ChatClient, sample: Sample, extra_body: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Send one request and judge the answer: K2VV's result record (+ tool_call_errors)."""
    start = time.monotonic()
    status, response = client.send(sample.prepared)
    duration_ms = int((time.monotonic() - start) * 1000)
    finish_reason, valid, problems = judge(response, sample.tools)
    record: dict[str, Any] = {
        "data_index": sample.data_index,
        "request": sample.prepared,
        "extra_body": dict(extra_body or {}),
        "response": response,
        "status": status,
        "finish_reason": finish_reason,
        "tool_calls_valid": valid,
        "last_run_at": datetime.now().isoformat(),
        "duration_ms": duration_ms,
        "hash": sample.hash,
    }
    if problems:
        record["tool_call_errors"] = problems
    return record
