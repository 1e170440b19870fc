"""The four models of the repository: names, inputs/outputs and configs, as data.

    chat (BLS, decoupled) -> preprocessing, then tensorrt_llm (decoupled), streamed
    postprocessing: the same detokenize + parse step as a model of its own (chat does it
    in-process; see serving/chat.py)

`chat` has exactly the inputs and outputs of `k2trt.runtime.wire`. `tensorrt_llm` takes
token ids (what `chat` sends) or text (what Triton's OpenAI frontend sends), and streams
deltas either way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from k2trt.runtime.wire import CHAT_INPUTS, CHAT_MODEL, CHAT_OUTPUTS, WireField
from k2trt.triton_repo.pbtxt import InstanceGroup, ModelConfig, Tensor

LLM_MODEL = "tensorrt_llm"
PRE_MODEL = "preprocessing"
POST_MODEL = "postprocessing"
MODELS = (CHAT_MODEL, PRE_MODEL, LLM_MODEL, POST_MODEL)
# Tokenizer, template, generation_config.json and config.json, in each model that reads them
# (a directory at the repository's top would be taken for a model and fail the load; one
# inside a model directory is ignored by Triton as "not a version").
MODEL_FILES_DIR = "k2trt-model-files"
MODEL_FILES = (
    "tiktoken.model",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "config.json",
)
VERSION = "1"
# An empty file where Python would put a version directory's bytecode cache: the Python
# backend imports model.py, and a __pycache__/ written there at the first load makes Triton
# take the version for modified, so the next load of the model (even one that changes only
# its version_policy) reloads it in a new process; postprocessing would lose the states of
# the requests in flight. Python skips the cache quietly when it cannot write it.
BYTECODE_BLOCKER = "__pycache__"
RELEASE_RECORD = "k2trt-release.json"  # in a version directory: the release it holds

# config.pbtxt `parameters` read by the serving models (k2trt.triton_repo.serving).
P_ROLE = "k2trt_model"  # which serving class runs (serving.roles.ROLES): one of MODELS
P_MODEL_FILES = "model_files"  # relative to the model's directory
P_MODEL_ID = "model_id"  # the served model's name (in messages such as context overflows)
P_ENGINE = "engine"  # tensorrt_llm: "tensorrt_llm" (model.yaml) or "reference" (CPU stand-in)
P_CHECKPOINT = "reference_checkpoint"  # the stand-in's checkpoint
P_TOOL_GRAMMAR = "tool_grammar"  # preprocessing: off | auto | strict (default auto)
P_STATE_TTL = "state_ttl_seconds"  # postprocessing: idle request states expire after this
P_PRE, P_LLM, P_POST = "preprocessing_model", "llm_model", "postprocessing_model"
# The engine part of the release a repository was packaged from, in every model (a release
# rolls onto a running Triton in place only when it is equal), and which release each `chat`
# version serves: key P_RELEASE + version number, value "NAME VERSION [ID]".
P_ENGINE_ID = "k2trt_engine_id"
P_ENGINE_WEIGHTS = "k2trt_engine_weights"
P_ENGINE_OPTIONS = "k2trt_engine_options"
P_RELEASE = "k2trt_release."
ENGINE_TRTLLM = "tensorrt_llm"
ENGINE_REFERENCE = "reference"
STATE_TTL_S = 600

# tensorrt_llm has a batch dimension of 1 (max_batch_size 1): Triton's OpenAI frontend sends
# every input with a leading batch dimension ([[prompt]]), which a max_batch_size 0 model
# rejects. It is not the engine's batch: in-flight batching happens inside TensorRT-LLM
# across concurrent streaming requests (the LLM API option max_batch_size).
LLM_MAX_BATCH_SIZE = 1

LLM_INPUTS: tuple[Tensor, ...] = (
    Tensor("input_ids", "TYPE_INT32", (-1,), optional=True),  # prompt ids (chat sends these)
    Tensor("text_input", "TYPE_STRING", (1,), optional=True),  # or a prompt as text
    Tensor("max_tokens", "TYPE_INT32", (1,), optional=True),
    Tensor("temperature", "TYPE_FP32", (1,), optional=True),
    Tensor("top_p", "TYPE_FP32", (1,), optional=True),
    Tensor("seed", "TYPE_UINT64", (1,), optional=True),
    Tensor("stop_token_ids", "TYPE_INT32", (-1,), optional=True),  # added to the model's
    Tensor("streaming", "TYPE_BOOL", (1,), optional=True),  # upstream LLM-API model's name
    Tensor("request_key", "TYPE_STRING", (1,), optional=True),  # names a generation ...
    Tensor("cancel", "TYPE_BOOL", (1,), optional=True),  # ... that a cancel=true request stops
    # What Triton's OpenAI frontend sends to a Python-backend model: read in
    # triton-inference-server/server python/openai/openai_frontend/engine/utils/triton.py,
    # _create_trtllm_generate_request (commit e1db8a603d86, 2026-08): text_input, stream,
    # max_tokens (INT32), stop_words, top_p/temperature/frequency_penalty/presence_penalty
    # (FP32), seed (UINT64), the echo input it finds by name (exclude_input_in_output),
    # guided_decoding_guide_type/guide for tool_choice "required" or named, and always
    # return_num_input_tokens / return_num_output_tokens (BOOL). It reads text_output (one
    # string per response, taken as a delta) and sums num_output_tokens over a stream.
    Tensor("stream", "TYPE_BOOL", (1,), optional=True),
    Tensor("stop_words", "TYPE_STRING", (-1,), optional=True),
    Tensor("frequency_penalty", "TYPE_FP32", (1,), optional=True),
    Tensor("presence_penalty", "TYPE_FP32", (1,), optional=True),
    Tensor("exclude_input_in_output", "TYPE_BOOL", (1,), optional=True),
    Tensor("guided_decoding_guide_type", "TYPE_STRING", (1,), optional=True),
    Tensor("guided_decoding_guide", "TYPE_STRING", (1,), optional=True),
    Tensor("return_num_input_tokens", "TYPE_BOOL", (1,), optional=True),
    Tensor("return_num_output_tokens", "TYPE_BOOL", (1,), optional=True),
)
LLM_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("output_ids", "TYPE_INT32", (-1,)),  # the ids new in this response
    Tensor("text_output", "TYPE_STRING", (1,)),  # their text (text_input requests only)
    Tensor("finish_reason", "TYPE_STRING", (1,)),  # "" until the last: stop|length|cancelled
    Tensor("num_input_tokens", "TYPE_INT32", (1,)),
    Tensor("num_output_tokens", "TYPE_INT32", (1,)),  # in this response (the frontend sums)
)

PRE_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("input_ids", "TYPE_INT32", (-1,)),
    Tensor("max_tokens", "TYPE_INT32", (1,)),
    Tensor("temperature", "TYPE_FP32", (1,)),
    Tensor("top_p", "TYPE_FP32", (1,)),
    Tensor("seed", "TYPE_UINT64", (-1,)),  # zero or one value
    Tensor("stop_token_ids", "TYPE_INT32", (-1,)),
    Tensor("stop_words", "TYPE_STRING", (-1,)),  # the request's stop strings
    Tensor("prompt_tokens", "TYPE_INT32", (1,)),
    Tensor("request", "TYPE_STRING", (1,)),  # what postprocessing needs, as JSON
    Tensor("guide", "TYPE_STRING", (-1,)),  # zero or one tool-call structural tag (JSON)
)

POST_INPUTS: tuple[Tensor, ...] = (
    Tensor("request_key", "TYPE_STRING", (1,)),
    Tensor("request", "TYPE_STRING", (1,), optional=True),  # first call of a request only
    Tensor("prompt_tokens", "TYPE_INT32", (1,), optional=True),  # first call only
    Tensor("output_ids", "TYPE_INT32", (-1,), optional=True),
    Tensor("finish_reason", "TYPE_STRING", (1,), optional=True),  # the engine's, last call
    Tensor("final", "TYPE_BOOL", (1,), optional=True),  # last call: finish, drop the state
)
# One value per chunk (a call may produce none, one or several chunks).
POST_OUTPUTS: tuple[Tensor, ...] = (
    *(Tensor(f.name, f.triton_type, (-1,)) for f in CHAT_OUTPUTS),
    Tensor("done", "TYPE_BOOL", (1,)),  # a stop id or stop string ended the turn
)


@dataclass(frozen=True)
class ReleaseTag:
    """The release a repository is packaged from, as its configs record it.

    >>> tag = ReleaseTag("kimi-k2", "1.0.0", "e1", "w1", "o1")
    >>> tag.label(), sorted(tag.engine_params())[0]
    ('kimi-k2 1.0.0', 'k2trt_engine_id')
    """

    name: str
    version: str
    engine_id: str
    weights_sha256: str
    options_sha256: str

    def label(self) -> str:
        return f"{self.name} {self.version}"

    def engine_params(self) -> dict[str, str]:
        return {
            P_ENGINE_ID: self.engine_id,
            P_ENGINE_WEIGHTS: self.weights_sha256,
            P_ENGINE_OPTIONS: self.options_sha256,
        }


def _wire(fields: tuple[WireField, ...], inputs: bool) -> tuple[Tensor, ...]:
    return tuple(
        Tensor(f.name, f.triton_type, (1,), optional=inputs and f.optional) for f in fields
    )


def chat_config() -> ModelConfig:
    """The entry point: a decoupled BLS model with the wire format's inputs and outputs."""
    return ModelConfig(
        name=CHAT_MODEL,
        max_batch_size=0,
        decoupled=True,
        inputs=_wire(CHAT_INPUTS, inputs=True),
        outputs=_wire(CHAT_OUTPUTS, inputs=False),
        # One instance serves any number of requests: each runs in its own thread.
        instance_group=(InstanceGroup("KIND_CPU", 1),),
        parameters={P_ROLE: CHAT_MODEL, P_PRE: PRE_MODEL, P_LLM: LLM_MODEL, P_POST: POST_MODEL},
    )


def _files_params(role: str, model_id: str) -> dict[str, str]:
    """The parameters of a model that reads k2trt-model-files: its role, where they are."""
    params = {P_ROLE: role, P_MODEL_FILES: MODEL_FILES_DIR}
    if model_id:
        params[P_MODEL_ID] = model_id
    return params


def preprocessing_config(model_id: str = "", tool_grammar: str = "auto") -> ModelConfig:
    """Chat inputs -> prompt ids and sampling tensors (stateless: two instances); its
    `tool_grammar` (off | auto | strict) is the constraint mode for declared tools."""
    return ModelConfig(
        name=PRE_MODEL,
        max_batch_size=0,
        inputs=_wire(CHAT_INPUTS, inputs=True),
        outputs=PRE_OUTPUTS,
        instance_group=(InstanceGroup("KIND_CPU", 2),),
        parameters={**_files_params(PRE_MODEL, model_id), P_TOOL_GRAMMAR: tool_grammar},
    )


def postprocessing_config(model_id: str = "", state_ttl_s: int = STATE_TTL_S) -> ModelConfig:
    """Token ids -> content / tool-call deltas, with per-request state (`chat` no longer
    calls it: it keeps its interface for other callers)."""
    return ModelConfig(
        name=POST_MODEL,
        max_batch_size=0,
        inputs=POST_INPUTS,
        outputs=POST_OUTPUTS,
        # Exactly one instance: each instance is its own process, and a request's
        # detokenizer and tool-call parser state lives in the process that saw its first
        # call. A second instance would get some of a request's calls without that state.
        instance_group=(InstanceGroup("KIND_CPU", 1),),
        parameters={**_files_params(POST_MODEL, model_id), P_STATE_TTL: str(state_ttl_s)},
    )


def llm_config(
    model_id: str = "", engine: str = ENGINE_TRTLLM, checkpoint: str = ""
) -> ModelConfig:
    """The LLM: TensorRT-LLM's LLM API from model.yaml, or the CPU reference stand-in."""
    params = {**_files_params(LLM_MODEL, model_id), P_ENGINE: engine}
    if checkpoint:
        params[P_CHECKPOINT] = checkpoint
    return ModelConfig(
        name=LLM_MODEL,
        max_batch_size=LLM_MAX_BATCH_SIZE,
        decoupled=True,
        inputs=LLM_INPUTS,
        outputs=LLM_OUTPUTS,
        # KIND_CPU as upstream's LLM-API model: TensorRT-LLM places itself on the GPUs of
        # its MPI ranks; Triton must not pin the instance to one device.
        instance_group=(InstanceGroup("KIND_CPU", 1),),
        parameters=params,
    )


def tagged(config: ModelConfig, release: ReleaseTag | None) -> ModelConfig:
    """`config` with the release's engine parameters (and, for chat, its version-1 label)."""
    if release is None:
        return config
    extra = release.engine_params()
    if config.name == CHAT_MODEL:
        extra[P_RELEASE + VERSION] = release.label()
    return replace(config, parameters={**config.parameters, **extra})


def all_configs(
    model_id: str = "", release: ReleaseTag | None = None, tool_grammar: str = "auto"
) -> dict[str, ModelConfig]:
    """Every model's config, by model name (tagged with `release` when packaged from one)."""
    configs = {
        CHAT_MODEL: chat_config(),
        PRE_MODEL: preprocessing_config(model_id, tool_grammar),
        LLM_MODEL: llm_config(model_id),
        POST_MODEL: postprocessing_config(model_id),
    }
    return {name: tagged(config, release) for name, config in configs.items()}
