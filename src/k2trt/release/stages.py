"""Resumable stages: each leaves a record of its inputs' hashes, outputs' pins and result.

A release runs a fixed list of stages in a work directory. Before a stage runs, its inputs
(spec sections, source files, earlier stages' outputs) are reduced to sha256 digests; a stage
whose record has the same digests and whose outputs still match their pins (size + mtime,
re-read when the mtime moved) is finished and is skipped. The first stage whose inputs
changed runs again, and every later one then sees changed inputs too.

    WORK/stages/NAME.json   {"stage", "options", "inputs", "outputs", "result", "log", "seconds"}

`result` is deterministic (it goes into the release); `log` and `seconds` are for people.
A record is written only after the stage's outputs are complete, and removed before a
stage runs, so a kill at any point leaves either a finished stage or none.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint.manifest import FileHash, pin_changed, pin_files
from k2trt.fsutil import read_json, write_json_atomic

STATE_DIR = "stages"
RECORD_FORMAT = "k2trt.release-stage/1"


def digest(data: Any) -> str:
    """sha256 of data's canonical JSON (sorted keys, no whitespace).

    >>> digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Outcome:
    """What a stage run produced: output files (under WORK) and what it found."""

    outputs: list[Path]
    result: dict[str, Any]
    log: dict[str, Any] = field(default_factory=dict)
    known: Mapping[str, FileHash] = field(default_factory=dict)  # outputs hashed on the way


@dataclass
class Record:
    stage: str
    options: dict[str, Any]  # the spec's settings this stage ran with (for people)
    inputs: dict[str, str]
    outputs: dict[str, dict[str, Any]]
    result: dict[str, Any]
    log: dict[str, Any]
    seconds: float

    def outputs_digest(self, prefix: str = "") -> str:
        """One digest over the (content) hashes of the outputs under `prefix`."""
        return digest(
            {n: p["sha256"] for n, p in sorted(self.outputs.items()) if n.startswith(prefix)}
        )


@dataclass(frozen=True)
class Stage:
    """One step: `inputs()` -> {name: sha256}; `run()` -> Outcome; `options` for the record."""

    name: str
    inputs: Callable[[], dict[str, str]]
    run: Callable[[], Outcome]
    options: dict[str, Any] = field(default_factory=dict)


def record_path(work: Path, name: str) -> Path:
    return work / STATE_DIR / f"{name}.json"


def load_record(work: Path, name: str) -> Record | None:
    path = record_path(work, name)
    if not path.is_file():
        return None
    data = read_json(path, "stage record")
    if not isinstance(data, dict) or data.pop("format", None) != RECORD_FORMAT:
        return None
    try:
        return Record(**data)
    except TypeError:
        return None  # an older layout: run the stage again


def reuse_refusal(work: Path, old: Record | None, inputs: dict[str, str], rehash: bool) -> str:
    """Why `old` cannot stand for this run ("" when it can)."""
    if old is None:
        return "running"
    changed = sorted(
        k for k in inputs.keys() | old.inputs.keys() if inputs.get(k) != old.inputs.get(k)
    )
    if changed:
        return f"re-running: {', '.join(changed)} changed since the last run"
    for name, pin in sorted(old.outputs.items()):
        why = pin_changed(work / name, pin, rehash)
        if why is not None:
            return f"re-running: output {name} {why}"
    return ""


def run_stages(
    work: Path,
    stages: Sequence[Stage],
    say: Callable[[str], None],
    rehash: bool = False,
    records: dict[str, Record] | None = None,
) -> dict[str, Record]:
    """Run (or resume) `stages` in order; each record lands in `records` as soon as it is
    known (later stages' inputs read earlier stages' outputs from there)."""
    records = {} if records is None else records
    for stage in stages:
        inputs = stage.inputs()
        old = load_record(work, stage.name)
        why = reuse_refusal(work, old, inputs, rehash)
        if not why and old is not None:
            say(f"[{stage.name}] unchanged since the last run (outputs checked by hash)")
            records[stage.name] = old
            continue
        say(f"[{stage.name}] {why}")
        records[stage.name] = _run_one(work, stage, inputs)
    return records


def _run_one(work: Path, stage: Stage, inputs: dict[str, str]) -> Record:
    path = record_path(work, stage.name)
    path.unlink(missing_ok=True)  # a kill during the run must not leave the old record
    start = time.monotonic()
    outcome = stage.run()
    record = Record(
        stage=stage.name,
        options=stage.options,
        inputs=inputs,
        outputs=pin_files(work, sorted(outcome.outputs), outcome.known),
        result=outcome.result,
        log=outcome.log,
        seconds=round(time.monotonic() - start, 3),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"format": RECORD_FORMAT, **asdict(record)})
    return record
