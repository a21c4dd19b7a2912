"""The local server's memory over a long run: ``make bench-llm`` ends with it, or run it alone.

``python -m neuron_assets.benches.llm_soak --calls 1000`` sends that many all-at-once
simulation requests (the simulator's very request: echo, 20 log-probabilities) to one local
server, over varied excerpts of the embedded corpus and a new explanation every 10 calls, as
the pipeline does per neuron. Every ``--every`` calls it prints the server's resident memory,
its peak so far and the throughput of those calls. A run whose server passes ``--ceiling``
(half the host's memory by default) is stopped there and says so, so that a server that
grows without bound is measured, not left to the kernel's out-of-memory killer.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

from neuron_assets.benches.llm import ECHOED, post
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm.process_memory import GIB, MemoryWatch, format_gib, host_memory, parse_size
from neuron_assets.prompts.templates import simulator_prompt
from neuron_assets.sampling.corpus import load_documents

EXPLANATIONS = (
    "words about sport",
    "numbers and dates",
    "names of people",
    "the word 'the'",
    "places and countries",
    "verbs in the past tense",
    "punctuation at the end of a sentence",
    "words about money",
    "plural nouns",
    "the first word of a sentence",
    "words about politics",
    "adjectives",
    "quotation marks",
    "words about music",
)


@dataclass(frozen=True)
class Checkpoint:
    calls: int
    resident: int | None  # bytes, sampled right after the last call
    peak: int | None
    seconds: float  # of the calls since the previous checkpoint
    block_calls: int
    prompt_tokens: int  # of the calls since the previous checkpoint


def varied_excerpts(length: int) -> list[list[str]]:
    """Every ``length``-token window of every document of the embedded corpus (no two alike)."""
    documents = [[f" {w}" for w in text.split()] for text in load_documents("lee")["text"].to_list()]
    return [d[start : start + length] for d in documents for start in range(0, len(d) - length + 1, length)]


def soak(server: LocalLlamaServer, calls: int, every: int, excerpt_length: int, ceiling: int) -> Iterator[Checkpoint]:
    """Send ``calls`` simulation requests to ``server``; a ``Checkpoint`` every ``every`` calls.

    Stops early (after yielding the checkpoint that found it) once the server's resident
    memory passes ``ceiling`` bytes.
    """
    assert server.pid is not None
    watch = MemoryWatch(server.pid, interval_s=0.2)
    excerpts = itertools.cycle(varied_excerpts(excerpt_length))
    url = f"{server.base_url}/completions"
    started, tokens, done_before = time.perf_counter(), 0, 0
    try:
        for call in range(1, calls + 1):
            explanation = EXPLANATIONS[(call - 1) // 10 % len(EXPLANATIONS)]
            response = post(url, {**ECHOED, "prompt": simulator_prompt(explanation, next(excerpts)).text})
            tokens += response["usage"]["prompt_tokens"]
            figures = watch.sample()
            over = figures.last is not None and figures.last > ceiling
            if call % every == 0 or call == calls or over:
                now = time.perf_counter()
                yield Checkpoint(call, figures.last, figures.peak, now - started, call - done_before, tokens)
                started, tokens, done_before = now, 0, call
            if over:
                return
    finally:
        watch.stop()


def run_soak(calls: int, every: int, excerpt_length: int, ceiling: int, server_settings: dict) -> list[Checkpoint]:
    """One soak on a fresh local server, printed as a table; returns its checkpoints."""
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS, **server_settings) as server:
        cache = getattr(server, "cache_bytes", "as the server's defaults")
        limit = getattr(server, "memory_limit", "unknown")
        print(
            f"\nSoak: {calls} all-at-once simulation calls on one server ({server.describe_build()}); "
            f"prompt cache {format_gib(cache) if isinstance(cache, int) else cache or 'off'}; "
            f"memory limit {format_gib(limit) if isinstance(limit, int) else limit or 'none'}; "
            f"stops above {format_gib(ceiling)}"
        )
        print("| calls | resident | peak | s per call | prompt tokens/s |")
        print("|---|---|---|---|---|")
        checkpoints = []
        for c in soak(server, calls, every, excerpt_length, ceiling):
            checkpoints.append(c)
            print(
                f"| {c.calls} | {format_gib(c.resident)} | {format_gib(c.peak)} | {c.seconds / c.block_calls:.2f} | "
                f"{c.prompt_tokens / c.seconds:.0f} |",
                flush=True,
            )
    if checkpoints and checkpoints[-1].calls < calls:
        print(f"stopped after {checkpoints[-1].calls} calls: the server's memory passed {format_gib(ceiling)}")
    elif len(checkpoints) > 1:
        first, last = checkpoints[0], checkpoints[-1]
        print(
            f"throughput at the start {first.block_calls / first.seconds:.2f} calls/s, "
            f"at the end {last.block_calls / last.seconds:.2f} calls/s; "
            f"resident at the end minus after the first {first.calls}: "
            f"{(last.resident - first.resident) / GIB:+.2f} GiB"
        )
    return checkpoints


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--every", type=int, default=100, help="calls between memory readings")
    parser.add_argument("--excerpt-length", type=int, default=32, help="tokens of each simulated excerpt")
    parser.add_argument("--ceiling", type=parse_size, default=host_memory()[0] // 2, help="stop above this")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument(
        "--cache", default=None, help="the prompt cache's capacity (a size, or off); default: the server's"
    )
    arguments(parser)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_model()}")
    settings = {} if args.cache is None else {"cache_bytes": None if args.cache == "off" else parse_size(args.cache)}
    run_soak(args.calls, args.every, args.excerpt_length, args.ceiling, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
