"""The all_at_once mode: one completions call per excerpt, read from the echoed prompt.

The prompt lists the excerpt with ``unknown`` in place of every activation; the server
echoes the prompt with log-probabilities, and at each ``unknown`` the probabilities of
"0".."10" give the token's expected activation. One forward pass reads a whole excerpt,
which is why the study used this mode for all its quantitative results and ``auto``
prefers it; it needs a backend that returns prompt log-probabilities (vLLM, llama.cpp).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from neuron_assets.prompts.templates import SIMULATOR_PROMPT_VERSION, SimulatorPrompt, simulator_prompt
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.base import (
    TOP_LOGPROBS,
    Simulation,
    SimulationError,
    SimulationMode,
    SimulatorMode,
    TenHandling,
    reported_prompt_tokens,
    some_value,
)


class AllAtOnce(SimulatorMode):
    """One echoed completions call per excerpt (``simulate``)."""

    name = SimulationMode.ALL_AT_ONCE
    prompt_version = SIMULATOR_PROMPT_VERSION
    ten_if_one_token = TenHandling.SINGLE_TOKEN
    ten_if_split = TenHandling.TOP_NINE

    def simulate(
        self,
        client: Any,
        model: str,
        explanation: str,
        tokens: Sequence[str],
        *,
        n_fewshot: int | None = None,
        ten_handling: TenHandling | str | None = None,
        distribution_shift: int = 0,
    ) -> Simulation:
        return simulate(
            client,
            model,
            explanation,
            tokens,
            distribution_shift=distribution_shift,
            n_fewshot=n_fewshot,
            ten_handling=self.reading_of_ten(ten_handling),
        )


ALL_AT_ONCE = AllAtOnce()


class AlignmentError(SimulationError):
    """The echoed tokens do not line up with the prompt's placeholders: some placeholder does not
    begin a token (the tokenizer joined the tab before it, or other text, to it), or the echo
    files its distributions where no known convention puts them. Reading on would take the
    distribution of some other position for a plausible-looking value, so nothing is read."""


def tokens_around(tokens: Sequence[str] | None, offsets: Sequence[int], offset: int, width: int = 2) -> str:
    """The echoed tokens around prompt offset ``offset``, for an error message (or their offsets,
    where the echo names no tokens)."""
    j = max(bisect.bisect_right(offsets, offset) - 1, 0)
    window = slice(max(j - width, 0), j + width + 1)
    if tokens:
        return f"tokens {list(tokens[window])!r}"
    return f"token offsets {list(offsets[window])!r}"


def placeholder_positions(
    prompt: SimulatorPrompt,
    text_offsets: Sequence[int],
    distribution_shift: int,
    *,
    model: str = "the simulator",
    tokens: Sequence[str] | None = None,
) -> list[int]:
    """Where in the echo each placeholder's distribution is: the index of the token that *begins*
    exactly at the placeholder's offset, plus ``distribution_shift``.

    A placeholder no token begins at is an ``AlignmentError`` naming the model and the tokens
    around it; the token that merely contains it is never taken in its place, since the
    distribution that predicted it is not the one predicting the placeholder.
    """
    positions = []
    for n, offset in enumerate(prompt.placeholder_offsets):
        j = bisect.bisect_left(text_offsets, offset)
        if j == len(text_offsets) or text_offsets[j] != offset:
            raise AlignmentError(
                f"no echoed token of {model!r} begins at placeholder {n} (prompt offset {offset}): its tokenizer "
                f"joins the text before the placeholder to it ({tokens_around(tokens, text_offsets, offset)}), so "
                "the all-at-once simulator cannot read this model; use mode chat_logprobs or json"
            )
        k = j + distribution_shift
        if not 0 <= k < len(text_offsets):
            raise AlignmentError(f"no echoed distribution of {model!r} at position {k} for prompt offset {offset}")
        positions.append(k)
    return positions


def placeholder_distributions(
    prompt: SimulatorPrompt,
    text_offsets: Sequence[int],
    top_logprobs: Sequence[Mapping[str, float] | None],
    distribution_shift: int,
    *,
    model: str = "the simulator",
    tokens: Sequence[str] | None = None,
) -> list[Mapping[str, float] | None]:
    """The next-token distribution at each placeholder, found by character offset in the echoed tokens.

    ``distribution_shift`` says where a server puts the distribution that predicted token j:
    0 when ``top_logprobs[j]`` is it (OpenAI and vLLM semantics), -1 when it sits one entry
    earlier, at ``top_logprobs[j - 1]``, as llama-cpp-python reports echoed prompts of models
    without a BOS token (``probes.probe_alignment`` finds which). A placeholder no echoed token
    begins at is an ``AlignmentError`` (``placeholder_positions``).
    """
    if len(text_offsets) != len(top_logprobs):
        raise SimulationError("server returned text offsets and log-probabilities of different lengths")
    positions = placeholder_positions(prompt, text_offsets, distribution_shift, model=model, tokens=tokens)
    return [top_logprobs[k] for k in positions]


def simulate(
    client: Any,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    distribution_shift: int,
    n_fewshot: int | None = None,
    ten_handling: TenHandling | str = TenHandling.SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one completions call that echoes the prompt's log-probabilities.

    Every call shares the same few-shot prefix, so servers with prefix caching (llama.cpp,
    vLLM) evaluate only the explanation and the excerpt. With ``top_nine`` the prompt's
    scale tops at 9 and the values are mapped back onto 0..10 (``TenHandling``).
    """
    top = 9 if ALL_AT_ONCE.reading_of_ten(ten_handling) is TenHandling.TOP_NINE else 10
    prompt = simulator_prompt(explanation, tokens, n_fewshot=n_fewshot, top=top)

    def read(response: dict[str, Any]) -> list[float | None]:
        logprobs = response["choices"][0].get("logprobs")
        if not logprobs or not logprobs.get("top_logprobs") or not logprobs.get("text_offset"):
            raise SimulationError(
                f"model {model!r} returned no prompt log-probabilities; the all-at-once simulator "
                "needs a completions endpoint with echo and logprobs (vLLM, llama.cpp with --logits_all)"
            )
        if logprobs["text_offset"][-1] < prompt.placeholder_offsets[-1]:
            raise SimulationError("the echoed prompt stops before the excerpt's last token (a truncated reply)")
        distributions = placeholder_distributions(
            prompt,
            logprobs["text_offset"],
            logprobs["top_logprobs"],
            distribution_shift,
            model=model,
            tokens=logprobs.get("tokens"),
        )
        return some_value([expected_value(distribution, top=top) for distribution in distributions])

    def keep(response: dict[str, Any]) -> dict[str, Any]:
        """For the cache: the offsets, and the distributions at the placeholders only (nearly all
        of an echoed response is distributions at prompt positions no reader looks at)."""
        choice = response["choices"][0]
        offsets = choice["logprobs"]["text_offset"]
        read_at = set(placeholder_positions(prompt, offsets, distribution_shift, model=model))
        distributions = [d if k in read_at else None for k, d in enumerate(choice["logprobs"]["top_logprobs"])]
        logprobs = {"text_offset": offsets, "top_logprobs": distributions}
        return {**response, "choices": [{**choice, "logprobs": logprobs}]}

    response = client.completions.create(
        model=model,
        prompt=prompt.text,
        max_tokens=1,
        temperature=0.0,
        echo=True,
        logprobs=TOP_LOGPROBS,
        read=read,
        keep=keep,
    )
    return Simulation(read(response), reported_prompt_tokens(response))
