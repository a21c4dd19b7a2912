"""Expected activations from the simulator's probabilities of the strings "0".."10" (method.md §4)."""

from __future__ import annotations

import math
from collections.abc import Mapping

DIGIT_VALUES = {str(i): i for i in range(11)}


def digit_masses(top_logprobs: Mapping[str, float] | None) -> dict[int, float]:
    """Probability of each value 0..10 among the top log-probabilities.

    Keys are compared after stripping whitespace, so " 7" and "7" both count as 7.
    """
    mass = {value: 0.0 for value in DIGIT_VALUES.values()}
    for token, logprob in (top_logprobs or {}).items():
        value = DIGIT_VALUES.get(token.strip())
        if value is not None:
            mass[value] += math.exp(logprob)
    return mass


def expected_value(
    top_logprobs: Mapping[str, float] | None, zero_after_one: float | None = None, top: int = 10
) -> float | None:
    """Expected activation (on 0..10) from the log-probabilities of the digit strings.

    Digits missing from the top list are taken as probability 0 and the listed digits
    renormalized: when the listed ones carry almost no mass the estimate is still the
    best available. With no digit at all the value is unknown, so ``None``.
    ``zero_after_one`` (a second read: the probability that "0" follows a written "1")
    moves that share of the "1" mass to the value 10, for tokenizers that split "10".
    ``top`` is the prompt's top value: on a 0..9 scale only digits count, mapped x 10/9.
    """
    if zero_after_one is not None and top != 10:
        raise ValueError("a second read of what follows '1' only applies to the 0..10 scale")
    mass = {value: p for value, p in digit_masses(top_logprobs).items() if value <= top}
    if zero_after_one is not None:
        tens = mass[1] * min(1.0, max(0.0, zero_after_one))
        mass[10] += tens
        mass[1] -= tens
    total = sum(mass.values())
    if total == 0.0:
        return None
    return sum(value * p for value, p in mass.items()) / total * (10 / top)


def zero_probability(top_logprobs: Mapping[str, float] | None) -> float:
    """Probability of the token "0" (whitespace stripped) in a next-token distribution: after a
    written "1", the share of that "1" that is really a 10 (``TenHandling.SECOND_READ``)."""
    return sum(math.exp(lp) for token, lp in (top_logprobs or {}).items() if token.strip() == "0")
