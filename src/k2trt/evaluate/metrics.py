"""K2-Vendor-Verifier's figures: per-answer schema validity, the summary, and the tool-call
trigger precision / recall / F1 against a reference run.

Upstream-defined (MoonshotAI/K2-Vendor-Verifier @ 0bc5061b): `tool_calls_eval.py`
(`process_request`, `validate_tool_call`, `compute_summary`) for the validity rule and every
summary key, in its order; the README's "Evaluation Metrics" for `schema_accuracy`
(count_successful_tool_call / count_finish_reason_tool_calls) and for TP/FP/FN/TN,
`tool_call_precision`, `tool_call_recall`, `tool_call_f1` (a "tool_calls" finish_reason against
"stop" or anything else). The script writes neither: here they are added after K2VV's keys.

Validity (K2VV): an answer with finish_reason "tool_calls" is valid when it has at least one
call and every call names a tool of the request whose JSON Schema its arguments (a JSON string
or an object) satisfy (`jsonschema.validate`: the schema's $schema, else the latest draft).
Ours: a tool declared without `parameters` takes any arguments object (K2VV finds no schema and
counts the call invalid). How reference and run are paired is ours too (K2VV does not publish
it): by data_index, both answered, the same messages; other pairs are counted as unpaired.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError, ValidationError, best_match


def schema_validator(schema: Mapping[str, Any]) -> Any:
    """A checked validator for `schema` (SchemaError when it is not a JSON Schema), as
    `jsonschema.validate` makes one, kept for the next request offering the same tool."""
    return _validator(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=4096)
def _validator(schema_text: str) -> Any:
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(instance: Any, schema: Mapping[str, Any]) -> None:
    """`jsonschema.validate` (the same error: best_match), with the validator cached."""
    error = best_match(schema_validator(schema).iter_errors(instance))
    if error is not None:
        raise error


def call_problem(call: Any, tools: Sequence[Mapping[str, Any]]) -> str | None:
    """Why one tool call is invalid (one line), or None when it is valid.

    >>> tools = [{"type": "function", "function": {"name": "f", "parameters": {
    ...     "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}]
    >>> call_problem({"function": {"name": "f", "arguments": '{"n": 2}'}}, tools) is None
    True
    >>> call_problem({"function": {"name": "f", "arguments": '{"n": "2"}'}}, tools)
    "f: arguments fail the schema at n: '2' is not of type 'integer'"
    >>> call_problem({"function": {"name": "g", "arguments": "{}"}}, tools)
    'g: no tool of that name in the request'
    """
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return "a tool call without function.name"
    name = function["name"]
    tool = next((t["function"] for t in tools if t["function"]["name"] == name), None)
    if tool is None:
        return f"{name}: no tool of that name in the request"
    args = function.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as err:
            return f"{name}: arguments are not JSON: {err}"[:300]
    try:
        validate(args, tool.get("parameters") or {})
    except ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top)"
        return f"{name}: arguments fail the schema at {where}: {err.message}"[:300]
    except SchemaError as err:
        return f"{name}: the tool's schema is not valid: {err.message}"[:300]
    return None


def judge(
    response: Any, tools: Sequence[Mapping[str, Any]]
) -> tuple[str | None, bool | None, list[str]]:
    """finish_reason, tool_calls_valid (None unless it is "tool_calls" with calls) and why
    calls are invalid, for one answer (K2VV's `process_request`)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, None, []
    choice = choices[0]
    finish_reason = choice.get("finish_reason")
    if finish_reason != "tool_calls":
        return finish_reason, None, []
    message = choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not calls or not isinstance(calls, list):
        return finish_reason, None, ["finish_reason is tool_calls but there is no tool call"]
    problems = [p for p in (call_problem(c, tools) for c in calls) if p is not None]
    return finish_reason, not problems, problems


def empty_summary(model: str) -> dict[str, Any]:
    """K2VV's summary keys, in its order, zeroed."""
    return {
        "model": model,
        "success_count": 0,
        "failure_count": 0,
        "finish_stop": 0,
        "finish_tool_calls": 0,
        "finish_others": 0,
        "finish_others_detail": {},
        "schema_validation_error_count": 0,
        "successful_tool_call_count": 0,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "eval_started_at": None,
        "eval_finished_at": None,
        "eval_duration_ms": None,
    }


def summarize(results: Iterable[Mapping[str, Any]], model: str) -> dict[str, Any]:
    """K2VV's `compute_summary` over result records (times left for the caller), then
    schema_accuracy when any answer finished with tool_calls.

    >>> s = summarize([{"status": "success", "finish_reason": "tool_calls", "tool_calls_valid":
    ...     True}, {"status": "success", "finish_reason": "length"}, {"status": "failed"}], "m")
    >>> s["finish_tool_calls"], s["finish_others_detail"], s["failure_count"], s["schema_accuracy"]
    (1, {'length': 1}, 1, 1.0)
    """
    summary = empty_summary(model)
    for r in results:
        add_usage(summary["usage"], (r.get("response") or {}).get("usage"))
        summary["success_count" if r.get("status") == "success" else "failure_count"] += 1
        reason = r.get("finish_reason")
        if reason == "stop":
            summary["finish_stop"] += 1
        elif reason == "tool_calls":
            summary["finish_tool_calls"] += 1
            valid = r.get("tool_calls_valid")
            key = "successful_tool_call_count" if valid else "schema_validation_error_count"
            summary[key] += 1
        elif reason:
            summary["finish_others"] += 1
            detail = summary["finish_others_detail"]
            detail[reason] = detail.get(reason, 0) + 1
    if summary["finish_tool_calls"]:
        summary["schema_accuracy"] = (
            summary["successful_tool_call_count"] / summary["finish_tool_calls"]
        )
    return summary


def add_usage(total: dict[str, int], usage: Any) -> None:
    if isinstance(usage, dict):
        for key in total:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] += value


def trigger_metrics(
    results: Iterable[Mapping[str, Any]], reference: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """TP/FP/FN/TN and tool_call_precision / recall / f1 of `results` against `reference`
    (K2VV's README); a ratio with a zero denominator is None.

    >>> run = [{"data_index": i, "status": "success", "finish_reason": r}
    ...        for i, r in enumerate(["tool_calls", "tool_calls", "stop", "length"])]
    >>> ref = [{"data_index": i, "status": "success", "finish_reason": r}
    ...        for i, r in enumerate(["tool_calls", "stop", "tool_calls", "stop"])]
    >>> m = trigger_metrics(run, ref)
    >>> [m[k] for k in ("tool_call_tp", "tool_call_fp", "tool_call_fn", "tool_call_tn")]
    [1, 1, 1, 1]
    >>> m["tool_call_precision"], m["tool_call_recall"], m["tool_call_f1"]
    (0.5, 0.5, 0.5)
    """
    by_index = {r.get("data_index"): r for r in reference if r.get("status") == "success"}
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    unpaired = 0
    for r in results:
        ref = by_index.get(r.get("data_index"))
        if r.get("status") != "success" or ref is None or not same_messages(r, ref):
            unpaired += 1
            continue
        ours, theirs = r.get("finish_reason") == "tool_calls", ref["finish_reason"] == "tool_calls"
        counts[("t" if ours == theirs else "f") + ("p" if ours else "n")] += 1
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        **{f"tool_call_{k}": v for k, v in counts.items()},
        "tool_call_unpaired": unpaired,
        "tool_call_precision": precision,
        "tool_call_recall": recall,
        "tool_call_f1": f1,
    }


def same_messages(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two result records asked the same conversation (when both recorded it)."""
    ma = (a.get("request") or {}).get("messages")
    mb = (b.get("request") or {}).get("messages")
    return ma is None or mb is None or ma == mb
