"""The LLM client: a request in, a checked response out, through the cache, retries and servers.

``CachingClient`` offers the two calls the core makes, ``chat.completions.create`` and
``completions.create``, with the openai SDK's arguments, and returns each response as plain
JSON (a dict, exactly what the cache stores). Around the SDK it:

- answers from its ``ResponseCache`` when it can, and caches each accepted response, reduced
  by ``keep=`` (if given) to what the caller reads. A re-run of unchanged work makes no call.
- retries with exponential backoff and jitter on 408, 409, 429, 5xx, connection errors,
  timeouts and malformed bodies, honouring ``Retry-After``, up to ``RetryPolicy.max_attempts``
  times, then raises ``LLMError``, naming memory as the cause (with the server's figures) when
  the server last answered that it ran out of memory. Any other 4xx raises ``LLMError`` at
  once with the server's own message (bad key, unknown model).
- checks replies: ``create(..., read=check)`` passes each response, cached ones included, to
  ``check``; a ``ReplyFormatError`` (digits written as words, a truncated reply, a format
  ignored) means the reply is not cached and is asked for again, up to
  ``RetryPolicy.format_attempts`` times, so one bad reply never poisons the cache.
- raises ``ContextLengthError`` for a refusal as longer than the context window, and caches
  the refusal: the same too-long request is never sent twice.
- sends each request to a server of its ``ServerPool``; a server that cannot be reached or
  answers 5xx rests, and the request goes to another that is up at once.
- calls ``liveness()`` when a request cannot connect (for the local server: is its process
  still running?); an error it raises ends the request at once, without retries.
- tells the core how its backend takes a JSON schema for a reply (``json_schema_format``, see
  ``llm.json_schema``).
- counts calls, cache hits, retries, rejected replies, tokens and cached bytes (``CallStats``),
  for asset metadata.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neuron_assets.llm.errors import (
    ContextLengthError,
    LLMError,
    MalformedResponseError,
    ReplyFormatError,
    is_context_length,
    is_out_of_memory,
    server_message,
)
from neuron_assets.llm.json_schema import check_json_schema_format
from neuron_assets.llm.response_cache import ResponseCache, compact
from neuron_assets.llm.server_pool import ServerPool

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
CONTEXT_REFUSAL = "neuron_assets_context_refusal"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    format_attempts: int = 2

    def delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: Retry-After if given, else jittered backoff."""
        if retry_after_s is not None:
            return min(self.max_delay_s, retry_after_s)
        backoff = min(self.max_delay_s, self.base_delay_s * 2**attempt)
        return backoff * random.uniform(0.5, 1.0)


@dataclass
class CallStats:
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    rejected_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_metadata(self) -> dict[str, int]:
        return {
            "llm_calls": self.calls,
            "llm_cache_hits": self.cache_hits,
            "llm_retries": self.retries,
            "llm_rejected_replies": self.rejected_replies,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "llm_cache_bytes_written": self.cached_bytes,
        }


class _Endpoint:
    def __init__(self, owner: CachingClient, endpoint: str) -> None:
        self._owner, self._endpoint = owner, endpoint

    def create(
        self,
        read: Callable[[dict[str, Any]], Any] | None = None,
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        **request: Any,
    ) -> dict[str, Any]:
        return self._owner.request(self._endpoint, request, read, keep)


class CachingClient:
    """Wraps an ``openai.OpenAI`` client (created with ``max_retries=0``), or a ``ServerPool`` of
    them, as described above."""

    def __init__(
        self,
        client: Any,
        backend: str,
        cache: ResponseCache | None,
        retry: RetryPolicy | None = None,
        liveness: Callable[[], None] | None = None,
        json_schema_format: str = "none",
    ) -> None:
        self.pool = client if isinstance(client, ServerPool) else ServerPool.of(client, backend)
        self.backend = backend
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self.liveness = liveness
        self.json_schema_format = check_json_schema_format(json_schema_format)
        self.stats = CallStats()
        self.chat = type("Chat", (), {})()
        self.chat.completions = _Endpoint(self, "chat")
        self.completions = _Endpoint(self, "completions")

    def request(
        self,
        endpoint: str,
        request: dict[str, Any],
        read: Callable[[dict[str, Any]], Any] | None = None,
        keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The response to ``request``, from the cache or from the backend (then cached once ``read``
        accepts it, reduced by ``keep`` to what ``read`` needs, if given)."""
        key = ResponseCache.key(self.backend, endpoint, request)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None and CONTEXT_REFUSAL in cached:
            self.stats.add(cache_hits=1)
            raise ContextLengthError(cached[CONTEXT_REFUSAL])
        if cached is not None and _rejection(read, cached) is None:  # a cached reply the check rejects is asked again
            self.stats.add(cache_hits=1)
            return cached
        rejection: ReplyFormatError | None = None
        for _ in range(self.retry.format_attempts):
            try:
                response = self._call_with_retries(endpoint, request)
            except ContextLengthError as error:
                self.stats.add(calls=1)
                if self.cache is not None:
                    self.cache.put(key, {CONTEXT_REFUSAL: str(error)})
                raise
            usage = response.get("usage") or {}
            self.stats.add(
                calls=1,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
            )
            rejection = _rejection(read, response)
            if rejection is not None:
                self.stats.add(rejected_replies=1)
                continue
            if self.cache is not None:
                self.stats.add(cached_bytes=self.cache.put(key, compact(keep(response) if keep else response)))
            return response
        assert rejection is not None
        raise rejection

    def _call_with_retries(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        import openai

        failure: Exception
        for attempt in range(self.retry.max_attempts):
            another_is_up = False
            with self.pool.server() as server:
                try:
                    response = server.create(endpoint, request).model_dump(mode="json")
                    if not isinstance(response.get("choices"), list) or not response["choices"]:
                        raise MalformedResponseError(f"a response without choices: {json.dumps(response)[:200]}")
                    self.pool.succeeded(server)
                    return response
                except (json.JSONDecodeError, MalformedResponseError) as error:
                    failure, retry_after = MalformedResponseError(f"malformed response body: {error}"), None
                except openai.APIStatusError as error:
                    if error.status_code not in RETRYABLE_STATUS:
                        message = f"{self.backend} refused the request ({error.status_code}): {server_message(error)}"
                        if is_context_length(error):
                            raise ContextLengthError(message) from error
                        raise LLMError(message, status=error.status_code) from error
                    failure, retry_after = error, _retry_after_s(error)
                    if error.status_code >= 500:
                        another_is_up = self.pool.failed(server)
                except (openai.APIConnectionError, openai.APITimeoutError) as error:
                    if self.liveness is not None:
                        self.liveness()  # raises when the backend is gone for good: no retry can help
                    failure, retry_after = error, None
                    another_is_up = self.pool.failed(server)
            if attempt + 1 < self.retry.max_attempts:
                self.stats.add(retries=1)
                if not another_is_up:  # another server takes the request at once; else back off
                    time.sleep(self.retry.delay(attempt, retry_after))
        if is_out_of_memory(failure):
            raise LLMError(
                f"{self.backend} ran out of memory on each of {self.retry.max_attempts} attempts: "
                f"{server_message(failure)}",
                status=getattr(failure, "status_code", None),
            ) from failure
        raise LLMError(
            f"{self.backend}: still failing after {self.retry.max_attempts} attempts: {failure}"
        ) from failure


def _rejection(read: Callable[[dict[str, Any]], Any] | None, response: dict[str, Any]) -> ReplyFormatError | None:
    """Why ``read`` rejects ``response``, or None when it accepts it (or there is no check)."""
    try:
        if read is not None:
            read(response)
    except ReplyFormatError as error:
        return error
    return None


def _retry_after_s(error: Any) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
