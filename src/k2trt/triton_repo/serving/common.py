"""What the serving models share: the base class, tensors in and out.

The one `model.py` that `k2trt package` installs in every model makes k2trt importable, then
runs the serving class its config.pbtxt names (`serving.roles`), with `pb` set to
`triton_python_backend_utils` (tests set a fake).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from k2trt.runtime.chat import ModelFiles
from k2trt.runtime.types import RequestRejected
from k2trt.triton_repo.spec import P_MODEL_FILES, P_MODEL_ID

# A rejected request's error text; the gateway's Triton backend parses it back (parse_rejection).
_REJECTED = re.compile(r"request rejected \((\w+)\): (.*)", re.S)


def rejection_message(exc: RequestRejected) -> str:
    """The Triton error text for a rejected request: names the field.

    >>> rejection_message(RequestRejected("max_tokens must be at least 1", "max_tokens"))
    'request rejected (max_tokens): max_tokens must be at least 1'
    """
    return f"request rejected ({exc.field}): {exc}"


def parse_rejection(text: str) -> RequestRejected | None:
    """The RequestRejected inside a Triton error text (Triton may wrap it), or None.

    >>> exc = parse_rejection("in chat: request rejected (tools): tools: expected a JSON array")
    >>> exc.field, str(exc)
    ('tools', 'tools: expected a JSON array')
    """
    match = _REJECTED.search(text)
    return None if match is None else RequestRejected(match.group(2), match.group(1))


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
        out = {}
        for name in names:
            tensor = self.pb.get_input_tensor_by_name(request, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out

    def outputs(self, response: Any, names: Iterable[str]) -> dict[str, NDArray[Any]]:
        """The named outputs a BLS response carries (absent ones left out)."""
        out = {}
        for name in names:
            tensor = self.pb.get_output_tensor_by_name(response, name)
            if tensor is not None:
                out[name] = tensor.as_numpy()
        return out

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


def strings(values: Iterable[str], shape: tuple[int, ...] | None = None) -> NDArray[Any]:
    """A BYTES tensor of UTF-8 strings (optionally reshaped)."""
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_)
    return array.reshape(shape) if shape is not None else array


def text_of(array: NDArray[Any]) -> str:
    """The one string in a BYTES tensor of any shape."""
    flat = np.asarray(array).reshape(-1)
    if flat.size != 1:
        raise ValueError(f"expected one string, got {flat.size}")
    value = flat[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def scalar(arrays: Mapping[str, NDArray[Any]], name: str) -> Any:
    """The one value of an input; RequestRejected naming it when there are more or none."""
    flat = np.asarray(arrays[name]).reshape(-1)
    if flat.size != 1:
        raise RequestRejected(f"{name}: expected one value, got {flat.size}", name)
    value = flat[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(f"{name}: not UTF-8 text", name) from None
    return value.item() if hasattr(value, "item") else value
