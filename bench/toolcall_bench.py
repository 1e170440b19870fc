"""Constrained tool calls on the tiny random checkpoint: schema accuracy with and without the
grammar, the mask's cost per token, and grammar compile time (cache miss and hit).

    python bench/toolcall_bench.py [--requests 200] [--max-tokens 256]

1. Accuracy: `--requests` chat requests with `tool_choice: "required"` over 20 varied tool
   schemas (1-3 tools each), sampled at temperature 1 with a seed per request, sent with
   `k2trt eval toolcalls`'s library call (`k2trt.evaluate.run.run_eval`, K2-Vendor-Verifier's
   judging) to the gateway of `k2trt serve --local` (in-process, 127.0.0.1), once with
   `--tool-grammar off` and once with `auto`. The random model never calls a tool by itself,
   so unconstrained validity is whatever noise happens to parse; constrained should be 100%.
   Printed: K2VV's schema_accuracy (valid / answers that finished with tool_calls) and the
   stricter valid calls / requests.
2. Cost: the reference engine's time per generated token vs the time spent in the mask
   (fill bitmask + apply + accept) per token, on the same requests run directly (target < 10%).
3. Compile: per distinct tool set (cache miss), the same set again (hit), and a tool set at
   the refusal limit (MAX_TOOLS tools).

The same figures for a real server: `k2trt serve --local CKPT --tool-grammar auto` and
`k2trt eval toolcalls DATA --base-url http://127.0.0.1:8000/v1`. Nothing here is asserted;
figures are from one run on one (shared) machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _util import doc_summary, print_table
from k2trt.chat.grammar import MAX_TOOLS
from k2trt.chat.grammar_engine import MaskFactory, ToolGrammar, ToolMask
from k2trt.evaluate.run import run_eval
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.constrain import constrain, grammar_for
from k2trt.runtime.local import LocalBackend
from k2trt.runtime.reference import ReferenceEngine
from k2trt.runtime.types import ChatRequest
from k2trt.serve.app import ServeConfig, create_app
from k2trt.serve.server import ServerThread
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions

S = {"type": "string"}


def obj(props: dict[str, Any], required: list[str] | None = None, closed: bool = True) -> Any:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    schema["required"] = list(props) if required is None else required
    if closed:
        schema["additionalProperties"] = False
    return schema


# 20 schemas: scalars, enums, bounds, patterns, formats, arrays, nesting, anyOf, $ref, optional
# fields. Strings are bounded (maxLength/pattern/enum/format): a random model writing an
# unbounded string rarely closes it before max_tokens.
SCHEMAS: dict[str, Any] = {
    "get_weather": obj({"city": {**S, "maxLength": 12}, "unit": {"enum": ["c", "f"]}}),
    "add": obj({"a": {"type": "number"}, "b": {"type": "number"}}),
    "set_light": obj(
        {"on": {"type": "boolean"}, "level": {"type": "integer", "minimum": 0, "maximum": 100}}
    ),
    "book_table": obj(
        {
            "people": {"type": "integer", "minimum": 1, "maximum": 20},
            "time": {**S, "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
        }
    ),
    "send_email": obj(
        {
            "to": {**S, "pattern": "^[a-z]{1,8}@[a-z]{1,8}[.](com|org)$"},
            "urgent": {"type": "boolean"},
        }
    ),
    "tag_items": obj(
        {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}}
    ),
    "move": obj(
        {"x": {"type": "integer"}, "y": {"type": "integer"}, "z": {"type": "integer"}}, ["x", "y"]
    ),
    "search": obj(
        {
            "query": {**S, "maxLength": 10},
            "limit": {"type": "integer", "minimum": 1, "maximum": 50},
        },
        ["query"],
    ),
    "convert": obj(
        {"amount": {"type": "number", "exclusiveMinimum": 0}, "to": {"enum": ["EUR", "USD", "JPY"]}}
    ),
    "schedule": obj({"date": {**S, "format": "date"}, "all_day": {"type": "boolean"}}),
    "route": obj(
        {
            "stops": {
                "type": "array",
                "items": {**S, "pattern": "^[A-Z]{3}$"},
                "minItems": 1,
                "maxItems": 3,
            }
        }
    ),
    "rate": obj(
        {
            "stars": {"type": "integer", "minimum": 1, "maximum": 5},
            "comment": {**S, "maxLength": 8},
        },
        ["stars"],
    ),
    "nested": obj({"point": obj({"lat": {"type": "number"}, "lon": {"type": "number"}})}),
    "either": obj({"value": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}),
    "nullable": obj({"note": {"type": ["string", "null"], "maxLength": 6}}),
    "ref": {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/item"}},
        "required": ["item"],
        "$defs": {
            "item": obj({"id": {"type": "integer"}, "qty": {"type": "integer", "minimum": 1}})
        },
    },
    "const_mode": obj({"mode": {"const": "fast"}, "n": {"type": "integer", "multipleOf": 5}}),
    "matrix": obj(
        {
            "rows": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}, "maxItems": 2},
                "maxItems": 2,
            }
        }
    ),
    "uuid": obj({"id": {**S, "format": "uuid"}}),
    "empty": {"type": "object", "properties": {}, "additionalProperties": False},
}
NAMES = list(SCHEMAS)


def tools_for(i: int) -> list[dict[str, Any]]:
    """1-3 tools for request i, cycling over the 20 schemas."""
    picked = dict.fromkeys(NAMES[(i * k + k) % len(NAMES)] for k in range(1, 1 + i % 3 + 1))
    return [{"type": "function", "function": {"name": n, "parameters": SCHEMAS[n]}} for n in picked]


def dataset(n: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [{"role": "user", "content": f"Request {i}: use a tool."}],
            "tools": tools_for(i),
            "tool_choice": "required",
            "temperature": 1.0,
            "seed": i,
            "max_tokens": max_tokens,
        }
        for i in range(n)
    ]


def evaluate(
    files: ModelFiles, engine: ReferenceEngine, mode: str, data: Path, out: Path
) -> dict[str, Any]:
    backend = LocalBackend(files, engine, grammar=grammar_for(files, mode))
    with ServerThread(create_app(backend, ServeConfig(close_backend=False))) as server:
        return eval_one_by_one(data, server.url, out, mode)


def eval_one_by_one(data: Path, url: str, out: Path, name: str) -> dict[str, Any]:
    """`k2trt eval toolcalls` against the gateway at `url`, one request at a time."""
    run = run_eval(
        data,
        url + "/v1",
        concurrency=1,
        timeout_s=600,
        retries=0,
        output=out / f"results-{name}.jsonl",
        summary=out / f"summary-{name}.json",
    )
    return run.summary


def evaluate_triton(ckpt: Path, data: Path, out: Path) -> dict[str, Any]:
    """The same requests through `k2trt package`'s repository on the CPU tritonserver (the
    stand-in tensorrt_llm masks like --local), behind `k2trt serve --triton-url`'s gateway."""
    from k2trt.build.bundle import build_bundle
    from k2trt.build.spec import BuildSpec
    from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint
    from k2trt.serve.triton_backend import TritonBackend
    from k2trt.triton_repo.cpu_server import CpuTritonServer, available
    from k2trt.triton_repo.repository import REPOSITORY_DIR, package, use_cpu_standin

    reason = available()
    if reason is not None:
        raise SystemExit(f"--triton: the CPU tritonserver cannot run here: {reason}")
    prepared = out / "prepared"
    convert_checkpoint(ckpt, prepared, ConvertOptions())
    bundle = build_bundle(prepared, out / "bundle", BuildSpec(gpus="H200x8"))
    repo = package(bundle, out / "pkg").path
    use_cpu_standin(repo, prepared)
    with CpuTritonServer(repo / REPOSITORY_DIR) as triton:
        backend = TritonBackend(triton.grpc_url, model_id="kimi-k2")
        with ServerThread(create_app(backend, ServeConfig())) as server:
            return eval_one_by_one(data, server.url, out, "triton")


@dataclass
class Recorder:
    """Wraps a MaskFactory and keeps the masks it starts (for their timing)."""

    inner: MaskFactory
    masks: list[ToolMask] = field(default_factory=list)

    def start(self) -> ToolMask:
        mask = self.inner.start()
        self.masks.append(mask)
        return mask


def mask_cost(
    files: ModelFiles, engine: ReferenceEngine, bodies: list[dict[str, Any]]
) -> tuple[float, float, int]:
    """(engine seconds per token without the mask, mask seconds per token, tokens)."""
    grammar = grammar_for(files, "auto")
    total_s = mask_s = 0.0
    tokens = 0
    for body in bodies:
        request = ChatRequest(
            body["messages"], body["tools"], "required", body["max_tokens"], 1.0, seed=body["seed"]
        )
        prepared = constrain(prepare(files, request), request, grammar)
        assert prepared.sampling.constraint is not None
        recorder = Recorder(prepared.sampling.constraint)  # type: ignore[arg-type]
        sampling = prepared.sampling.__class__(
            **{**prepared.sampling.__dict__, "constraint": recorder}
        )
        start = time.perf_counter()
        tokens += sum(1 for _ in engine.generate(prepared.prompt_ids, sampling))
        total_s += time.perf_counter() - start
        mask_s += sum(m.mask_s for m in recorder.masks)
    return (total_s - mask_s) / tokens, mask_s / tokens, tokens


def compile_times(files: ModelFiles) -> tuple[list[float], list[float], float, float]:
    """(miss seconds per tool set, hit seconds per tool set, MAX_TOOLS miss, its hit)."""
    grammar = ToolGrammar(files.tokenizer, files.stop_token_ids, "auto")
    sets = [tools_for(i) for i in range(20)]
    sets = list({json.dumps(s, sort_keys=True): s for s in sets}.values())
    misses, hits = [], []
    for tools in sets:
        start = time.perf_counter()
        grammar.factory(tools, "required")
        misses.append(time.perf_counter() - start)
    for tools in sets:
        start = time.perf_counter()
        grammar.factory(tools, "required")
        hits.append(time.perf_counter() - start)
    huge = [
        {"type": "function", "function": {"name": f"t{i}", "parameters": SCHEMAS[NAMES[i % 20]]}}
        for i in range(MAX_TOOLS)
    ]
    start = time.perf_counter()
    grammar.factory(huge, "auto")
    huge_miss = time.perf_counter() - start
    start = time.perf_counter()
    grammar.factory(huge, "auto")
    return misses, hits, huge_miss, time.perf_counter() - start


def accuracy_rows(root: Path, modes: Sequence[str], max_tokens: int) -> list[list[str]]:
    """One row per mode from its kept summary and results (K2VV's figures plus ours)."""
    rows = []
    for mode in modes:
        s = json.loads((root / f"summary-{mode}.json").read_text())
        results = [
            json.loads(line) for line in (root / f"results-{mode}.jsonl").read_text().splitlines()
        ]
        cut = [r for r in results if _completion_tokens(r) >= max_tokens]
        valid_whole = sum(1 for r in results if r.get("tool_calls_valid") and r not in cut)
        whole_calls = sum(
            1 for r in results if r.get("finish_reason") == "tool_calls" and r not in cut
        )
        acc = s.get("schema_accuracy")
        rows.append(
            [
                mode,
                str(len(results)),
                str(s["finish_tool_calls"]),
                str(s["successful_tool_call_count"]),
                "-" if acc is None else f"{acc:.1%}",
                str(len(cut)),
                "-" if not whole_calls else f"{valid_whole / whole_calls:.1%} of {whole_calls}",
                str(s["failure_count"]),
            ]
        )
    return rows


def print_invalid(root: Path, mode: str) -> None:
    """The first few invalid answers of a run, with K2VV's reasons."""
    lines = (root / f"results-{mode}.jsonl").read_text().splitlines()
    invalid = [r for r in map(json.loads, lines) if r.get("tool_calls_valid") is False]
    for record in invalid[:5]:
        why = record.get("tool_call_errors") or record
        print(f"  invalid: line {record['data_index']}: {why}"[:400])


def _completion_tokens(record: dict[str, Any]) -> int:
    usage = (record.get("response") or {}).get("usage") or {}
    return int(usage.get("completion_tokens", 0))


ACCURACY_HEADERS = [
    "run",
    "requests",
    "finish tool_calls",
    "valid",
    "schema_accuracy",
    "cut at max_tokens",
    "valid, not cut",
    "failed",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--cost-requests", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="Keep data and results in this directory.")
    parser.add_argument(
        "--triton", type=int, default=0, help="Also send the first N requests through Triton."
    )
    parser.add_argument("--skip-local", action="store_true", help="Only the Triton run.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        ckpt = root / "tiny"
        write_checkpoint(ckpt, SynthOptions(preset="tiny", seed=0), force=True)
        files, engine = ModelFiles.load(ckpt), ReferenceEngine.load(ckpt)
        bodies = dataset(args.requests, args.max_tokens)
        data = root / "toolcalls.jsonl"
        data.write_text("".join(json.dumps(b) + "\n" for b in bodies))
        modes = [] if args.skip_local else ["off", "auto"]
        for mode in modes:
            start = time.perf_counter()
            evaluate(files, engine, mode, data, root)
            print(f"{mode}: {args.requests} requests in {time.perf_counter() - start:.0f} s")
            print_invalid(root, mode)
        if args.triton:
            few = root / "toolcalls-triton.jsonl"
            few.write_text("".join(json.dumps(b) + "\n" for b in bodies[: args.triton]))
            start = time.perf_counter()
            evaluate_triton(ckpt, few, root)
            print(f"triton: {args.triton} requests in {time.perf_counter() - start:.0f} s")
            print_invalid(root, "triton")
            modes.append("triton")
        print_table(
            f"Schema accuracy, tool_choice required, {len(SCHEMAS)} schemas, max_tokens "
            f"{args.max_tokens} (k2trt eval toolcalls -> serve --local | --triton-url)",
            ACCURACY_HEADERS,
            accuracy_rows(root, modes, args.max_tokens),
        )
        if args.skip_local:
            return
        step_s, mask_s, tokens = mask_cost(files, engine, bodies[: args.cost_requests])
        print_table(
            "Mask cost per generated token (reference engine, tiny checkpoint)",
            ["tokens", "engine step", "mask (fill+apply+accept)", "mask / step"],
            [
                [
                    str(tokens),
                    f"{step_s * 1e3:.2f} ms",
                    f"{mask_s * 1e3:.3f} ms",
                    f"{mask_s / step_s:.1%}",
                ]
            ],
        )
        misses, hits, huge_miss, huge_hit = compile_times(files)
        print_table(
            "Grammar compile per request (ToolGrammar.factory)",
            ["case", "tool sets", "median", "max"],
            [
                [
                    "miss (new tool set)",
                    str(len(misses)),
                    f"{statistics.median(misses) * 1e3:.2f} ms",
                    f"{max(misses) * 1e3:.2f} ms",
                ],
                [
                    "hit (cached)",
                    str(len(hits)),
                    f"{statistics.median(hits) * 1e3:.3f} ms",
                    f"{max(hits) * 1e3:.3f} ms",
                ],
                [f"miss, {MAX_TOOLS} tools (the limit)", "1", f"{huge_miss * 1e3:.1f} ms", "-"],
                [f"hit, {MAX_TOOLS} tools", "1", f"{huge_hit * 1e3:.2f} ms", "-"],
            ],
        )


if __name__ == "__main__":
    main()
