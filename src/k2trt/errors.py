"""One error type whose message is the one line a user sees."""

from __future__ import annotations

from pathlib import Path


class K2Error(Exception):
    """A user-facing failure: one line naming what and where.

    >>> str(K2Error("index lists no shards", path="ckpt/model.safetensors.index.json"))
    'ckpt/model.safetensors.index.json: index lists no shards'
    """

    exit_code = 2  # bad input or a failure to read it

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckFailed(K2Error):
    """The input was read fine and failed a check (a gate, a hash, a finding): exit 1.

    >>> CheckFailed("gate smoke failed").exit_code
    1
    """

    exit_code = 1
