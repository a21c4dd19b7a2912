"""The chat_logprobs mode: one chat call per excerpt, read from the log-probabilities of the listing it writes.

For chat backends that give log-probabilities of generated tokens only (current OpenAI chat
models, at most 20 per position): the model writes the excerpt again as ``token<TAB>value``
lines, and each token's expected value is read from the distribution of the token generated
after its tab. Written lines are aligned with the excerpt's tokens; merged, split, missing or
extra lines leave their tokens unsimulated and are counted as misaligned, never zero-filled.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from neuron_assets.prompts.templates import CHAT_SIMULATOR_PROMPT_VERSION, chat_simulator_messages, display_token
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


class ChatLogprobs(SimulatorMode):
    """One chat call per excerpt, its written listing read (``simulate_chat``)."""

    name = SimulationMode.CHAT_LOGPROBS
    prompt_version = CHAT_SIMULATOR_PROMPT_VERSION
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
        return simulate_chat(
            client, model, explanation, tokens, n_fewshot=n_fewshot, ten_handling=self.reading_of_ten(ten_handling)
        )


CHAT_LOGPROBS = ChatLogprobs()


def read_written_listing(
    written: Sequence[tuple[str, Mapping[str, float] | None]],
    tokens: Sequence[str],
    ten_handling: TenHandling | str = TenHandling.SINGLE_TOKEN,
) -> tuple[list[float | None], int]:
    """Expected values per excerpt token from a generated ``token<TAB>value`` listing.

    ``written`` holds each generated token with its top log-probabilities. Each line's
    value is read from the generated token that covers the character after the line's
    last tab. Lines are matched to the excerpt's tokens by their text (whitespace
    stripped) with a sequence alignment: matched tokens take their line's value; tokens
    in merged, split, missing or changed lines stay unsimulated, and they and any extra
    lines are counted as misaligned.
    """
    second_read = CHAT_LOGPROBS.reading_of_ten(ten_handling) is TenHandling.SECOND_READ
    text = "".join(token for token, _ in written)
    starts = list(itertools.accumulate((len(token) for token, _ in written[:-1]), initial=0))
    begin = text.find("<start>")
    begin = begin + len("<start>") if begin >= 0 else 0
    end = text.find("<end>", begin)
    end = end if end >= 0 else len(text)
    names: list[str] = []
    values: list[float | None] = []
    offset = begin
    for line in text[begin:end].split("\n"):
        line_start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        tab = line.rfind("\t")
        names.append((line[:tab] if tab >= 0 else line).strip())
        value_at = line_start + tab + 1
        if tab < 0 or value_at >= end:
            values.append(None)
            continue
        at = bisect.bisect_right(starts, value_at) - 1
        share = None
        if second_read and written[at][0].strip() == "1" and at + 1 < len(written):
            share = zero_probability(written[at + 1][1])  # what followed the "1" the model wrote
        values.append(expected_value(written[at][1], share))
    wanted = [display_token(token).strip() for token in tokens]
    expected: list[float | None] = [None] * len(tokens)
    misaligned = 0
    matcher = difflib.SequenceMatcher(None, wanted, names, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            expected[i1:i2] = values[j1:j2]
        else:
            misaligned += max(i2 - i1, j2 - j1)
    return expected, misaligned


def simulate_chat(
    client: Any,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    n_fewshot: int | None = None,
    ten_handling: TenHandling | str = TenHandling.SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one chat call, from the generated tokens' top log-probabilities."""
    ten_handling = CHAT_LOGPROBS.reading_of_ten(ten_handling)

    def read(response: dict[str, Any]) -> tuple[list[float | None], int]:
        written = generated_tokens(response, model, SimulationMode.CHAT_LOGPROBS)
        expected, misaligned = read_written_listing(written, tokens, ten_handling)
        return some_value(expected), misaligned

    response = client.chat.completions.create(
        model=model,
        messages=chat_simulator_messages(explanation, tokens, n_fewshot),
        temperature=0.0,
        max_tokens=6 * len(tokens) + 32,
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
        read=read,
    )
    expected, misaligned = read(response)
    return Simulation(expected, reported_prompt_tokens(response), misaligned)
