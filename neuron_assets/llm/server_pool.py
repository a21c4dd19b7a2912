"""Several OpenAI-compatible servers serving the same models, behind one LLM client.

``ServerPool.server()`` lends the least busy server that is up for one request, at most
``per_server`` requests at a time on each (where that is not set, the slots the server
reports: llama.cpp's own server says how many requests it batches, ``reported_slots``).
A server reported ``failed`` (it could not be reached or answered 5xx) rests a while and
gets no request while another is up, so a server that goes down mid-run only slows the run.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Server:
    """One OpenAI-compatible server of a pool, and what the pool knows of it."""

    url: str
    client: Any  # an openai.OpenAI with max_retries=0
    slots: int | None = None  # requests the server itself takes at once, where it says (reported_slots)
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
        free = [s for s in self.servers if (limit := self.per_server or s.slots) is None or s.in_flight < limit]
        up = [s for s in free if s.resting_until <= now]
        if up:
            return min(up, key=lambda s: (s.in_flight, s.calls))
        if free and all(s.resting_until > now for s in self.servers):
            return min(free, key=lambda s: s.resting_until)  # all resting: try the one back soonest
        return None

    def describe(self) -> dict[str, str]:
        """Calls and failures per server, for asset metadata."""
        return {
            f"llm_server_{i}": f"{s.url}: {s.calls} calls, {s.failures} failed"
            + (f", {s.slots} slots reported" if s.slots else "")
            for i, s in enumerate(self.servers)
        }


def reported_slots(url: str, timeout_s: float = 5.0) -> int | None:
    """The requests an OpenAI-compatible server at ``url`` (``.../v1``) says it serves at once:
    llama.cpp's server answers ``GET /props`` with ``total_slots`` (its ``--parallel``). None
    where the server says nothing of the kind (vLLM, OpenAI, llama-cpp-python's server), cannot
    be asked, or answers something else: the caller's own limit holds there."""
    root = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/props", timeout=timeout_s) as response:
            props = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    slots = props.get("total_slots") if isinstance(props, dict) else None
    return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots >= 1 else None
