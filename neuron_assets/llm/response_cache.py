"""The LLM layer's response cache: one SQLite file, one compressed row per request.

A row's key (``ResponseCache.key``) is the backend URL, the endpoint and the full request
(model, prompt, sampling parameters, seed): a changed prompt, model or sampling parameter
misses, and a sampled request, which carries its own seed, replays exactly. The API key is
never part of a key or a row. ``compact`` reduces a response to what readers use: its choices,
without per-token byte lists, and its usage.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
