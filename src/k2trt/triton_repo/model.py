"""Triton Python model, installed by `k2trt package` as every model's 1/model.py.

The model's config.pbtxt parameter `k2trt_model` (chat, preprocessing, tensorrt_llm or
postprocessing) picks the serving class (`k2trt.triton_repo.serving.roles.ROLES`); this class
hands Triton's calls to it.

The Python backend's stub ignores PYTHONPATH, so the directories in K2TRT_PYTHONPATH
(os.pathsep-separated) are added with site.addsitedir before k2trt is imported; leave it
unset where k2trt is pip-installed (the serving container).
"""

from __future__ import annotations

import os
import site
from typing import Any

for _path in os.environ.get("K2TRT_PYTHONPATH", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)

import triton_python_backend_utils as pb_utils  # noqa: E402

from k2trt.triton_repo.serving import roles  # noqa: E402


class TritonPythonModel:
    """What Triton loads: hands each call to the serving model of this model's role."""

    def initialize(self, args: dict[str, str]) -> None:
        """Pick and set up the serving model (config.pbtxt in `args` names the role)."""
        self.model = roles.load(args, pb_utils)

    def execute(self, requests: list[Any]) -> Any:
        """Responses, or None for the decoupled models (they answer through senders)."""
        return self.model.execute(requests)

    def finalize(self) -> None:
        """The model is unloaded."""
        self.model.finalize()
