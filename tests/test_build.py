"""`k2trt build`: the engine bundle's options (generated, parsed back, validated), its record,
refusals with the plan's numbers, and bundles whose checkpoint changed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from cli_run import run
from k2trt.build.bundle import (
    OPTIONS_NAME,
    RECORD_NAME,
    Bundle,
    build_bundle,
    cuda_graph_sizes,
)
from k2trt.build.options import validate_options
from k2trt.build.spec import BuildSpec
from k2trt.checkpoint.manifest import sha256_file
from k2trt.cli.app import main
from k2trt.errors import K2Error
from k2trt.models.kimi_k2 import deepseek_v3_config, kimi_k2_config
from k2trt.runtime import trtllm


@pytest.fixture
def ckpt(prepared_ckpt: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared tiny checkpoint (tests change it)."""
    return Path(shutil.copytree(prepared_ckpt, tmp_path / "kimi-k2-tiny"))


def config_only(tmp_path: Path, config: dict[str, object], name: str) -> Path:
    """A 'prepared' directory holding only a published config: enough to plan and refuse."""
    root = tmp_path / name
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    return root


def test_bundle_options_are_parsed_back_and_valid(ckpt: Path, tmp_path: Path) -> None:
    bundle = build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8", context=4096))
    text = (tmp_path / "b" / OPTIONS_NAME).read_text()
    parsed = yaml.safe_load(text)
    assert validate_options(parsed) == []
    assert parsed == bundle.options
    assert parsed["backend"] == "pytorch"
    assert parsed["moe_config"] == {"backend": "CUTLASS"}  # Hopper
    assert parsed["max_seq_len"] == 4096
    assert parsed["kv_cache_config"] == {
        "dtype": "fp8",
        "enable_block_reuse": True,
        "free_gpu_memory_fraction": 0.9,
    }
    assert parsed["tokenizer"] == str(ckpt.resolve() / "tokenizer")
    assert parsed["trust_remote_code"] is False
    lay = bundle.record["layout"]
    assert parsed["tensor_parallel_size"] * parsed["pipeline_parallel_size"] == 8
    assert parsed["moe_expert_parallel_size"] * parsed["moe_tensor_parallel_size"] == lay["tp"]
    assert bundle.world_size == 8 and bundle.nodes == 1 and bundle.gpus_per_node == 8


def test_record_pins_every_file_and_says_not_executed(ckpt: Path, tmp_path: Path) -> None:
    bundle = build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="B200x8", model_name="k2"))
    record = json.loads((tmp_path / "b" / RECORD_NAME).read_text())
    assert record["executed"] == "no" and record["execution"] is None
    assert record["model_id"] == bundle.model_id == "k2"
    files = record["checkpoint"]["files"]
    assert "tokenizer/tokenizer.json" in files and "config.json" in files
    for name, entry in files.items():
        assert entry["sha256"] == sha256_file(ckpt / name).sha256
    assert record["options"]["schema"]["commit"] == "0004396720054fd8e205cbf616f21f0b57c6b412"
    assert bundle.options["moe_config"] == {"backend": "DEEPGEMM"}  # Blackwell


def test_build_is_deterministic(ckpt: Path, tmp_path: Path) -> None:
    spec = BuildSpec(gpus="H200x4", context=8192)
    build_bundle(ckpt, tmp_path / "a", spec)
    build_bundle(ckpt, tmp_path / "b", spec)
    for name in (OPTIONS_NAME, RECORD_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_no_layout_divides(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(
        K2Error, match=r"no layout of 32 GPUs divides this model .4 attention heads"
    ):
        build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x32"))


def test_cuda_graph_sizes_follow_the_batch_limit() -> None:
    assert cuda_graph_sizes(BuildSpec(gpus="H200x8", max_batch_size=20)) == (1, 2, 4, 8, 16, 20)
    assert max(cuda_graph_sizes(BuildSpec(gpus="H200x8", max_batch_size=512))) == 128
    pinned = BuildSpec(gpus="H200x8", cuda_graph_batch_sizes=(8, 1, 8))
    assert cuda_graph_sizes(pinned) == (1, 8)


def test_kimi_k2_on_8_h100_is_refused_with_the_numbers(tmp_path: Path) -> None:
    root = config_only(tmp_path, kimi_k2_config(), "kimi")
    with pytest.raises(K2Error) as err:
        build_bundle(root, tmp_path / "b", BuildSpec(gpus="H100x8"))
    msg = str(err.value)
    assert "does not fit H100x8" in msg and "of weights" in msg and "GiB available" in msg
    assert not (tmp_path / "b").exists()


def test_kv_shortfall_is_refused_with_token_counts(tmp_path: Path) -> None:
    root = config_only(tmp_path, kimi_k2_config(), "kimi")
    with pytest.raises(K2Error, match=r"KV = [0-9,]+ tokens.*asked for 64 x 131,072 tokens"):
        build_bundle(root, tmp_path / "b", BuildSpec(gpus="H200x8", concurrency=64))


def test_kimi_k2_on_16_h200_builds_for_128k(tmp_path: Path) -> None:
    root = config_only(tmp_path, kimi_k2_config(), "kimi")
    spec = BuildSpec(gpus="H200x16", context=131072, concurrency=8)
    bundle = build_bundle(root, tmp_path / "b", spec)
    assert bundle.world_size == 16 and bundle.nodes == 2
    assert bundle.record["plan"]["sequences"] >= 8


def test_deepseek_v3_fits_8_h200(tmp_path: Path) -> None:
    root = config_only(tmp_path, deepseek_v3_config(), "dsv3")
    bundle = build_bundle(root, tmp_path / "b", BuildSpec(gpus="H200x8", context=8192))
    assert bundle.world_size == 8


@pytest.mark.parametrize(
    ("pins", "message"),
    [
        ({"tp": 10}, "--tp 10 does not divide num_attention_heads 64"),
        ({"tp": 16, "ep": 3}, "--ep 3 does not divide --tp 16"),
        ({"tp": 16, "ep": 16, "pp": 2}, "--tp 16 x --pp 2 = 32 GPUs, but --gpus H200x16 has 16"),
    ],
)
def test_layouts_that_do_not_divide_are_refused(
    tmp_path: Path, pins: dict[str, int], message: str
) -> None:
    root = config_only(tmp_path, kimi_k2_config(), "kimi")
    gpus = "H200x10" if pins.get("tp") == 10 else "H200x16"
    spec = BuildSpec.from_mapping({"gpus": gpus, **pins})
    with pytest.raises(K2Error, match=message.replace("+", r"\+")):
        build_bundle(root, tmp_path / "b", spec)


def test_ep_that_does_not_divide_experts(tmp_path: Path) -> None:
    config = {**kimi_k2_config(), "n_routed_experts": 380}
    root = config_only(tmp_path, config, "odd")
    spec = BuildSpec(gpus="H200x16", tp=16, ep=16)
    with pytest.raises(K2Error, match="--ep 16 does not divide n_routed_experts 380"):
        build_bundle(root, tmp_path / "b", spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tensor_paralel_size": 8}, "did you mean 'tensor_parallel_size'"),
        (
            {"scheduler_config": {"capacity_scheduler_policy": "FIFO"}},
            "scheduler_config.capacity_scheduler_policy': expected one of",
        ),
        ({"print_iter_log": "yes"}, "option 'print_iter_log': expected bool, got str"),
        ({"max_batch_size": 4}, "option 'max_batch_size': set both as a field and in extra"),
    ],
)
def test_bad_extra_options_are_refused(
    ckpt: Path, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(K2Error, match=message):
        build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8", options=options))
    assert not (tmp_path / "b").exists()


def test_unprepared_checkpoint_is_refused(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(K2Error, match="not a prepared checkpoint: no tokenizer/ directory"):
        build_bundle(tiny_ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))


def test_changed_shard_is_caught(ckpt: Path, tmp_path: Path) -> None:
    build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(K2Error, match=rf"{shard.name}: checkpoint no longer matches .* sha256"):
        Bundle.load(tmp_path / "b")
    Bundle.load(tmp_path / "b", check_hashes=False)  # explicitly unchecked still loads


def test_same_mtime_change_is_caught_by_rehash(ckpt: Path, tmp_path: Path) -> None:
    build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))
    target = ckpt / "generation_config.json"
    stat = target.stat()
    target.write_text(target.read_text().replace("0.6", "0.7"))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide the change from mtime
    Bundle.load(tmp_path / "b")  # the fast check trusts size + mtime, as rsync does
    with pytest.raises(K2Error, match=r"generation_config\.json: checkpoint no longer matches"):
        Bundle.load(tmp_path / "b", rehash=True)


@pytest.mark.parametrize("change", ["remove", "add", "size"])
def test_missing_added_resized_files(ckpt: Path, tmp_path: Path, change: str) -> None:
    build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))
    if change == "remove":
        (ckpt / "tokenizer" / "tokenizer.json").unlink()
        match = "tokenizer/tokenizer.json is missing"
    elif change == "add":
        (ckpt / "extra.bin").write_bytes(b"x")
        match = "extra.bin was added"
    else:
        with (ckpt / "config.json").open("a") as fh:
            fh.write(" ")
        match = "config.json: checkpoint no longer matches the bundle: size"
    with pytest.raises(K2Error, match=match):
        Bundle.load(tmp_path / "b")


def test_edited_options_file_is_caught(ckpt: Path, tmp_path: Path) -> None:
    build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="H200x8"))
    path = tmp_path / "b" / OPTIONS_NAME
    path.write_text(path.read_text().replace("max_batch_size: 128", "max_batch_size: 4"))
    with pytest.raises(K2Error, match="options file changed since the build"):
        Bundle.load(tmp_path / "b")


# ---- the CLI ----


def test_cli_build_with_spec_and_flag_override(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("gpus: H200x8\ncontext: 2048\nmax_batch_size: 32\nmodel_name: tiny\n")
    code, out, _ = run(
        capsys, "--json", "build", str(ckpt), str(tmp_path / "b"), "--spec", str(spec),
        "--context", "1024", "--no-run",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["executed"] == "no" and result["model_id"] == "tiny"
    assert result["plan"]["context"] == 1024
    options = yaml.safe_load(Path(result["options_file"]).read_text())
    assert options["max_seq_len"] == 1024 and options["max_batch_size"] == 32


def test_cli_human_output_and_refusals(
    capsys: pytest.CaptureFixture[str], ckpt: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "b"
    code, out, err = run(capsys, "build", str(ckpt), str(out_dir), "--gpus", "H20x8")
    assert code == 0
    assert "executed     no" in out and "moe CUTLASS" in out
    if trtllm.unavailable():
        assert "not executed: tensorrt_llm is not installed" in err
    code, _, err = run(capsys, "build", str(ckpt), str(out_dir), "--gpus", "H20x8")
    assert code == 2 and "output already exists (use --force" in err
    code, _, err = run(capsys, "build", str(ckpt), str(tmp_path / "c"), "--gpus", "H20x8",
                       "--kv-dtype", "int4")  # fmt: skip
    assert code == 2 and err.strip() == "error: flags.kv_dtype: expected fp8 or bf16, got 'int4'"
    spec = tmp_path / "bad.yaml"
    spec.write_text("gpus: H200x8\ncontxt: 5\n")
    code, _, err = run(capsys, "build", str(ckpt), str(tmp_path / "c"), "--spec", str(spec))
    assert code == 2 and "unknown field 'contxt' (did you mean 'context'?)" in err
    assert len(err.strip().splitlines()) == 1


def test_custom_gpus_need_a_moe_backend(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(K2Error, match="custom GPU has no known generation; set moe_backend"):
        build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="custom:96GiBx8"))
    bundle = build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus="96GiBx8", moe_backend="TRTLLM"))
    assert bundle.options["moe_config"] == {"backend": "TRTLLM"}


@pytest.mark.gpu
def test_real_load_records_execution(ckpt: Path, tmp_path: Path) -> None:
    reason = trtllm.unavailable()
    if reason:
        pytest.skip(reason)
    import torch

    gpus = f"H100x{torch.cuda.device_count()}"
    build_bundle(ckpt, tmp_path / "b", BuildSpec(gpus=gpus, context=2048))
    code = main(["build", str(ckpt), str(tmp_path / "b"), "--gpus", gpus, "--force", "--run"])
    record = json.loads((tmp_path / "b" / RECORD_NAME).read_text())
    assert code == 0 and record["executed"] == "yes"
    assert record["execution"]["tokens"] > 0 and record["execution"]["load_s"] > 0
