"""A fault-injecting HTTP proxy for tests: it sits in front of a real OpenAI-compatible
server (the local llama.cpp one) and spoils chosen requests in the ways real backends fail.

Faults, by name:
- ``rate_limit``: 429 with ``Retry-After: 1``; ``server_error``: 500;
- ``reset``: the connection is reset without an answer;
- ``slow``: the real answer, but only after ``slow_s`` seconds (longer than the client's timeout);
- ``malformed_json``: a 200 whose body is cut-off JSON;
- ``digits_as_words``: the real answer with every number written as a word, in the text and
  in the log-probabilities;
- ``truncated``: the real answer cut in half (text, log-probabilities), ``finish_reason`` "length";
- ``ignore_format``: the answer of a model that ignores the requested format: chat replies
  become an apology, and echoed prompt log-probabilities predict prose instead of values.

With ``replay``, the proxy keeps the server's successful reply to each request and answers
the same request again (a retry, a re-run) with it, faults applied as before, without asking
the server: a real server answering the same request twice does the same work twice for the
same reply (the simulator asks at temperature 0, the explainer with a seed in each request).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (
    "rate_limit",
    "server_error",
    "reset",
    "slow",
    "malformed_json",
    "digits_as_words",
    "truncated",
    "ignore_format",
)
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
APOLOGY = "I am sorry, but I cannot help with that request."


class FaultProxy:
    """Forwards ``/v1/...`` to ``upstream``; ``inject`` spoils the next requests to an endpoint;
    with ``replay``, a request seen before gets the server's earlier reply."""

    def __init__(self, upstream: str, slow_s: float = 10.0, replay: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.slow_s = slow_s
        self.replay = replay
        self.injected: Counter[str] = Counter()
        self.forwarded = 0
        self._replies: dict[tuple[str, bytes], tuple[int, bytes]] = {}  # (path, body): the server's 200 reply
        self._plan: dict[str, tuple[str, int | None]] = {}
        self._spared: dict[str, int] = {}  # requests per endpoint still to pass before the plan applies
        self._match: dict[str, Callable[[dict[str, Any]], bool]] = {}  # which requests the plan applies to
        self.seen: list[tuple[str, str | None]] = []  # (endpoint, fault or None) of every POST, in order
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = owner._take(self.path.removeprefix("/v1/"), body)
                if fault is None:
                    owner._forward(self, body)
                else:
                    owner._spoil(self, body, fault)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # resets and timeouts are the point
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def inject(
        self,
        fault: str,
        endpoint: str,
        times: int | None = 1,
        after: int = 0,
        only: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Spoil ``times`` requests to ``endpoint`` ("chat/completions" or "completions"; None: all),
        once ``after`` requests to it have passed untouched; with ``only``, just the requests whose
        JSON body it accepts count, for either (the others pass)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._plan[endpoint] = (fault, times)
            self._spared[endpoint] = after
            if only is None:
                self._match.pop(endpoint, None)
            else:
                self._match[endpoint] = only

    def clear(self) -> None:
        with self._lock:
            self._plan.clear()
            self._spared.clear()
            self._match.clear()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _take(self, endpoint: str, body: bytes) -> str | None:
        with self._lock:
            fault = self._plan_for(endpoint, body)
            self.seen.append((endpoint, fault))
            return fault

    def _plan_for(self, endpoint: str, body: bytes) -> str | None:
        fault, times = self._plan.get(endpoint, (None, 0))
        if fault is None or times == 0:
            return None
        only = self._match.get(endpoint)
        if only is not None and not only(json.loads(body or b"{}")):
            return None
        if self._spared.get(endpoint, 0) > 0:
            self._spared[endpoint] -= 1
            return None
        if times is not None:
            self._plan[endpoint] = (fault, times - 1)
        self.injected[fault] += 1
        return fault

    def _upstream(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> tuple[int, bytes]:
        key = (handler.path, body)
        if self.replay and body is not None:
            with self._lock:
                if key in self._replies:
                    return self._replies[key]
        status, payload = self._ask_upstream(handler, body)
        if self.replay and body is not None and status == 200:
            with self._lock:
                self._replies[key] = (status, payload)
        return status, payload

    def _ask_upstream(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream + handler.path.removeprefix("/v1"),
            data=body,
            method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with self._lock:
            self.forwarded += 1
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes | None) -> None:
        status, payload = self._upstream(handler, body)
        _send(handler, status, payload)

    def _spoil(self, handler: BaseHTTPRequestHandler, body: bytes, fault: str) -> None:
        if fault == "rate_limit":
            _send(handler, 429, _error("rate limit reached, slow down"), {"Retry-After": "1"})
        elif fault == "server_error":
            _send(handler, 500, _error("internal server error"))
        elif fault == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()
            handler.close_connection = True
        elif fault == "slow":
            time.sleep(self.slow_s)
            try:
                self._forward(handler, body)
            except OSError:
                pass  # the client gave up waiting, as intended
        elif fault == "malformed_json":
            _send(handler, 200, b'{"id": "cmpl-fault", "object": "text_completion", "choices": [')
        else:
            status, payload = self._upstream(handler, body)
            reply = json.loads(payload)
            if status == 200:
                REWRITES[fault](reply["choices"][0])
            _send(handler, status, json.dumps(reply).encode())


def _send(handler: BaseHTTPRequestHandler, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def _error(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error", "code": None}}).encode()


def _words(text: str) -> str:
    return re.sub(r"10|\d", lambda m: WORDS[int(m.group())], text)


def _digits_as_words(choice: dict[str, Any]) -> None:
    if "message" in choice:
        choice["message"]["content"] = _words(choice["message"]["content"] or "")
        for item in (choice.get("logprobs") or {}).get("content") or []:
            item["token"] = _words(item["token"])
            for top in item.get("top_logprobs") or []:
                top["token"] = _words(top["token"])
    else:
        logprobs = choice.get("logprobs") or {}
        logprobs["top_logprobs"] = [
            None if top is None else {_words(k): v for k, v in top.items()}
            for top in logprobs.get("top_logprobs") or []
        ]


def _truncated(choice: dict[str, Any]) -> None:
    choice["finish_reason"] = "length"
    if "message" in choice:
        content = choice["message"]["content"] or ""
        choice["message"]["content"] = content[: len(content) // 2]
        logprobs = choice.get("logprobs") or {}
        if logprobs.get("content"):
            logprobs["content"] = logprobs["content"][: len(logprobs["content"]) // 2]
    else:
        choice["text"] = choice["text"][: len(choice["text"]) // 2]
        logprobs = choice.get("logprobs") or {}
        for name in ("tokens", "text_offset", "token_logprobs", "top_logprobs"):
            if logprobs.get(name):
                logprobs[name] = logprobs[name][: len(logprobs[name]) // 2]


def _ignore_format(choice: dict[str, Any]) -> None:
    if "message" in choice:
        choice["message"]["content"] = APOLOGY
        if (choice.get("logprobs") or {}).get("content"):
            choice["logprobs"]["content"] = [
                {
                    "token": word,
                    "logprob": -0.1,
                    "bytes": None,
                    "top_logprobs": [{"token": word, "logprob": -0.1, "bytes": None}],
                }
                for word in re.findall(r"\s*\S+", APOLOGY)
            ]
    else:
        logprobs = choice.get("logprobs") or {}
        logprobs["top_logprobs"] = [
            None if top is None else {" I": -0.5, " am": -1.5, " sorry": -2.5}
            for top in logprobs.get("top_logprobs") or []
        ]


REWRITES = {"digits_as_words": _digits_as_words, "truncated": _truncated, "ignore_format": _ignore_format}
