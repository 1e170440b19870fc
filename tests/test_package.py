"""`k2trt package`: the generated repository (configs parsed back with tritonclient's schema,
model.yaml, model files), launch artifacts (bash -n, YAML parsed back), refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from k2trt.build.bundle import Bundle, build_bundle
from k2trt.build.options import DEFAULT_STREAM_INTERVAL
from k2trt.build.spec import BuildSpec
from k2trt.cli import package as package_cli
from k2trt.errors import K2Error
from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.wire import CHAT_INPUTS, CHAT_OUTPUTS
from k2trt.triton_repo import launch, spec
from k2trt.triton_repo.pbtxt import ModelConfig, Tensor, quote
from k2trt.triton_repo.repository import (
    LAUNCH_DIR,
    RECORD_NAME,
    REPOSITORY_DIR,
    load_record,
    model_source,
    package,
    use_cpu_standin,
)


@pytest.fixture(scope="module")
def bundle(prepared_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return build_bundle(
        prepared_ckpt, tmp_path_factory.mktemp("bundle") / "b", BuildSpec(gpus="H200x8")
    )


@pytest.fixture(scope="module")
def out(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package(bundle, tmp_path_factory.mktemp("pkg") / "triton").path


def parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def assert_same(parsed: Any, want: ModelConfig) -> None:
    """Field by field: what tritonserver will read equals the typed data."""
    types = model_config_pb2.DataType
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    assert parsed.name == want.name
    assert parsed.backend == want.backend
    assert parsed.max_batch_size == want.max_batch_size
    assert parsed.model_transaction_policy.decoupled is want.decoupled
    got_in = [(i.name, types.Name(i.data_type), list(i.dims), i.optional) for i in parsed.input]
    assert got_in == [(t.name, t.data_type, list(t.dims), t.optional) for t in want.inputs]
    got_out = [(o.name, types.Name(o.data_type), list(o.dims)) for o in parsed.output]
    assert got_out == [(t.name, t.data_type, list(t.dims)) for t in want.outputs]
    groups = [(kinds.Name(g.kind), g.count) for g in parsed.instance_group]
    assert groups == [(g.kind, g.count) for g in want.instance_group]
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params == dict(want.parameters)


def test_layout(out: Path) -> None:
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    models = {
        f"{REPOSITORY_DIR}/{m}/{f}"
        for m in spec.MODELS
        for f in ("config.pbtxt", f"{spec.VERSION}/model.py", f"{spec.VERSION}/__pycache__")
    }
    model_files = {
        f"{REPOSITORY_DIR}/{m}/{spec.MODEL_FILES_DIR}/{f}"
        for m in spec.MODELS  # chat too: it detokenizes and parses in-process
        for f in spec.MODEL_FILES
    }
    launchers = {f"{LAUNCH_DIR}/{f}" for f in launch.artifacts(_deployment(8, 8))}
    yaml_file = f"{REPOSITORY_DIR}/{spec.LLM_MODEL}/{spec.VERSION}/model.yaml"
    assert files == models | model_files | launchers | {yaml_file, RECORD_NAME}
    # Only model directories at the repository's top: Triton loads every directory there.
    assert sorted(p.name for p in (out / REPOSITORY_DIR).iterdir()) == sorted(spec.MODELS)


@pytest.mark.parametrize("model", spec.MODELS)
def test_config_parses_back_field_by_field(out: Path, bundle: Bundle, model: str) -> None:
    parsed = parse(out / REPOSITORY_DIR / model / "config.pbtxt")
    assert_same(parsed, spec.all_configs(bundle.model_id)[model])


def test_max_batch_size_and_decoupled_are_written_even_at_defaults(out: Path) -> None:
    text = (out / REPOSITORY_DIR / spec.PRE_MODEL / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in text.splitlines()
    assert "model_transaction_policy {\n  decoupled: false\n}" in text


def test_chat_has_exactly_the_wire_format(out: Path) -> None:
    parsed = parse(out / REPOSITORY_DIR / spec.CHAT_MODEL / "config.pbtxt")
    types = model_config_pb2.DataType
    assert [(i.name, types.Name(i.data_type), i.optional) for i in parsed.input] == [
        (f.name, f.triton_type, f.optional) for f in CHAT_INPUTS
    ]
    assert [(o.name, types.Name(o.data_type)) for o in parsed.output] == [
        (f.name, f.triton_type) for f in CHAT_OUTPUTS
    ]
    assert parsed.max_batch_size == 0 and parsed.model_transaction_policy.decoupled


def test_llm_declares_what_the_openai_frontend_sends(out: Path) -> None:
    parsed = parse(out / REPOSITORY_DIR / spec.LLM_MODEL / "config.pbtxt")
    types = model_config_pb2.DataType
    inputs = {i.name: types.Name(i.data_type) for i in parsed.input}
    sent = {
        "text_input": "TYPE_STRING",
        "stream": "TYPE_BOOL",
        "max_tokens": "TYPE_INT32",
        "stop_words": "TYPE_STRING",
        "top_p": "TYPE_FP32",
        "temperature": "TYPE_FP32",
        "frequency_penalty": "TYPE_FP32",
        "presence_penalty": "TYPE_FP32",
        "seed": "TYPE_UINT64",
        "exclude_input_in_output": "TYPE_BOOL",
        "return_num_input_tokens": "TYPE_BOOL",
        "return_num_output_tokens": "TYPE_BOOL",
    }
    assert {k: inputs.get(k) for k in sent} == sent
    assert all(i.optional for i in parsed.input)
    outputs = {o.name: (types.Name(o.data_type), list(o.dims)) for o in parsed.output}
    assert outputs["text_output"] == ("TYPE_STRING", [1])  # one string per response
    assert outputs["num_input_tokens"][0] == outputs["num_output_tokens"][0] == "TYPE_INT32"
    # The frontend sends [[value]]: a batch dimension, so max_batch_size >= 1.
    assert parsed.max_batch_size == 1 and parsed.model_transaction_policy.decoupled


def test_postprocessing_runs_one_instance(out: Path) -> None:
    parsed = parse(out / REPOSITORY_DIR / spec.POST_MODEL / "config.pbtxt")
    assert [(g.count) for g in parsed.instance_group] == [1]


def test_model_yaml(out: Path, bundle: Bundle) -> None:
    path = out / REPOSITORY_DIR / spec.LLM_MODEL / spec.VERSION / "model.yaml"
    data = yaml.safe_load(path.read_text())
    parsed = parse(out / REPOSITORY_DIR / spec.LLM_MODEL / "config.pbtxt")
    assert data.pop("model") == str(bundle.checkpoint.resolve())
    assert data.pop("backend") == "pytorch"
    assert data.pop("triton_config") == {
        "max_batch_size": parsed.max_batch_size,
        "decoupled": parsed.model_transaction_policy.decoupled,
    }
    assert data == {k: v for k, v in bundle.options.items() if k != "backend"}
    assert path.read_text() == yaml.safe_dump(yaml.safe_load(path.read_text()), sort_keys=True)


def test_model_yaml_streams_several_ids_per_response(
    out: Path, prepared_ckpt: Path, tmp_path: Path
) -> None:
    """k2trt's throughput default for stream_interval, unless the spec's options set one."""
    path = out / REPOSITORY_DIR / spec.LLM_MODEL / spec.VERSION / "model.yaml"
    assert yaml.safe_load(path.read_text())["stream_interval"] == DEFAULT_STREAM_INTERVAL > 1
    own = BuildSpec(gpus="H200x8", options={"stream_interval": 1})
    assert build_bundle(prepared_ckpt, tmp_path / "b", own).options["stream_interval"] == 1


def test_model_files_are_copied_once_and_load(out: Path, bundle: Bundle) -> None:
    repo = out / REPOSITORY_DIR
    dirs = [repo / m / spec.MODEL_FILES_DIR for m in spec.MODELS]
    for name in spec.MODEL_FILES:
        inodes = {(d / name).stat().st_ino for d in dirs}
        assert len(inodes) == 1, name  # hard links: one copy on disk
    files = ModelFiles.load(dirs[0])
    source = ModelFiles.load(bundle.checkpoint)
    assert files.stop_token_ids == source.stop_token_ids
    assert files.template == source.template
    assert files.max_context == source.max_context
    assert sorted(load_record(out)["model_files"]) == sorted(spec.MODEL_FILES)


def test_one_model_py_everywhere_and_configs_name_the_role(out: Path) -> None:
    repo = out / REPOSITORY_DIR
    texts = {(repo / m / spec.VERSION / "model.py").read_text() for m in spec.MODELS}
    assert texts == {model_source()}
    [text] = texts
    assert "site.addsitedir(_path)" in text and "K2TRT_PYTHONPATH" in text
    assert "class TritonPythonModel:" in text
    roles = {
        m: parse(repo / m / "config.pbtxt").parameters[spec.P_ROLE].string_value
        for m in spec.MODELS
    }
    assert roles == {m: m for m in spec.MODELS}


def test_record(out: Path, bundle: Bundle) -> None:
    record = load_record(out)
    assert record["world_size"] == bundle.world_size == 8
    assert record["nodes"] == 1
    assert record["model_id"] == bundle.model_id
    assert record["llm_engine"] == spec.ENGINE_TRTLLM


def test_existing_out_is_refused_then_replaced_with_force(bundle: Bundle, tmp_path: Path) -> None:
    target = tmp_path / "triton"
    target.mkdir()
    (target / "keep").write_text("x")
    with pytest.raises(K2Error, match="output already exists"):
        package(bundle, target)
    assert (target / "keep").exists()
    package(bundle, target, force=True)
    assert not (target / "keep").exists()
    assert (target / RECORD_NAME).exists()


def test_failure_leaves_nothing(bundle: Bundle, tmp_path: Path) -> None:
    ckpt = Path(shutil.copytree(bundle.checkpoint, tmp_path / "ckpt"))
    (ckpt / "tiktoken.model").unlink()
    broken = Bundle(**{**bundle.__dict__, "checkpoint": ckpt})
    with pytest.raises(K2Error, match=r"lacks tiktoken.model"):
        package(broken, tmp_path / "triton")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cpu_standin_keeps_the_interface(bundle: Bundle, tmp_path: Path) -> None:
    out = package(bundle, tmp_path / "triton").path
    config = out / REPOSITORY_DIR / spec.LLM_MODEL / "config.pbtxt"
    before = parse(config)
    use_cpu_standin(out, bundle.checkpoint)
    after = parse(config)
    assert list(after.input) == list(before.input) and list(after.output) == list(before.output)
    assert after.parameters[spec.P_ENGINE].string_value == spec.ENGINE_REFERENCE
    assert after.parameters[spec.P_CHECKPOINT].string_value == str(bundle.checkpoint.resolve())
    assert load_record(out)["llm_engine"] == spec.ENGINE_REFERENCE


def test_tool_grammar_mode_reaches_preprocessing(bundle: Bundle, tmp_path: Path) -> None:
    default = package(bundle, tmp_path / "auto").path
    pre = parse(default / REPOSITORY_DIR / spec.PRE_MODEL / "config.pbtxt")
    assert pre.parameters[spec.P_TOOL_GRAMMAR].string_value == "auto"
    strict = package(bundle, tmp_path / "strict", tool_grammar="strict").path
    pre = parse(strict / REPOSITORY_DIR / spec.PRE_MODEL / "config.pbtxt")
    assert pre.parameters[spec.P_TOOL_GRAMMAR].string_value == "strict"
    assert load_record(strict)["tool_grammar"] == "strict"
    with pytest.raises(K2Error, match=r"--tool-grammar must be one of off, auto, strict"):
        package(bundle, tmp_path / "bad", tool_grammar="sometimes")
    assert not (tmp_path / "bad").exists()


# ---- the CLI ----


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(package_cli.command)
    return app


def test_cli_packages(bundle: Bundle, tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), [str(bundle.path), str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 't'}: Triton model repository for {bundle.model_id}" in result.output
    assert "world size  8 = 1 node(s) x 8 GPU(s)" in result.output
    assert "Dockerfile, lws.yaml, serve-docker.sh, serve-mpirun.sh, serve.sbatch" in result.output


def test_cli_refuses_a_changed_checkpoint(bundle: Bundle, tmp_path: Path) -> None:
    ckpt = Path(shutil.copytree(bundle.checkpoint, tmp_path / "ckpt"))
    b = build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))
    target = ckpt / "generation_config.json"
    target.write_text(target.read_text().replace("0.6", "0.7"))
    result = CliRunner().invoke(_app(), [str(b.path), str(tmp_path / "t")])
    assert isinstance(result.exception, K2Error)
    message = str(result.exception)
    assert "\n" not in message and "generation_config.json" in message
    assert "no longer matches" in message
    assert not (tmp_path / "t").exists()


# ---- launch artifacts ----


def _deployment(world: int, per_node: int) -> launch.Deployment:
    return launch.Deployment(
        repo="/srv/k2 repo/model_repository",  # a space: quoting is exercised
        checkpoint="/models/kimi-k2",
        world_size=world,
        gpus_per_node=per_node,
        model_id="kimi-k2",
    )


@pytest.mark.parametrize("world", [8, 16, 32])
def test_scripts_pass_bash_n(world: int, tmp_path: Path) -> None:
    for name, text in launch.artifacts(_deployment(world, 8)).items():
        if name.endswith((".sh", ".sbatch")):
            path = tmp_path / name
            path.write_text(text)
            result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert result.returncode == 0, (name, result.stderr)


def _argv(text: str) -> list[str]:
    """The script's last command as argv (variables left as written)."""
    import shlex

    last = [line for line in text.splitlines() if line.startswith("exec ")]
    body = text[text.index(last[0]) :].replace("\\\n", " ")
    return shlex.split(body, posix=True)[1:]


def test_docker_script_only_when_one_node_holds_the_world() -> None:
    assert "serve-docker.sh" in launch.artifacts(_deployment(8, 8))
    assert sorted(launch.artifacts(_deployment(16, 8))) == [
        "Dockerfile",
        "lws.yaml",
        "serve-mpirun.sh",
        "serve.sbatch",
    ]


def test_mpirun_layout_follows_upstream() -> None:
    d = _deployment(16, 8)
    argv = _argv(launch.mpirun_script(d).text())
    assert argv[:4] == ["mpirun", "--allow-run-as-root", "--host", "${K2TRT_HOSTS}"]
    split = argv.index(":")
    rank0, others = argv[:split], argv[split + 1 :]
    assert rank0[4:7] == ["-n", "1", "trtllm-llmapi-launch"]
    assert others[:3] == ["-n", "15", "trtllm-llmapi-launch"]
    assert f"--model-repository={d.repo}" in rank0 and f"--model-repository={d.repo}" in others
    assert "--load-model=tensorrt_llm" in others and "--load-model=tensorrt_llm" not in rank0
    assert "--model-control-mode=explicit" in others
    for part in (rank0, others):
        assert "--disable-auto-complete-config" in part
    assert "--backend-config=python,shm-region-prefix-name=prefix0_" in rank0
    assert "--backend-config=python,shm-region-prefix-name=prefix1_" in others


def test_single_node_runs_one_tritonserver() -> None:
    d = _deployment(8, 8)
    argv = _argv(launch.docker_script(d).text())
    assert argv[:2] == ["docker", "run"]
    assert f"{d.repo}:{d.repo}:ro" in argv and f"{d.checkpoint}:{d.checkpoint}:ro" in argv
    server = argv[argv.index("tritonserver") :]
    assert server[1] == f"--model-repository={d.repo}"
    assert "mpirun" not in argv and "--load-model=tensorrt_llm" not in argv
    mpirun = _argv(launch.mpirun_script(_deployment(1, 8)).text())
    assert ":" not in mpirun  # one rank, one app context


def test_sbatch_sizes_from_the_world() -> None:
    text = launch.sbatch_script(_deployment(32, 8)).text()
    lines = text.splitlines()
    assert lines[1:5] == [
        "#SBATCH --job-name=k2trt-triton",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
    ]
    argv = _argv(text)
    assert argv[:2] == ["srun", "--mpi=pmix"]
    assert argv[argv.index("--container-image") + 1] == "${K2TRT_IMAGE}"
    assert argv[argv.index("trtllm-llmapi-launch") + 1] == "tritonserver"


def test_lws_manifest_parses_back() -> None:
    d = _deployment(16, 8)
    lws, service = yaml.safe_load_all(launch.lws_yaml(d))
    assert lws["kind"] == "LeaderWorkerSet" and lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    worker = group["workerTemplate"]["spec"]["containers"][0]
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert c["image"] == d.image
    cmd = leader["command"]
    assert cmd[cmd.index("--host") + 1] == (
        "$(LWS_LEADER_ADDRESS):8,k2trt-$(LWS_GROUP_INDEX)-1.k2trt:8"
    )
    assert cmd[cmd.index(":") + 1 : cmd.index(":") + 3] == ["-n", "15"]
    assert worker["command"][0] == "/usr/sbin/sshd"
    assert leader["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002]
    assert launch.lws_yaml(d) == launch.lws_yaml(d)  # deterministic


def test_dockerfile_starts_from_the_pinned_container() -> None:
    text = launch.dockerfile(_deployment(8, 8))
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == [f"FROM {launch.CONTAINER}"]
    assert launch.CONTAINER.endswith("-trtllm-python-py3")


def test_dockerfile_installs_dependencies_pinned_to_the_container() -> None:
    # k2trt's own dependencies must come in (a --no-deps install left the CLI unable to start
    # without starlette/uvicorn), but never replace what the container ships: the install is
    # constrained by the container's package list, frozen first.
    runs = [
        line for line in launch.dockerfile(_deployment(8, 8)).splitlines()
        if line.startswith("RUN ") and "/opt/k2trt-src" in line
    ]  # fmt: skip
    assert len(runs) == 1
    steps = [step.strip() for step in runs[0].removeprefix("RUN ").split("&&")]
    assert steps[0] == f"pip list --format=freeze > {launch.CONTAINER_PINS}"
    install = steps[1].split()
    assert "--no-deps" not in install
    assert install[install.index("--constraint") + 1] == launch.CONTAINER_PINS
    assert install[-1] == "/opt/k2trt-src"
    assert steps[-1] == "k2trt --version"  # the CLI starts in the image, or the build fails


def test_scripts_are_executable(out: Path) -> None:
    for name in ("serve-docker.sh", "serve-mpirun.sh", "serve.sbatch"):
        assert os.access(out / LAUNCH_DIR / name, os.X_OK), name


# ---- the text-format writer ----


def test_strings_are_escaped_as_text_format_reads_them() -> None:
    value = 'a "quoted" \\ path\nwith é and \t'
    cfg = ModelConfig(
        "m",
        max_batch_size=2,
        inputs=(Tensor("x", "TYPE_STRING", (1,), optional=True),),
        outputs=(Tensor("y", "TYPE_INT32", (-1, 4)),),
        parameters={"p": value},
    )
    parsed = text_format.Parse(cfg.text(), model_config_pb2.ModelConfig())
    assert parsed.parameters["p"].string_value == value
    assert_same(parsed, cfg)
    assert quote("é") == '"\\303\\251"'


def test_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown data type"):
        Tensor("x", "TYPE_FLOAT", (1,))
