"""Release gates, run against the packaged repository served by a real tritonserver.

- smoke: a plain chat turn and a tool round trip (a forced `get_weather` call, its result sent
  back, the model's answer) through the `chat` model over gRPC. On a CPU machine the server is
  the tritonserver bundled in nvidia-pytriton with the CPU stand-in for `tensorrt_llm`, running
  the prepared checkpoint (or the spec's smaller `gates.smoke.checkpoint`); the tool turns are
  scripted ($K2TRT_SCRIPT: a tiny random model never calls a tool), the plain turn is the real
  model. On a GPU node (`engine: trtllm`) it is the container's tritonserver and the real
  bundle, nothing scripted.
- eval: the tool-call evaluation hook (`release.evalgate`) against the OpenAI API that
  `k2trt serve` puts in front of the same server.
- perf: the aiperf recipe is always written into the release; it runs only with the real
  engine (`release.perf`), and is recorded as `not executed` otherwise.

Every gate result is plain, deterministic data: {gate, status, figures, failures[, reason]}.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.errors import K2Error
from k2trt.fsutil import write_json_atomic, write_text_atomic
from k2trt.release.spec import SmokeGate, resolve

if TYPE_CHECKING:
    from k2trt.release.pipeline import Context

CPU_STANDIN = "cpu-standin"
TRTLLM = "trtllm"
CONTAINER_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
# The CPU stand-in's scripted turns. The forced tool_choice already opens the call in the
# prompt, so the first reply holds only the arguments and the closing markers.
SCRIPT = [
    '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>',
    "It is sunny in Paris, 22 °C.",
]


@dataclass(frozen=True)
class Endpoint:
    """A served release: Triton's gRPC address, the OpenAI API base URL, the model id."""

    grpc_url: str
    base_url: str
    model: str
    tokenizer: Path


def engine_for(smoke: SmokeGate) -> str:
    """The engine gates run on: the spec's, or TensorRT-LLM where it runs, else the stand-in."""
    if smoke.engine != "auto":
        return smoke.engine
    from k2trt.runtime import trtllm

    return TRTLLM if trtllm.unavailable() is None else CPU_STANDIN


def smoke_checkpoint(ctx: Context) -> Path | None:
    """The checkpoint the CPU stand-in runs (None with the real engine)."""
    if engine_for(ctx.spec.gates.smoke) != CPU_STANDIN:
        return None
    given = ctx.spec.gates.smoke.checkpoint
    return resolve(ctx.spec_dir, given) if given else ctx.prepared


def run_gates(ctx: Context) -> dict[str, dict[str, Any]]:
    """Every declared gate; reports in WORK/gates/<gate>.json (failures too)."""
    gates = ctx.spec.gates
    out = ctx.work / "gates"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    engine = engine_for(gates.smoke)
    results: dict[str, dict[str, Any]] = {}
    if gates.perf is not None:
        _write_recipe(ctx, out)
    if gates.smoke.enabled or gates.eval is not None or (gates.perf and engine == TRTLLM):
        with served(ctx, engine) as endpoint:
            if gates.smoke.enabled:
                results["smoke"] = smoke_gate(endpoint, gates.smoke.timeout_s)
            if gates.eval is not None:
                from k2trt.release import evalgate

                ctx.say("[gates] eval: running the tool-call evaluation hook")
                results["eval"] = evalgate.run(
                    gates.eval, base_url=endpoint.base_url, model=endpoint.model, out_dir=out
                )
            if gates.perf is not None and engine == TRTLLM:
                from k2trt.release import perf

                results["perf"] = perf.run(
                    gates.perf,
                    model=endpoint.model,
                    url=endpoint.base_url,
                    tokenizer=str(endpoint.tokenizer),
                    out_dir=out / "perf",
                )
    if gates.perf is not None and engine != TRTLLM:
        from k2trt.release.evalgate import not_executed

        results["perf"] = not_executed(
            "perf",
            "no GPU: the CPU stand-in has no performance to measure; the recipe is in gates/perf/",
        )
    for name, result in results.items():
        write_json_atomic(out / f"{name}.json", result)
    return results


def _write_recipe(ctx: Context, out: Path) -> None:
    """gates/perf/aiperf.sh and recipe.json: what a GPU node runs against the served API."""
    from k2trt.release import perf

    gate = ctx.spec.gates.perf
    assert gate is not None
    model = ctx.spec.build.model_name or ctx.spec.name
    tokenizer = f"{ctx.spec.checkpoint_path()}/tokenizer"
    dest = out / "perf"
    dest.mkdir(parents=True, exist_ok=True)
    url = "http://127.0.0.1:8080"
    write_text_atomic(
        dest / "aiperf.sh", perf.recipe(gate, model=model, url=url, tokenizer=tokenizer)
    )
    (dest / "aiperf.sh").chmod(0o755)
    write_json_atomic(
        dest / "recipe.json", perf.recipe_data(gate, model=model, url=url, tokenizer=tokenizer)
    )


# ---- serving the package for the gates ----


@contextlib.contextmanager
def served(ctx: Context, engine: str) -> Iterator[Endpoint]:
    """The release's repository (placed on this machine) on a tritonserver, with the OpenAI
    API in front; torn down on exit."""
    from k2trt.build.bundle import Bundle
    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import REPOSITORY_DIR, package, placement_for

    bundle = Bundle.load(ctx.work / "bundle", check_hashes=False)
    with tempfile.TemporaryDirectory(prefix="k2trt-gates-") as tmp:
        root = Path(tmp)
        # placed on this machine: the weights where the convert stage wrote them
        here = replace(placement_for(bundle, root / "triton"), checkpoint=str(ctx.prepared))
        pkg = package(bundle, root / "triton", container=ctx.spec.package.container, placement=here)
        env: dict[str, str] = {}
        binary = None
        if engine == CPU_STANDIN:
            env = _standin(ctx, pkg.path, root)
        else:
            binary = CONTAINER_TRITONSERVER
        ctx.say(f"[gates] starting tritonserver ({engine}) on the packaged repository")
        timeout = ctx.spec.gates.smoke.timeout_s
        repo = pkg.path / REPOSITORY_DIR
        with CpuTritonServer(repo, env=env, timeout=timeout, binary=binary) as server:
            yield from _gateway(server.grpc_url, bundle.model_id, ctx.prepared / "tokenizer")


def _standin(ctx: Context, package_dir: Path, root: Path) -> dict[str, str]:
    from k2trt.checkpoint.reader import Checkpoint
    from k2trt.runtime.reference import MAX_WEIGHT_BYTES, stored_bytes
    from k2trt.runtime.scripted import SCRIPT_ENV
    from k2trt.triton_repo.repository import use_cpu_standin
    from k2trt.units import human_bytes

    ckpt = smoke_checkpoint(ctx)
    assert ckpt is not None
    with Checkpoint.open(ckpt, require_weights=True) as opened:
        size = stored_bytes(opened)
    if size > MAX_WEIGHT_BYTES:
        raise K2Error(
            f"gates.smoke: the CPU stand-in runs checkpoints up to {human_bytes(MAX_WEIGHT_BYTES)}"
            f" and {ckpt} has {human_bytes(size)}; set gates.smoke.checkpoint to a slice "
            f"(`k2trt slice`) or run the gates on a GPU node (engine: trtllm)"
        )
    use_cpu_standin(package_dir, ckpt)
    script = root / "script.json"
    script.write_text(json.dumps({"replies": SCRIPT}), encoding="utf-8")
    return {SCRIPT_ENV: str(script)}


def _gateway(grpc_url: str, model: str, tokenizer: Path) -> Iterator[Endpoint]:
    """`k2trt serve --triton-url` in a thread: the OpenAI API the eval and perf gates use."""
    from k2trt.serve.app import ServeConfig, create_app
    from k2trt.serve.server import ServerThread
    from k2trt.serve.triton_backend import TritonBackend

    app = create_app(TritonBackend(grpc_url, model_id=model), ServeConfig())
    with ServerThread(app) as server:
        yield Endpoint(grpc_url, server.url, model, tokenizer)


# ---- the smoke gate ----


def smoke_gate(endpoint: Endpoint, timeout_s: float) -> dict[str, Any]:
    """A tool round trip and a plain chat turn through the `chat` model (release.smoke)."""
    from k2trt.release.smoke import smoke

    return smoke(endpoint.grpc_url, "chat", timeout_s)
