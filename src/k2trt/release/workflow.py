"""GitHub Actions workflow vocabulary: steps as data, shell lines from argv, YAML out.

Workflows are dicts in a deliberate key order dumped by PyYAML's safe dumper (never templated
text); a step's shell commands are argv lists quoted with shlex (`Var` as "${NAME}").

>>> print(Step("Say", run=(["echo", "a b"],)).to_dict()["run"])
echo 'a b'
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from k2trt.triton_repo.launch import Arg, Var

Command = Sequence[Arg]


@dataclass(frozen=True)
class Step:
    """One workflow step; `run` is argv lists (or a prepared shell line), one per line."""

    name: str
    run: tuple[Command | str, ...] = ()
    uses: str | None = None
    with_: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    if_: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """GitHub's usual order: name, if, uses, with, env, run."""
        out: dict[str, Any] = {"name": self.name}
        if self.if_ is not None:
            out["if"] = self.if_
        if self.uses is not None:
            out["uses"] = self.uses
        if self.with_:
            out["with"] = dict(self.with_)
        if self.env:
            out["env"] = dict(sorted(self.env.items()))
        if self.run:
            lines = [c if isinstance(c, str) else shell_line(c) for c in self.run]
            out["run"] = "\n".join(lines)
        return out


def shell_line(argv: Command, width: int = 100) -> str:
    r"""One command, shell-quoted (a Var as "${NAME}"); longer than `width`, it wraps before
    each long option and wherever a line would overflow.

    >>> print(shell_line(["k2trt", "release", "verify", "out/k2 1", "--gpus", Var("GPUS")]))
    k2trt release verify 'out/k2 1' --gpus "${GPUS}"
    >>> print(shell_line(["k2trt", "release", "verify", "out", "--gpus", "H200x8"], width=30))
    k2trt release verify out \
        --gpus H200x8
    """
    words = [f'"${{{a.name}}}"' if isinstance(a, Var) else shlex.quote(a) for a in argv]
    if len(" ".join(words)) <= width:
        return " ".join(words)
    lines = [words[0]]
    for word in words[1:]:
        if word.startswith("--") or len(lines[-1]) + 1 + len(word) > width - 2:
            lines.append("    " + word)
        else:
            lines[-1] += " " + word
    return " \\\n".join(lines)


def _str(dumper: Any, value: str) -> Any:
    # Multi-line shell steps read best as literal blocks (`run: |-`).
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})
_Dumper.add_representer(str, _str)


def dump_workflow(data: Mapping[str, Any]) -> str:
    """YAML text in the dicts' own key order; the trigger key comes out as `'on'` (quoted:
    unquoted, YAML 1.1 loaders such as PyYAML read it as the boolean true).

    >>> print(dump_workflow({"name": "x", "on": {"push": {}}}), end="")
    name: x
    'on':
      push: {}
    """
    return str(yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True))
