"""The tool grammar on the TensorRT-LLM path: our logits processor (checked on CPU tensors
here), the refused `guided_decoding_backend` option, and on a GPU a real constrained call."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch

from k2trt.build.options import validate_options
from k2trt.chat.grammar_engine import ToolGrammar
from k2trt.runtime import trtllm
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.constrain import constrain, grammar_for
from k2trt.runtime.trtllm import GrammarLogitsProcessor
from k2trt.runtime.types import ChatRequest

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
NAMED = {"type": "function", "function": {"name": "f"}}


@pytest.fixture(scope="module")
def files(tiny_ckpt: Path) -> ModelFiles:
    return ModelFiles.load(tiny_ckpt)


def test_processor_masks_and_follows_generated_ids(files: ModelFiles) -> None:
    grammar = ToolGrammar(files.tokenizer, files.stop_token_ids)
    factory = grammar.factory(TOOLS, NAMED)
    assert factory is not None
    processor = GrammarLogitsProcessor(factory.start())
    prompt = [1, 2, 3]
    brace = files.tokenizer.encode("{")[0]
    logits = torch.zeros(1, 1, files.tokenizer.vocab_size)
    processor(7, logits, [prompt], None, None)  # first call: the prompt only
    allowed = (logits[0, 0] == 0).nonzero().flatten().tolist()
    assert brace in allowed and files.tokenizer.encode("x")[0] not in allowed
    logits = torch.zeros(1, 1, files.tokenizer.vocab_size)
    processor(7, logits, [[*prompt, brace]], None, None)  # '{' was sampled: keys come next
    assert logits[0, 0, brace] == float("-inf") and processor.failed is None


def test_processor_keeps_a_failure_instead_of_raising(files: ModelFiles) -> None:
    grammar = ToolGrammar(files.tokenizer, files.stop_token_ids)
    factory = grammar.factory(TOOLS, NAMED)
    assert factory is not None
    processor = GrammarLogitsProcessor(factory.start())
    logits = torch.zeros(1, files.tokenizer.vocab_size)
    processor(0, logits, [[1]], None, None)
    processor(0, logits, [[1, files.tokenizer.encode("x")[0]]], None, None)  # refused id
    assert processor.failed is not None and "is not allowed here" in str(processor.failed)
    before = logits.clone()
    processor(0, logits, [[1, 5, 6]], None, None)  # after a failure: nothing, no raise
    assert torch.equal(before, logits)


def test_guided_decoding_backend_is_refused() -> None:
    (problem,) = validate_options({"guided_decoding_backend": "xgrammar"})
    assert problem.startswith("option 'guided_decoding_backend': needs TensorRT-LLM's tokenizer")


@pytest.mark.gpu
def test_trtllm_constrained_call(tiny_ckpt: Path, files: ModelFiles) -> None:
    reason = trtllm.unavailable()
    if reason:
        pytest.skip(reason)
    engine = trtllm.TrtllmEngine.from_options(tiny_ckpt, {"backend": "pytorch"})
    try:
        request = ChatRequest(
            [{"role": "user", "content": "go"}], TOOLS, NAMED, max_tokens=200, temperature=1.0
        )
        prepared = constrain(prepare(files, request), request, grammar_for(files, "auto"))
        ids = list(engine.generate(prepared.prompt_ids, prepared.sampling))
        text = files.tokenizer.decode(ids, skip_special_tokens=True)
        arguments = text.split("<|tool_call_end|>")[0]
        jsonschema.validate(json.loads(arguments), SCHEMA)
    finally:
        engine.shutdown()
