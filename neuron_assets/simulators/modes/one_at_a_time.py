"""The one_at_a_time mode: one chat call per token, one generated number read each.

The study's other format: the text up to and including the token, the token named again,
and one number asked for; the expected value is read from the first generated token's
``top_logprobs``. It works on any chat model with ``top_logprobs`` (OpenAI's included) but
costs a call per token, and its prompt differs from all_at_once's, so the two can disagree
(``make bench-modes`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_assets.prompts.templates import ONE_AT_A_TIME_PROMPT_VERSION, one_at_a_time_messages
from neuron_assets.simulators.expected_value import expected_value, zero_probability
from neuron_assets.simulators.modes.base import (
    TOP_LOGPROBS,
    Simulation,
    SimulationMode,
    SimulatorMode,
    TenHandling,
    generated_tokens,
    reported_prompt_tokens,
    some_value,
)


class OneAtATime(SimulatorMode):
    """One chat call per token (``simulate_one_at_a_time``)."""

    name = SimulationMode.ONE_AT_A_TIME
    prompt_version = ONE_AT_A_TIME_PROMPT_VERSION
    ten_if_one_token = TenHandling.SINGLE_TOKEN
    ten_if_split = TenHandling.SECOND_READ

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
        return simulate_one_at_a_time(
            client, model, explanation, tokens, n_fewshot=n_fewshot, ten_handling=self.reading_of_ten(ten_handling)
        )


ONE_AT_A_TIME = OneAtATime()


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
    second_read = ONE_AT_A_TIME.reading_of_ten(ten_handling) is TenHandling.SECOND_READ

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
        prompt_tokens += reported_prompt_tokens(response)
    return Simulation(some_value(expected), prompt_tokens)
