"""Which serving class a packaged model runs: config.pbtxt's `k2trt_model` parameter names it.

Every model directory gets the same `model.py` (`k2trt/triton_repo/model.py`); its
`TritonPythonModel` asks `load` for the serving model of its role and hands every call on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from k2trt.runtime.wire import CHAT_MODEL
from k2trt.triton_repo.serving.chat import ChatModel
from k2trt.triton_repo.serving.common import TritonModel, parameters
from k2trt.triton_repo.serving.llm import LlmModel
from k2trt.triton_repo.serving.post import PostprocessingModel
from k2trt.triton_repo.serving.pre import PreprocessingModel
from k2trt.triton_repo.spec import LLM_MODEL, P_ROLE, POST_MODEL, PRE_MODEL

ROLES: dict[str, type[TritonModel]] = {
    CHAT_MODEL: ChatModel,
    PRE_MODEL: PreprocessingModel,
    LLM_MODEL: LlmModel,
    POST_MODEL: PostprocessingModel,
}


def role_of(config: Mapping[str, Any]) -> type[TritonModel]:
    """The serving class a model config names; ValueError naming the model otherwise.

    >>> role_of({"parameters": {"k2trt_model": {"string_value": "chat"}}}).__name__
    'ChatModel'
    """
    role = parameters(config).get(P_ROLE)
    cls = ROLES.get(role or "")
    if cls is None:
        raise ValueError(
            f"{config.get('name', '?')}: config.pbtxt parameter {P_ROLE!r} must be one of "
            f"{', '.join(ROLES)}, got {role!r}"
        )
    return cls


def load(args: Mapping[str, str], pb: Any) -> TritonModel:
    """The serving model for Triton's `initialize(args)`, bound to `pb` (the module
    triton_python_backend_utils, or a test's fake) and initialized."""
    model = role_of(json.loads(args["model_config"]))()
    model.pb = pb
    model.initialize(args)
    return model
