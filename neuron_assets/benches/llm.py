"""``make bench-llm``: the LLM stage against the speed of its server, on the packaged llama.cpp server.

Where llama.cpp's own server is built (``make llama-server``; the Makefile passes
``--llama-server``), it is measured first against the local server on explainer requests
(``llama_server_batching``; ``--only-llama-server`` stops there).

First, with no server and no model (counts, not timings): the cost per neuron by scorer
(``scorer_cost``): LLM calls and prompt tokens of the detection, fuzzing and surprisal scorers
and of the simulator modes, each against all-at-once simulation's, at the pipeline's default
settings (``--cost-neurons 0`` skips it).

In one run, on the same all-at-once simulator prompts (excerpts of the embedded corpus,
64 whitespace tokens each), each way taking the excerpts one after another as the
pipeline does (so a server that keeps the previous prompt's shared prefix can reuse it),
in two rounds with the order of the ways rotated:

- **prompt evaluation**: the prompt alone (no echo, no log-probabilities), the server's
  raw prompt-evaluation throughput;
- **raw request**: the very request the simulator sends (echo, 20 log-probabilities), by
  plain HTTP, nothing read;
- **pipeline**: ``simulate`` through ``CachingClient`` (an empty response cache, so every
  call is made, parsed, checked and cached).

Then a lever: the same excerpts sent as raw requests ``--per-prompt`` at a time
(``simulator_prompt_for_excerpts``: the few-shot prefix and the explanation once, the
excerpts one after another), against one per prompt, each size on a fresh server warmed
with one prompt of its shape: seconds and prompt tokens per excerpt, and the
correlation of the values the two give the same tokens.

Prompt tokens are the server's count of the whole prompt, reused prefix included, so
tokens per second is the throughput a caller sees. Prints tokens per second of each, the
pipeline against the raw request and against prompt evaluation, and the explainer's
seconds per explanation. ``--lever "ARGS"`` runs
the same measures again with more llama_cpp.server settings (e.g. ``"--n_batch 2048"``,
``"--cache true"``), one server per setting, so each setting's effect is printed beside
the default's. Last, the soak (``llm_soak``): ``--soak`` calls (1,000 by default, 0 skips it)
on one server, its resident memory every 100 calls and throughput at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import shlex
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import openai

from neuron_assets.benches.cache_size import word_excerpts
from neuron_assets.explainers.explainer import explain
from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.prompts.templates import Record, simulator_prompt, simulator_prompt_for_excerpts
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.all_at_once import placeholder_distributions, simulate
from neuron_assets.simulators.modes.base import TOP_LOGPROBS

EXPLANATION = "words about sport"
PROMPT_ONLY = {"model": PACKAGED_MODEL_ALIAS, "max_tokens": 1, "temperature": 0.0}
ECHOED = {**PROMPT_ONLY, "echo": True, "logprobs": TOP_LOGPROBS}  # the all-at-once simulator's request


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def measure(extra_args: tuple[str, ...], excerpts: list[list[str]], rounds: int = 2) -> dict[str, float]:
    """Tokens per second of each way over ``excerpts``, and seconds per explanation."""
    totals = {name: [0.0, 0] for name in ("prompt evaluation", "raw request", "pipeline")}
    with (
        tempfile.TemporaryDirectory() as folder,
        LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS, extra_args=extra_args) as server,
    ):
        url = f"{server.base_url}/completions"
        raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)
        client = CachingClient(raw, "bench", ResponseCache(Path(folder)))

        def evaluate(tokens: list[str]) -> int:
            body = {**PROMPT_ONLY, "prompt": simulator_prompt(EXPLANATION, tokens).text}
            return post(url, body)["usage"]["prompt_tokens"]

        def raw_request(tokens: list[str]) -> int:
            return post(url, {**ECHOED, "prompt": simulator_prompt(EXPLANATION, tokens).text})["usage"]["prompt_tokens"]

        def pipeline(tokens: list[str]) -> int:  # a fresh cache each round (below), so every call is made
            return simulate(client, PACKAGED_MODEL_ALIAS, EXPLANATION, tokens, distribution_shift=0).prompt_tokens

        ways = [("prompt evaluation", evaluate), ("raw request", raw_request), ("pipeline", pipeline)]
        for round_ in range(rounds):  # each way takes the excerpts one after another, as the pipeline does
            for name, way in ways[round_ % 3 :] + ways[: round_ % 3]:
                for tokens in excerpts:
                    started = time.perf_counter()
                    n = way(tokens)
                    totals[name][0] += time.perf_counter() - started
                    totals[name][1] += n
            client = CachingClient(raw, "bench", ResponseCache(Path(folder) / f"round-{round_ + 1}"))
        records = [Record(tokens, [float(j % 7) for j in range(len(tokens))]) for tokens in excerpts[:5]]
        started = time.perf_counter()
        explanations = [explain(client, PACKAGED_MODEL_ALIAS, records, seed=seed, max_tokens=60) for seed in (1, 2)]
        per_explanation = (time.perf_counter() - started) / len(explanations)
    return {**{name: n / seconds for name, (seconds, n) in totals.items()}, "seconds per explanation": per_explanation}


def excerpts_per_prompt(
    extra_args: tuple[str, ...], excerpts: list[list[str]], per_prompt: int, rounds: int = 2
) -> dict[str, float]:
    """The batching lever: raw requests of one excerpt against ``per_prompt`` excerpts each.

    Each size gets a fresh server, warmed with one untimed prompt of its own shape, so that
    neither inherits the other's prefix-cache state; ``rounds`` passes over ``excerpts``.
    Returns seconds and prompt tokens per excerpt of each, and the correlation of the
    values the two give the same tokens.
    """
    measured = {}
    for size in (1, per_prompt):
        groups = [excerpts[start : start + size] for start in range(0, len(excerpts), size)]
        with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS, extra_args=extra_args) as server:
            url = f"{server.base_url}/completions"
            post(url, {**ECHOED, "prompt": simulator_prompt_for_excerpts(EXPLANATION, groups[0]).text})  # warm-up
            seconds, n = 0.0, 0
            for _ in range(rounds):
                values: list[float | None] = []
                for group in groups:
                    prompt = simulator_prompt_for_excerpts(EXPLANATION, group)
                    started = time.perf_counter()
                    response = post(url, {**ECHOED, "prompt": prompt.text})
                    seconds += time.perf_counter() - started
                    n += response["usage"]["prompt_tokens"]
                    logprobs = response["choices"][0]["logprobs"]
                    distributions = placeholder_distributions(
                        prompt, logprobs["text_offset"], logprobs["top_logprobs"], 0
                    )
                    values += [expected_value(distribution) for distribution in distributions]
        measured[size] = (seconds / (rounds * len(excerpts)), n / (rounds * len(excerpts)), values)
    pairs = [(a, b) for a, b in zip(measured[1][2], measured[per_prompt][2], strict=True) if None not in (a, b)]
    return {
        "s per excerpt, 1 per prompt": measured[1][0],
        "s per excerpt, several per prompt": measured[per_prompt][0],
        "prompt tokens per excerpt, 1 per prompt": measured[1][1],
        "prompt tokens per excerpt, several per prompt": measured[per_prompt][1],
        "r of values": float(np.corrcoef(np.array(pairs).T)[0, 1]) if len(pairs) > 2 else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--excerpts", type=int, default=6)
    parser.add_argument("--lever", action="append", default=[], help="more llama_cpp.server arguments, quoted")
    parser.add_argument("--per-prompt", type=int, default=3, help="excerpts in one prompt for the batching lever")
    parser.add_argument("--soak", type=int, default=1000, help="simulation calls of the memory soak (0: none)")
    parser.add_argument(
        "--llama-server", type=Path, default=None, help="llama.cpp's server binary (make llama-server) to measure"
    )
    parser.add_argument("--server-requests", type=int, default=24, help="explainer requests per llama-server way")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server's slots, and the concurrency beside 1")
    parser.add_argument("--only-llama-server", action="store_true", help="measure llama.cpp's server alone")
    from neuron_assets.benches import llama_server_batching, llm_soak, scorer_cost

    llm_soak.arguments(parser)
    scorer_cost.arguments(parser)
    args = parser.parse_args(argv)
    if args.cost_neurons:  # its first line names the CPU
        ways, pipeline_ways = scorer_cost.split_ways(args.cost_ways), scorer_cost.split_ways(args.cost_pipeline_ways)
        print(scorer_cost.section(args.cost_neurons, ways, pipeline_ways), end="\n\n")
    else:
        print(f"CPU: {cpu_model()}")
    if args.llama_server is None or not args.llama_server.is_file():
        print("llama.cpp's own server is not built (make llama-server): it is not measured")
    else:
        print(f"llama.cpp's own server, {args.llama_server}, against the local server:")
        llama_server_batching.compare(args.llama_server, args.server_requests, args.parallel)
    if args.only_llama_server:
        return 0
    excerpts = word_excerpts(args.excerpts)
    settings = [(), *(tuple(shlex.split(lever)) for lever in args.lever)]
    print(f"{len(excerpts)} all-at-once prompts of 64-token excerpts per way; 2 explanations of 5 excerpts")
    print(
        "| server settings | prompt evaluation (tokens/s) | raw request (tokens/s) | pipeline (tokens/s) | "
        "pipeline / raw request | pipeline / prompt evaluation | s per explanation |"
    )
    print("|---|---|---|---|---|---|---|")
    measured = [
        (" ".join(extra) or "default", measure(extra, excerpts) | excerpts_per_prompt(extra, excerpts, args.per_prompt))
        for extra in settings
    ]
    for name, m in measured:
        print(
            f"| {name} | {m['prompt evaluation']:.0f} | {m['raw request']:.0f} | "
            f"{m['pipeline']:.0f} | {m['pipeline'] / m['raw request']:.2f} | "
            f"{m['pipeline'] / m['prompt evaluation']:.2f} | {m['seconds per explanation']:.1f} |"
        )
    print(f"\nSeveral excerpts of one neuron in one raw request ({args.per_prompt} per prompt) against one per prompt:")
    print(
        "| server settings | s per excerpt, 1 per prompt | s per excerpt, several | speed-up | "
        "prompt tokens per excerpt, 1 / several | r of the values |"
    )
    print("|---|---|---|---|---|---|")
    for name, m in measured:
        one, several = m["s per excerpt, 1 per prompt"], m["s per excerpt, several per prompt"]
        print(
            f"| {name} | {one:.2f} | {several:.2f} | {one / several:.2f} | "
            f"{m['prompt tokens per excerpt, 1 per prompt']:.0f} / "
            f"{m['prompt tokens per excerpt, several per prompt']:.0f} | {m['r of values']:.2f} |"
        )
    if args.soak:
        llm_soak.run_soak(args.soak, args.every, args.excerpt_length, args.ceiling, {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
