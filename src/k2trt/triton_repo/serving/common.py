"""What the serving models share: the base class (config, parameters, tensors in and out;
text and scalar tensors convert with `k2trt.runtime.wire`'s `strings` and `scalar`).

The one `model.py` that `k2trt package` installs in every model makes k2trt importable, then
runs the serving class its config.pbtxt names (`serving.roles`), with `pb` set to
`triton_python_backend_utils` (tests set a fake).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from k2trt.runtime.chat import ModelFiles
from k2trt.triton_repo.spec import P_MODEL_FILES, P_MODEL_ID, RELEASE_RECORD


def parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """config.pbtxt's `parameters`, from the model config JSON Triton hands over.

    >>> parameters({"parameters": {"k2trt_model": {"string_value": "chat"}}})
    {'k2trt_model': 'chat'}
    """
    return {
        key: str(value.get("string_value", ""))
        for key, value in config.get("parameters", {}).items()
    }


class TritonModel:
    """Base of the adapters: config, parameters and directories from Triton's `args`."""

    pb: Any = None  # triton_python_backend_utils, set by serving.roles.load

    def initialize(self, args: Mapping[str, str]) -> None:
        """Triton calls this once per instance; subclasses do their work in `setup`."""
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.params = parameters(self.config)
        self.model_dir = Path(args["model_repository"])  # the model's directory
        self.version = int(args.get("model_version", "1"))
        self.version_dir = self.model_dir / str(self.version)
        check_release_record(self.version_dir)
        self.setup()

    def setup(self) -> None:
        """Load what the model needs (subclasses)."""

    def execute(self, requests: list[Any]) -> Any:
        """Triton's entry point: responses (or None when the model is decoupled)."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Triton unloads the model: release what `setup` holds (subclasses)."""

    def param(self, key: str, default: str | None = None) -> str:
        """A config.pbtxt parameter; missing without a default is an error naming it."""
        if key in self.params:
            return self.params[key]
        if default is None:
            raise ValueError(f"{self.config.get('name')}: config.pbtxt lacks parameter {key!r}")
        return default

    def model_files(self) -> ModelFiles:
        """Tokenizer, template and stop ids from this version's k2trt-model-files directory,
        else the model's (one set for every version, as `k2trt package` writes it)."""
        name = self.param(P_MODEL_FILES)
        path = self.version_dir / name
        if not path.is_dir():
            path = self.model_dir / name
        return ModelFiles.load(path, self.params.get(P_MODEL_ID) or None)

    def log(self, message: str) -> None:
        """A line in the server log."""
        logger = getattr(self.pb, "Logger", None)
        if logger is not None:
            logger.log_info(message)

    # ---- tensors ----

    def inputs(self, request: Any, names: Iterable[str]) -> dict[str, NDArray[Any]]:
        """The named inputs the request carries, as numpy arrays (absent ones left out)."""
        return _arrays(self.pb.get_input_tensor_by_name, request, names)

    def outputs(self, response: Any, names: Iterable[str]) -> dict[str, NDArray[Any]]:
        """The named outputs a BLS response carries (absent ones left out)."""
        return _arrays(self.pb.get_output_tensor_by_name, response, names)

    def response(self, arrays: Mapping[str, NDArray[Any]]) -> Any:
        """An InferenceResponse holding these output tensors."""
        return self.pb.InferenceResponse(
            output_tensors=[self.pb.Tensor(name, value) for name, value in arrays.items()]
        )

    def error(self, message: str) -> Any:
        """An InferenceResponse carrying an error."""
        return self.pb.InferenceResponse(output_tensors=[], error=self.pb.TritonError(message))

    @property
    def final(self) -> int:
        """The flag that ends a decoupled request's responses."""
        return int(self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def check_release_record(version_dir: Path) -> None:
    """Refuse to load a version whose release needs another tool-call parser than this
    k2trt's: the serving code is the installed k2trt, not the release's.

    A version directory written by `k2trt release deploy` holds the release's record
    (spec.RELEASE_RECORD); one without it (as `k2trt package` writes) is not checked."""
    from k2trt.chat.toolcalls import PARSER_VERSION

    path = version_dir / RELEASE_RECORD
    if not path.is_file():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    wanted = record.get("serving", {}).get("parser")
    if wanted != PARSER_VERSION:
        raise ValueError(
            f"{path}: release {record.get('name')} {record.get('version')} needs tool-call "
            f"parser {wanted}, and this server's k2trt has {PARSER_VERSION} (serve it from an "
            f"image with that k2trt: blue/green)"
        )


def _arrays(
    get: Callable[[Any, str], Any], holder: Any, names: Iterable[str]
) -> dict[str, NDArray[Any]]:
    """The named tensors `get` finds on a request or response, as numpy arrays."""
    out = {}
    for name in names:
        tensor = get(holder, name)
        if tensor is not None:
            out[name] = tensor.as_numpy()
    return out
