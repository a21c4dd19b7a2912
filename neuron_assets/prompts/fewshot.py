"""The worked example neurons shown before every explainer and simulator prompt.

Ours, written for this project: two neurons with two full 64-token excerpts each, like
the excerpts the subject model is recorded on. Their activations follow a stated rule,
so the examples are consistent with their explanations:

- a sparse neuron (days of the week): under 20% of its tokens are non-zero, so its
  listing shows the "zeros filtered out" repeat the way a real sparse neuron's does;
- a context neuron (words inside quotation marks): it fires on whatever words stand
  between the quotes, so its explanation is about context, not about a token.

Tokens are word pieces with their leading space, as GPT-2-style tokenizers cut them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EXCERPT_LENGTH = 64
PIECE = re.compile(r"\s?[A-Za-z]+|\s?\d+|\s?[^\sA-Za-z\d]")


@dataclass(frozen=True)
class Record:
    """One excerpt with one neuron's per-token activations."""

    tokens: Sequence[str]
    activations: Sequence[float]


@dataclass(frozen=True)
class ExampleNeuron:
    records: Sequence[Record]
    explanation: str


def pieces(text: str) -> list[str]:
    """``text`` cut into the first 64 word pieces; a passage too short for an excerpt is a bug."""
    found = PIECE.findall(text)
    if len(found) < EXCERPT_LENGTH:
        raise ValueError(f"example passage has {len(found)} pieces, fewer than {EXCERPT_LENGTH}: {text[:40]!r}")
    return found[:EXCERPT_LENGTH]


DAYS = {
    " Monday": 9.6,
    " Tuesday": 9.0,
    " Wednesday": 9.2,
    " Thursday": 8.8,
    " Friday": 9.3,
    " Saturday": 8.6,
    " Sunday": 9.4,
    " weekend": 3.1,
    " holiday": 1.4,
}


def day_activations(tokens: Sequence[str]) -> list[float]:
    return [DAYS.get(token, 0.0) for token in tokens]


def quote_activations(tokens: Sequence[str]) -> list[float]:
    """Rises over the first words of a quotation and holds; the quote marks themselves barely fire."""
    values, inside, position = [], False, 0
    for token in tokens:
        if token.strip() == '"':
            values.append(0.6 if not inside else 0.3)
            inside, position = not inside, 0
        elif inside:
            values.append(2.5 + 0.5 * min(position, 5))
            position += 1
        else:
            values.append(0.0)
    return values


def _neuron(passages: Sequence[str], rule: Callable[[Sequence[str]], list[float]], explanation: str) -> ExampleNeuron:
    records = []
    for passage in passages:
        tokens = pieces(passage)
        records.append(Record(tokens, rule(tokens)))
    return ExampleNeuron(tuple(records), explanation)


EXAMPLE_NEURONS: tuple[ExampleNeuron, ...] = (
    _neuron(
        (
            "The council meets on Monday to approve the budget, and a second vote is planned for Thursday if "
            "the first one fails. Residents who cannot attend may send written comments before Friday, when "
            "the office closes early for the long weekend. Staff said the final report would be published on "
            "Tuesday, after the holiday, together with the minutes of every meeting held this spring.",
            "Training starts at six on Saturday morning and finishes before lunch. On Sunday the club is "
            "closed, but the pool stays open until late. From Wednesday the timetable changes: junior squads "
            "move to the evening, and seniors swim at dawn. Coaches asked parents to check the notice board "
            "every week for further changes to lanes, times and fees.",
        ),
        day_activations,
        "names of the days of the week",
    ),
    _neuron(
        (
            'The inspector looked up from her notes and said, "Nobody leaves this room until I know where the '
            'key went." The butler coughed. "I locked the cellar at nine, as I always do," he replied, "and I '
            'gave the key to nobody." She wrote that down, underlined it twice and turned to the maid, who had '
            "not said a word all evening.",
            'Critics were divided. One reviewer called the film "a brave, strange and often beautiful mess", '
            'while another wrote that it was "two hours I will never get back". The director, asked about the '
            'reviews, only said: "People see what they bring with them." Ticket sales rose by a third in the '
            "second week, and the studio extended its run in cities across the country.",
        ),
        quote_activations,
        "words inside quotation marks, whatever they are",
    ),
)
