"""`--help` of every command: paragraphs re-wrapped, defaults whole, nothing cut off."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from k2trt.cli.app import app


# typer vendors its own click: groups are recognised by their `commands`.
def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_commands(ROOT))


def _lookup(path: tuple[str, ...]) -> Any:
    cmd = ROOT
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


def _flat(text: str) -> str:
    # whitespace runs are one space; a wrap after a hyphen ("tensor-by-\ntensor") is none
    return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", text))


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_is_whole_at_80_columns(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    text = _flat(result.output)
    cmd = _lookup(path)
    # every sentence of the docstring comes out whole (re-wrapped, never hard-broken)
    for paragraph in (cmd.help or "").split("\n\n"):
        assert _flat(paragraph.strip()) in text
    for param in cmd.params:
        shown = getattr(param, "show_default", False) and param.param_type_name == "option"
        if shown and param.default not in (None, False, "") and not param.is_flag:
            assert f"default: {param.default}" in text, param.name
