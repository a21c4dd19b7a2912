"""``make bench-cache``: bytes the response cache keeps per simulated excerpt, old layout against new.

One run on the local llama.cpp server: all-at-once simulations of excerpts of the embedded
corpus (whitespace tokens, 64 per excerpt), each response captured as the server sent it.
Prints, on the same responses: the old cache's bytes per simulated excerpt (one JSON file
holding the whole response), the new one's (the compressed row of what the reader needs,
and the SQLite file's size divided by the excerpts), and that every simulation replays
from the new cache with the same values.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import openai

from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.simulators.modes.all_at_once import simulate


def word_excerpts(n: int, length: int = 64) -> list[list[str]]:
    """``n`` excerpts of ``length`` whitespace tokens from the embedded corpus, one per document."""
    documents = load_documents("lee")["text"].to_list()
    excerpts = [[f" {w}" for w in text.split()[:length]] for text in documents]
    return [e for e in excerpts if len(e) == length][:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--excerpts", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    excerpts = word_excerpts(args.excerpts)
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server,
    ):
        raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)
        cache = ResponseCache(Path(folder))
        client = CachingClient(raw, "bench", cache)
        sent, first = [], []
        original = client.completions.create

        def capturing(**request: object) -> dict:
            response = original(**request)
            sent.append(response)
            return response

        client.completions.create = capturing
        started = time.perf_counter()
        for tokens in excerpts:
            first.append(simulate(client, PACKAGED_MODEL_ALIAS, "words about sport", tokens, distribution_shift=0))
        seconds = time.perf_counter() - started
        replay = CachingClient(raw, "bench", ResponseCache(Path(folder)))
        again = [simulate(replay, PACKAGED_MODEL_ALIAS, "words about sport", t, distribution_shift=0) for t in excerpts]
        old_bytes = sum(len(json.dumps(response)) for response in sent)
        import sqlite3

        with sqlite3.connect(cache.path) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        file_bytes = cache.path.stat().st_size
    n = len(excerpts)
    print(f"{n} all-at-once simulations of 64-token excerpts, {seconds:.1f} s of LLM calls")
    print("| cache layout | bytes per simulated excerpt |")
    print("|---|---|")
    print(f"| one JSON file per request, whole response (before) | {old_bytes / n:,.0f} |")
    print(f"| compressed row of what the reader uses (after) | {client.stats.cached_bytes / n:,.0f} |")
    print(f"| ... SQLite file size / excerpts | {file_bytes / n:,.0f} |")
    print(f"ratio before/after (file): {old_bytes / file_bytes:.1f}x")
    print(
        f"replayed from the new cache: {replay.stats.cache_hits}/{n} hits, {replay.stats.calls} calls, "
        f"values identical: {again == first}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
