"""Run the CLI in-process: exit code, stdout, stderr."""

from __future__ import annotations

import pytest

from k2trt.cli.app import main

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """`k2trt ARGS...` through the real entry point (exit codes as the shell sees them)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
