"""`k2trt release push|pull|list|promote`: releases in an OCI registry or S3 (issue 11)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `release` group."""
