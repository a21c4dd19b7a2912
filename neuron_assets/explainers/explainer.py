"""The explainer: one chat call per sample, answer cleaned into a one-line explanation.

Explanations come from a neuron's top-activating excerpts (method ``explanation``) or
from its token lookup table's top tokens (``lookup_explanation``, a baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import polars as pl

from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import fit_to_context, map_neurons
from neuron_assets.prompts.templates import (
    EXPLAINER_PROMPT_VERSION,
    LOOKUP_EXPLAINER_PROMPT_VERSION,
    ExplanationParseError,
    Record,
    describe_shortening,
    explainer_messages,
    lookup_explainer_messages,
    parse_explanation,
    shortening_steps,
)
from neuron_assets.sampling.excerpts import EXPLANATION_POOL
from neuron_assets.scorers.methods import EXPLANATION, LOOKUP_EXPLANATION
from neuron_assets.storage.schemas import Explanations, polars_schema

EXPLANATION_SCHEMA = polars_schema(
    Explanations, ["layer", "neuron", "sample", "explanation", "raw_reply", "excerpt_ids", "prompt_shortening"]
)


@dataclass(frozen=True)
class Explanation:
    text: str
    raw_reply: str
    n_shown: int  # excerpts in the prompt: fewer than asked when the prompt was shortened
    shortening: str | None = None


def explain(
    client: Any,
    model: str,
    records: Sequence[Record],
    *,
    n_samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 60,
    max_attempts: int = 3,
    seed: int = 0,
) -> list[Explanation]:
    """Sample ``n_samples`` explanations of the neuron shown by ``records``.

    A reply that holds no explanation is sampled again, up to ``max_attempts`` times per
    sample; after that the error names the last reply so the user sees what came back.
    A prompt the backend refuses as too long is shortened (``shortening_steps``: few-shot
    neurons first, then the lowest-ranked excerpts) and the shortening is recorded.
    """

    def ask(size: tuple[int, int], request_seed: int) -> dict[str, Any]:
        n_fewshot, n_shown = size
        return client.chat.completions.create(
            model=model,
            messages=explainer_messages(records[:n_shown], n_fewshot),
            temperature=temperature,
            max_tokens=max_tokens,
            seed=request_seed,
        )

    steps = shortening_steps(len(records))
    step = 0
    explanations = []
    for sample in range(n_samples):
        last_error: ExplanationParseError | None = None
        for attempt in range(max_attempts):
            response, step = fit_to_context(
                steps,
                step,
                partial(ask, request_seed=seed + 1000 * sample + attempt),
                too_long=f"even one excerpt without few-shot examples is too long for {model!r}",
            )
            n_fewshot, n_shown = steps[step]
            raw = response["choices"][0]["message"]["content"] or ""
            try:
                shortening = describe_shortening(n_fewshot, n_shown, len(records))
                explanations.append(Explanation(parse_explanation(raw), raw, n_shown, shortening))
                break
            except ExplanationParseError as error:
                last_error = error
        else:
            raise ExplanationParseError(
                f"{max_attempts} replies from {model!r} held no explanation; last: {last_error}"
            )
    return explanations


def explain_neurons(
    client: Any,
    model: str,
    records: pl.DataFrame,
    excerpts: pl.DataFrame,
    *,
    n_examples: int = 5,
    n_samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 60,
    seed: int = 0,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Explain every neuron in ``records`` from its top ``n_examples`` explanation-pool excerpts.

    Up to ``concurrency`` neurons are explained at once. A neuron whose explanation fails
    does not stop the others; the failures are raised together as ``NeuronFailures``.

    Returns rows (layer, neuron, sample, explanation, raw_reply, explainer_model,
    prompt_version, temperature, excerpt_ids, prompt_shortening); ``excerpt_ids`` are the
    excerpts the prompt really showed.
    """
    shown = (
        records.filter((pl.col("kind") == "top") & (pl.col("pool") == EXPLANATION_POOL) & (pl.col("rank") < n_examples))
        .join(excerpts.select("excerpt_id", "tokens"), on="excerpt_id")
        .sort("layer", "neuron", "rank")
        .group_by("layer", "neuron", maintain_order=True)
        .agg("excerpt_id", "tokens", "activations")
    )
    fewest = shown["excerpt_id"].list.len().min() or 0
    if fewest < n_examples:
        raise ValueError(
            f"the explainer is to be shown {n_examples} top excerpts per neuron but only {fewest} were "
            "recorded; record more (activation_records top_k) or show fewer (n_examples)"
        )

    def job(ids: list[int], tokens: list[list[str]], activations: list[list[float]]) -> Callable[[], list[Explanation]]:
        shown_records = [Record(t, a) for t, a in zip(tokens, activations, strict=True)]
        return lambda: explain(
            client,
            model,
            shown_records,
            n_samples=n_samples,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )

    neurons = shown.rows()
    samples_per_neuron = map_neurons(
        "explanation",
        [((layer, neuron), job(ids, tokens, activations)) for layer, neuron, ids, tokens, activations in neurons],
        expected_errors=(ExplanationParseError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [
        (
            layer,
            neuron,
            sample,
            explanation.text,
            explanation.raw_reply,
            ids[: explanation.n_shown],
            explanation.shortening,
        )
        for (layer, neuron, ids, _, _), samples in zip(neurons, samples_per_neuron, strict=True)
        for sample, explanation in enumerate(samples)
    ]
    return _explanation_frame(rows, EXPLANATION, model, EXPLAINER_PROMPT_VERSION, temperature)


def explain_lookup_tables(
    client: Any,
    model: str,
    top_tokens: pl.DataFrame,
    *,
    n_samples: int = 1,
    temperature: float = 1.0,
    max_tokens: int = 60,
    max_attempts: int = 3,
    seed: int = 0,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """The lookup-explanation baseline: the explainer summarizes each neuron's top lookup-table tokens.

    ``top_tokens`` holds (layer, neuron, token, mean_activation) lists, best first (see
    ``baselines.top_lookup_tokens``). Rows have the columns of ``explain_neurons`` with an
    empty ``excerpt_ids``: no excerpt was shown.
    """

    def job(tokens: list[str], means: list[float]) -> Callable[[], list[str]]:
        messages = lookup_explainer_messages(tokens, means)
        return lambda: [
            ask_for_explanation(
                client,
                model,
                messages,
                "the lookup-table prompt",
                temperature=temperature,
                max_tokens=max_tokens,
                max_attempts=max_attempts,
                seed=seed + 1000 * sample,
            )
            for sample in range(n_samples)
        ]

    neurons = top_tokens.select("layer", "neuron", "token", "mean_activation").rows()
    replies_per_neuron = map_neurons(
        "lookup explanation",
        [((layer, neuron), job(tokens, means)) for layer, neuron, tokens, means in neurons],
        expected_errors=(ExplanationParseError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [
        (layer, neuron, sample, parse_explanation(raw), raw, [], None)
        for (layer, neuron, _, _), replies in zip(neurons, replies_per_neuron, strict=True)
        for sample, raw in enumerate(replies)
    ]
    return _explanation_frame(rows, LOOKUP_EXPLANATION, model, LOOKUP_EXPLAINER_PROMPT_VERSION, temperature)


def ask_for_explanation(
    client: Any,
    model: str,
    messages: list[dict[str, str]],
    what: str,
    *,
    temperature: float,
    max_tokens: int,
    max_attempts: int,
    seed: int,
) -> str:
    """The first of up to ``max_attempts`` replies to ``messages`` that holds an explanation (the raw reply).

    Each attempt uses the next seed; after the last, the error names ``what`` was asked and
    the last reply, so the user sees what came back.
    """
    for attempt in range(max_attempts):
        response = client.chat.completions.create(
            model=model, messages=messages, temperature=temperature, max_tokens=max_tokens, seed=seed + attempt
        )
        raw = response["choices"][0]["message"]["content"] or ""
        try:
            parse_explanation(raw)
            return raw
        except ExplanationParseError:
            continue
    raise ExplanationParseError(f"{max_attempts} replies from {model!r} to {what} held no explanation; last: {raw!r}")


def _explanation_frame(
    rows: list[tuple[Any, ...]], method: str, model: str, prompt_version: str, temperature: float
) -> pl.DataFrame:
    """Rows of the ``explanations`` table (lineage columns aside)."""
    return pl.DataFrame(rows, schema=EXPLANATION_SCHEMA, orient="row").with_columns(
        method=pl.lit(method),
        explainer_model=pl.lit(model),
        prompt_version=pl.lit(prompt_version),
        temperature=pl.lit(temperature, dtype=pl.Float64),
    )
