"""The one_at_a_time mode: one chat call per token, one generated number read each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_assets.prompts.templates import one_at_a_time_messages
from neuron_assets.simulators.expected_value import expected_value, zero_probability
from neuron_assets.simulators.modes.base import (
    TOP_LOGPROBS,
    Simulation,
    SimulationMode,
    TenHandling,
    _prompt_tokens,
    _some_value,
    generated_tokens,
)


def simulate_one_at_a_time(
    client: Any,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    n_fewshot: int | None = None,
    ten_handling: TenHandling | str = TenHandling.SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one chat call per token, reading one generated number each.

    With ``second_read`` two tokens are generated, so a written "1" is followed by the
    distribution of what comes after it.
    """

    second_read = TenHandling(ten_handling) is TenHandling.SECOND_READ

    def read(response: dict[str, Any]) -> float | None:
        written = generated_tokens(response, model, SimulationMode.ONE_AT_A_TIME)
        (token, first), share = written[0], None
        if second_read and token.strip() == "1" and len(written) > 1:
            share = zero_probability(written[1][1])
        return expected_value(first, share)

    expected: list[float | None] = []
    prompt_tokens = 0
    for position in range(len(tokens)):
        response = client.chat.completions.create(
            model=model,
            messages=one_at_a_time_messages(explanation, tokens, position, n_fewshot),
            max_tokens=2 if second_read else 1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
            read=read,
        )
        expected.append(read(response))
        prompt_tokens += _prompt_tokens(response)
    return Simulation(_some_value(expected), prompt_tokens)
