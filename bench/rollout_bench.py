"""Zero-downtime rollouts on the CPU tritonserver: requests served and lost while releases roll.

    python bench/rollout_bench.py [--rounds 2] [--streams 4] [--workdir DIR] [--keep]

Builds three releases of a tiny synthetic Kimi K2 (`k2trt release build`, one shared work
directory): A, B (A's chat template with a line more, so every answer's prompt token count
says which release served it) and X (a template that raises when tools are declared: the
smoke gate fails). Serves A's repository on the real tritonserver 2.51 in explicit model
control (tensorrt_llm = the CPU stand-in; scripted replies played one token every 10 ms, so
requests are always in flight), with `--streams` clients streaming chats through `chat` back
to back, then rolls B, A, B, ... (`--rounds` each way) and finally X onto it with
`k2trt.release.deploy.deploy`, exactly what `k2trt release deploy` runs.

Per rollout: its wall time; when the first answer of the new release started and the last of
the old one ended (from the rollout's start); the requests that ran during it, how many failed;
the request rate during it over the rate before any rollout (the same clients, same run).
Nothing is asserted; the test (tests/test_release_deploy.py) asserts zero failures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _util import doc_summary, print_table
from k2trt.errors import CheckFailed
from k2trt.release.deploy import DeployOptions, deploy
from k2trt.release.pipeline import ReleaseOptions, build_release
from k2trt.runtime.types import ChatRequest
from k2trt.serve.traffic import ChatTraffic
from k2trt.serve.triton_backend import TritonBackend
from k2trt.synth.checkpoint import write_checkpoint
from k2trt.synth.presets import SynthOptions
from k2trt.triton_repo.cpu_server import CpuTritonServer, available
from k2trt.triton_repo.repository import use_cpu_standin

HELLO = [{"role": "user", "content": "Hello"}]
ARGS = '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
CHANGES = {
    "A": "",
    "B": "{{- 'Release two. ' -}}",
    "X": "{%- if tools %}{{ raise_exception('broken template') }}{% endif -%}",
}
TOKENS = 12  # per answer; at 10 ms a token a request takes ~0.15 s
STEADY_S = 3.0


def build_releases(root: Path) -> dict[str, Path]:
    """A, B and X (see the module docstring), one work directory for all three."""
    tiny = root / "tiny-source"
    if not tiny.exists():
        write_checkpoint(tiny, SynthOptions(preset="tiny", seed=0))
    made = {}
    for i, (name, change) in enumerate(CHANGES.items()):
        project = root / f"project-{name}"
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(tiny, project / "tiny")
        if change:
            config = json.loads((project / "tiny/tokenizer_config.json").read_text())
            config["chat_template"] = change + config["chat_template"]
            (project / "tiny/tokenizer_config.json").write_text(json.dumps(config))
        spec = {
            "name": "kimi-k2-tiny",
            "version": f"1.{i}.0",
            "checkpoint": {"path": "tiny"},
            "build": {"gpus": "H100x1", "context": 4096, "max_batch_size": 8},
            "gates": {"smoke": {"enabled": False}},
        }
        (project / "release.yaml").write_text(yaml.safe_dump(spec))
        opts = ReleaseOptions(workdir=root / "work", force=True)
        made[name] = build_release(project / "release.yaml", root / "releases", opts).path
        if name == "A":
            shutil.rmtree(root / "standin", ignore_errors=True)
            shutil.copytree(root / "work/prepared", root / "standin")
    return made


def rollout(
    name: str, release: Path, server: CpuTritonServer, repo: Path, traffic: ChatTraffic
) -> tuple[float, float, str]:
    """(start, end, outcome) of one deploy."""
    options = DeployOptions(timeout_s=120, grpc_url=server.grpc_url)
    start = time.monotonic()
    try:
        result = deploy(release, server.http_url, repo, options)
        outcome = f"version {result.version}"
    except CheckFailed as exc:
        cause = "smoke gate" if "smoke gate failed" in str(exc) else "load failed"
        outcome = f"rolled back ({cause})"
    time.sleep(0.5)  # let the requests of the rollout's last moment finish
    return start, time.monotonic() - 0.5, outcome


def report(
    runs: list[tuple[str, float, float, str]],
    traffic: ChatTraffic,
    tokens: dict[str, int],
    rate: float,
) -> None:
    rows = []
    for name, t0, t1, outcome in runs:
        during = traffic.between(t0, t1)
        new = [d.start - t0 for d in during if d.prompt_tokens == tokens[name] and not d.error]
        old = [d.end - t0 for d in during if d.prompt_tokens != tokens[name] and not d.error]
        switched = f"{min(new):.2f}" if new and name != "X" else "-"
        last_old = f"{max(old):.2f}" if old and name != "X" else "-"
        failed = sum(1 for d in during if d.error)
        ratio = len(during) / (t1 - t0) / rate if rate else 0.0
        rows.append(
            [f"-> {name}", outcome, f"{t1 - t0:.2f}", switched, last_old, str(len(during)),
             str(failed), f"{ratio:.2f}"]
        )  # fmt: skip
    print_table(
        "Rollouts (times in s from the rollout's start)",
        ["rollout", "outcome", "wall", "first new", "last old", "requests", "failed", "rate"],
        rows,
    )
    total_failed = sum(1 for d in traffic.done if d.error)
    print(
        f"\n{len(traffic.done)} requests in all, {total_failed} failed; steady rate before the "
        f"rollouts {rate:.1f} requests/s ('rate' above: during the rollout / steady)"
    )
    if total_failed:
        print("first failure:", next(d.error for d in traffic.done if d.error))


def main() -> int:
    parser = argparse.ArgumentParser(description=doc_summary(__doc__))
    parser.add_argument("--rounds", type=int, default=2, help="A<->B rollouts each way")
    parser.add_argument("--streams", type=int, default=4, help="concurrent client streams")
    parser.add_argument("--workdir", type=Path, help="keep releases here (reused when present)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if (why := available()) is not None:
        print(f"skipped: {why}")
        return 0
    root = args.workdir or Path(tempfile.mkdtemp(prefix="k2trt-rollout-bench-"))
    try:
        run(root, args.rounds, args.streams)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def run(root: Path, rounds: int, streams: int) -> None:
    began = time.monotonic()
    releases = build_releases(root)
    print(f"built releases A, B, X in {time.monotonic() - began:.1f} s")
    shutil.rmtree(root / "served", ignore_errors=True)
    shutil.copytree(releases["A"] / "triton", root / "served")
    repo = use_cpu_standin(root / "served", root / "standin")
    script = root / "script.json"
    script.write_text(json.dumps({"replies": [ARGS] * 100_000, "delay_s": 0.01}))
    explicit = ("--model-control-mode=explicit", "--load-model=*")
    with CpuTritonServer(repo, env={"K2TRT_SCRIPT": str(script)}, extra_args=explicit) as server:
        request = ChatRequest(HELLO, max_tokens=TOKENS)
        traffic = ChatTraffic(lambda: TritonBackend(server.grpc_url), streams, request)
        traffic.start(flowing=1)
        time.sleep(STEADY_S / 3)  # warm
        t0 = time.monotonic()
        time.sleep(STEADY_S)
        rate = len(traffic.between(t0, time.monotonic())) / STEADY_S
        order = ["B", "A"] * rounds + ["X"]
        runs = [(name, *rollout(name, releases[name], server, repo, traffic)) for name in order]
        traffic.finish(linger_s=0)
    tokens = {name: prompt_tokens(traffic, name, runs) for name in ("A", "B")}
    tokens["X"] = -1
    report(runs, traffic, tokens, rate)


def prompt_tokens(
    traffic: ChatTraffic, name: str, runs: list[tuple[str, float, float, str]]
) -> int:
    """The prompt size of `name`'s answers: A's before any rollout, B's after the first."""
    if name == "A":
        return traffic.done[0].prompt_tokens
    after = [d for d in traffic.done if d.start > runs[0][2] and not d.error]
    return after[0].prompt_tokens


if __name__ == "__main__":
    sys.exit(main())
