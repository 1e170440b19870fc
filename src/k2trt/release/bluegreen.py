"""Blue/green for a release whose engine changed: a second deployment, then a switch.

A new engine (other weights or LLM API options) cannot be loaded beside the running one on
the 1T model: two copies do not fit the GPUs. It runs as a second deployment (`green` beside
`blue`, on other nodes), is checked there, and traffic then moves with one `kubectl apply`:

    OUT/
      lws-green.yaml          LeaderWorkerSet `k2trt-green` + Service `k2trt-green-triton`,
                              labelled with the color and the release (name, version, engine)
      switch-service.yaml     Service `k2trt-triton` (what clients use) selecting green's leader
      switch-route.yaml       Gateway API HTTPRoute (:8000) and GRPCRoute (:8001) `k2trt`,
                              `weight` percent to green and the rest to blue
      bluegreen.json          what was generated from which release

Everything is YAML from data (as triton_repo.launch); the deployment itself is
`launch.lws_manifest` under another name, with labels.

    >>> write_bluegreen(Path("releases/kimi-k2/2.0.0"), Path("green"), "green")  # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k2trt.errors import K2Error
from k2trt.fsutil import atomic_dir, dump_json, read_json
from k2trt.release.spec import ReleaseSpec
from k2trt.release.verify import load_manifest
from k2trt.triton_repo import launch

COLORS = ("blue", "green")
APP = "k2trt"
STABLE_SERVICE = f"{APP}-triton"  # clients (k2trt serve --triton-url) use this name
ROUTE = APP
GATEWAY = "k2trt-gateway"
GATEWAY_API = "gateway.networking.k8s.io/v1"
L_COLOR, L_RELEASE, L_ENGINE = "k2trt/color", "k2trt/release", "k2trt/engine"
A_RELEASE_ID, A_ENGINE_ID = "k2trt/release-id", "k2trt/engine-id"
# Kubernetes label values: at most 63 characters, alphanumeric at both ends.
LABEL_VALUE = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Color:
    """One side of the switch: its deployment's names."""

    color: str

    @property
    def name(self) -> str:
        return f"{APP}-{self.color}"

    @property
    def service(self) -> str:
        return f"{self.name}-triton"  # launch.lws_manifest's Service for this name

    @property
    def other(self) -> Color:
        return Color(COLORS[1 - COLORS.index(self.color)])


def release_labels(manifest: dict[str, Any], color: str) -> dict[str, str]:
    """The labels every object of the deployment carries; K2Error for a value Kubernetes
    would refuse.

    >>> release_labels({"name": "kimi-k2", "version": "2.0.0", "engine": {"id": "ab" * 32}},
    ...                "green")["k2trt/release"]
    'kimi-k2-2.0.0'
    """
    labels = {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/instance": Color(color).name,
        "app.kubernetes.io/version": str(manifest["version"]),
        L_COLOR: color,
        L_RELEASE: f"{manifest['name']}-{manifest['version']}",
        L_ENGINE: str(manifest["engine"]["id"])[:12],
    }
    for key, value in labels.items():
        if not LABEL_VALUE.match(value):
            raise K2Error(
                f"label {key}: {value!r} is not a Kubernetes label value (at most 63 letters, "
                f"digits, - _ ., alphanumeric at both ends)"
            )
    return labels


def deployment(release: Path, manifest: dict[str, Any]) -> launch.Deployment:
    """The release's launch facts: its package record and where its spec places it."""
    from k2trt.release.pipeline import placement_of

    record = read_json(release / "triton" / "k2trt-package.json", "package record")
    where = placement_of(ReleaseSpec.load(release / "spec.yaml"))
    return launch.Deployment(
        repo=where.repository,
        checkpoint=where.checkpoint,
        world_size=int(record["world_size"]),
        gpus_per_node=int(record["gpus_per_node"]),
        model_id=str(record["model_id"]),
        container=str(record["container"]),
        image=where.image,
    )


def color_manifests(
    release: Path, manifest: dict[str, Any], side: Color
) -> list[dict[str, object]]:
    """LeaderWorkerSet + Service of one color, labelled; the release ids as annotations."""
    labels = release_labels(manifest, side.color)
    docs = launch.lws_manifest(deployment(release, manifest), side.name, labels)
    meta = docs[0]["metadata"]
    assert isinstance(meta, dict)
    meta["annotations"] = {A_RELEASE_ID: manifest["id"], A_ENGINE_ID: manifest["engine"]["id"]}
    return docs


def switch_service(side: Color) -> dict[str, object]:
    """The stable Service, selecting `side`'s leader pod: applying it moves the traffic."""
    ports = (("http", launch.HTTP_PORT), ("grpc", launch.GRPC_PORT))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": STABLE_SERVICE, "labels": {L_COLOR: side.color}},
        "spec": {
            "selector": {"app.kubernetes.io/name": APP, L_COLOR: side.color, "role": "leader"},
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports],
        },
    }


def routes(side: Color, weight: int, gateway: str) -> list[dict[str, object]]:
    """HTTPRoute (Triton HTTP) and GRPCRoute (Triton gRPC): `weight` percent to `side`."""
    if not 0 <= weight <= 100:
        raise K2Error(f"--weight: expected a percentage 0..100, got {weight}")
    out: list[dict[str, object]] = []
    for kind, port in (("HTTPRoute", launch.HTTP_PORT), ("GRPCRoute", launch.GRPC_PORT)):
        refs = [
            {"name": side.service, "port": port, "weight": weight},
            {"name": side.other.service, "port": port, "weight": 100 - weight},
        ]
        out.append(
            {
                "apiVersion": GATEWAY_API,
                "kind": kind,
                "metadata": {"name": ROUTE if kind == "HTTPRoute" else f"{ROUTE}-grpc"},
                "spec": {"parentRefs": [{"name": gateway}], "rules": [{"backendRefs": refs}]},
            }
        )
    return out


def write_bluegreen(
    release: Path,
    out: Path,
    color: str,
    weight: int = 100,
    gateway: str = GATEWAY,
    force: bool = False,
) -> list[Path]:
    """Write OUT (see the module docstring) for `release` as the `color` deployment."""
    if color not in COLORS:
        raise K2Error(f"--color: expected one of {', '.join(COLORS)}, got {color!r}")
    manifest = load_manifest(release)
    side = Color(color)
    files = {
        f"lws-{color}.yaml": color_manifests(release, manifest, side),
        "switch-service.yaml": [switch_service(side)],
        "switch-route.yaml": routes(side, weight, gateway),
    }
    with atomic_dir(out, force=force) as tmp:
        for name, docs in files.items():
            (tmp / name).write_text(yaml.safe_dump_all(docs, sort_keys=True), encoding="utf-8")
        record = {
            "release": {k: manifest[k] for k in ("name", "version", "id")},
            "engine": manifest["engine"]["id"],
            "color": color,
            "replaces": side.other.color,
            "weight": weight,
            "files": sorted(files),
        }
        (tmp / "bluegreen.json").write_text(dump_json(record), encoding="utf-8")
    return [out / name for name in (*sorted(files), "bluegreen.json")]
