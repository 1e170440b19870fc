"""`k2trt release deploy`: a release's serving models rolled onto a running Triton, in place.

A release whose engine part (weights, index, configs and LLM API options: `engine.id`) equals
the running one differs only in what `chat`, `preprocessing` and `postprocessing` read
(template, tokenizer files, k2trt's records), so it becomes a new numbered version N of those
three beside the serving version C, on a Triton in explicit model-control mode:

  1. check: the release's deployed files against release.json, the server (explicit mode,
     one chat version serving), the engine, pre/post configs that differ only in versions
  2. write N/ of preprocessing, postprocessing and chat (aside, then renamed)
  3. preprocessing, postprocessing: version_policy {C, N}, load: N loads beside C, and C keeps
     running in place (only the policy changed), requests in flight included
  4. k2trt-canary: chat at version N under another name; load; the smoke gate through it;
     unload and remove. No client reaches N before it passed.
  5. chat: version_policy {N} and the release records, load: new requests go to N, the ones
     in flight finish on C (and on pre/post C: chat N calls version N, chat C version C)
  6. settle: once chat C has drained, pre/post {N}; versions older than C are removed (C
     stays for a rollback)

A failure in 2-5 (a load error, not ready in time, the smoke gate) pins the configs back to C,
reloads, removes N and raises CheckFailed naming the cause (exit 1). At no point does a
serving model stop answering (docs/deploy.md has what was measured).

    >>> deploy(Path("releases/kimi-k2/1.1.0"), "127.0.0.1:8000", Path("repo"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from k2trt.errors import CheckFailed, K2Error
from k2trt.release.assemble import release_id
from k2trt.release.served import SERVING_MODELS, Served, label_text, served
from k2trt.release.smoke import smoke
from k2trt.release.verify import check_tree, load_manifest
from k2trt.runtime.wire import CHAT_MODEL
from k2trt.triton_repo import spec
from k2trt.triton_repo import versions as vs
from k2trt.triton_repo.control import ControlError, TritonControl

REPOSITORY = "triton/model_repository"  # inside a release
RECORD_FORMAT = "k2trt.deployed/1"
DEFAULT_TIMEOUT_S = 300.0
GRPC_PORT = 8001
POLL_S = 0.1
Say = Callable[[str], None]
# (what people call it, the config parameter, release.json's engine field)
ENGINE_PARTS = (
    ("the weights (weights, index and configs", spec.P_ENGINE_WEIGHTS, "weights_sha256"),
    ("the LLM API options (engine/llm_api_options.yaml", spec.P_ENGINE_OPTIONS, "options_sha256"),
)


@dataclass(frozen=True)
class DeployOptions:
    timeout_s: float = DEFAULT_TIMEOUT_S  # bound on each load, the smoke gate and the drain
    grpc_url: str | None = None  # the smoke gate's; default: the HTTP host, port 8001


@dataclass
class DeployResult:
    release: dict[str, str]
    version: int
    previous: dict[str, Any]
    changed: bool = True
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReleaseFiles:
    """The part of a release a rollout deploys, checked against release.json."""

    path: Path
    manifest: dict[str, Any]

    def model(self, name: str) -> Path:
        return self.path / REPOSITORY / name

    def label(self) -> str:
        m = self.manifest
        return f"{m['name']} {m['version']} {m['id']}"

    def record(self) -> dict[str, Any]:
        """What each deployed version directory holds (spec.RELEASE_RECORD)."""
        m = self.manifest
        keys = ("id", "name", "version", "engine", "serving")
        return {"format": RECORD_FORMAT, **{k: m[k] for k in keys}}

    def sources(self, name: str) -> tuple[bytes, Path | None]:
        """(model.py, k2trt-model-files directory or None) of one model of the release."""
        root = self.model(name)
        numbered = vs.versions_on_disk(root)
        if not numbered:
            raise K2Error("no version directory", path=root)
        version = root / str(numbered[-1])
        files = next(
            (
                d
                for d in (version / spec.MODEL_FILES_DIR, root / spec.MODEL_FILES_DIR)
                if d.is_dir()
            ),
            None,
        )
        return (version / "model.py").read_bytes(), files


def load_release(path: Path) -> ReleaseFiles:
    """A release directory whose serving models are intact; K2Error naming the first problem."""
    manifest = load_manifest(path)
    for key in ("engine", "serving"):
        if not isinstance(manifest.get(key), dict):
            raise K2Error(f"release manifest lacks '{key}'", path=path / "release.json")
    if release_id(manifest) != manifest["id"]:
        raise K2Error("id does not match the content (edited after the build)", path=path)
    for name in SERVING_MODELS:
        prefix = f"{REPOSITORY}/{name}/"
        if f"{prefix}config.pbtxt" not in manifest["files"]:
            raise K2Error(f"the release has no {name} model", path=path / prefix)
        findings = check_tree(path, manifest["files"], prefix)
        if findings:
            raise K2Error(f"release files do not match release.json: {findings[0]}")
    return ReleaseFiles(path, manifest)


def engine_change(running: dict[str, str], engine: dict[str, Any]) -> list[str]:
    """The parts of the engine a release changes against the running one ([] when equal).

    >>> engine_change({"k2trt_engine_id": "e1", "k2trt_engine_weights": "w",
    ...                "k2trt_engine_options": "o1"},
    ...               {"id": "e2", "weights_sha256": "w", "options_sha256": "o2"})
    ['the LLM API options (engine/llm_api_options.yaml: sha256 o1 running, o2 in the release)']
    """
    parts = [
        f"{what}: sha256 {running.get(key, '?')[:12]} running, {engine[name][:12]} in the release)"
        for what, key, name in ENGINE_PARTS
        if running.get(key) != engine[name]
    ]
    if not parts and running.get(spec.P_ENGINE_ID) != engine["id"]:
        parts.append(f"the engine id ({running.get(spec.P_ENGINE_ID)} running, {engine['id']})")
    return parts


def check_engine(now: Served, release: ReleaseFiles) -> None:
    """K2Error unless the release's engine is the one running (then only a new deployment
    can serve it: blue/green)."""
    if spec.P_ENGINE_ID not in now.engine:
        raise K2Error(
            f"the running {spec.LLM_MODEL} has no {spec.P_ENGINE_ID} parameter: its repository "
            f"was not packaged from a release, so it cannot be compared; serve a release's "
            f"{REPOSITORY} (or roll out blue/green)"
        )
    changed = engine_change(now.engine, release.manifest["engine"])
    if changed:
        m = release.manifest
        raise K2Error(
            f"{m['name']} {m['version']} changes the engine: {'; '.join(changed)}. Two engines "
            f"do not fit one deployment's GPUs, so it cannot be loaded in place: roll it out "
            f"blue/green (k2trt release bluegreen {release.path} OUT --color green)"
        )


def check_repository(repo: Path, now: Served, release: ReleaseFiles) -> None:
    """REPO is the directory the server serves, and pre/post may switch version in place."""
    for name in (*SERVING_MODELS, spec.LLM_MODEL):
        if not (repo / name / vs.CONFIG).is_file():
            raise K2Error(f"no {name}/{vs.CONFIG}: not the served model repository", path=repo)
    for name in SERVING_MODELS:
        if not (repo / name / str(now.version)).is_dir():
            raise K2Error(
                f"{name} has no version {now.version} (the served one): not the repository "
                f"this Triton serves",
                path=repo / name,
            )
    on_disk = vs.read_config(repo / spec.LLM_MODEL / vs.CONFIG).parameters
    if spec.P_ENGINE_ID in on_disk and on_disk[spec.P_ENGINE_ID].string_value != now.engine.get(
        spec.P_ENGINE_ID
    ):
        raise K2Error("tensorrt_llm's config differs from the served one", path=repo)
    for name in (spec.PRE_MODEL, spec.POST_MODEL):
        mine = vs.read_config(release.model(name) / vs.CONFIG)
        differ = vs.same_apart_from_versions(vs.read_config(repo / name / vs.CONFIG), mine)
        if differ:
            raise K2Error(
                f"{name}/{vs.CONFIG}: the release changes {', '.join(differ)}, and a serving "
                f"rollout may change only versions (a reload would drop the requests in "
                f"flight); roll it out blue/green",
                path=release.model(name),
            )


def deploy(
    release_dir: Path,
    triton_url: str,
    repository: Path,
    options: DeployOptions = DeployOptions(),
    say: Say = lambda line: None,
) -> DeployResult:
    """Roll `release_dir` onto the Triton at `triton_url` serving `repository` (see the
    module docstring); CheckFailed after a rollback, K2Error when refused up front."""
    release = load_release(Path(release_dir))
    control = TritonControl(triton_url)
    control.require_live()
    control.require_explicit()
    now = served(control)
    check_engine(now, release)
    repo = Path(repository)
    check_repository(repo, now, release)
    previous = {"version": now.version, "release": now.release}
    wanted = {k: release.manifest[k] for k in ("name", "version", "id")}
    if now.release.get("id") == release.manifest["id"]:
        say(f"[deploy] {label_text(wanted)} already serves as chat version {now.version}")
        return DeployResult(wanted, now.version, previous, changed=False)
    with vs.deploy_lock(repo):
        known = [v.version for v in now.index if v.name in (*SERVING_MODELS, vs.CANARY)]
        version = vs.next_version(repo, SERVING_MODELS, known)
        say(
            f"[deploy] {label_text(wanted)} onto {control.url}: chat version {now.version} "
            f"({label_text(now.release)}) -> version {version}; engine unchanged"
        )
        rollout = Rollout(release, control, repo, now, version, options, say)
        return rollout.run(wanted, previous)


class RolloutFailed(Exception):
    """A step failed; the message is the cause the rollback names."""


def cause_of(exc: BaseException) -> str:
    """How a rollback names what made it.

    >>> cause_of(RolloutFailed("chat version 3 failed to load")), cause_of(KeyboardInterrupt())
    ('chat version 3 failed to load', 'interrupted')
    """
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, (RolloutFailed, K2Error)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Rollout:
    """One rollout of version `version` (see the module docstring for the order)."""

    def __init__(
        self,
        release: ReleaseFiles,
        control: TritonControl,
        repo: Path,
        now: Served,
        version: int,
        options: DeployOptions,
        say: Say,
    ) -> None:
        self.release, self.control, self.repo, self.now = release, control, repo, now
        self.old, self.new, self.opts, self.say = now.version, version, options, say
        self.originals = {m: vs.read_config(repo / m / vs.CONFIG) for m in SERVING_MODELS}
        self.touched: list[str] = []  # models whose config this rollout rewrote
        self.seconds: dict[str, float] = {}

    def run(self, wanted: dict[str, str], previous: dict[str, Any]) -> DeployResult:
        start = time.monotonic()
        try:
            self._timed("write", self._write)
            for name in (spec.PRE_MODEL, spec.POST_MODEL):
                self._timed(name, partial(self._beside, name))
            self._timed("canary", self._canary)
            self._timed("switch", self._switch)
        except (Exception, KeyboardInterrupt) as exc:  # any failure, Ctrl-C too: roll back
            self._rollback(cause_of(exc))
        try:
            notes = self._settle()
        except ControlError as exc:  # the new version serves; only the clean-up is left
            notes = [f"retiring version {self.old} failed: {exc}"]
        self.seconds["total"] = round(time.monotonic() - start, 3)
        return DeployResult(wanted, self.new, previous, True, self.seconds, notes)

    def _timed(self, step: str, fn: Callable[[], None]) -> None:
        began = time.monotonic()
        fn()
        self.seconds[step] = round(time.monotonic() - began, 3)

    def _write(self) -> None:
        for name in SERVING_MODELS:
            model_py, files = self.release.sources(name)
            vs.write_version(self.repo / name, self.new, model_py, self.release.record(), files)
            if vs.bytecode_cache_written(self.repo / name / str(self.old)):
                self.say(
                    f"[deploy] note: {name}/{self.old} holds a __pycache__ directory (packaged "
                    f"before k2trt blocked it): Triton reloads that version once, and requests "
                    f"in flight on it may fail"
                )

    def _load(self, name: str, what: str) -> None:
        try:
            self.control.load(name, timeout=self.opts.timeout_s)
        except ControlError as exc:
            raise RolloutFailed(f"{what} failed to load: {exc}") from exc
        if not self.control.model_ready(name, self.new):
            raise RolloutFailed(f"{what} is not ready after its load")

    def _beside(self, name: str) -> None:
        self.touched.append(name)
        vs.write_config(self.repo / name, vs.pinned(self.originals[name], [self.old, self.new]))
        self._load(name, f"{name} version {self.new}")
        if not self.control.model_ready(name, self.old):  # chat's requests still need it
            raise RolloutFailed(f"{name} version {self.old} stopped serving when {self.new} loaded")
        self.say(f"[deploy] {name}: version {self.new} loaded beside {self.old}")

    def _canary(self) -> None:
        """Chat version N under another name, and the smoke gate through it."""
        canary = self.repo / vs.CANARY
        self._drop_canary()
        chat = vs.read_config(self.release.model(CHAT_MODEL) / vs.CONFIG)
        model_py, _ = self.release.sources(CHAT_MODEL)
        vs.write_version(canary, self.new, model_py, self.release.record())
        vs.write_config(canary, vs.renamed(vs.with_parameters(chat, {}, spec.P_RELEASE), vs.CANARY))
        try:
            self._load(vs.CANARY, f"chat version {self.new} (as {vs.CANARY})")
            began = time.monotonic()
            report = smoke(self._grpc_url(), vs.CANARY, self.opts.timeout_s)
            self.seconds["smoke"] = round(time.monotonic() - began, 3)
        finally:
            self._drop_canary()
        if report["status"] != "pass":
            raise RolloutFailed(
                f"smoke gate failed through chat version {self.new} (as {vs.CANARY}): "
                f"{report['failures'][0]}"
            )
        self.say(f"[deploy] smoke gate through chat version {self.new} ({vs.CANARY}): pass")

    def _drop_canary(self) -> None:
        canary = self.repo / vs.CANARY
        if canary.exists():
            with contextlib.suppress(ControlError):  # not loaded: nothing to unload
                self.control.unload(vs.CANARY)
            for version in vs.versions_on_disk(canary):
                vs.remove_version(canary, version)
            (canary / vs.CONFIG).unlink(missing_ok=True)
            canary.rmdir()

    def _switch(self) -> None:
        chat = vs.read_config(self.release.model(CHAT_MODEL) / vs.CONFIG)
        kept = self.now.chat_params.get(f"{spec.P_RELEASE}{self.old}", "")
        records = {f"{spec.P_RELEASE}{self.new}": self.release.label()}
        if kept:
            records[f"{spec.P_RELEASE}{self.old}"] = kept
        self.touched.append(CHAT_MODEL)
        config = vs.pinned(vs.with_parameters(chat, records, spec.P_RELEASE), [self.new])
        vs.write_config(self.repo / CHAT_MODEL, config)
        self._load(CHAT_MODEL, f"chat version {self.new}")
        self.say(f"[deploy] chat: version {self.new} takes new requests")

    def _rollback(self, cause: str) -> None:
        """Pin every touched model back to the old version, reload, remove N; CheckFailed."""
        self.say(f"[deploy] failed: {cause}; rolling back to version {self.old}")
        problems: list[str] = []
        if CHAT_MODEL in self.touched:
            self._restore(CHAT_MODEL, problems)
            self._wait_drained(CHAT_MODEL, self.new)  # chat N's requests still use pre/post N
        for name in (spec.POST_MODEL, spec.PRE_MODEL):
            if name in self.touched:
                self._restore(name, problems)
        for name in SERVING_MODELS:
            vs.remove_version(self.repo / name, self.new)
        message = f"rolled back to version {self.old} ({label_text(self.now.release)}): {cause}"
        if problems:
            message += "; the rollback itself failed: " + "; ".join(problems)
        raise CheckFailed(message)

    def _restore(self, name: str, problems: list[str]) -> None:
        vs.write_config(self.repo / name, vs.pinned(self.originals[name], [self.old]))
        try:
            self.control.load(name, timeout=self.opts.timeout_s)
        except ControlError as exc:
            problems.append(f"{name}: {exc}")

    def _settle(self) -> list[str]:
        """After the switch: pre/post drop the old version once chat's has drained; versions
        older than the previous one are removed."""
        began = time.monotonic()
        if not self._wait_drained(CHAT_MODEL, self.old):
            return [
                f"chat version {self.old} still had requests in flight after "
                f"{self.opts.timeout_s:g} s: preprocessing and postprocessing keep serving "
                f"versions {self.old} and {self.new} until the next rollout"
            ]
        self.seconds["drain"] = round(time.monotonic() - began, 3)
        notes = []
        for name in (spec.PRE_MODEL, spec.POST_MODEL):
            vs.write_config(self.repo / name, vs.pinned(self.originals[name], [self.new]))
            try:
                self.control.load(name, timeout=self.opts.timeout_s)
            except ControlError as exc:
                notes.append(f"{name}: unloading version {self.old} failed: {exc}")
        for name in SERVING_MODELS:
            for version in vs.versions_on_disk(self.repo / name):
                if version < self.old:
                    vs.remove_version(self.repo / name, version)
        self.say(f"[deploy] chat version {self.old} drained; pre/post serve {self.new} only")
        return notes

    def _wait_drained(self, name: str, version: int) -> bool:
        """True once `name` `version` is unloaded (its requests in flight finished)."""
        deadline = time.monotonic() + self.opts.timeout_s
        while time.monotonic() < deadline:
            states = [
                v.state for v in self.control.index() if (v.name, v.version) == (name, version)
            ]
            if not states or all(s == "UNAVAILABLE" for s in states):
                return True
            time.sleep(POLL_S)
        return False

    def _grpc_url(self) -> str:
        if self.opts.grpc_url:
            return self.opts.grpc_url
        host = self.control.url.removeprefix("http://").rsplit(":", 1)[0]
        return f"{host}:{GRPC_PORT}"
