"""The all_at_once mode: one completions call per excerpt, read from the echoed prompt's log-probabilities."""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any

from neuron_assets.prompts.templates import SimulatorPrompt, simulator_prompt
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.base import (
    TOP_LOGPROBS,
    Simulation,
    SimulationError,
    TenHandling,
    _prompt_tokens,
    _some_value,
)


def placeholder_distributions(
    prompt: SimulatorPrompt,
    text_offsets: Sequence[int],
    top_logprobs: Sequence[Mapping[str, float] | None],
    distribution_shift: int,
) -> list[Mapping[str, float] | None]:
    """The next-token distribution at each placeholder, found by character offset in the echoed tokens.

    ``distribution_shift`` says where a server puts the distribution that predicted token j:
    0 when ``top_logprobs[j]`` is it (OpenAI and vLLM semantics), -1 when it sits one entry
    earlier, at ``top_logprobs[j - 1]``, as llama-cpp-python reports echoed prompts.
    """
    if len(text_offsets) != len(top_logprobs):
        raise SimulationError("server returned text offsets and log-probabilities of different lengths")
    distributions = []
    for offset in prompt.placeholder_offsets:
        j = bisect.bisect_right(text_offsets, offset) - 1
        k = j + distribution_shift
        if j < 0 or not 0 <= k < len(top_logprobs):
            raise SimulationError(f"no echoed token covers prompt offset {offset}")
        distributions.append(top_logprobs[k])
    return distributions


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
    scale tops at 9 (see the module's docstring).
    """
    top = 9 if TenHandling(ten_handling) is TenHandling.TOP_NINE else 10
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
            prompt, logprobs["text_offset"], logprobs["top_logprobs"], distribution_shift
        )
        return _some_value([expected_value(distribution, top=top) for distribution in distributions])

    def keep(response: dict[str, Any]) -> dict[str, Any]:
        """For the cache: the offsets, and the distributions at the placeholders only (nearly all
        of an echoed response is distributions at prompt positions no reader looks at)."""
        choice = response["choices"][0]
        offsets = choice["logprobs"]["text_offset"]
        read_at = {
            bisect.bisect_right(offsets, offset) - 1 + distribution_shift for offset in prompt.placeholder_offsets
        }
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
    return Simulation(read(response), _prompt_tokens(response))
