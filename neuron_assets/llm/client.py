"""The LLM layer under the explainer and simulator: response cache, retries, accounting.

``CachingClient`` offers the two calls the core makes, ``chat.completions.create`` and
``completions.create``, with the openai SDK's arguments; it returns each response as
plain JSON (a dict, exactly what the cache stores) and adds:

- a response cache: one SQLite file per cache, a compressed row per request, keyed by the
  backend URL, the endpoint and the full request (model, prompt, sampling parameters,
  seed). A row keeps only what the readers use: the choices and the usage, without
  per-token byte lists, and for calls that say so (``keep=``, e.g. the all-at-once
  simulator's prompt log-probabilities) only the positions they read. A re-run of
  unchanged work makes no call; a changed prompt, model or sampling parameter misses. Sampled requests carry their own seed, so a temperature > 0 run with
  several samples replays exactly. The API key is never part of a key or an entry.
- retries with exponential backoff and jitter on 429, 5xx, connection errors,
  timeouts and malformed bodies, honouring ``Retry-After``; any other 4xx fails at once
  with the server's own message (bad key, unknown model, context too long). A 5xx that
  says the server ran out of memory is retried too, and when every attempt fails the
  error names memory as the cause, with the server's figures.
- a reply check: ``create(..., read=check)`` passes each response to ``check`` before it
  is cached; a ``ReplyFormatError`` (digits written as words, a truncated reply, a format
  ignored) means the reply is not cached and is asked for again, up to
  ``RetryPolicy.format_attempts`` times, so one bad reply never poisons the cache.
- a refusal for exceeding the context window raises ``ContextLengthError`` (so the
  explainer and simulator can shorten the prompt deliberately) and is cached like a
  response: the same too-long request is never sent twice.
- a liveness check: when a request cannot connect, ``liveness()`` (for the local server:
  is its process still running?) may raise; that error ends the request, and the step,
  at once instead of retrying every neuron against a dead port.
- several servers (``ServerPool``): each request goes to the least busy server that is
  up, at most ``per_server`` requests at a time on each; a server that cannot be reached
  or answers 5xx rests a while and the request goes to another at once, so a server that
  goes down mid-run only slows the run.
- counts of calls, cache hits and prompt/completion tokens, for asset metadata.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
V = TypeVar("V")
NeuronKey = tuple[int, int]

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
CONTEXT_REFUSAL = "neuron_assets_context_refusal"


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


def fit_to_context(variants: Sequence[V], start: int, send: Callable[[V], T], *, too_long: str) -> tuple[T, int]:
    """``send(variants[start])``, then the next, shorter variants, until the backend takes one.

    ``variants`` run from the fullest prompt to the shortest. Returns the reply and the
    index of the variant that fitted, so later prompts can start there. When even the last
    is refused as too long, raises ``ContextLengthError`` with ``too_long`` and the
    backend's own message.
    """
    for index in range(start, len(variants)):
        try:
            return send(variants[index]), index
        except ContextLengthError as error:
            refusal = error
    raise ContextLengthError(f"{too_long}: {refusal}") from refusal


def map_neurons(
    stage: str,
    jobs: Sequence[tuple[NeuronKey, Callable[[], T]]],
    *,
    expected_errors: tuple[type[Exception], ...],
    concurrency: int = 1,
    on_done: Callable[[int, int], None] | None = None,
) -> list[T]:
    """Run one job per neuron, at most ``concurrency`` at a time; results in job order.

    A job that raises one of ``expected_errors`` does not stop the others: all such
    failures are raised together at the end as ``NeuronFailures``. Any other error (the
    backend died, a bug) stops the step: jobs not yet started are skipped and the error
    is raised as it is. ``on_done`` is called in the caller's thread as each
    neuron finishes.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    results: dict[NeuronKey, T] = {}
    failures: dict[NeuronKey, str] = {}
    stopped = threading.Event()  # set by the first unexpected error; later jobs then never start

    def guarded(job: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            if stopped.is_set():
                raise _NotStarted
            try:
                return job()
            except expected_errors:
                raise
            except BaseException:
                stopped.set()
                raise

        return run

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(guarded(job)): key for key, job in jobs}
        for future in as_completed(futures):
            key = futures[future]
            try:
                results[key] = future.result()
            except expected_errors as error:
                failures[key] = str(error)
                continue
            except _NotStarted:
                continue
            if on_done is not None:
                on_done(*key)
    if failures:
        raise NeuronFailures(stage, failures)
    return [results[key] for key, _ in jobs]


class _NotStarted(Exception):
    """A neuron's job skipped because an unexpected error had already stopped the step."""


class NeuronFailures(RuntimeError):
    """Some neurons' LLM work failed. The others finished, and their responses are cached,
    so running the step again redoes only the failed neurons."""

    def __init__(self, stage: str, failures: dict[tuple[int, int], str]) -> None:
        self.failures = failures
        lines = [f"  layer {layer} neuron {neuron}: {message}" for (layer, neuron), message in sorted(failures.items())]
        super().__init__(f"{stage} failed for {len(failures)} neuron(s):\n" + "\n".join(lines))


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


class ResponseCache:
    """Responses in one SQLite file (``responses.sqlite`` under ``root``), zlib-compressed JSON per row.

    SQLite's write-ahead log lets concurrent runs and threads read and write it; each entry
    is one committed row, so no reader sees half an entry. Entries of the older layout (one
    JSON file per request under ``root/<2 hex>/``) are still read, so an old cache keeps
    answering; new entries go to the database only.
    """

    FILE = "responses.sqlite"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._local = threading.local()

    @staticmethod
    def key(backend: str, endpoint: str, request: dict[str, Any]) -> str:
        text = json.dumps({"backend": backend, "endpoint": endpoint, "request": request}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def path(self) -> Path:
        return self.root / self.FILE

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            self.root.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=60.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, body BLOB NOT NULL)")
            self._local.connection = connection
        return connection

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT body FROM responses WHERE key = ?", (key,)).fetchone()
        if row is not None:
            return json.loads(zlib.decompress(row[0]))
        legacy = self.root / key[:2] / f"{key}.json"
        return json.loads(legacy.read_text(encoding="utf-8")) if legacy.exists() else None

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (key, response) of the database, for inspection."""
        if self.path.exists():
            for key, body in self._connection().execute("SELECT key, body FROM responses ORDER BY key"):
                yield key, json.loads(zlib.decompress(body))

    def count(self) -> int:
        return self._connection().execute("SELECT count(*) FROM responses").fetchone()[0] if self.path.exists() else 0

    def put(self, key: str, response: dict[str, Any]) -> int:
        """Store ``response`` (as given: compact it first); returns the bytes the row holds."""
        body = zlib.compress(json.dumps(response, separators=(",", ":")).encode("utf-8"), 6)
        with self._connection() as connection:
            connection.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, body))
        return len(body)


def compact(response: dict[str, Any]) -> dict[str, Any]:
    """What readers use of a response: its choices (without per-token ``bytes``) and usage."""

    def without_bytes(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_bytes(v) for k, v in value.items() if k != "bytes"}
        if isinstance(value, list):
            return [without_bytes(v) for v in value]
        return value

    kept = {"choices": without_bytes(response["choices"])} if "choices" in response else dict(response)
    if "usage" in response:
        kept["usage"] = response["usage"]
    return kept


@dataclass(eq=False)
class Server:
    """One OpenAI-compatible server of a pool, and what the pool knows of it."""

    url: str
    client: Any  # an openai.OpenAI with max_retries=0
    in_flight: int = 0
    resting_until: float = 0.0
    calls: int = 0
    failures: int = 0

    def create(self, endpoint: str, request: dict[str, Any]) -> Any:
        api = self.client.chat.completions if endpoint == "chat" else self.client.completions
        return api.create(**request)


class ServerPool:
    """Servers that serve the same models, spread over by load.

    A request takes the server with the fewest requests in flight among those that are up
    and below ``per_server`` (None: no limit), waiting for a free slot when every server is
    full. A server that failed (no connection, a timeout, 5xx) rests ``rest_s`` seconds:
    while any other is up it gets no request; when all rest, the one back soonest is tried.
    """

    def __init__(self, servers: Sequence[Server], per_server: int | None = None, rest_s: float = 30.0) -> None:
        if not servers:
            raise ValueError("a server pool needs at least one server")
        if per_server is not None and per_server < 1:
            raise ValueError(f"per_server must be at least 1, got {per_server}")
        self.servers, self.per_server, self.rest_s = list(servers), per_server, rest_s
        self._changed = threading.Condition()

    @classmethod
    def of(cls, client: Any, url: str = "") -> ServerPool:
        """A pool of one openai client, with no limit of its own (the caller's threads are the limit)."""
        return cls([Server(url, client)])

    @contextmanager
    def server(self) -> Iterator[Server]:
        """A server for one request, its slot held until the block ends."""
        with self._changed:
            while (chosen := self._choose()) is None:
                self._changed.wait(timeout=1.0)  # a resting server comes back with time, unannounced
            chosen.in_flight += 1
            chosen.calls += 1
        try:
            yield chosen
        finally:
            with self._changed:
                chosen.in_flight -= 1
                self._changed.notify_all()

    def failed(self, server: Server) -> bool:
        """Rest ``server``; whether another server is up to take the request at once."""
        with self._changed:
            server.failures += 1
            server.resting_until = time.monotonic() + self.rest_s
            self._changed.notify_all()
            return any(s.resting_until <= time.monotonic() for s in self.servers if s is not server)

    def succeeded(self, server: Server) -> None:
        with self._changed:
            server.resting_until = 0.0

    def _choose(self) -> Server | None:
        now = time.monotonic()
        free = [s for s in self.servers if self.per_server is None or s.in_flight < self.per_server]
        up = [s for s in free if s.resting_until <= now]
        if up:
            return min(up, key=lambda s: (s.in_flight, s.calls))
        if free and all(s.resting_until > now for s in self.servers):
            return min(free, key=lambda s: s.resting_until)  # all resting: try the one back soonest
        return None

    def describe(self) -> dict[str, str]:
        """Calls and failures per server, for asset metadata."""
        return {f"llm_server_{i}": f"{s.url}: {s.calls} calls, {s.failures} failed" for i, s in enumerate(self.servers)}


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
    ) -> None:
        self.pool = client if isinstance(client, ServerPool) else ServerPool.of(client, backend)
        self.backend = backend
        self.cache = cache
        self.retry = retry or RetryPolicy()
        self.liveness = liveness
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
        if (
            cached is not None and _rejection(read, cached) is None
        ):  # entries from before a check changed are checked too
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
                        message = f"{self.backend} refused the request ({error.status_code}): {_server_message(error)}"
                        if _is_context_length(error):
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
        if _is_out_of_memory(failure):
            raise LLMError(
                f"{self.backend} ran out of memory on each of {self.retry.max_attempts} attempts: {_server_message(failure)}",
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


def _is_context_length(error: Any) -> bool:
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code == "context_length_exceeded" or bool(CONTEXT_LENGTH_PATTERN.search(_server_message(error)))


def _is_out_of_memory(error: Exception) -> bool:
    """A 5xx that says the server ran out of memory (ours, llama.cpp's, numpy's or CUDA's wording)."""
    body = getattr(error, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    code = inner.get("code") if isinstance(inner, dict) else None
    return code == "out_of_memory" or bool(OUT_OF_MEMORY_PATTERN.search(_server_message(error)))


def _server_message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return str(getattr(error, "message", error))


def _retry_after_s(error: Any) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
