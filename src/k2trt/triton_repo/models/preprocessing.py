"""Triton Python model `preprocessing`, installed by `k2trt package` as preprocessing/1/model.py.

A thin adapter over k2trt.triton_repo.serving.pre.PreprocessingModel.

The Python backend's stub ignores PYTHONPATH, so the directories in K2TRT_PYTHONPATH
(os.pathsep-separated) are added with site.addsitedir before k2trt is imported; leave it
unset where k2trt is pip-installed (the serving container).
"""

from __future__ import annotations

import os
import site

for _path in os.environ.get("K2TRT_PYTHONPATH", "").split(os.pathsep):
    if _path:
        site.addsitedir(_path)

import triton_python_backend_utils as pb_utils  # noqa: E402

from k2trt.triton_repo.serving.pre import PreprocessingModel  # noqa: E402


class TritonPythonModel(PreprocessingModel):
    pb = pb_utils
