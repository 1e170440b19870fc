"""The one output helper: human (rich, progress on stderr on a TTY), --json, --quiet."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeRemainingColumn,
)
from rich.text import Text

from k2trt.errors import one_line
from k2trt.units import human_bytes


class BinarySpeedColumn(ProgressColumn):
    """Throughput in binary units (rich's TransferSpeedColumn is decimal only)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        text = "?" if speed is None else f"{human_bytes(speed)}/s"
        return Text(text, style="progress.data.speed")


class Ticker:
    """Progress sink handed to library code: `total(n)` once known, `advance(n)` per step."""

    def __init__(
        self,
        advance: Callable[[int], None] | None = None,
        total: Callable[[int], None] | None = None,
    ) -> None:
        self._advance = advance
        self._total = total

    def total(self, n: int) -> None:
        if self._total:
            self._total(n)

    def advance(self, n: int) -> None:
        if self._advance:
            self._advance(n)

    __call__ = advance


@dataclass
class Output:
    """Where results, notes and progress go for one CLI invocation."""

    mode: str = "human"  # human | json | quiet
    debug: bool = False
    wrote_json: bool = False  # a --json result is on stdout already (one document per run)
    out: Console = field(default_factory=lambda: Console(soft_wrap=True))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True))

    @property
    def human(self) -> bool:
        return self.mode == "human"

    def result(self, data: Any, render: Any = None) -> None:
        """Print the command's result: JSON in --json mode, `render(data)` text otherwise."""
        if self.mode == "json":
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            self.wrote_json = True
        elif self.mode == "human":
            text = render(data) if render else str(data)
            self.out.print(text, highlight=False, markup=False)

    def line(self, message: str) -> None:
        """One line of a human-mode result, printed as it happens (stdout)."""
        if self.mode == "human":
            self.out.print(message, highlight=False, markup=False)

    def note(self, message: str) -> None:
        """A progress note for people: stderr, human mode only."""
        if self.mode == "human":
            self.err.print(message, highlight=False, markup=False)

    def error(self, message: str) -> None:
        """The one-line error, always shown (even with --quiet); escaped and capped."""
        self.err.print(f"error: {one_line(message)}", highlight=False, markup=False)

    def error_object(self, message: str, exit_code: int) -> None:
        """With --json, the error as a JSON object on stdout too, unless a result was printed
        (stdout stays one JSON document; the exit code tells the rest)."""
        if not self.wrote_json:
            data = {"error": one_line(message), "exit_code": exit_code}
            sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
            self.wrote_json = True

    @contextmanager
    def progress(
        self,
        description: str,
        total: int | None = None,
        *,
        enabled: bool = True,
        unit: str = "bytes",
    ) -> Iterator[Ticker]:
        """Progress with ETA on stderr; silent unless human mode on a TTY.

        unit "bytes": sizes and throughput in binary units; "items": done / total counts."""
        enabled = enabled and self.mode == "human" and self.err.is_terminal
        counts: tuple[ProgressColumn, ...] = (
            (DownloadColumn(binary_units=True), BinarySpeedColumn())  # MiB, as every summary
            if unit == "bytes"
            else (MofNCompleteColumn(),)
        )
        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            *counts,
            TimeRemainingColumn(),
            console=self.err,
            disable=not enabled,
            transient=True,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield Ticker(lambda n: bar.advance(task, n), lambda t: bar.update(task, total=t))


OUTPUT = Output()
