"""Engines: the scripted hook and the CPU reference engine (against transformers itself)."""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import cast

import pytest
import torch

from k2trt.chat.tokenizer import KimiTokenizer
from k2trt.errors import K2Error
from k2trt.runtime import reference
from k2trt.runtime.chat import ModelFiles, prepare
from k2trt.runtime.reference import ReferenceEngine, _sample, engine_for
from k2trt.runtime.scripted import SCRIPT_ENV, ScriptedEngine
from k2trt.runtime.types import ChatRequest, SamplingParams

STOP = (1282, 1281)
CALL = (
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}"
    "<|tool_call_end|><|tool_calls_section_end|>"
)


@pytest.fixture(scope="module")
def tok(tiny_ckpt: Path) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tiny_ckpt)


@pytest.fixture(scope="module")
def engine(tiny_ckpt: Path) -> ReferenceEngine:
    return ReferenceEngine.load(tiny_ckpt)


@pytest.fixture(scope="module")
def prompt(tiny_ckpt: Path) -> list[int]:
    files = ModelFiles.load(tiny_ckpt)
    return prepare(files, ChatRequest([{"role": "user", "content": "Hello!"}])).prompt_ids


def params(max_tokens: int = 6, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, **kw)  # type: ignore[arg-type]


# -- ScriptedEngine -----------------------------------------------------------------------------


def test_scripted_plays_replies_in_order(tok: KimiTokenizer) -> None:
    engine = ScriptedEngine(tok, ["Hi!", CALL])
    first = list(engine.generate([1], params(50, stop_token_ids=STOP)))
    assert first == [*tok.encode("Hi!"), 1282]  # the reply, then the first stop id
    second = list(engine.generate([1], params(50, stop_token_ids=STOP)))
    assert second == [*tok.encode_with_specials(CALL), 1282]
    assert tok.special_ids["<|tool_call_begin|>"] in second  # markers are special ids
    assert engine.remaining == 0
    with pytest.raises(RuntimeError, match="all 2 replies were played"):
        engine.generate([1], params())


def test_scripted_max_tokens_and_no_stop_ids(tok: KimiTokenizer) -> None:
    engine = ScriptedEngine(tok, ["Hello there", "ab"])
    assert (
        list(engine.generate([1], params(2, stop_token_ids=STOP))) == tok.encode("Hello there")[:2]
    )
    assert list(engine.generate([1], params(50))) == tok.encode("ab")  # no stop ids given


def test_scripted_cancel_and_fallback(tok: KimiTokenizer) -> None:
    seen: list[int] = []

    def cancelled() -> bool:
        return len(seen) >= 3

    fallback = ScriptedEngine(tok, ["from the fallback"])
    engine = ScriptedEngine(tok, ["a b c d e f g h"], fallback=fallback)
    for token in engine.generate([1], params(50), cancelled):
        seen.append(token)
    assert seen == tok.encode("a b c d e f g h")[:3]
    assert list(engine.generate([1], params(50))) == tok.encode("from the fallback")


def test_scripted_is_thread_safe(tok: KimiTokenizer) -> None:
    replies = [f"reply {i}" for i in range(40)]
    engine = ScriptedEngine(tok, replies)
    got: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            text = tok.decode(list(engine.generate([1], params(50))))
            with lock:
                got.append(text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(replies)


def test_scripted_from_file(tok: KimiTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"replies": ["one"], "delay_s": 0.001}))
    engine = ScriptedEngine.from_file(path, tok)
    assert list(engine.generate([1], params(50))) == tok.encode("one")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "must be a JSON object"),
        ('{"replies": "x"}', "replies: expected a list of strings"),
        ('{"replies": [1]}', "replies: expected a list of strings"),
        ('{"replies": [], "delay": 1}', "unknown field 'delay'"),
        ('{"replies": [], "delay_s": -1}', "delay_s: expected seconds"),
        ("{", "script is not valid JSON"),
    ],
)
def test_scripted_bad_file(tok: KimiTokenizer, tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "script.json"
    path.write_text(text)
    with pytest.raises(K2Error, match=message) as exc:
        ScriptedEngine.from_file(path, tok)
    assert str(path) in str(exc.value)


# -- ReferenceEngine ----------------------------------------------------------------------------


def test_generation_uses_no_deprecated_transformers_argument(
    engine: ReferenceEngine, prompt: list[int]
) -> None:
    # transformers 5.x renamed forward's `past_key_values` to `cache` and removes the old name
    # in 5.40: a deprecation warning today is a TypeError after the next upgrade.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        assert len(list(engine.generate(prompt, params(3, temperature=0.0)))) == 3


def test_installed_transformers_is_inside_the_declared_bound() -> None:
    from importlib.metadata import requires, version

    from packaging.requirements import Requirement

    (req,) = [Requirement(r) for r in requires("k2trt") or [] if r.startswith("transformers")]
    assert req.specifier.contains(version("transformers"))
    assert not req.specifier.contains("6.0.0")  # the next major is not assumed to work


def test_greedy_equals_transformers_generate(engine: ReferenceEngine, prompt: list[int]) -> None:
    ours = list(engine.generate(prompt, params(6, temperature=0.0)))
    with torch.no_grad():
        out = engine.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert ours == [int(t) for t in out[0, len(prompt) :]]
    assert len(ours) == 6


def test_stop_id_ends_generation(engine: ReferenceEngine, prompt: list[int]) -> None:
    greedy = list(engine.generate(prompt, params(6, temperature=0.0)))
    stopped = list(engine.generate(prompt, params(6, temperature=0.0, stop_token_ids=(greedy[1],))))
    assert stopped == greedy[: greedy.index(greedy[1]) + 1]


def test_seeded_sampling_is_reproducible(engine: ReferenceEngine, prompt: list[int]) -> None:
    a = list(engine.generate(prompt, params(8, temperature=1.0, seed=3)))
    b = list(engine.generate(prompt, params(8, temperature=1.0, seed=3)))
    c = list(engine.generate(prompt, params(8, temperature=1.0, seed=4)))
    assert a == b
    assert a != c
    greedy = list(engine.generate(prompt, params(8, temperature=0.0)))
    # A nucleus this small holds only the top id: sampling becomes greedy.
    assert list(engine.generate(prompt, params(8, temperature=1.0, top_p=1e-6, seed=5))) == greedy


def test_cancel_checked_every_token(engine: ReferenceEngine, prompt: list[int]) -> None:
    got: list[int] = []
    for token in engine.generate(prompt, params(6, temperature=0.0), lambda: len(got) >= 2):
        got.append(token)
    assert len(got) == 2


def test_concurrent_calls_run_one_at_a_time(engine: ReferenceEngine, prompt: list[int]) -> None:
    greedy = list(engine.generate(prompt, params(4, temperature=0.0)))
    first = cast(Generator[int, None, None], engine.generate(prompt, params(4, temperature=0.0)))
    next(first)  # holds the engine's lock now
    results: list[list[int]] = []
    other = threading.Thread(
        target=lambda: results.append(list(engine.generate(prompt, params(4, temperature=0.0))))
    )
    other.start()
    other.join(0.3)
    assert other.is_alive()  # waiting for the lock
    first.close()  # releases it
    other.join(10)
    assert results == [greedy]


def test_sample_top_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    gen = torch.Generator().manual_seed(0)
    keep_two = {_sample(logits, params(1, temperature=1.0, top_p=0.7), gen) for _ in range(200)}
    assert keep_two == {0, 1}
    everything = {_sample(logits, params(1, temperature=1.0), gen) for _ in range(400)}
    assert everything == {0, 1, 2, 3}
    assert _sample(logits, params(1, temperature=0.0), None) == 0


def test_bad_prompt_ids(engine: ReferenceEngine) -> None:
    with pytest.raises(K2Error, match=r"prompt id 99999 outside 0\.\.1535"):
        engine.generate([1, 99999], params())
    with pytest.raises(K2Error, match="empty prompt"):
        engine.generate([], params())


def test_refuses_large_checkpoint(tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reference, "MAX_WEIGHT_BYTES", 1 << 20)
    with pytest.raises(K2Error, match=r"too large for the CPU reference engine.*k2trt slice"):
        ReferenceEngine.load(tiny_ckpt)


def test_engine_for_honours_script(
    tiny_ckpt: Path, tok: KimiTokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"replies": ["scripted"]}))
    monkeypatch.setenv(SCRIPT_ENV, str(script))
    engine = engine_for(tiny_ckpt)
    assert isinstance(engine, ScriptedEngine)
    assert list(engine.generate([1], params(50))) == tok.encode("scripted")
    fallback = list(engine.generate([1, 2, 3], params(3, temperature=0.0)))
    assert len(fallback) == 3  # the reference engine took over
    monkeypatch.delenv(SCRIPT_ENV)
    assert isinstance(engine_for(tiny_ckpt), ReferenceEngine)
