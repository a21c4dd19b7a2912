"""The surprisal scorer (delphi's, EleutherAI): does knowing the explanation make activating text
more likely to a language model than text the neuron ignores?

Each excerpt's log-likelihood is read twice from a completions endpoint that echoes the prompt
with log-probabilities: after a prefix naming the explanation and after a neutral prefix
(``prompts.classifiers.surprisal_prompt``). The gain, LL(explained) - LL(neutral), is the
pointwise mutual information of the explanation and the excerpt: a good explanation raises
the likelihood of excerpts the neuron fires on more than of others. The score is the AUROC of
the gain, activating against non-activating examples. No answer is parsed, so a base model
serves; the neutral calls do not depend on the explanation, and the client's cache answers
them again for every other explanation of the neuron.

LL is the *sum* of the log-probabilities of the excerpt's own tokens: the log-probability of
the excerpt's text, whatever the evaluator's tokenizer, so the gain is a log-likelihood ratio
(a mean would depend on how many tokens the evaluator cut the text into). The excerpt's tokens
are those whose ``text_offset`` is at or after the prefix's end and before the prompt's end (the
generated token is not the excerpt's). A token that straddles the prefix's end is left out of
both readings: both prefixes end alike (".\\n\\n"), so it is the same token in both.

The log-probabilities are read from ``token_logprobs``, which is right where a server files the
distribution that predicted token j at j (``distribution_shift`` 0: vLLM, llama.cpp's server,
this project's local server). Stock llama-cpp-python misfiles them for models without BOS
(``simulators.probes.probe_alignment`` finds out), so another shift is refused.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from neuron_assets.llm.errors import ReplyFormatError
from neuron_assets.prompts.classifiers import SURPRISAL_PROMPT_VERSION, SurprisalPrompt, surprisal_prompt
from neuron_assets.scorers.classification import auroc
from neuron_assets.simulators.modes.base import reported_prompt_tokens

__all__ = ["SURPRISAL_PROMPT_VERSION", "SurprisalError", "SurprisalScore", "excerpt_log_likelihood", "score_surprisal"]


class SurprisalError(ReplyFormatError):
    """A completions reply without the prompt log-probabilities surprisal reads (or with them cut
    short). Raised in the client's reply check, so the reply is asked again before it fails."""


@dataclass(frozen=True)
class SurprisalScore:
    """How much the explanation raises activating excerpts' likelihood over non-activating ones'.

    ``auroc``: of the gain, activating against non-activating (None unless both are present);
    the mean gains (nats) say how large the effect is; None where a class has no example."""

    auroc: float | None
    mean_gain_activating: float | None
    mean_gain_non_activating: float | None
    n_examples: int
    n_activating: int


def excerpt_log_likelihood(client: Any, model: str, prompt: SurprisalPrompt) -> tuple[float, int, int]:
    """The excerpt's log-likelihood after its prefix from one echoed completions call: (sum of its
    tokens' log-probabilities, how many tokens, the prompt size the call reported).

    A reply without ``token_logprobs`` and ``text_offset`` is a ``SurprisalError`` saying that
    surprisal needs prompt log-probabilities (echo)."""

    def excerpt_tokens(logprobs: dict[str, Any]) -> tuple[int, int]:
        offsets = logprobs["text_offset"]
        return bisect.bisect_left(offsets, prompt.excerpt_start), bisect.bisect_left(offsets, len(prompt.text))

    def read(response: dict[str, Any]) -> tuple[float, int]:
        logprobs = response["choices"][0].get("logprobs") or {}
        if not logprobs.get("token_logprobs") or not logprobs.get("text_offset"):
            raise SurprisalError(
                f"model {model!r} returned no prompt log-probabilities; the surprisal scorer needs a completions "
                "endpoint that echoes the prompt with token_logprobs and text_offset (echo=True, logprobs: vLLM, "
                "llama.cpp)"
            )
        if len(logprobs["token_logprobs"]) != len(logprobs["text_offset"]):
            raise SurprisalError(f"model {model!r} returned text offsets and log-probabilities of different lengths")
        first, end = excerpt_tokens(logprobs)
        values = logprobs["token_logprobs"][first:end]
        if not values:
            raise SurprisalError(f"the echo of {model!r} holds no token of the excerpt (a truncated reply)")
        if any(value is None for value in values):
            raise SurprisalError(f"the echo of {model!r} gives some of the excerpt's tokens no log-probability")
        return float(sum(values)), len(values)

    def keep(response: dict[str, Any]) -> dict[str, Any]:
        """For the cache: the offsets and log-probabilities only (no tokens, no top alternatives)."""
        choice = response["choices"][0]
        logprobs = {key: choice["logprobs"][key] for key in ("text_offset", "token_logprobs")}
        return {**response, "choices": [{**choice, "logprobs": logprobs}]}

    response = client.completions.create(
        model=model,
        prompt=prompt.text,
        max_tokens=1,
        temperature=0.0,
        echo=True,
        logprobs=1,
        read=read,
        keep=keep,
    )
    total, n_tokens = read(response)
    return total, n_tokens, reported_prompt_tokens(response)


def score_surprisal(
    client: Any, model: str, explanation: str, examples: pl.DataFrame, *, distribution_shift: int = 0
) -> tuple[pl.DataFrame, SurprisalScore]:
    """Each example's log-likelihood after the explained and the neutral prefix, and the AUROC of the gain.

    ``examples``: ``scorers.examples.select_examples``'s frame. Returns one row per example
    (excerpt_id, example_kind, activating, log_likelihood_explained, log_likelihood_neutral,
    gain, n_tokens: the excerpt's tokens read in the explained prompt, prompt_tokens: both
    calls' together) and the score. Two completions calls per example; the first that
    carries no prompt log-probabilities stops the scorer with a ``SurprisalError``.
    """
    if distribution_shift != 0:
        raise ValueError(
            f"the surprisal scorer reads token_logprobs, which a server with distribution shift {distribution_shift} "
            "files wrongly; use a server that files them at their token (shift 0: vLLM, llama.cpp, the local server)"
        )
    rows: dict[str, list[Any]] = {name: [] for name in ("explained", "neutral", "n_tokens", "prompt_tokens")}
    for tokens in examples["tokens"].to_list():
        explained, n_tokens, explained_prompt = excerpt_log_likelihood(
            client, model, surprisal_prompt(explanation, tokens)
        )
        neutral, _, neutral_prompt = excerpt_log_likelihood(client, model, surprisal_prompt(None, tokens))
        rows["explained"].append(explained)
        rows["neutral"].append(neutral)
        rows["n_tokens"].append(n_tokens)
        rows["prompt_tokens"].append(explained_prompt + neutral_prompt)
    scored = examples.select("excerpt_id", "example_kind", "activating").with_columns(
        pl.Series("log_likelihood_explained", rows["explained"], dtype=pl.Float64),
        pl.Series("log_likelihood_neutral", rows["neutral"], dtype=pl.Float64),
        pl.Series("n_tokens", rows["n_tokens"], dtype=pl.Int64),
        pl.Series("prompt_tokens", rows["prompt_tokens"], dtype=pl.Int64),
    )
    scored = scored.with_columns(gain=pl.col("log_likelihood_explained") - pl.col("log_likelihood_neutral")).select(
        "excerpt_id",
        "example_kind",
        "activating",
        "log_likelihood_explained",
        "log_likelihood_neutral",
        "gain",
        "n_tokens",
        "prompt_tokens",
    )
    labels, gains = scored["activating"].to_list(), scored["gain"].to_numpy()
    activating = np.asarray(labels, dtype=bool)
    return scored, SurprisalScore(
        auroc=auroc(labels, gains.tolist()),
        mean_gain_activating=float(gains[activating].mean()) if activating.any() else None,
        mean_gain_non_activating=float(gains[~activating].mean()) if (~activating).any() else None,
        n_examples=len(labels),
        n_activating=int(activating.sum()),
    )
