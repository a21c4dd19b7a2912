"""``make bench-modes``: the simulator modes side by side on the local llama.cpp server.

One run: record a few neurons of the packaged subject model, explain them once, then
simulate each neuron's scoring excerpts with every mode in turn, as the pipeline does
(a neuron's excerpts one after another, so llama.cpp reuses the shared prompt prefix),
rotating which mode goes first from neuron to neuron. No response cache: every number
is a real call. Prints what each mode costs (calls, tokens, seconds, simulated tokens per
second, the all-at-once speed-up over one-at-a-time), how many tokens got a value, each
mode's score against the true activations, and how far the modes agree with each other
(Pearson correlation over the tokens both simulated).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass, field

import numpy as np
import openai

from neuron_assets.explainers.explainer import explain_neurons
from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.recording.recorder import NeuronSelection, RecordingSettings, random_sample, record, record_tables
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL, load_subject_model
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts
from neuron_assets.scorers.scoring import score, select_scoring_excerpts
from neuron_assets.simulators.modes import MODES
from neuron_assets.simulators.modes.base import SimulationError
from neuron_assets.simulators.probes import probe_ten_handling

ORDER = ("all_at_once", "chat_logprobs", "one_at_a_time", "json")


@dataclass
class ModeRun:
    """What one mode produced and spent over all excerpts."""

    client: CachingClient
    ten_handling: str = "single_token"
    seconds: float = 0.0
    tokens: int = 0
    failed_excerpts: int = 0
    misaligned: int = 0
    simulated: list[list[float | None]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=PACKAGED_SUBJECT_MODEL)
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--neurons", type=int, default=2)
    parser.add_argument("--top", type=int, default=2, help="top scoring excerpts per neuron")
    parser.add_argument("--random", type=int, default=2, help="random scoring excerpts per neuron")
    args = parser.parse_args(argv)

    model = load_subject_model(args.model)
    excerpts = make_excerpts(load_documents("lee"), model.tokenize, model.token_text, model.name)
    neurons = NeuronSelection("random", n=args.neurons, seed=0).resolve(model.d_mlp, args.layer)
    recorders = record(
        model.run_with_mlp_hooks,
        excerpts,
        {args.layer: neurons},
        random_sample(excerpts, max(args.random, 1), 0),
        start_token_id=model.document_start_token_id(),
    )
    records, _, _ = record_tables(recorders, RecordingSettings())

    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server:
        raw = openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0)
        explanations = explain_neurons(
            CachingClient(raw, server.base_url, None), PACKAGED_MODEL_ALIAS, records, excerpts
        )
        jobs = (
            explanations.select("layer", "neuron", "explanation")
            .join(select_scoring_excerpts(records, args.top, args.random), on=["layer", "neuron"])
            .join(excerpts.select("excerpt_id", "tokens"), on="excerpt_id")
            .sort("neuron", "excerpt_kind", "excerpt_id", descending=[False, True, False])
        )
        # json replies held to a schema, in the form the local llama-cpp-python server takes
        runs = {
            mode: ModeRun(CachingClient(raw, server.base_url, None, json_schema_format="json_object")) for mode in ORDER
        }
        for mode, run in runs.items():
            run.ten_handling = probe_ten_handling(run.client, PACKAGED_MODEL_ALIAS, mode)
        simulated: dict[str, list[list[float | None]]] = {mode: [] for mode in ORDER}
        for i, (_, neuron_jobs) in enumerate(jobs.group_by("neuron", maintain_order=True)):
            for mode in ORDER[i % len(ORDER) :] + ORDER[: i % len(ORDER)]:
                for explanation, tokens in neuron_jobs.select("explanation", "tokens").iter_rows():
                    simulated[mode].append(_simulate(runs[mode], mode, explanation, tokens))
        for mode, run in runs.items():
            run.simulated = simulated[mode]

    true = jobs["activations"].to_list()
    print(f"CPU: {cpu_model()}")
    print(
        f"subject model {model.name}, layer {args.layer}, neurons {neurons}; simulator {PACKAGED_MODEL_ALIAS} "
        f"on llama.cpp; {len(jobs)} excerpts, {sum(len(t) for t in true)} tokens, the same for every mode"
    )
    for row in explanations.select("neuron", "explanation").iter_rows():
        print(f"  neuron {row[0]}: {row[1]}")
    _print_costs(runs)
    _print_scores(runs, true)
    _print_agreement(runs)


def _simulate(run: ModeRun, mode: str, explanation: str, tokens: list[str]) -> list[float | None]:
    simulate = MODES[mode].simulate
    options: dict[str, object] = {} if mode == "json" else {"ten_handling": run.ten_handling}
    if mode == "all_at_once":
        options["distribution_shift"] = 0
    start = time.perf_counter()
    try:
        result = simulate(run.client, PACKAGED_MODEL_ALIAS, explanation, tokens, **options)
        values, misaligned = result.expected, result.n_misaligned
    except (SimulationError, LLMError):
        values, misaligned = [None] * len(tokens), 0
        run.failed_excerpts += 1
    run.seconds += time.perf_counter() - start
    run.tokens += len(tokens)
    run.misaligned += misaligned
    return values


def _print_costs(runs: dict[str, ModeRun]) -> None:
    print("\nthe value 10 is read as: " + ", ".join(f"{mode} {run.ten_handling}" for mode, run in runs.items()))
    print(
        f"\n{'mode':14s} {'calls':>6s} {'prompt tok':>10s} {'compl tok':>9s} {'seconds':>8s} "
        f"{'sim tok/s':>9s} {'valued':>7s} {'misalig':>7s} {'failed':>6s}"
    )
    for mode, run in runs.items():
        stats = run.client.stats
        valued = sum(v is not None for values in run.simulated for v in values)
        print(
            f"{mode:14s} {stats.calls:6d} {stats.prompt_tokens:10d} {stats.completion_tokens:9d} "
            f"{run.seconds:8.1f} {run.tokens / run.seconds:9.2f} {valued / run.tokens:7.0%} "
            f"{run.misaligned:7d} {run.failed_excerpts:6d}"
        )
    one, together = runs["one_at_a_time"], runs["all_at_once"]
    print(
        f"all-at-once speed-up over one-at-a-time (same tokens, same run): {one.seconds / together.seconds:.2f}x "
        f"in seconds, {one.client.stats.prompt_tokens / together.client.stats.prompt_tokens:.1f}x in prompt "
        f"tokens billed, {one.client.stats.calls / together.client.stats.calls:.0f}x in calls"
    )
    print("valued: share of tokens that got a value; failed: excerpts whose reply could not be read at all")


def _print_scores(runs: dict[str, ModeRun], true: list[list[float]]) -> None:
    print(
        "\nscore against the true activations (pooled correlation over all tokens, "
        "an unvalued one counted as 0; n tokens):"
    )
    for mode, run in runs.items():
        result = score(run.simulated, true)
        shown = (
            f"{result.correlation:.3f}" if result.correlation is not None else f"undefined ({result.undefined_reason})"
        )
        print(f"  {mode:14s} {shown}  n={result.n_tokens}")


def _print_agreement(runs: dict[str, ModeRun]) -> None:
    print("\nagreement between modes (Pearson r over tokens both valued; n tokens):")
    flat = {mode: [v for values in run.simulated for v in values] for mode, run in runs.items()}
    for a, b in itertools.combinations(ORDER, 2):
        pairs = np.array([(x, y) for x, y in zip(flat[a], flat[b], strict=True) if x is not None and y is not None])
        if len(pairs) < 3 or pairs[:, 0].std() == 0 or pairs[:, 1].std() == 0:
            shown = "undefined (fewer than 3 common tokens, or one side constant)"
        else:
            shown = f"{np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]:.3f}"
        print(f"  {a:14s} vs {b:14s} {shown}  n={len(pairs)}")


if __name__ == "__main__":
    main()
