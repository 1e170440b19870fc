"""The CLI as users run it: global flags anywhere, JSON/quiet/human output, exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cli_run import run
from k2trt import __version__
from k2trt.models.kimi_k2 import kimi_k2_config


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"k2trt {__version__}\n", "")
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("synth", "inspect", "demo", "--json", "--quiet", "--debug"):
        assert word in out
    code, out, _ = run(capsys, "inspect", "--help")
    text = " ".join(out.replace("│", " ").split())  # rich wraps help text in a box
    assert code == 0 and "--deep" in text and "--hash" in text
    assert "Exit 0 clean, 1 with findings, 2 when the input cannot be read" in text


def test_inspect_json_anywhere_on_the_line(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path
) -> None:
    first = run(capsys, "--json", "inspect", str(tiny_ckpt))
    second = run(capsys, "inspect", str(tiny_ckpt), "--json")
    assert first == second and first[0] == 0
    report = json.loads(first[1])
    assert report["ok"] is True and report["findings"] == []
    assert (report["architecture"], report["model_type"], report["release"]) == (
        "deepseek_v3",
        "kimi_k2",
        "0711",
    )
    assert (report["shards"], report["tensors"]) == (3, report["params"]["tensors"])
    assert report["bytes_by_dtype"]["F8_E4M3"] > report["bytes_by_dtype"]["BF16"] > 0


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str], tiny_ckpt: Path) -> None:
    assert run(capsys, "-q", "inspect", str(tiny_ckpt), "--deep") == (0, "", "")


def test_inspect_kimi_config_alone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(kimi_k2_config("0905")))
    code, out, _ = run(capsys, "inspect", str(tmp_path), "--json")
    params = json.loads(out)["params"]
    assert code == 0 and json.loads(out)["release"] == "0905"
    assert abs(params["stored"] - 1_026_470_731_056) / 1_026_470_731_056 < 1e-4
    assert round(params["activated"] / 1e9, 1) == 32.9
    code, human, _ = run(capsys, "inspect", str(tmp_path / "config.json"))
    assert code == 0
    assert "parameters   1,026,470,729,592 stored = weights 1,026,408,232,448" in human
    assert "(32.86B: all but the routed experts a token skips)" in human
    assert "config only: no weights read" in human


def test_hash_writes_a_streamed_sha256_manifest(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    target = tmp_path / "m.json"
    code, out, _ = run(capsys, "inspect", str(tiny_ckpt), "--hash", "--manifest", str(target))
    assert code == 0 and f"manifest     {target}" in out
    manifest = json.loads(target.read_text())
    files = sorted(p for p in tiny_ckpt.iterdir() if p.is_file() and not p.name.startswith("."))
    assert manifest["files"] == {
        p.name: {
            "bytes": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "mtime_ns": p.stat().st_mtime_ns,  # lets convert reuse the hash while it matches
        }
        for p in files
    }
    first = target.read_bytes()
    assert run(capsys, "-q", "inspect", str(tiny_ckpt), "--hash", "--manifest", str(target))[0] == 0
    assert target.read_bytes() == first  # deterministic: no timestamps


def test_hash_default_manifest_excludes_itself(
    capsys: pytest.CaptureFixture[str], tiny_ckpt: Path, tmp_path: Path
) -> None:
    import shutil

    ckpt = tmp_path / "c"
    shutil.copytree(tiny_ckpt, ckpt)
    assert run(capsys, "-q", "inspect", str(ckpt), "--hash")[0] == 0
    assert run(capsys, "-q", "inspect", str(ckpt), "--hash")[0] == 0
    files = json.loads((ckpt / "k2trt-manifest.json").read_text())["files"]
    assert "k2trt-manifest.json" not in files and "config.json" in files


def test_synth_cli_and_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(
        capsys,
        "synth",
        str(tmp_path / "s"),
        "--release",
        "0905",
        "--layers",
        "2",
        "--experts",
        "3",
        "--seed",
        "7",
    )
    assert code == 0
    assert out.startswith(f"wrote {tmp_path / 's'}: tiny (release 0905, seed 7), ")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]) == (
        2,
        3,
        2,
    )
    code, _, err = run(capsys, "synth", str(tmp_path / "s"))
    assert (code, err) == (
        2,
        f"error: {tmp_path / 's'}: output already exists (use --force to replace it)\n",
    )
    code, _, err = run(capsys, "synth", str(tmp_path / "t"), "--preset", "huge")
    assert (code, err) == (2, "error: unknown preset 'huge' (known: tiny, small, k2-slice)\n")
    code, _, err = run(capsys, "synth", str(tmp_path / "t"), "--release", "1234")
    assert (code, err) == (2, "error: unknown release '1234' (known: 0711, 0905)\n")
    assert not (tmp_path / "t").exists()


@pytest.mark.slow  # the whole pipeline, release included: about 40 s
def test_demo_runs_each_stage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "demo", "--workdir", str(tmp_path))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 12
    assert lines[0].startswith("[synth] wrote a tiny Kimi K2 checkpoint: 166 tensors in 3 shards")
    assert lines[1].startswith("[inspect] deepseek_v3 (kimi_k2), 3,963,912 parameters, 72 scales")
    assert lines[2].startswith("[convert] prepared kimi-k2-tiny-trtllm (166 tensors, 3 shard(s)")
    assert lines[3].startswith("[verify] transformers' DeepseekV3ForCausalLM ran the converted")
    assert lines[3].endswith("within tolerance")
    assert lines[4].startswith(
        "[chat] rendered a tool-calling prompt with template kimi-k2-instruct-0711-tools"
    )
    assert lines[4].endswith(
        'parsed a streamed tool call: get_weather({"city": "Beijing"}), content \'Let me check.\''
    )
    assert lines[5].startswith("[plan] tiny model fits 1 x H100; Kimi K2 at 128K context on 16")
    assert lines[6].startswith("[build] bundle kimi-k2-tiny-bundle: TP1 EP1 on 1 x H100, moe CUT")
    assert lines[7].startswith("[package] Triton repository kimi-k2-tiny-triton: chat, post")
    assert lines[8].startswith("[release] kimi-k2-tiny 1.0.0 sha256:")
    assert lines[8].endswith(
        "re-used 3 of 6 stages, verified (signature, every sha256), notes vs 1.0.0: option "
        "`max_batch_size`: 8 -> 16"
    )
    assert lines[9].startswith("[serve] OpenAI API at http://127.0.0.1:")
    from k2trt.triton_repo.cpu_server import available

    if available() is None:  # the gateway in front of the packaged repository
        assert " client) over Triton gRPC -> chat: streamed chat, then " in lines[9]
    assert lines[9].endswith(
        'get_weather({"city": "Paris"}) -> tool result -> \'It is sunny in Paris, 22 °C.\' '
        "(finish stop, tool_calls, stop)"
    )
    assert lines[10].startswith("[grammar] constrained tool call from the random model: set_light(")
    assert lines[10].endswith("finish tool_calls)")
    assert lines[11] == f"demo ok: 11 stages in {tmp_path}"
    code, out, _ = run(capsys, "--json", "demo", "--workdir", str(tmp_path / "j"))
    assert [s["name"] for s in json.loads(out)["stages"]] == [
        "synth",
        "inspect",
        "convert",
        "verify",
        "chat",
        "plan",
        "build",
        "package",
        "release",
        "serve",
        "grammar",
    ]
