"""The errors of the LLM layer, and how an OpenAI-compatible server's error response is read.

``LLMError``: a request the backend refused, or that failed after every retry.
``ContextLengthError``, an ``LLMError``: a refusal as longer than the context window; the
caller may shorten the prompt and send it again. ``ReplyFormatError``: a reply the caller's
check cannot use.
``MalformedResponseError``: a 200 whose body is not an OpenAI response. ``is_context_length``
and ``is_out_of_memory`` tell from an openai error's body whether the context was too long or
the server ran out of memory; ``server_message`` extracts the server's own message.
"""

from __future__ import annotations

import re
from typing import Any


class LLMError(RuntimeError):
    """A request the backend refused (``status``: the 4xx it answered), or that still
    failed after every retry (``status`` None)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ReplyFormatError(ValueError):
    """A well-formed response whose content cannot be used (the caller's reply check said so)."""


class MalformedResponseError(ValueError):
    """The server answered 200 with a body that is not an OpenAI response."""


class ContextLengthError(LLMError):
    """The backend refused a request as longer than its context window; the caller may shorten it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=400)


CONTEXT_LENGTH_PATTERN = re.compile(r"context[ _](length|window)|maximum context|too many tokens", re.IGNORECASE)
OUT_OF_MEMORY_PATTERN = re.compile(r"out of memory|MemoryError|unable to allocate|bad_alloc|failed to allocate", re.I)


def is_context_length(error: Any) -> bool:
    """A refusal of the request as longer than the context window (OpenAI's code or the server's wording)."""
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code == "context_length_exceeded" or bool(CONTEXT_LENGTH_PATTERN.search(server_message(error)))


def is_out_of_memory(error: Exception) -> bool:
    """A 5xx that says the server ran out of memory (ours, llama.cpp's, numpy's or CUDA's wording)."""
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code == "out_of_memory" or bool(OUT_OF_MEMORY_PATTERN.search(server_message(error)))


def server_message(error: Any) -> str:
    """The server's own message from an openai error's body, else the error's message."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(error, "message", error))
