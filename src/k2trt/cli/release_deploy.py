"""`k2trt release deploy|status|bluegreen`: releases rolled onto a running Triton (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from k2trt.output import OUTPUT

EXIT_ROLLED_BACK = 1


def deploy(
    release: Path = typer.Argument(..., help="A release directory (OUT/NAME/VERSION)."),
    triton: str = typer.Option(
        ..., "--triton", help="Triton's HTTP address (HOST:PORT), in explicit model control."
    ),
    repository: Path = typer.Option(
        ..., "--repository", help="The model repository that Triton serves (writable here)."
    ),
    grpc: str = typer.Option(
        None, "--grpc", help="Triton's gRPC address for the smoke gate (default HOST:8001)."
    ),
    timeout: float = typer.Option(
        300.0, "--timeout", help="Seconds each load, the smoke gate and the drain may take."
    ),
) -> None:
    """Roll a release's serving models (template, tokenizer, parser) onto a running Triton
    as a new model version, with no request dropped: load it beside the serving one, run the
    smoke gate through it, switch `chat`, then retire the old version (kept for a rollback).
    A failure rolls back and exits 1 naming the cause; an engine change is refused (exit 2:
    roll it out blue/green)."""
    from k2trt.release.deploy import DeployOptions
    from k2trt.release.deploy import deploy as run_deploy

    options = DeployOptions(timeout_s=timeout, grpc_url=grpc)
    result = run_deploy(release, triton, repository, options, say=OUTPUT.note)
    data = {
        "release": result.release,
        "version": result.version,
        "previous": result.previous,
        "changed": result.changed,
        "seconds": result.seconds,
        "notes": result.notes,
        "triton": triton,
    }
    OUTPUT.result(data, _deploy_text)


def _deploy_text(data: dict[str, Any]) -> str:
    from k2trt.release.served import label_text

    release = label_text(data["release"])
    if not data["changed"]:
        return f"{release} already serves as version {data['version']}: nothing to do"
    prev = data["previous"]
    lines = [
        f"deployed {release} as version {data['version']} on {data['triton']} in "
        f"{data['seconds'].get('total', 0):.1f} s",
        f"  previous  version {prev['version']} ({label_text(prev['release'])}), kept for rollback",
        "  steps     "
        + ", ".join(f"{k} {v:.2f} s" for k, v in data["seconds"].items() if k != "total"),
    ]
    lines += [f"  note      {n}" for n in data["notes"]]
    return "\n".join(lines)


def status(
    triton: str = typer.Option(..., "--triton", help="Triton's HTTP address (HOST:PORT)."),
) -> None:
    """Which release each model version serves (from the models' config parameters), and
    each version's state, as the server reports them."""
    from k2trt.release.served import status as read_status
    from k2trt.release.served import status_text
    from k2trt.triton_repo.control import TritonControl

    control = TritonControl(triton)
    control.require_live()
    OUTPUT.result(read_status(control), status_text)


def bluegreen(
    release: Path = typer.Argument(..., help="A release directory (OUT/NAME/VERSION)."),
    out: Path = typer.Argument(..., help="Directory for the manifests (refused if it exists)."),
    color: str = typer.Option(
        "green", "--color", help="This deployment's color: blue or green (the other runs now)."
    ),
    weight: int = typer.Option(
        100, "--weight", help="Percent of the routed traffic this color gets (HTTPRoute)."
    ),
    gateway: str = typer.Option(
        "k2trt-gateway", "--gateway", help="The Gateway API gateway the routes attach to."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
) -> None:
    """Kubernetes manifests for a blue/green rollout of a release whose engine changed: the
    release as a second deployment (LeaderWorkerSet + Service, labelled with the color and
    the release), and the switch (a Service, or weighted HTTPRoute/GRPCRoute)."""
    from k2trt.release.bluegreen import write_bluegreen

    written = write_bluegreen(release, out, color, weight, gateway, force)
    OUTPUT.result(
        {"written": [str(p) for p in written], "color": color},
        lambda d: "\n".join(f"wrote {p}" for p in d["written"]),
    )


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `release` group."""
    app.command("deploy")(deploy)
    app.command("status")(status)
    app.command("bluegreen")(bluegreen)
