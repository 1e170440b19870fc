"""`k2trt package`: a bundle -> a Triton model repository with launch artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from k2trt.build.bundle import Bundle
from k2trt.output import OUTPUT
from k2trt.triton_repo import launch, spec
from k2trt.triton_repo.repository import LAUNCH_DIR, REPOSITORY_DIR, package


def command(
    bundle: Path = typer.Argument(..., help="Bundle directory (the output of `k2trt build`)."),
    out: Path = typer.Argument(..., help="Directory to create: model_repository/ + launch/."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
    container: str = typer.Option(
        launch.CONTAINER, "--container", help="Base image for launch/Dockerfile."
    ),
    tool_grammar: str = typer.Option(
        "auto",
        "--tool-grammar",
        help="Constrained tool calls: off | auto (when tools are declared and not every tool "
        "says strict: false) | strict (unsupported schema keywords are a 400).",
    ),
) -> None:
    """Package a bundle as a Triton model repository served by the trtllm-python container.

    Models: chat (entry point: messages, tools, sampling -> streamed content, tool calls,
    finish_reason, usage), preprocessing, tensorrt_llm (LLM API model.yaml from the bundle),
    postprocessing. The checkpoint must still match the hashes the bundle recorded."""
    loaded = Bundle.load(bundle)
    result = package(loaded, out, force=force, container=container, tool_grammar=tool_grammar)
    OUTPUT.result(result.record | {"path": str(out)}, lambda _: render(result.record, out))


def render(record: dict[str, Any], out: Path) -> str:
    """The human summary."""
    repo = out / REPOSITORY_DIR
    return "\n".join(
        [
            f"wrote {out}: Triton model repository for {record['model_id']}",
            f"  models      {', '.join(spec.MODELS)} in {repo}",
            f"  checkpoint  {record['checkpoint']} (model.yaml `model`)",
            f"  world size  {record['world_size']} = {record['nodes']} node(s) x "
            f"{min(record['world_size'], record['gpus_per_node'])} GPU(s)",
            f"  launch      {out / LAUNCH_DIR}: "
            + ", ".join(sorted(p.name for p in (out / LAUNCH_DIR).iterdir())),
            f"  container   {record['container']}",
            f"  tool calls  constrained: {record.get('tool_grammar', 'auto')} (--tool-grammar)",
        ]
    )
