"""Cost per neuron by scorer: LLM calls and prompt tokens of each classifier scorer and simulator
mode, against all-at-once simulation, at the pipeline's default settings. Run alone with
``python -m neuron_assets.benches.scorer_cost``; ``make bench-llm`` prints it first.

Nothing is timed and no model is run, so the numbers do not depend on the host. Each way of
scoring runs through its real code, per neuron, as the assets run it: the simulators through
``simulators.neurons.simulate_neurons`` on the neuron's ``select_scoring_excerpts`` (the
``scoring_excerpts`` asset's defaults: 5 top + 5 random scoring excerpts and the 2 + 3
calibration excerpts, which are simulated too), the classifier scorers through
``scorers.classifier_neurons.score_by_classifiers`` on its ``neuron_examples`` (the
``classifier_scores`` asset's defaults: 10 top, one excerpt per quantile bin that is not
silent, 10 silent random ones; 5 examples per detection or fuzzing call). Every call goes
through a ``CachingClient`` with no response cache and the openai SDK to ``CountingServer``:
an OpenAI-compatible stand-in on a loopback port that answers every request validly (JSON
arrays for the classifiers and the json simulator, a digit for one-at-a-time, the echoed
prompt with log-probabilities for all-at-once and surprisal) and counts each prompt's tokens
with the packaged model's own tokenizer (``PackagedTokenizer``: the GGUF loaded
``vocab_only``, its chat template applied to chat requests, as the local llama.cpp server
counts ``usage.prompt_tokens``).

The excerpts are the embedded corpus cut by ``sampling.excerpts.make_excerpts`` into 64
tokens of the packaged subject model's vocabulary (the same GGUF's). The activations are
synthetic (``neuron_records``): cost does not depend on them, except through how many
examples the classifier scorers ask about, and the records are made so that both quantile
bins give one (22 examples; a neuron whose quantile excerpts are silent gets 20).

Printed: each neuron's calls and prompt tokens per way with one explanation each (the study's
unit), as multiples of all-at-once simulation's, and their means; then the means again at the
assets' default methods (each neuron's explanation, lookup explanation and a control) with a
response cache per neuron, which answers surprisal's neutral calls for every explanation after
the first. ``--check-model`` also sends each way's first request to llama.cpp with the model's
weights loaded and prints both counts of its prompt (minutes; the counts agreed when written).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from neuron_assets.benches.counting_server import CountingServer, PackagedTokenizer
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_GGUF, PACKAGED_MODEL_ALIAS, packaged_gguf_path

SIMULATION_MODES = ("all_at_once", "json", "one_at_a_time")
CLASSIFIER_SCORERS = ("detection", "fuzzing", "surprisal")
WAYS = SIMULATION_MODES + CLASSIFIER_SCORERS
REFERENCE = "all_at_once"
MODEL = PACKAGED_MODEL_ALIAS
LAYER = 2
# Explanations of the length the explainer writes (the completion of "the main thing this neuron does is find"),
# a different one for every explanation of every neuron (``explanation_text``).
EXPLANATIONS = (
    "mentions of sport teams and the scores of their matches",
    "words about fires, smoke and the firefighters who fight them",
    "names of countries and their governments in news about elections",
    "the word 'said' and other verbs that report speech",
    "numbers of people, such as dead, injured or arrested",
    "days of the week and other words that say when something happened",
    "words about money, prices and the economy",
    "the first word of a quotation",
)
# The recording's defaults for the synthetic records (``activation_records``: top_k 20 per pool,
# n_random 20; ``RecordingSettings``: two quantile bins of 5).
TOP_K = 20
N_RANDOM = 20
N_SILENT_RANDOM = 14  # random excerpts whose largest activation is under the silent bound
QUANTILE_BINS = ((0.5, 0.9), (0.9, 0.99))
PER_BIN = 5
LOCAL_SERVER_CONTEXT = 4096  # LocalLlamaServer's n_ctx: a longer prompt would be refused


@dataclass(frozen=True)
class Defaults:
    """The settings counted: the pipeline's asset defaults, read from their Dagster configs."""

    n_top: int
    n_random: int
    n_calibration_top: int
    n_calibration_random: int
    classifier_top: int
    classifier_non_activating: int
    silent_fraction: float
    batch_size: int
    seed: int

    @classmethod
    def of_pipeline(cls) -> Defaults:
        from neuron_assets.defs.classifiers import ClassifierScoreConfig
        from neuron_assets.defs.simulation import ScoringExcerptConfig

        excerpts, classifiers = ScoringExcerptConfig(), ClassifierScoreConfig()
        return cls(
            excerpts.n_top,
            excerpts.n_random,
            excerpts.n_calibration_top,
            excerpts.n_calibration_random,
            classifiers.n_top,
            classifiers.n_non_activating,
            classifiers.silent_fraction,
            classifiers.batch_size,
            classifiers.seed,
        )


def corpus_excerpts(tokenizer: PackagedTokenizer, length: int = 64) -> pl.DataFrame:
    """The embedded corpus cut into excerpts of ``length`` tokens of the packaged vocabulary, by the pipeline's code."""
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
    from neuron_assets.sampling.corpus import DEFAULT_CORPUS, load_documents
    from neuron_assets.sampling.excerpts import make_excerpts

    documents = load_documents(DEFAULT_CORPUS)
    return make_excerpts(
        documents, tokenizer.subject_tokens, tokenizer.token_text, PACKAGED_SUBJECT_MODEL, length=length
    )


def _record_rows(
    neuron: int, pool: str, kind: str, quantile_bin: str | None, ids: Sequence[int], acts: np.ndarray
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "layer": pl.Series([LAYER] * len(ids), dtype=pl.Int64),
            "neuron": pl.Series([neuron] * len(ids), dtype=pl.Int64),
            "pool": [pool] * len(ids),
            "kind": [kind] * len(ids),
            "quantile_bin": pl.Series([quantile_bin] * len(ids), dtype=pl.String),
            "rank": pl.Series(range(len(ids)), dtype=pl.Int64),
            "excerpt_id": pl.Series(list(ids), dtype=pl.Int64),
            "max_activation": acts.max(axis=1).astype(np.float64),
            "activations": pl.Series(acts.astype(np.float64), dtype=pl.List(pl.Float64)),
        }
    )


def neuron_records(neuron: int, excerpts: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """One synthetic neuron's ``activation_records`` in the recorder's layout: the top ``TOP_K``
    of each pool (peaks falling from 10), ``N_RANDOM`` random scoring-pool excerpts of which
    ``N_SILENT_RANDOM`` are silent, and the quantile bins of the random sample's maxima.

    Neuron ``neuron`` takes its own excerpts of each pool, the ``neuron``-th block of them."""
    from neuron_assets.sampling.excerpts import EXPLANATION_POOL, SCORING_POOL

    rng = np.random.default_rng(seed + neuron)
    length = len(excerpts["tokens"][0])
    scoring = excerpts.filter(pl.col("pool") == SCORING_POOL)["excerpt_id"].to_list()
    explaining = excerpts.filter(pl.col("pool") == EXPLANATION_POOL)["excerpt_id"].to_list()
    block = TOP_K + N_RANDOM
    if len(scoring) < block * (neuron + 1) or len(explaining) < TOP_K * (neuron + 1):
        raise ValueError(f"the corpus holds too few excerpts for {neuron + 1} neurons of {block} excerpts each")
    top_ids = scoring[block * neuron : block * neuron + TOP_K]
    random_ids = scoring[block * neuron + TOP_K : block * (neuron + 1)]
    explanation_ids = explaining[TOP_K * neuron : TOP_K * (neuron + 1)]

    def firing(peaks: np.ndarray) -> np.ndarray:
        """Excerpts that fire on a few tokens, each at its peak, and stay near 0 elsewhere."""
        acts = rng.uniform(0.0, 0.05, size=(len(peaks), length)) * peaks[:, None]
        for row, peak in enumerate(peaks):
            acts[row, rng.choice(length, size=3, replace=False)] = peak * np.array([1.0, 0.7, 0.6])
        return acts

    top = firing(np.linspace(10.0, 4.0, TOP_K))
    explanation_top = firing(np.linspace(10.0, 4.0, TOP_K))
    random_peaks = np.concatenate(
        [rng.uniform(0.05, 0.5, N_SILENT_RANDOM), rng.uniform(2.0, 4.0, N_RANDOM - N_SILENT_RANDOM)]
    )
    random_acts = firing(rng.permutation(random_peaks))
    frames = [
        _record_rows(neuron, SCORING_POOL, "top", None, top_ids, top),
        _record_rows(neuron, EXPLANATION_POOL, "top", None, explanation_ids, explanation_top),
        _record_rows(neuron, SCORING_POOL, "random", None, random_ids, random_acts),
    ]
    maxima = random_acts.max(axis=1)
    for lo, hi in QUANTILE_BINS:  # as the recorder draws them: the first PER_BIN excerpts whose maximum is in the bin
        low, high = np.quantile(maxima, [lo, hi])
        rows = np.flatnonzero((maxima >= low) & (maxima <= high))[:PER_BIN]
        frames.append(
            _record_rows(
                neuron, SCORING_POOL, "quantile", f"{lo}-{hi}", [random_ids[r] for r in rows], random_acts[rows]
            )
        )
    return pl.concat(frames, how="vertical")


@dataclass(frozen=True)
class WayCost:
    """What one way of scoring cost for one neuron's explanations.

    ``calls`` and ``prompt_tokens``: the stand-in's own count of the requests it answered;
    ``stats``: the client's ``CallStats`` of the same run; ``table_prompt_tokens``: the prompt
    tokens the scorer's output table records; ``items``: the excerpts simulated or examples asked;
    ``first_request``: the first request it sent (endpoint, prompt tokens counted, body)."""

    way: str
    neuron: int
    calls: int
    prompt_tokens: int
    largest_prompt: int
    stats: Any
    table_prompt_tokens: int
    items: int
    first_request: tuple[str, int, dict[str, Any]] | None


@dataclass(frozen=True)
class Setup:
    """Everything a run asks about: the neurons' explanations, scoring excerpts and classifier examples."""

    defaults: Defaults
    excerpts: pl.DataFrame
    explanations: pl.DataFrame  # the jobs: layer, neuron, sample, method, explanation_neuron, explanation
    scoring: pl.DataFrame
    examples: dict[tuple[int, int], pl.DataFrame]
    ten_handling: dict[str, str]
    graded: bool

    @property
    def neurons(self) -> list[int]:
        return sorted(set(self.explanations["neuron"].to_list()))


def make_setup(
    server: CountingServer, n_neurons: int, length: int = 64, methods: Sequence[str] = ("explanation",)
) -> Setup:
    """The neurons' records, scoring excerpts and classifier examples, chosen by the pipeline's own
    functions at its defaults, their explanations' jobs (``methods``; 'control' is another neuron's
    explanation, as ``explanation_jobs`` gives it), and the backend's answers to the probes the
    assets ask once per run (how "10" is written, whether graded answers can be read)."""
    from neuron_assets.baselines.controls import explanation_jobs
    from neuron_assets.scorers.classifier_neurons import neuron_examples
    from neuron_assets.scorers.methods import CONTROL, EXPLANATION
    from neuron_assets.scorers.scoring import select_scoring_excerpts
    from neuron_assets.simulators.probes import gives_chat_logprobs, probe_ten_handling

    defaults = Defaults.of_pipeline()
    excerpts = corpus_excerpts(server.tokenizer, length)
    records = pl.concat([neuron_records(n, excerpts) for n in range(n_neurons)], how="vertical")
    own = [m for m in methods if m != CONTROL]  # a control is another neuron's, added by explanation_jobs
    stored = pl.DataFrame(
        [
            {
                "layer": LAYER,
                "neuron": n,
                "sample": 0,
                "method": method,
                "explanation": explanation_text(n * len(own) + k),
            }
            for n in range(n_neurons)
            for k, method in enumerate(own)
        ],
        schema={
            "layer": pl.Int64,
            "neuron": pl.Int64,
            "sample": pl.Int64,
            "method": pl.String,
            "explanation": pl.String,
        },
    )
    if EXPLANATION not in methods and CONTROL in methods:
        raise ValueError("a control is another neuron's explanation: count 'explanation' too")
    jobs = (
        explanation_jobs(stored, list(methods))
        if CONTROL in methods
        else stored.with_columns(explanation_neuron=pl.col("neuron"))
    )
    scoring = select_scoring_excerpts(
        records, defaults.n_top, defaults.n_random, defaults.n_calibration_top, defaults.n_calibration_random
    )
    examples = neuron_examples(
        jobs,
        records,
        excerpts,
        n_top=defaults.classifier_top,
        n_non_activating=defaults.classifier_non_activating,
        silent_fraction=defaults.silent_fraction,
        seed=defaults.seed,
    )
    probe = client_for(server)  # the probes, asked once per run, are not a neuron's cost
    ten = {mode: probe_ten_handling(probe, MODEL, mode) for mode in SIMULATION_MODES}
    return Setup(defaults, excerpts, jobs, scoring, examples, ten, gives_chat_logprobs(probe, MODEL))


def explanation_text(i: int) -> str:
    """The ``i``-th explanation: ``EXPLANATIONS`` in turn, each repeat told apart, so no two
    explanations of a run are the same prompt (a response cache would answer the second)."""
    text = EXPLANATIONS[i % len(EXPLANATIONS)]
    return text if i < len(EXPLANATIONS) else f"{text} (reading {i // len(EXPLANATIONS) + 1})"


def client_for(server: CountingServer, cache_folder: Path | None = None) -> Any:
    """A ``CachingClient`` on the stand-in through the openai SDK, replies held to a JSON schema as
    the local server takes them; no response cache unless ``cache_folder`` is given."""
    import openai

    from neuron_assets.llm.client import CachingClient
    from neuron_assets.llm.response_cache import ResponseCache

    raw = openai.OpenAI(base_url=server.url, api_key="not-needed", max_retries=0)
    cache = ResponseCache(cache_folder) if cache_folder is not None else None
    return CachingClient(raw, "scorer-cost", cache, json_schema_format="json_object")


def run_way(server: CountingServer, setup: Setup, way: str, neuron: int, cache_folder: Path | None = None) -> WayCost:
    """One neuron's explanations scored one way through the assets' own per-neuron loop; what it cost."""
    from neuron_assets.scorers.classifier_neurons import score_by_classifiers
    from neuron_assets.simulators.neurons import simulate_neurons

    client = client_for(server, cache_folder)
    jobs = setup.explanations.filter(pl.col("neuron") == neuron)
    first = len(server.requests)
    if way in SIMULATION_MODES:
        scoring = setup.scoring.filter(pl.col("neuron") == neuron)
        table = simulate_neurons(
            client,
            MODEL,
            jobs,
            scoring,
            setup.excerpts,
            mode=way,
            distribution_shift=0,
            ten_handling=setup.ten_handling[way],
        )
        table_tokens, items = int(table["prompt_tokens"].sum()), scoring.height
    else:
        d = setup.defaults
        table = score_by_classifiers(
            client,
            MODEL,
            jobs,
            {key: frame for key, frame in setup.examples.items() if key == (LAYER, neuron)},
            scorers=[way],
            batch_size=d.batch_size,
            use_logprobs=setup.graded,
            silent_fraction=d.silent_fraction,
            seed=d.seed,
        )
        table_tokens, items = int(table["prompt_tokens"].sum()), setup.examples[LAYER, neuron].height
    answered = server.requests[first:]
    return WayCost(
        way,
        neuron,
        len(answered),
        sum(n for _, n, _ in answered),
        max((n for _, n, _ in answered), default=0),
        client.stats,
        table_tokens,
        items,
        answered[0] if answered else None,
    )


def measure(
    n_neurons: int = 3,
    ways: Sequence[str] = WAYS,
    length: int = 64,
    tokenizer: PackagedTokenizer | None = None,
    *,
    pipeline_methods: bool = False,
) -> tuple[Setup, list[WayCost]]:
    """Each neuron scored by each way in ``ways``: (the setup, a ``WayCost`` per neuron and way).

    By default each neuron has one explanation (the study's unit) and no response cache, so
    every call is made. With ``pipeline_methods`` each has the explanations the assets score by
    default (its own, its lookup explanation and a control: another neuron's) and each way of
    each neuron a fresh response cache, as a run of the pipeline has: a request made twice for
    one neuron (surprisal's neutral prefix, the same for every explanation) is answered by it."""
    import tempfile

    unknown = [way for way in ways if way not in WAYS]
    if unknown:
        raise ValueError(f"ways {unknown} are not among {list(WAYS)}")
    if pipeline_methods and n_neurons < 2:
        raise ValueError("a control is another neuron's explanation: count at least 2 neurons with pipeline_methods")
    methods = default_methods() if pipeline_methods else ("explanation",)
    with CountingServer(tokenizer or PackagedTokenizer()) as server, tempfile.TemporaryDirectory() as folder:
        setup = make_setup(server, n_neurons, length, methods)

        def cache(way: str, neuron: int) -> Path | None:
            return Path(folder) / f"{way}-{neuron}" if pipeline_methods else None

        return setup, [
            run_way(server, setup, way, neuron, cache(way, neuron)) for neuron in setup.neurons for way in ways
        ]


def default_methods() -> tuple[str, ...]:
    """The explanations the ``simulations`` and ``classifier_scores`` assets score by default (the same)."""
    from neuron_assets.defs.classifiers import ClassifierScoreConfig
    from neuron_assets.defs.simulation import SimulationConfig

    simulated, classified = SimulationConfig().methods, ClassifierScoreConfig().methods
    if simulated != classified:
        raise ValueError(f"simulations score {simulated} by default but classifier_scores {classified}")
    return tuple(simulated)


def ratios(costs: Sequence[WayCost]) -> dict[tuple[int, str], tuple[float, float]]:
    """Each neuron's and way's (calls, prompt tokens) as multiples of all-at-once simulation's for that neuron."""
    reference = {cost.neuron: cost for cost in costs if cost.way == REFERENCE}
    return {
        (c.neuron, c.way): (c.calls / reference[c.neuron].calls, c.prompt_tokens / reference[c.neuron].prompt_tokens)
        for c in costs
    }


def mean_costs(costs: Sequence[WayCost]) -> dict[str, dict[str, float]]:
    """Per way: mean calls, cache hits and prompt tokens per neuron, and the largest single prompt."""
    out = {}
    for way in dict.fromkeys(c.way for c in costs):
        mine = [c for c in costs if c.way == way]
        out[way] = {
            "calls": sum(c.calls for c in mine) / len(mine),
            "cache_hits": sum(c.stats.cache_hits for c in mine) / len(mine),
            "prompt_tokens": sum(c.prompt_tokens for c in mine) / len(mine),
            "largest_prompt": max(c.largest_prompt for c in mine),
        }
    return out


WHAT = {
    "all_at_once": "simulation, all_at_once",
    "json": "simulation, json",
    "one_at_a_time": "simulation, one_at_a_time",
    "detection": "detection",
    "fuzzing": "fuzzing",
    "surprisal": "surprisal",
}
PIPELINE_WAYS = tuple(way for way in WAYS if way != "one_at_a_time")  # 2,880 calls a neuron: too slow to run here


def settings_line(setup: Setup) -> str:
    from neuron_assets.prompts.templates import EXAMPLE_NEURONS

    d = setup.defaults
    simulated = d.n_top + d.n_random + d.n_calibration_top + d.n_calibration_random
    length = len(setup.excerpts["tokens"][0])
    examples = "/".join(str(n) for n in sorted({frame.height for frame in setup.examples.values()}))
    return (
        f"settings (the assets' defaults): {length}-token excerpts of the embedded corpus; simulation of {simulated} "
        f"excerpts per explanation ({d.n_top} top + {d.n_random} random scoring excerpts, {d.n_calibration_top} + "
        f"{d.n_calibration_random} calibration), one call per excerpt (one_at_a_time: per token), the "
        f"{len(EXAMPLE_NEURONS)} few-shot neurons, ten read as "
        + ", ".join(f"{mode} {reading}" for mode, reading in setup.ten_handling.items())
        + f"; classifier scorers on {examples} examples per explanation ({d.classifier_top} top + one per quantile "
        f"bin + {d.classifier_non_activating} silent random), {d.batch_size} per detection or fuzzing call, graded "
        f"answers {'asked' if setup.graded else 'not asked'}, no few-shot examples; surprisal 2 calls per example"
    )


def report(setup: Setup, costs: Sequence[WayCost], pipeline: Sequence[WayCost] = ()) -> str:
    """The printed section: the host, the tokenizer and settings counted, a row per neuron and way,
    the means per neuron and, where ``pipeline`` is given, the means at the assets' default methods."""
    lines = [
        f"CPU: {cpu_model()}",
        "Cost per neuron by scorer: LLM calls and prompt tokens, against all-at-once simulation (counts, not timings)",
        f"prompt tokens counted with the packaged model's tokenizer, {PACKAGED_GGUF} (llama.cpp vocab_only; chat "
        "requests in its chat template), as the local server counts usage.prompt_tokens; no model was run",
        settings_line(setup),
        "",
        "One explanation per neuron, no response cache (every call made):",
        "| neuron | scorer / mode | LLM calls | prompt tokens | calls ÷ all-at-once | prompt tokens ÷ all-at-once |",
        "|---|---|---:|---:|---:|---:|",
    ]
    ratio = ratios(costs)
    for c in costs:
        calls, tokens = ratio[c.neuron, c.way]
        lines.append(f"| {c.neuron} | {WHAT[c.way]} | {c.calls:,} | {c.prompt_tokens:,} | {calls:.2f} | {tokens:.2f} |")
    means = mean_costs(costs)
    reference = means[REFERENCE]
    lines += [
        "",
        f"Mean per neuron over {len(setup.neurons)} neurons (ratios of the means; largest prompt: of any one call, "
        f"in tokens; the local server's context is {LOCAL_SERVER_CONTEXT:,}):",
        "| scorer / mode | LLM calls | prompt tokens | calls ÷ all-at-once | prompt tokens ÷ all-at-once | "
        "largest prompt |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way, m in means.items():
        lines.append(
            f"| {WHAT[way]} | {m['calls']:,.1f} | {m['prompt_tokens']:,.0f} | {m['calls'] / reference['calls']:.2f} | "
            f"{m['prompt_tokens'] / reference['prompt_tokens']:.2f} | {m['largest_prompt']:,} |"
        )
    if pipeline:
        means = mean_costs(pipeline)
        reference = means[REFERENCE]
        lines += [
            "",
            f"At the assets' default methods ({', '.join(default_methods())}: 3 explanations per neuron) with a "
            f"response cache, mean per neuron over {len(setup.neurons)} neurons:",
            "| scorer / mode | LLM calls | answered from the cache | prompt tokens | calls ÷ all-at-once | "
            "prompt tokens ÷ all-at-once |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for way, m in means.items():
            lines.append(
                f"| {WHAT[way]} | {m['calls']:,.1f} | {m['cache_hits']:,.1f} | {m['prompt_tokens']:,.0f} | "
                f"{m['calls'] / reference['calls']:.2f} | {m['prompt_tokens'] / reference['prompt_tokens']:.2f} |"
            )
    return "\n".join(lines)


def measure_all(
    n_neurons: int = 3, ways: Sequence[str] = WAYS, pipeline_ways: Sequence[str] = PIPELINE_WAYS
) -> tuple[Setup, list[WayCost], list[WayCost]]:
    """Both runs, one explanation per neuron and the assets' default methods, with one tokenizer."""
    if any(chosen and REFERENCE not in chosen for chosen in (ways, pipeline_ways)):
        raise ValueError(f"the ratios are to {REFERENCE!r}: count it too")
    tokenizer = PackagedTokenizer()
    setup, costs = measure(n_neurons, ways, tokenizer=tokenizer)
    pipeline = []
    if pipeline_ways and n_neurons >= 2:  # a control is another neuron's explanation
        pipeline = measure(n_neurons, pipeline_ways, tokenizer=tokenizer, pipeline_methods=True)[1]
    return setup, costs, pipeline


def section(n_neurons: int = 3, ways: Sequence[str] = WAYS, pipeline_ways: Sequence[str] = PIPELINE_WAYS) -> str:
    """The whole measure as ``make bench-llm`` prints it first."""
    return report(*measure_all(n_neurons, ways, pipeline_ways))


def check_with_model(costs: Sequence[WayCost], threads: int = 1) -> str:
    """The stand-in's count of each way's first request against llama.cpp's own, with the packaged
    model's weights loaded: the request sent again through ``Llama.create_completion`` or
    ``create_chat_completion`` (what the local server calls), one token generated. Minutes on a
    busy host; not part of ``make bench-llm``."""
    from llama_cpp import Llama
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):
        model = Llama(
            model_path=str(packaged_gguf_path()),
            n_ctx=LOCAL_SERVER_CONTEXT,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
    lines = [
        f"Prompt tokens of each way's first request: the stand-in's count against llama.cpp's with {PACKAGED_GGUF}'s "
        "weights loaded",
        "| scorer / mode | endpoint | stand-in | llama.cpp |",
        "|---|---|---:|---:|",
    ]
    firsts: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for cost in costs:  # the first neuron's
        if cost.first_request is not None:
            firsts.setdefault(cost.way, cost.first_request)
    for way, (endpoint, counted, body) in firsts.items():
        if endpoint == "chat":
            response = model.create_chat_completion(messages=body["messages"], max_tokens=1, temperature=0.0)
        else:
            response = model.create_completion(body["prompt"], max_tokens=1, temperature=0.0)
        model.reset()
        lines.append(f"| {WHAT[way]} | {endpoint} | {counted:,} | {response['usage']['prompt_tokens']:,} |")
    return "\n".join(lines)


def split_ways(text: str) -> list[str]:
    return [way.strip() for way in text.split(",") if way.strip()]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cost-neurons", type=int, default=3, help="neurons of the cost per neuron by scorer")
    parser.add_argument("--cost-ways", default=",".join(WAYS), help=f"ways costed, among {','.join(WAYS)}")
    parser.add_argument(
        "--cost-pipeline-ways",
        default=",".join(PIPELINE_WAYS),
        help="ways costed again at the assets' default methods with a response cache ('' skips it)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(parser)
    parser.add_argument(
        "--check-model",
        action="store_true",
        help="also send each way's first request to llama.cpp with the packaged model's weights, comparing counts",
    )
    args = parser.parse_args(argv)
    setup, costs, pipeline = measure_all(
        args.cost_neurons, split_ways(args.cost_ways), split_ways(args.cost_pipeline_ways)
    )
    print(report(setup, costs, pipeline))
    if args.check_model:
        print()
        print(check_with_model(costs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
