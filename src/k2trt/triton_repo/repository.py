"""`k2trt package`: a bundle -> a Triton model repository and its launch artifacts.

    OUT/
      model_repository/            tritonserver --model-repository=OUT/model_repository
        chat/                      config.pbtxt, 1/model.py (the same file in every model),
                                   1/__pycache__ (an empty file: spec.BYTECODE_BLOCKER)
        preprocessing/             config.pbtxt, 1/model.py, k2trt-model-files/
        tensorrt_llm/              config.pbtxt, 1/model.py, 1/model.yaml, k2trt-model-files/
        postprocessing/            config.pbtxt, 1/model.py, k2trt-model-files/
      launch/                      serve-docker.sh, serve-mpirun.sh, serve.sbatch, lws.yaml,
                                   Dockerfile
      k2trt-package.json           what was packaged from what

The repository is a directory of its own because Triton takes every directory at the top of a
repository for a model (launch/ there fails the server's start). Written to a temp directory
and renamed into place; an existing OUT is refused without `force`.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from k2trt import __version__
from k2trt.build.bundle import Bundle
from k2trt.chat.grammar import check_mode
from k2trt.errors import K2Error
from k2trt.fsutil import atomic_dir, dump_json, link_or_copy, read_json, write_text_atomic
from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.wire import CHAT_MODEL
from k2trt.triton_repo import launch, spec
from k2trt.triton_repo.versions import write_model_py

REPOSITORY_DIR = "model_repository"
LAUNCH_DIR = "launch"
RECORD_NAME = "k2trt-package.json"
RECORD_FORMAT = "k2trt.package/1"
MODEL_PY = ("k2trt.triton_repo", "model.py")  # package and file of the one model.py source
# models that read them (chat: its own detokenizer and tool-call parser per request)
FILES_MODELS = (CHAT_MODEL, spec.PRE_MODEL, spec.LLM_MODEL, spec.POST_MODEL)
REQUIRED_FILES = ("tiktoken.model", "tokenizer_config.json", "config.json")
TOKENIZER_SUBDIR = "tokenizer"
EXECUTABLE = ("serve-docker.sh", "serve-mpirun.sh", "serve.sbatch")


@dataclass(frozen=True)
class Package:
    """What `package` wrote."""

    path: Path
    record: dict[str, Any]

    @property
    def repository(self) -> Path:
        return self.path / REPOSITORY_DIR


@dataclass(frozen=True)
class Placement:
    """Where the serving nodes find things; model.yaml and the launch files point there.

    By default where they are on this machine (the bundle's checkpoint, OUT's repository); a
    release places them where its deployment puts them."""

    checkpoint: str
    repository: str
    bundle: str
    image: str = launch.IMAGE


def placement_for(bundle: Bundle, out: Path) -> Placement:
    """The default placement: paths on this machine."""
    return Placement(
        checkpoint=bundle.serve_path,
        repository=str((out / REPOSITORY_DIR).resolve()),
        bundle=str(bundle.path.resolve()),
    )


def model_yaml(bundle: Bundle, checkpoint: str | None = None) -> dict[str, Any]:
    """tensorrt_llm/1/model.yaml: the checkpoint, the PyTorch backend, the bundle's LLM API
    options, and `triton_config` saying what config.pbtxt says. `checkpoint` moves the
    checkpoint (and the tokenizer inside it) from where the bundle's options put it."""
    data: dict[str, Any] = dict(bundle.options)
    served = checkpoint or bundle.serve_path
    if data.get("tokenizer") == str(Path(bundle.serve_path) / TOKENIZER_SUBDIR):
        data["tokenizer"] = str(Path(served) / TOKENIZER_SUBDIR)
    data["model"] = served
    data["backend"] = "pytorch"
    data["triton_config"] = {"max_batch_size": spec.LLM_MAX_BATCH_SIZE, "decoupled": True}
    return data


def model_source() -> str:
    """The model.py text `package` installs in every model (config.pbtxt picks the class)."""
    package, name = MODEL_PY
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def _model_file_sources(ckpt: Path) -> dict[str, Path]:
    """name -> path for the files the models read, from the checkpoint (top, then tokenizer/)."""
    found = {}
    for name in spec.MODEL_FILES:
        for where in (ckpt, ckpt / TOKENIZER_SUBDIR):
            if (where / name).is_file():
                found[name] = where / name
                break
    missing = [n for n in REQUIRED_FILES if n not in found]
    if missing:
        raise K2Error(
            f"the checkpoint lacks {', '.join(missing)} (needed by the Triton models)", path=ckpt
        )
    return found


def write_model_files(ckpt: Path, repo: Path) -> dict[str, str]:
    """Copy the tokenizer/template/config files into each model that reads them (hard links
    after the first copy); checks they load. Returns name -> sha256."""
    sources = _model_file_sources(ckpt)
    first: Path | None = None
    for model in FILES_MODELS:
        dest = repo / model / spec.MODEL_FILES_DIR
        dest.mkdir(parents=True)
        for name, src in sources.items():
            if first is None:
                shutil.copy2(src, dest / name)
            else:
                link_or_copy(first / name, dest / name)
        first = first or dest
    assert first is not None
    ModelFiles.load(first)  # a file that does not load fails here, not in the server
    return {n: hashlib.sha256((first / n).read_bytes()).hexdigest() for n in sorted(sources)}


def write_models(
    repo: Path, model_id: str, release: spec.ReleaseTag | None = None, tool_grammar: str = "auto"
) -> None:
    """config.pbtxt and 1/model.py for every model."""
    source = model_source().encode("utf-8")
    for name, config in spec.all_configs(model_id, release, tool_grammar).items():
        write_model_py(repo / name / spec.VERSION, source)
        (repo / name / "config.pbtxt").write_text(config.text() + "\n", encoding="utf-8")


def write_launch(dest: Path, deployment: launch.Deployment) -> None:
    """launch/: scripts (executable), manifest, Dockerfile."""
    dest.mkdir()
    for name, text in launch.artifacts(deployment).items():
        (dest / name).write_text(text, encoding="utf-8")
        if name in EXECUTABLE:
            (dest / name).chmod(0o755)


def deployment_for(
    bundle: Bundle, placement: Placement, container: str = launch.CONTAINER
) -> launch.Deployment:
    """The launch facts of a bundle packaged for `placement`."""
    return launch.Deployment(
        repo=placement.repository,
        checkpoint=placement.checkpoint,
        world_size=bundle.world_size,
        gpus_per_node=bundle.gpus_per_node,
        model_id=bundle.model_id,
        llm_model=spec.LLM_MODEL,
        container=container,
        image=placement.image,
    )


def package(
    bundle: Bundle,
    out: Path,
    force: bool = False,
    container: str = launch.CONTAINER,
    placement: Placement | None = None,
    release: spec.ReleaseTag | None = None,
    tool_grammar: str = "auto",
) -> Package:
    """Write the repository for `bundle` at `out` (see the module docstring); `release`
    (when a release is being built) tags every config with its engine part and `chat`'s
    version 1 with its name and version; `tool_grammar` (off | auto | strict) is the
    constraint mode for declared tools (`preprocessing`'s parameter).

    >>> package(Bundle.load(Path("bundle")), Path("triton"))  # doctest: +SKIP
    """
    out = Path(out)
    check_mode(tool_grammar)
    placement = placement or placement_for(bundle, out)
    deployment = deployment_for(bundle, placement, container)
    with atomic_dir(out, force=force) as tmp:
        repo = tmp / REPOSITORY_DIR
        write_models(repo, bundle.model_id, release, tool_grammar)
        options = yaml.safe_dump(model_yaml(bundle, placement.checkpoint), sort_keys=True)
        (repo / spec.LLM_MODEL / spec.VERSION / "model.yaml").write_text(options, encoding="utf-8")
        files = write_model_files(bundle.checkpoint, repo)
        write_launch(tmp / LAUNCH_DIR, deployment)
        record = _record(bundle, placement, deployment, files) | {"tool_grammar": tool_grammar}
        if release is not None:
            record["release"] = asdict(release)
        (tmp / RECORD_NAME).write_text(dump_json(record), encoding="utf-8")
    return Package(out, record)


def _record(
    bundle: Bundle, placement: Placement, d: launch.Deployment, files: dict[str, str]
) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "k2trt": __version__,
        "bundle": placement.bundle,
        "checkpoint": d.checkpoint,
        "model_id": d.model_id,
        "models": list(spec.MODELS),
        "model_files": files,
        "world_size": d.world_size,
        "gpus_per_node": d.gpus_per_node,
        "nodes": d.nodes,
        "container": d.container,
        "llm_engine": spec.ENGINE_TRTLLM,
    }


def load_record(out: Path) -> dict[str, Any]:
    """A packaged directory's record; K2Error when `out` is not one."""
    record = read_json(out / RECORD_NAME, "package record")
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise K2Error(
            f"not a k2trt package (expected format {RECORD_FORMAT})", path=out / RECORD_NAME
        )
    return record


def use_cpu_standin(out: Path, ckpt: Path) -> Path:
    """Swap the package's `tensorrt_llm` for the CPU reference engine on `ckpt` (same inputs
    and outputs; $K2TRT_SCRIPT in the server's environment scripts its replies). Returns the
    model repository to serve.

    >>> repo = use_cpu_standin(Path("triton"), Path("tiny"))  # doctest: +SKIP
    """
    record = load_record(out)
    config = spec.llm_config(record["model_id"], spec.ENGINE_REFERENCE, str(Path(ckpt).resolve()))
    tag = record.get("release")
    config = spec.tagged(config, spec.ReleaseTag(**tag) if isinstance(tag, dict) else None)
    repo = out / REPOSITORY_DIR
    write_text_atomic(repo / spec.LLM_MODEL / "config.pbtxt", config.text() + "\n")
    record["llm_engine"] = spec.ENGINE_REFERENCE
    write_text_atomic(out / RECORD_NAME, dump_json(record))
    return repo
