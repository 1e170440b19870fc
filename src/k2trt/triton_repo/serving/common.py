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
from k2trt.triton_repo.spec import P_MODEL_FILES, P_MODEL_ID


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
        self.version_dir = self.model_dir / str(args.get("model_version", "1"))
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
        """Tokenizer, template and stop ids from this model's k2trt-model-files directory."""
        path = self.model_dir / self.param(P_MODEL_FILES)
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
