"""`k2trt release deploy|status|bluegreen` and `k2trt triton start`.

The rollout tests run on the real CPU tritonserver in explicit model control, serving the
first release's repository (tensorrt_llm swapped for the CPU stand-in), while a client thread
streams chats through `chat` the whole time; every request must succeed. The releases are
real `release build`s sharing one work directory (the stages a change does not touch are
reused): a template change (the prompt grows, so the answers' prompt token counts show which
release served them), a template that raises when tools are declared (the smoke gate fails),
a release made by a k2trt with another tool-call parser (its versions fail to load), and an
LLM API options change (another engine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli_run import run
from k2trt.errors import K2Error
from k2trt.release import assemble
from k2trt.release.deploy import engine_change, load_release
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.types import ChatRequest
from k2trt.serve.traffic import ChatTraffic
from k2trt.triton_repo import spec
from k2trt.triton_repo import versions as vs
from release_fixtures import build, make_project
from triton_fixtures import require_cpu_triton

PREFIX = "{{- 'Release two. ' -}}"  # renders before the conversation: a longer prompt
BROKEN = "{%- if tools %}{{ raise_exception('broken template') }}{% endif -%}"
OTHER_PARSER = "kimi-toolcalls/99"
HELLO = [{"role": "user", "content": "Hello"}]
ARGS = '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'
# Every scripted reply is the smoke gate's forced-call arguments: the client's requests and
# the gate's draw from one script in whatever order they arrive, and the gate passes on any.
SCRIPT_REPLIES = 6000
TRAFFIC_CAP = 5000  # requests the client thread may send in all (bounded, under the script)
TIMEOUT = "60"


def _with_template(project: Path, change: str) -> None:
    path = project / "tiny/tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = change + config["chat_template"]
    path.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def releases(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("releases")

    def one(version: str, change: str = "", **overrides: Any) -> Path:
        spec_path = make_project(root / version, tiny_ckpt, version=version, **overrides)
        if change:
            _with_template(root / version, change)
        return Path(build(spec_path, root / "out", workdir=root / "work").path)

    made = {"base": one("1.0.0")}
    made["options"] = one("2.0.0", build={"gpus": "H100x1", "context": 4096, "max_batch_size": 16})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assemble, "PARSER_VERSION", OTHER_PARSER)
        made["parser"] = one("1.3.0")
    made["template"] = one("1.1.0", PREFIX)
    made["broken"] = one("1.2.0", BROKEN)
    return made


# ---- without a server ----


def test_engine_change_names_the_part() -> None:
    running = {
        spec.P_ENGINE_ID: "e1",
        spec.P_ENGINE_WEIGHTS: "w" * 64,
        spec.P_ENGINE_OPTIONS: "o" * 64,
    }
    same = {"id": "e1", "weights_sha256": "w" * 64, "options_sha256": "o" * 64}
    assert engine_change(running, same) == []
    weights = engine_change(running, {**same, "id": "e2", "weights_sha256": "x" * 64})
    assert weights == [
        "the weights (weights, index and configs: sha256 wwwwwwwwwwww running, "
        "xxxxxxxxxxxx in the release)"
    ]
    both = engine_change(running, {"id": "e2", "weights_sha256": "x", "options_sha256": "y"})
    assert [p.split(" (")[0] for p in both] == ["the weights", "the LLM API options"]
    assert engine_change(running, {**same, "id": "e9"}) == ["the engine id (e1 running, e9)"]


def test_configs_change_only_what_is_asked(tmp_path: Path) -> None:
    from tritonclient.grpc import model_config_pb2

    config = spec.all_configs("m")[spec.POST_MODEL]
    (tmp_path / "config.pbtxt").write_text(config.text())
    parsed = vs.read_config(tmp_path / "config.pbtxt")
    two = vs.pinned(parsed, [3, 2])
    assert list(two.version_policy.specific.versions) == [2, 3]
    assert vs.same_apart_from_versions(parsed, two) == []
    recorded = vs.with_parameters(two, {"k2trt_release.3": "r 1.0.0 sha256:x"})
    assert vs.same_apart_from_versions(parsed, recorded) == []  # records are not a change
    changed = vs.with_parameters(parsed, {spec.P_STATE_TTL: "5"})
    assert vs.same_apart_from_versions(parsed, changed) == ["parameters"]
    vs.write_config(tmp_path, recorded)
    back = vs.read_config(tmp_path / "config.pbtxt")
    assert back == recorded and isinstance(back, model_config_pb2.ModelConfig)
    assert dict(back.parameters)["k2trt_release.3"].string_value == "r 1.0.0 sha256:x"
    dropped = vs.with_parameters(back, {}, drop_prefix=spec.P_RELEASE)
    assert not [k for k in dropped.parameters if k.startswith(spec.P_RELEASE)]
    assert vs.renamed(back, "other").name == "other" and back.name == spec.POST_MODEL


def test_version_directories(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "postprocessing"
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "tiktoken.model").write_text("x")
    (model / "1").mkdir(parents=True)
    (model / "01").mkdir()  # leading zero: Triton ignores it, so do we
    (model / "k2trt-model-files").mkdir()
    assert vs.versions_on_disk(model) == [1]
    assert vs.next_version(tmp_path / "repo", ("postprocessing",)) == 2
    assert vs.next_version(tmp_path / "repo", ("postprocessing",), known=[5]) == 6
    record = {"id": "sha256:r", "serving": {"parser": "p"}}
    made = vs.write_version(model, 2, b"# model", record, tmp_path / "files")
    assert sorted(p.name for p in made.iterdir()) == sorted(
        ["model.py", spec.BYTECODE_BLOCKER, spec.RELEASE_RECORD, spec.MODEL_FILES_DIR]
    )
    assert (made / spec.BYTECODE_BLOCKER).is_file() and not vs.bytecode_cache_written(made)
    assert json.loads((made / spec.RELEASE_RECORD).read_text()) == record
    assert not list(model.glob(".*"))  # nothing left aside
    with pytest.raises(K2Error, match="version directory already exists"):
        vs.write_version(model, 2, b"", record)
    vs.remove_version(model, 2)
    assert vs.versions_on_disk(model) == [1] and not list(model.glob(".*"))


def test_a_release_is_checked_before_anything_is_deployed(
    releases: dict[str, Path], tmp_path: Path
) -> None:
    good = load_release(releases["template"])
    assert good.manifest["version"] == "1.1.0"
    model_py, files = good.sources(spec.PRE_MODEL)
    assert b"TritonPythonModel" in model_py and files is not None
    assert good.sources(spec.CHAT_MODEL)[1] is not None  # chat detokenizes: its own files
    copy = tmp_path / "release"
    shutil.copytree(releases["template"], copy)
    template = copy / "triton/model_repository/preprocessing/k2trt-model-files/chat_template.jinja"
    template.write_text(template.read_text() + "{# tampered #}")
    with pytest.raises(K2Error, match=r"^release files do not match release.json: .*chat_template"):
        load_release(copy)
    shutil.copy2(releases["template"] / template.relative_to(copy), template)
    (template.parent / "extra.txt").write_text("x")
    with pytest.raises(K2Error, match=r"extra.txt: not part of the release"):
        load_release(copy)
    with pytest.raises(K2Error, match=r"release manifest not found"):
        load_release(tmp_path / "nowhere")


def test_bluegreen_manifests_parse_back(
    releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "green"
    code, _, err = run(
        capsys, "release", "bluegreen", str(releases["options"]), str(out), "--weight", "25"
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "bluegreen.json",
        "lws-green.yaml",
        "switch-route.yaml",
        "switch-service.yaml",
    ]
    manifest = json.loads((releases["options"] / "release.json").read_text())
    lws, service = yaml.safe_load_all((out / "lws-green.yaml").read_text())
    assert (lws["kind"], lws["metadata"]["name"]) == ("LeaderWorkerSet", "k2trt-green")
    labels = lws["metadata"]["labels"]
    assert labels["k2trt/color"] == "green"
    assert labels["k2trt/release"] == "kimi-k2-tiny-2.0.0"
    assert labels["app.kubernetes.io/version"] == "2.0.0"
    assert labels["k2trt/engine"] == manifest["engine"]["id"][:12]
    assert lws["metadata"]["annotations"]["k2trt/release-id"] == manifest["id"]
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
    assert leader["metadata"]["labels"]["k2trt/color"] == "green"
    command = leader["spec"]["containers"][0]["command"]
    assert any("releases/kimi-k2-tiny/2.0.0/triton/model_repository" in a for a in command)
    assert leader["spec"]["containers"][0]["image"] == "k2trt-kimi-k2-tiny:2.0.0"
    assert service["metadata"]["name"] == "k2trt-green-triton"
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/name"] == "k2trt-green"
    [switch] = yaml.safe_load_all((out / "switch-service.yaml").read_text())
    assert switch["metadata"]["name"] == "k2trt-triton"
    # the stable Service selects exactly green's leader pod labels
    assert switch["spec"]["selector"].items() <= leader["metadata"]["labels"].items()
    http, grpc = yaml.safe_load_all((out / "switch-route.yaml").read_text())
    assert (http["kind"], grpc["kind"]) == ("HTTPRoute", "GRPCRoute")
    for route, port in ((http, 8000), (grpc, 8001)):
        refs = route["spec"]["rules"][0]["backendRefs"]
        assert refs == [
            {"name": "k2trt-green-triton", "port": port, "weight": 25},
            {"name": "k2trt-blue-triton", "port": port, "weight": 75},
        ]
    code, _, err = run(capsys, "release", "bluegreen", str(releases["options"]), str(out))
    assert code == 2 and "output already exists" in err
    code, _, err = run(
        capsys, "release", "bluegreen", str(releases["options"]), str(tmp_path / "x"), "--color",
        "red",
    )  # fmt: skip
    assert code == 2 and err.strip() == "error: --color: expected one of blue, green, got 'red'"


# ---- on the CPU tritonserver ----


@dataclass
class Served:
    server: Any  # CpuTritonServer
    repo: Path
    prompt_tokens: dict[str, int]  # release -> prompt tokens of HELLO

    def args(self) -> list[str]:
        return [
            "--triton", self.server.http_url, "--grpc", self.server.grpc_url,
            "--repository", str(self.repo), "--timeout", TIMEOUT,
        ]  # fmt: skip


def _prompt_tokens(release: Path) -> int:
    files = ModelFiles.load(release / "triton/model_repository/preprocessing/k2trt-model-files")
    return len(prepare(files, ChatRequest(HELLO, max_tokens=4, temperature=0.0)).prompt_ids)


@pytest.fixture(scope="module")
def served(
    releases: dict[str, Path], prepared_ckpt: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The base release's repository on a tritonserver in explicit mode."""
    require_cpu_triton()
    from k2trt.triton_repo.cpu_server import CpuTritonServer
    from k2trt.triton_repo.repository import use_cpu_standin

    root = tmp_path_factory.mktemp("served")
    shutil.copytree(releases["base"] / "triton", root / "triton")
    repo = use_cpu_standin(root / "triton", prepared_ckpt)
    script = root / "script.json"
    script.write_text(json.dumps({"replies": [ARGS] * SCRIPT_REPLIES}))
    explicit = ("--model-control-mode=explicit", "--load-model=*")
    tokens = {name: _prompt_tokens(path) for name, path in releases.items()}
    with CpuTritonServer(repo, env={"K2TRT_SCRIPT": str(script)}, extra_args=explicit) as server:
        yield Served(server, repo, tokens)
        log = server.log_text()
    assert "Signal (" not in log, log[-4000:]  # no model process crashed


def traffic(grpc_url: str) -> ChatTraffic:
    """Two chats at a time through `chat`, bounded, while a rollout runs."""
    from k2trt.serve.triton_backend import TritonBackend

    request = ChatRequest(HELLO, max_tokens=4)
    return ChatTraffic(lambda: TritonBackend(grpc_url), 2, request, cap=TRAFFIC_CAP)


def _status(capsys: pytest.CaptureFixture[str], s: Served) -> dict[str, Any]:
    code, out, err = run(capsys, "--json", "release", "status", "--triton", s.server.http_url)
    assert code == 0, err
    return dict(json.loads(out))


def _rows(status: dict[str, Any]) -> dict[tuple[str, int], tuple[str, str | None]]:
    return {
        (r["model"], r["version"]): (r["state"], (r["release"] or {}).get("version"))
        for r in status["models"]
        if r["model"] != spec.LLM_MODEL
    }


def _serving_versions(s: Served) -> dict[str, list[int]]:
    return {m: vs.versions_on_disk(s.repo / m) for m in (spec.CHAT_MODEL, spec.PRE_MODEL)}


@pytest.mark.triton
def test_status_of_the_packaged_release(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    status = _status(capsys, served)
    assert status["serving"] == [
        {"version": 1, "release": {"name": "kimi-k2-tiny", "version": "1.0.0"}}
    ]
    record = json.loads((served.repo.parent / "k2trt-package.json").read_text())
    assert status["engine"][spec.P_ENGINE_ID] == record["release"]["engine_id"]
    assert _rows(status) == {
        ("chat", 1): ("READY", "1.0.0"),
        ("preprocessing", 1): ("READY", "1.0.0"),
        ("postprocessing", 1): ("READY", "1.0.0"),
    }
    code, out, _ = run(capsys, "release", "status", "--triton", served.server.http_url)
    assert code == 0
    assert "serving  chat version 1 = kimi-k2-tiny 1.0.0" in out.splitlines()


@pytest.mark.triton
def test_rollout_moves_traffic_with_no_failed_request(
    served: Served, releases: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    before, after = served.prompt_tokens["base"], served.prompt_tokens["template"]
    assert after > before  # the template change shows in every answer
    with traffic(served.server.grpc_url) as load:
        began = time.monotonic()
        code, out, err = run(
            capsys, "--json", "release", "deploy", str(releases["template"]), *served.args()
        )
        ended = time.monotonic()
    assert code == 0, err
    result = json.loads(out)
    manifest = json.loads((releases["template"] / "release.json").read_text())
    assert (result["version"], result["changed"]) == (2, True)
    assert result["release"] == {k: manifest[k] for k in ("name", "version", "id")}
    assert result["previous"]["version"] == 1
    assert load.failures() == []
    during = [d for d in load.done if began <= d.start < ended]
    assert len(during) >= 5  # the client was streaming all along
    assert {d.prompt_tokens for d in load.done} == {before, after}  # nothing else was served
    assert all(d.prompt_tokens == before for d in load.done if d.end < began)
    assert all(d.prompt_tokens == after for d in load.done if d.start > ended)
    status = _status(capsys, served)
    assert status["serving"][0]["version"] == 2
    assert status["serving"][0]["release"]["id"] == manifest["id"]
    rows = _rows(status)
    for model in (spec.CHAT_MODEL, spec.PRE_MODEL, spec.POST_MODEL):
        assert rows[(model, 2)] == ("READY", "1.1.0")
        assert rows[(model, 1)][0] in ("UNAVAILABLE", "UNLOADING")  # retired, files kept
    chat = vs.read_config(served.repo / spec.CHAT_MODEL / vs.CONFIG)
    assert list(chat.version_policy.specific.versions) == [2]
    assert {k: v.string_value for k, v in chat.parameters.items() if k.startswith("k2trt_rel")} == {
        "k2trt_release.1": "kimi-k2-tiny 1.0.0",
        "k2trt_release.2": f"kimi-k2-tiny 1.1.0 {manifest['id']}",
    }
    pre = vs.read_config(served.repo / spec.PRE_MODEL / vs.CONFIG)
    assert list(pre.version_policy.specific.versions) == [2]
    assert _serving_versions(served) == {"chat": [1, 2], "preprocessing": [1, 2]}
    assert not (served.repo / vs.CANARY).exists()
    record = json.loads((served.repo / "preprocessing/2" / spec.RELEASE_RECORD).read_text())
    assert record["id"] == manifest["id"] and record["serving"] == manifest["serving"]


@pytest.fixture
def on_template(served: Served, releases: dict[str, Path]) -> int:
    """The template release serving (rolled out here when a test runs on its own): its
    chat version."""
    from k2trt.release.deploy import DeployOptions, deploy
    from k2trt.release.served import served as read_served
    from k2trt.triton_repo.control import TritonControl

    now = read_served(TritonControl(served.server.http_url))
    wanted = json.loads((releases["template"] / "release.json").read_text())["id"]
    if now.release.get("id") == wanted:
        return now.version
    options = DeployOptions(timeout_s=float(TIMEOUT), grpc_url=served.server.grpc_url)
    return deploy(releases["template"], served.server.http_url, served.repo, options).version


def _known_versions(s: Served) -> int:
    from k2trt.triton_repo.control import TritonControl

    index = TritonControl(s.server.http_url).index()
    return max(v.version for v in index if v.name != spec.LLM_MODEL)


@pytest.mark.triton
def test_deploying_the_serving_release_again_changes_nothing(
    served: Served, releases: dict[str, Path], on_template: int, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _serving_versions(served)
    code, out, err = run(capsys, "release", "deploy", str(releases["template"]), *served.args())
    assert code == 0, err
    assert out.strip().endswith(f"already serves as version {on_template}: nothing to do")
    assert _serving_versions(served) == before


def _rolled_back(
    served: Served, capsys: pytest.CaptureFixture[str], release: Path, serving: int
) -> tuple[str, int]:
    """Deploy `release` (it must fail) under traffic: (the error line, the version it had)."""
    before, attempted = _serving_versions(served), _known_versions(served) + 1
    with traffic(served.server.grpc_url) as load:
        code, _, err = run(capsys, "release", "deploy", str(release), *served.args())
    assert code == 1, err
    assert load.failures() == []
    assert {d.prompt_tokens for d in load.done} == {served.prompt_tokens["template"]}
    assert _rows(_status(capsys, served))[(spec.CHAT_MODEL, serving)] == ("READY", "1.1.0")
    assert _serving_versions(served) == before
    for model in (spec.CHAT_MODEL, spec.PRE_MODEL, spec.POST_MODEL):
        config = vs.read_config(served.repo / model / vs.CONFIG)
        assert list(config.version_policy.specific.versions) == [serving]
    assert not (served.repo / vs.CANARY).exists()
    return err.strip().splitlines()[-1], attempted


@pytest.mark.triton
def test_a_release_failing_the_smoke_gate_rolls_back(
    served: Served, releases: dict[str, Path], on_template: int, capsys: pytest.CaptureFixture[str]
) -> None:
    line, attempted = _rolled_back(served, capsys, releases["broken"], on_template)
    manifest = json.loads((releases["template"] / "release.json").read_text())
    assert line == (
        f"error: rolled back to version {on_template} (kimi-k2-tiny 1.1.0 "
        f"({manifest['id'][:19]})): smoke gate failed through chat version {attempted} (as "
        f"k2trt-canary): RequestRejected: tools: chat template custom cannot render this: "
        f"TemplateError: broken template"
    )


@pytest.mark.triton
def test_a_release_failing_to_load_rolls_back(
    served: Served, releases: dict[str, Path], on_template: int, capsys: pytest.CaptureFixture[str]
) -> None:
    line, attempted = _rolled_back(served, capsys, releases["parser"], on_template)
    assert line.startswith(f"error: rolled back to version {on_template} (kimi-k2-tiny 1.1.0 (")
    # a number the server has seen (a rolled-back version's) is never reused
    assert f"preprocessing version {attempted} failed to load: " in line
    assert f"needs tool-call parser {OTHER_PARSER}, and this server's k2trt has " in line


@pytest.mark.triton
def test_an_engine_change_is_refused(
    served: Served, releases: dict[str, Path], on_template: int, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _serving_versions(served)
    code, _, err = run(capsys, "release", "deploy", str(releases["options"]), *served.args())
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(
        "error: kimi-k2-tiny 2.0.0 changes the engine: the LLM API options "
        "(engine/llm_api_options.yaml: sha256 "
    )
    assert "the weights" not in line
    assert line.endswith(
        f"roll it out blue/green (k2trt release bluegreen {releases['options']} OUT --color green)"
    )
    assert _serving_versions(served) == before


@pytest.mark.triton
def test_bad_input_is_refused_in_one_line(
    served: Served,
    releases: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from k2trt.triton_repo.cpu_server import free_port

    release = str(releases["template"])
    args = served.args()
    cases = {
        "cannot connect": ["--triton", f"127.0.0.1:{free_port()}", *args[2:]],
        "no preprocessing/config.pbtxt: not the served model repository": [
            *args[:4], "--repository", str(tmp_path), *args[6:],
        ],
        "expected http://HOST:PORT": ["--triton", "https://127.0.0.1:1", *args[2:]],
    }  # fmt: skip
    for expected, argv in cases.items():
        code, _, err = run(capsys, "release", "deploy", release, *argv)
        [line] = err.strip().splitlines()
        assert code == 2 and line.startswith("error: ") and expected in line, line
    code, _, err = run(capsys, "release", "deploy", str(tmp_path / "missing"), *args)
    assert code == 2 and err.strip() == (
        f"error: {tmp_path / 'missing' / 'release.json'}: release manifest not found"
    )


@pytest.mark.triton
def test_a_triton_not_in_explicit_mode_is_refused(
    releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_cpu_triton()
    from k2trt.triton_repo.cpu_server import CpuTritonServer

    (tmp_path / "empty").mkdir()
    with CpuTritonServer(tmp_path / "empty") as server:
        code, _, err = run(
            capsys, "release", "deploy", str(releases["template"]), "--triton", server.http_url,
            "--repository", str(tmp_path / "empty"),
        )  # fmt: skip
    assert code == 2
    assert err.strip() == (
        f"error: triton at http://{server.http_url} does not take model loads (explicit model "
        f"load / unload is not allowed if polling is enabled): start it with "
        f"--model-control-mode=explicit --load-model=* (k2trt triton start --explicit)"
    )


@pytest.mark.triton
def test_triton_start_serves_until_sigterm(
    releases: dict[str, Path], prepared_ckpt: Path, tmp_path: Path
) -> None:
    require_cpu_triton()
    from k2trt.triton_repo.cpu_server import free_port

    shutil.copytree(releases["base"] / "triton", tmp_path / "pkg")
    http, grpc = free_port(), free_port()
    argv = [
        sys.executable, "-m", "k2trt.cli.app", "triton", "start", str(tmp_path / "pkg"),
        "--cpu-standin", str(prepared_ckpt), "--explicit",
        "--http-port", str(http), "--grpc-port", str(grpc),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[1:3] == [f"  HTTP  http://127.0.0.1:{http}\n", f"  gRPC  127.0.0.1:{grpc}\n"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/chat/ready") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
