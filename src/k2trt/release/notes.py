"""RELEASE_NOTES.md: what changed against the previous release.

Sections: the engine (LLM API options by key, checkpoint files, target, container and
TensorRT-LLM versions), serving (chat template, tokenizer files, tool-call parser, k2trt), and
the gates (each figure before and after). Plain Markdown from data, deterministic.

>>> flat({"a": {"b": 1}, "c": [1, 2]})
{'a.b': 1, 'c': [1, 2]}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from k2trt.fsutil import read_json

MAX_LISTED = 20  # files named one by one; the rest are counted


def flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat(value, name + "."))
        else:
            out[name] = value
    return out


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """One line per key that differs: `key` old -> new, added, removed.

    >>> changes({"a": 1, "b": 2}, {"a": 3, "c": 4})
    ['`a`: 1 -> 3', '`b`: removed (was 2)', '`c`: added (4)']
    """
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            lines.append(f"`{key}`: removed (was {before[key]})")
        elif key not in before:
            lines.append(f"`{key}`: added ({after[key]})")
        elif before[key] != after[key]:
            lines.append(f"`{key}`: {before[key]} -> {after[key]}")
    return lines


def _options(release_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    text = (release_dir / manifest["engine"]["options"]).read_text(encoding="utf-8")
    return flat(yaml.safe_load(text) or {})


def _checkpoint_files(release_dir: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    data = read_json(release_dir / manifest["checkpoint"]["manifest"], "checkpoint manifest")
    return {name: entry["sha256"] for name, entry in data["files"].items()}


def _file_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(n for n in before.keys() & after.keys() if before[n] != after[n])
    lines = []
    for label, names in (("changed", changed), ("added", added), ("removed", removed)):
        if names:
            shown = ", ".join(f"`{n}`" for n in names[:MAX_LISTED])
            more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
            lines.append(f"{len(names)} file(s) {label}: {shown}{more}")
    return lines


def _section(title: str, lines: list[str], unchanged: str) -> list[str]:
    return [f"## {title}", "", *(f"- {line}" for line in (lines or [unchanged])), ""]


def _gate_figures(gate: Mapping[str, Any]) -> dict[str, Any]:
    return {"status": gate.get("status", "-"), **flat(gate.get("figures") or {})}


def _gate_rows(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """One row per gate figure: its value, or (with a previous release) before and after."""
    if not after and not before:
        return ["No gates declared."]
    if before is None:
        rows = ["| gate | figure | value |", "|---|---|---|"]
        for gate, result in sorted(after.items()):
            rows += [f"| {gate} | {k} | {_cell(v)} |" for k, v in _gate_figures(result).items()]
        return rows
    rows = ["| gate | figure | before | after |", "|---|---|---|---|"]
    for gate in sorted(after.keys() | before.keys()):
        old = _gate_figures(before.get(gate) or {})
        new = _gate_figures(after.get(gate) or {})
        for key in [*new, *(k for k in old if k not in new)]:
            rows.append(
                f"| {gate} | {key} | {_cell(old.get(key, '-'))} | {_cell(new.get(key, '-'))} |"
            )
    return rows


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _engine_lines(
    prev: Mapping[str, Any], cur: Mapping[str, Any], prev_dir: Path, cur_parts: Path
) -> list[str]:
    lines = [
        f"option {line}" for line in changes(_options(prev_dir, prev), _options(cur_parts, cur))
    ]
    files = _file_changes(_checkpoint_files(prev_dir, prev), _checkpoint_files(cur_parts, cur))
    lines += [f"checkpoint: {line}" for line in files]
    lines += [f"target {line}" for line in changes(prev["target"], cur["target"])]
    keep = ("container", "container_digest", "tensorrt_llm", "option_schema_commit", "python")
    versions = [
        line
        for line in changes(
            {k: prev["versions"].get(k) for k in keep}, {k: cur["versions"].get(k) for k in keep}
        )
    ]
    return lines + [f"version {line}" for line in versions]


def _serving_lines(prev: Mapping[str, Any], cur: Mapping[str, Any]) -> list[str]:
    a, b = prev["serving"], cur["serving"]
    lines = []
    ta, tb = a.get("chat_template") or {}, b.get("chat_template") or {}
    if ta != tb:
        lines.append(
            f"chat template {ta.get('name')} ({str(ta.get('sha256'))[:12]}) -> "
            f"{tb.get('name')} ({str(tb.get('sha256'))[:12]})"
        )
    lines += [f"model file {line}" for line in changes(a["model_files"], b["model_files"])]
    lines += [
        f"{line}"
        for line in changes(
            {"parser": a["parser"], "k2trt": a["k2trt"]},
            {"parser": b["parser"], "k2trt": b["k2trt"]},
        )
    ]
    return lines


def render_notes(
    cur: Mapping[str, Any],
    prev: Mapping[str, Any] | None,
    parts: Path,
    prev_dir: Path | None,
) -> str:
    """The notes for release `cur` (its files in `parts`) against `prev` (in `prev_dir`)."""
    title = [f"# {cur['name']} {cur['version']}", ""]
    if prev is None or prev_dir is None:
        body = ["First release: no previous release to compare with.", ""]
        return "\n".join([*title, *body, "## Gates", "", *_gate_rows(None, cur["gates"]), ""])
    head = [f"Compared with {prev['name']} {prev['version']} ({prev['id']}).", ""]
    engine = _section("Engine", _engine_lines(prev, cur, prev_dir, parts), "unchanged")
    serving = _section("Serving", _serving_lines(prev, cur), "unchanged")
    gates = ["## Gates", "", *_gate_rows(prev["gates"], cur["gates"]), ""]
    return "\n".join([*title, *head, *engine, *serving, *gates])
