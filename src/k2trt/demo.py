"""The demo pipeline as a library call: each stage runs the real code on a tiny model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint.inspection import InspectOptions, inspect_checkpoint
from k2trt.errors import K2Error
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions
from k2trt.units import human_bytes


@dataclass
class Stage:
    name: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


def run_demo(
    root: Path, *, seed: int = 0, on_stage: Callable[[Stage], None] = lambda s: None
) -> list[Stage]:
    """synth -> inspect -> convert -> verify -> chat -> plan -> build -> package -> release
    -> serve -> grammar.

    >>> [s.name for s in run_demo(Path("/tmp/demo"))][-2:]  # doctest: +SKIP
    ['serve', 'grammar']
    """
    stages: list[Stage] = []

    def done(stage: Stage) -> None:
        stages.append(stage)
        on_stage(stage)

    ckpt = root / "kimi-k2-tiny"
    synth = write_checkpoint(ckpt, SynthOptions(preset="tiny", seed=seed), force=True)
    done(
        Stage(
            "synth",
            f"wrote a tiny Kimi K2 checkpoint: {synth.tensors} tensors in "
            f"{len(synth.shards)} shards, {human_bytes(synth.bytes)}",
            {"path": str(ckpt), "shards": synth.shards},
        )
    )
    report = inspect_checkpoint(ckpt, InspectOptions(deep=True, hash=True))
    if not report.ok:
        raise K2Error(f"demo checkpoint has findings: {report.findings[0]}", path=ckpt)
    done(
        Stage(
            "inspect",
            f"{report.architecture} ({report.model_type}), "
            f"{report.params.stored:,} parameters, {report.scales_scanned} scales scanned, "
            f"no findings; manifest {Path(report.manifest or '').name}",
            {"params": report.params.stored, "manifest": report.manifest},
        )
    )
    done(_convert_stage(ckpt, root))
    done(_verify_stage(ckpt, root))
    done(_chat_stage(ckpt))
    done(_plan_stage(ckpt))
    done(_build_stage(root))
    done(_package_stage(root))
    done(_release_stage(root, ckpt))
    done(_serve_stage(root))
    done(_grammar_stage(ckpt))
    return stages


GRAMMAR_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_light",
            "parameters": {
                "type": "object",
                "properties": {"on": {"type": "boolean"}, "level": {"enum": [1, 2, 3]}},
                "required": ["on", "level"],
                "additionalProperties": False,
            },
        },
    }
]


def _grammar_stage(ckpt: Path) -> Stage:
    """The tiny random model never calls a tool by itself; with the tool grammar (the CPU
    reference engine masking every step) tool_choice "required" gets a call that fits."""
    from k2trt.runtime.chat import ModelFiles, prepare
    from k2trt.runtime.constrain import constrain, grammar_for
    from k2trt.runtime.deltas import DeltaStream
    from k2trt.runtime.reference import ReferenceEngine
    from k2trt.runtime.types import ChatRequest

    files = ModelFiles.load(ckpt)
    request = ChatRequest(
        [{"role": "user", "content": "Dim the light."}],
        GRAMMAR_TOOLS,
        "required",
        max_tokens=200,
        temperature=1.0,
        seed=0,
    )
    prepared = constrain(prepare(files, request), request, grammar_for(files, "auto"))
    ids = list(ReferenceEngine.load(ckpt).generate(prepared.prompt_ids, prepared.sampling))
    out = DeltaStream(files, request, len(prepared.prompt_ids))
    chunks = [*out.feed(ids), out.finish()]
    first = [d for c in chunks for d in c.tool_calls if d["index"] == 0]
    calls = 1 + max(d["index"] for c in chunks for d in c.tool_calls)
    name = first[0]["function"]["name"]
    arguments = "".join(d["function"].get("arguments", "") for d in first)
    return Stage(
        "grammar",
        f"constrained tool call from the random model: {name}({' '.join(arguments.split())}) "
        f"({calls} call(s) in {len(ids)} tokens, finish {chunks[-1].finish_reason})",
        {"name": name, "arguments": arguments, "calls": calls, "tokens": len(ids)},
    )


def _plan_stage(ckpt: Path) -> Stage:
    """GPU planning: the tiny model on one H100, and the published Kimi K2 at 128K on 16 H200."""
    from k2trt.build import parse_gpus, plan
    from k2trt.models.config import ModelConfig
    from k2trt.models.kimi_k2 import kimi_k2_config

    tiny = plan(ModelConfig.load(ckpt), parse_gpus("H100x1"), 4096, 1)
    kimi = plan(ModelConfig.from_dict(kimi_k2_config()), parse_gpus("H200x16"), 131072, 8)
    best = kimi.best
    if not (tiny.ok and kimi.ok and best is not None):
        raise K2Error("demo plan found no layout that fits", path=ckpt)
    return Stage(
        "plan",
        f"tiny model fits 1 x H100; Kimi K2 at 128K context on 16 x H200: "
        f"best {best.layout.label}, {best.sequences} sequences of 131,072 tokens",
        {"kimi_best": best.layout.label, "sequences": best.sequences},
    )


def _build_stage(root: Path) -> Stage:
    """The engine bundle for the prepared tiny checkpoint on one H100 (not executed here)."""
    from k2trt.build.bundle import build_bundle
    from k2trt.build.spec import BuildSpec
    from k2trt.runtime import trtllm

    spec = BuildSpec(gpus="H100x1", context=4096, max_batch_size=8, model_name="kimi-k2-tiny")
    bundle = build_bundle(
        root / "kimi-k2-tiny-trtllm", root / "kimi-k2-tiny-bundle", spec, force=True
    )
    why = trtllm.unavailable()
    options = bundle.options
    return Stage(
        "build",
        f"bundle {bundle.path.name}: {bundle.record['layout']['label']} on 1 x H100, moe "
        f"{options['moe_config']['backend']}, KV {options['kv_cache_config']['dtype']}, "
        f"{len(bundle.record['checkpoint']['files'])} checkpoint files pinned by sha256; "
        f"executed: {bundle.record['executed']} ({why or 'run `k2trt build --run`'})",
        {"bundle": str(bundle.path), "executed": bundle.record["executed"]},
    )


def _package_stage(root: Path) -> Stage:
    """The Triton model repository and launch files for the demo bundle."""
    from k2trt.build.bundle import Bundle
    from k2trt.triton_repo.repository import package

    bundle = Bundle.load(root / "kimi-k2-tiny-bundle")
    pkg = package(bundle, root / "kimi-k2-tiny-triton", force=True)
    models = sorted(p.name for p in pkg.repository.iterdir() if p.is_dir())
    launch = sorted(p.name for p in (pkg.path / "launch").iterdir())
    return Stage(
        "package",
        f"Triton repository {pkg.path.name}: {', '.join(models)}; launch/ "
        f"({', '.join(launch)}) for world size {bundle.world_size}",
        {"path": str(pkg.path), "models": models, "launch": launch},
    )


def _release_stage(root: Path, ckpt: Path) -> Stage:
    """Two signed releases from one spec (the second re-uses the first's finished stages and
    its notes say what changed); the smoke gate runs where the CPU tritonserver can."""
    import yaml

    from k2trt.release.pipeline import ReleaseOptions, build_release
    from k2trt.release.sign import keygen
    from k2trt.release.verify import verify_release
    from k2trt.triton_repo.cpu_server import available

    private, public = keygen(root / "keys", force=True)
    why_not = available()
    spec: dict[str, Any] = {
        "name": "kimi-k2-tiny",
        "version": "1.0.0",
        "checkpoint": {"path": str(ckpt)},
        "build": {"gpus": "H100x1", "context": 4096, "max_batch_size": 8},
        "gates": {"smoke": {"enabled": why_not is None, "engine": "cpu-standin"}},
    }
    opts = ReleaseOptions(workdir=root / "release-work", sign_key=private, force=True)
    lines: list[str] = []
    releases = []
    for version, batch in (("1.0.0", 8), ("1.1.0", 16)):
        spec.update(version=version, previous="1.0.0" if version != "1.0.0" else None)
        spec["build"]["max_batch_size"] = batch
        path = root / f"release-{version}.yaml"
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        lines.clear()
        releases.append(build_release(path, root / "releases", opts, say=lines.append))
    first, second = releases
    checked = verify_release(second.path, public_key=public)
    if not checked.ok:
        raise K2Error(f"demo release does not verify: {checked.findings[0]}", path=second.path)
    reused = sum("unchanged" in line for line in lines)
    notes = (second.path / "RELEASE_NOTES.md").read_text(encoding="utf-8")
    changed = next(line[2:] for line in notes.splitlines() if "`max_batch_size`" in line)
    smoke = first.manifest["gates"].get("smoke", {}).get("status", f"skipped ({why_not})")
    return Stage(
        "release",
        f"kimi-k2-tiny 1.0.0 {first.manifest['id'][:19]}...: {len(first.manifest['files'])} "
        f"files pinned, smoke gate {smoke}, signed; 1.1.0 re-used {reused} of 6 stages, "
        f"verified (signature, every sha256), notes vs 1.0.0: {changed}",
        {"releases": [str(r.path) for r in releases], "smoke": smoke},
    )


def _serve_stage(root: Path) -> Stage:
    """`k2trt serve` in front of the packaged repository on the CPU tritonserver (gateway ->
    Triton gRPC -> chat) where that server runs, else over the CPU reference backend: a chat
    and a scripted tool round trip."""
    from k2trt.serve.demo import roundtrip
    from k2trt.triton_repo.cpu_server import available

    package = root / "kimi-k2-tiny-triton" if available() is None else None
    r = roundtrip(root / "kimi-k2-tiny-trtllm", "kimi-k2-tiny", package)
    call = r["tool_call"]
    via = "Triton gRPC -> chat" if package else f"the CPU reference backend ({available()})"
    return Stage(
        "serve",
        f"OpenAI API at {r['url']} ({r['client']} client) over {via}: streamed chat, then "
        f"{call['name']}({call['arguments']}) -> tool result -> {r['answer']!r} "
        f"(finish {', '.join(r['finish_reasons'])})",
        r,
    )


def _convert_stage(ckpt: Path, root: Path) -> Stage:
    """The TensorRT-LLM-ready checkpoint, and a BF16 copy for GPUs without FP8."""
    from k2trt.convert.pipeline import ConvertOptions, convert_checkpoint

    fp8 = convert_checkpoint(ckpt, root / "kimi-k2-tiny-trtllm", ConvertOptions(force=True))
    bf16 = convert_checkpoint(
        ckpt, root / "kimi-k2-tiny-bf16", ConvertOptions(dtype="bf16", force=True)
    )
    return Stage(
        "convert",
        f"prepared {fp8.out.name} ({fp8.tensors} tensors, {fp8.linked} shard(s) "
        f"hard-linked unchanged, {len(fp8.config_changes)} config change(s), "
        f"manifest last) and dequantized {bf16.out.name} ({bf16.tensors} BF16 tensors)",
        {"fp8": str(fp8.out), "bf16": str(bf16.out)},
    )


def _verify_stage(ckpt: Path, root: Path) -> Stage:
    """Load the converted checkpoint in transformers and compare the BF16 copy to the source."""
    from k2trt.convert.verify import verify_checkpoint

    single = verify_checkpoint(root / "kimi-k2-tiny-trtllm")
    pair = verify_checkpoint(ckpt, root / "kimi-k2-tiny-bf16")
    if not (single.ok and pair.ok):
        failed = (single.findings + pair.findings)[:1]
        raise K2Error(f"demo verification failed: {failed}", path=root)
    worst = max((w.max_rel for w in pair.worst), default=0.0)
    return Stage(
        "verify",
        f"transformers' DeepseekV3ForCausalLM ran the converted checkpoint "
        f"(greedy {single.greedy_tokens}); BF16 copy vs source: "
        f"{pair.tensors_compared} tensors, worst relative error "
        f"{worst:.2e}, within tolerance",
        {"greedy_tokens": single.greedy_tokens, "tensors": pair.tensors_compared},
    )


DEMO_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
DEMO_MESSAGES = [{"role": "user", "content": "What's the weather in Beijing?"}]
# What Kimi K2 emits when it calls a tool (the tiny random model will not, so it is scripted).
DEMO_OUTPUT = (
    "Let me check.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
    '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|>'
)


def _chat_stage(ckpt: Path) -> Stage:
    """Render + encode a tool-calling conversation with the checkpoint's own template and
    tokenizer, then parse a tool-call output the way a server streams it."""
    from k2trt.chat.prompt import encode_chat
    from k2trt.chat.template import load_chat_template
    from k2trt.chat.tokenizer import KimiTokenizer
    from k2trt.chat.toolcalls import ToolCallParser, to_openai_message

    tok = KimiTokenizer.from_dir(ckpt)
    template = load_chat_template(ckpt)
    prompt = encode_chat(tok, template, DEMO_MESSAGES, DEMO_TOOLS)
    parser = ToolCallParser(DEMO_TOOLS)
    for i in range(0, len(DEMO_OUTPUT), 7):  # streamed in small deltas
        parser.feed(DEMO_OUTPUT[i : i + 7])
    parser.finish()
    message = to_openai_message(parser.result())
    call = message["tool_calls"][0]["function"]
    return Stage(
        "chat",
        f"rendered a tool-calling prompt with template {template.name} "
        f"({len(prompt.text)} chars, {len(prompt.ids)} tokens); parsed a streamed "
        f"tool call: {call['name']}({call['arguments']}), content "
        f"{message['content']!r}",
        {"template": template.name, "prompt_tokens": len(prompt.ids), "message": message},
    )
