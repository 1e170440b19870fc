"""`k2trt release deploy|status`: releases rolled onto a running Triton (issue 11)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `release` group."""
