"""`k2trt release build`: stages, records, resume, reproducibility, refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cli_run import run
from k2trt.errors import CheckFailed, K2Error
from k2trt.release import pipeline
from k2trt.release.assemble import release_id
from k2trt.release.stages import load_record
from release_fixtures import build, files_of, make_project, write_spec

EPOCH = "1764806400"  # 2025-12-04T00:00:00Z
STAGES = ["inspect", "convert", "verify", "build", "package", "gates"]


@pytest.fixture(autouse=True)
def _source_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


@pytest.fixture(scope="module")
def baseline(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted release of the tiny model (no gates), the reference bytes."""
    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    root = tmp_path_factory.mktemp("baseline")
    spec = make_project(root, tiny_ckpt)
    return Path(build(spec, root / "out").path)


def test_release_layout_and_manifest(baseline: Path) -> None:
    m = json.loads((baseline / "release.json").read_text())
    assert m["format"] == "k2trt.release/1"
    assert (m["name"], m["version"], m["created"]) == (
        "kimi-k2-tiny",
        "1.0.0",
        "2025-12-04T00:00:00Z",
    )
    assert m["id"] == release_id(m) and m["id"].startswith("sha256:")
    on_disk = {p.relative_to(baseline).as_posix() for p in baseline.rglob("*") if p.is_file()}
    assert set(m["files"]) == on_disk - {"release.json"}
    for name in (
        "RELEASE_NOTES.md",
        "spec.yaml",
        "stages.json",
        "checkpoint/source-manifest.json",
        "checkpoint/prepared-manifest.json",
        "engine/llm_api_options.yaml",
        "engine/build.json",
        "triton/model_repository/tensorrt_llm/1/model.yaml",
        "triton/launch/serve-docker.sh",
        "triton/k2trt-package.json",
    ):
        assert name in m["files"], name
    assert not any(n.startswith("checkpoint/weights/") for n in m["files"])  # by reference
    assert m["target"] == {
        "gpu": "H100",
        "gpus": 1,
        "gpus_per_node": 8,
        "nodes": 1,
        "layout": "TP1 EP1",
        "world_size": 1,
    }
    v = m["versions"]
    assert v["tensorrt_llm"] == "1.1.0" and v["tensorrt_llm_from"] == "container"
    assert v["container"] == "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
    assert v["container_digest"] is None and len(v["option_schema_commit"]) == 40
    assert m["source"]["hf"] == {"repo": "moonshotai/Kimi-K2-Instruct", "revision": "r1"}
    assert m["gates"] == {} and m["previous"] is None
    assert m["serving"]["parser"] == "kimi-toolcalls/2"
    assert m["serving"]["chat_template"]["name"] == "kimi-k2-instruct-0711-tools"


def test_release_points_at_the_serving_nodes_not_this_machine(baseline: Path) -> None:
    model_yaml = (baseline / "triton/model_repository/tensorrt_llm/1/model.yaml").read_text()
    assert "model: /models/kimi-k2-tiny/prepared\n" in model_yaml
    assert "tokenizer: /models/kimi-k2-tiny/prepared/tokenizer\n" in model_yaml
    docker = (baseline / "triton/launch/serve-docker.sh").read_text()
    assert "/opt/k2trt/releases/kimi-k2-tiny/1.0.0/triton/model_repository" in docker
    build_json = json.loads((baseline / "engine/build.json").read_text())
    assert set(build_json["checkpoint"]) == {"serve_path", "model_type", "files"}
    assert "mtime_ns" not in json.dumps(build_json)
    project = baseline.parents[2]  # the spec, the checkpoint and OUT are under it
    for path in baseline.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".sh", ".pbtxt", ".md"):
            assert str(project) not in path.read_text(), path


def test_prepared_manifest_pins_every_weight(baseline: Path, tmp_path: Path) -> None:
    m = json.loads((baseline / "release.json").read_text())
    prepared = json.loads((baseline / "checkpoint/prepared-manifest.json").read_text())
    assert m["checkpoint"]["files"] == len(prepared["files"]) == 13
    assert "model-1-of-3.safetensors" in prepared["files"]
    source = json.loads((baseline / "checkpoint/source-manifest.json").read_text())
    assert source["hf"] == {"repo": "moonshotai/Kimi-K2-Instruct", "revision": "r1"}


def test_same_spec_and_inputs_give_the_same_bytes(baseline: Path, tmp_path: Path) -> None:
    project = baseline.parents[2]
    again = build(project / "release.yaml", tmp_path / "elsewhere")  # fresh work directory
    assert files_of(again.path) == files_of(baseline)


def test_created_is_the_one_wall_clock_field(
    baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    project = baseline.parents[2]
    again = json.loads(
        (build(project / "release.yaml", tmp_path / "o").path / "release.json").read_text()
    )
    first = json.loads((baseline / "release.json").read_text())
    assert again["created"] != first["created"] and again["id"] == first["id"]
    assert {k: v for k, v in again.items() if k != "created"} == {
        k: v for k, v in first.items() if k != "created"
    }


def test_rerun_skips_every_finished_stage(tiny_ckpt: Path, tmp_path: Path) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    first = build(spec, tmp_path / "out")
    lines: list[str] = []
    second = build(spec, tmp_path / "out", lines, force=True)
    assert lines == [
        f"[{s}] unchanged since the last run (outputs checked by hash)" for s in STAGES
    ]
    assert files_of(second.path) == files_of(first.path)


def test_changed_input_reruns_from_the_first_stage_it_affects(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    build(spec, tmp_path / "out")
    write_spec(tmp_path, build={"gpus": "H100x1", "context": 2048, "max_batch_size": 8})
    lines: list[str] = []
    release = build(spec, tmp_path / "out", lines, force=True)
    assert lines[:3] == [
        f"[{s}] unchanged since the last run (outputs checked by hash)"
        for s in ("inspect", "convert", "verify")
    ]
    assert lines[3] == "[build] re-running: build spec changed since the last run"
    assert lines[4] == "[package] re-running: bundle changed since the last run"
    assert lines[5] == "[gates] re-running: triton repository changed since the last run"
    options = (release.path / "engine/llm_api_options.yaml").read_text()
    assert "max_seq_len: 2048" in options


def test_a_touched_output_is_rehashed_and_a_changed_one_reruns(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    build(spec, tmp_path / "out")
    work = tmp_path / "out/.work/kimi-k2-tiny/1.0.0"
    options = work / "bundle/llm_api_options.yaml"
    os.utime(options)  # same bytes, new mtime: re-read, still the same
    lines: list[str] = []
    build(spec, tmp_path / "out", lines, force=True)
    assert lines[3] == "[build] unchanged since the last run (outputs checked by hash)"
    options.write_text(options.read_text().replace("max_batch_size: 8", "max_batch_size: 9"))
    lines.clear()
    build(spec, tmp_path / "out", lines, force=True)
    assert lines[3].startswith("[build] re-running: output bundle/llm_api_options.yaml sha256 ")
    assert "max_batch_size: 8" in options.read_text()


def test_source_manifest_of_an_unchanged_checkpoint_is_trusted(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    assert run(capsys, "inspect", str(tmp_path / "tiny"), "--hash")[0] == 0
    build(spec, tmp_path / "out")
    log = load_record(tmp_path / "out/.work/kimi-k2-tiny/1.0.0", "inspect")
    assert log is not None
    assert log.log == {"hashed_files": 0, "hashes_from_source_manifest": 11}
    (tmp_path / "tiny/config.json").touch()  # newer than the manifest: read again
    build(spec, tmp_path / "out2")
    log = load_record(tmp_path / "out2/.work/kimi-k2-tiny/1.0.0", "inspect")
    assert log is not None and log.log["hashed_files"] == 1


class Killed(BaseException):
    """What a kill looks like to the code that was running (it never returns)."""


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_after_any_stage_resumes_to_the_same_bytes(
    stage: str, baseline: Path, tiny_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = {name: (inputs, run_) for name, inputs, run_ in pipeline.STAGES}
    real = table[stage][1]

    def killed(ctx: pipeline.Context) -> Any:
        real(ctx)  # the stage's work is done, its record not yet written
        raise Killed

    patched = tuple((n, i, killed if n == stage else r) for n, i, r in pipeline.STAGES)
    monkeypatch.setattr(pipeline, "STAGES", patched)
    spec = make_project(tmp_path, tiny_ckpt)
    with pytest.raises(Killed):
        build(spec, tmp_path / "out")
    assert not (tmp_path / "out/kimi-k2-tiny/1.0.0").exists()
    monkeypatch.setattr(pipeline, "STAGES", tuple((n, i, table[n][1]) for n, i, _ in patched))
    lines: list[str] = []
    resumed = build(spec, tmp_path / "out", lines)
    first = STAGES.index(stage)
    assert lines[first] == f"[{stage}] running"
    assert all("unchanged" in line for line in lines[:first])
    assert files_of(resumed.path) == files_of(baseline)


def test_sigkill_mid_build_then_resume_gives_the_same_bytes(
    baseline: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    argv = [
        sys.executable,
        "-m",
        "k2trt.cli.app",
        "release",
        "build",
        str(spec),
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp_path / "out/.work/kimi-k2-tiny/1.0.0/stages/convert.json"
    deadline = time.monotonic() + 120
    while not record.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # somewhere in verify (or later): not a clean stop
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out/kimi-k2-tiny/1.0.0").exists()
    resumed = build(spec, tmp_path / "out")
    assert files_of(resumed.path) == files_of(baseline)


def test_include_weights_copies_the_prepared_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    release = build(spec, tmp_path / "out", include_weights=True)
    m = release.manifest
    assert m["checkpoint"]["included"] == "checkpoint/weights"
    prepared = json.loads((release.path / "checkpoint/prepared-manifest.json").read_text())
    for name, entry in prepared["files"].items():
        assert m["files"][f"checkpoint/weights/{name}"]["sha256"] == entry["sha256"]


def test_an_existing_version_is_never_overwritten(
    baseline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = baseline.parents[2]
    before = files_of(baseline)
    code, _, err = run(
        capsys, "release", "build", str(project / "release.yaml"), str(project / "out")
    )
    assert code == 2
    assert err.startswith(f"error: {baseline}: release kimi-k2-tiny 1.0.0 already exists;")
    assert len(err.splitlines()) == 1
    assert files_of(baseline) == before


def test_expected_hash_mismatch_names_the_file(
    tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = {"model-2-of-3.safetensors": "0" * 64}
    spec = make_project(tmp_path, tiny_ckpt, checkpoint={"path": "tiny", "sha256": wrong})
    code, _, err = run(capsys, "release", "build", str(spec), str(tmp_path / "out"))
    assert code == 1
    last = err.splitlines()[-1]  # after the stage notes
    assert last.startswith(f"error: {tmp_path / 'tiny/model-2-of-3.safetensors'}: sha256 ")
    assert last.endswith("differs from checkpoint.sha256's 0000000000000000...")
    assert not (tmp_path / "out/kimi-k2-tiny").exists()


def test_expected_hashes_that_match_pass(tiny_ckpt: Path, tmp_path: Path) -> None:
    from k2trt.checkpoint.manifest import sha256_file

    real = {"config.json": sha256_file(tiny_ckpt / "config.json").sha256}
    spec = make_project(tmp_path, tiny_ckpt, checkpoint={"path": "tiny", "sha256": real})
    assert build(spec, tmp_path / "out").manifest["source"]["files"] == 11


def test_inspect_findings_fail_the_release(tiny_ckpt: Path, tmp_path: Path) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    config = json.loads((tmp_path / "tiny/config.json").read_text())
    config["n_routed_experts"] += 1
    (tmp_path / "tiny/config.json").write_text(json.dumps(config))
    with pytest.raises(CheckFailed, match=r"inspect: \d+ finding\(s\), first: "):
        build(spec, tmp_path / "out")


def test_bad_inputs_are_one_line_errors(tiny_ckpt: Path, tmp_path: Path) -> None:
    spec = make_project(tmp_path, tiny_ckpt, checkpoint={"path": "missing"})
    with pytest.raises(K2Error, match=r"missing: checkpoint.path: not a directory$"):
        build(spec, tmp_path / "out")
    spec = write_spec(tmp_path, package={"container": "my/triton:custom"})
    with pytest.raises(K2Error, match=r"package.trtllm_version: my/triton:custom is not an"):
        build(spec, tmp_path / "out")
    assert not (tmp_path / "out/kimi-k2-tiny/1.0.0").exists()
    spec = write_spec(tmp_path, previous="0.9.0")
    with pytest.raises(K2Error, match=r"previous: no release at .*0.9.0"):
        build(spec, tmp_path / "out2")
    shutil.rmtree(tmp_path / "out2", ignore_errors=True)


def test_a_template_change_keeps_the_engine_and_changes_the_serving_part(
    baseline: Path, tiny_ckpt: Path, tmp_path: Path
) -> None:
    spec = make_project(tmp_path, tiny_ckpt)
    config = tmp_path / "tiny/tokenizer_config.json"
    data = json.loads(config.read_text())
    data["chat_template"] += "{# template v2 #}"
    config.write_text(json.dumps(data))
    changed = build(spec, tmp_path / "out").manifest
    first = json.loads((baseline / "release.json").read_text())
    assert changed["engine"] == first["engine"]
    assert changed["checkpoint"]["sha256"] != first["checkpoint"]["sha256"]
    assert (
        changed["serving"]["chat_template"]["sha256"] != first["serving"]["chat_template"]["sha256"]
    )
