"""HTTP errors of the gateway, in the shape each API's clients expect.

OpenAI: `{"error": {"message", "type", "param", "code"}}`; Anthropic (`/v1/messages`):
`{"type": "error", "error": {"type", "message"}}`.
"""

from __future__ import annotations

from typing import Any

# HTTP status -> (OpenAI error type, Anthropic error type)
ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("authentication_error", "authentication_error"),
    404: ("not_found_error", "not_found_error"),
    405: ("invalid_request_error", "invalid_request_error"),
    408: ("invalid_request_error", "invalid_request_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_error"),
    500: ("server_error", "api_error"),
    503: ("service_unavailable", "overloaded_error"),
}


class ApiError(Exception):
    """One failed request: status, a one-line message naming the field at fault (`param`).

    >>> openai_error(ApiError(400, "messages[0].role: expected a string", "messages[0].role"))
    {'error': {'message': 'messages[0].role: expected a string', 'type': 'invalid_request_error', 'param': 'messages[0].role', 'code': None}}
    """  # noqa: E501

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Retry-After when the client should come back later (429, 503)."""
        return {} if self.retry_after is None else {"retry-after": str(self.retry_after)}


def _types(status: int) -> tuple[str, str]:
    return ERROR_TYPES.get(status, ERROR_TYPES[500 if status >= 500 else 400])


def error_type(status: int) -> str:
    """The OpenAI error type of a status (the `type` label of the errors metric)."""
    return _types(status)[0]


def openai_error(err: ApiError) -> dict[str, Any]:
    """The OpenAI error body."""
    return {
        "error": {
            "message": err.message,
            "type": _types(err.status)[0],
            "param": err.param,
            "code": err.code,
        }
    }


def anthropic_error(err: ApiError) -> dict[str, Any]:
    """The Anthropic error body.

    >>> anthropic_error(ApiError(413, "body: over 10 bytes"))
    {'type': 'error', 'error': {'type': 'request_too_large', 'message': 'body: over 10 bytes'}}
    """
    return {"type": "error", "error": {"type": _types(err.status)[1], "message": err.message}}


def invalid(path: str, message: str) -> ApiError:
    """A 400 naming the field: `invalid("messages[0].role", "required")`."""
    return ApiError(400, f"{path}: {message}", param=path)
