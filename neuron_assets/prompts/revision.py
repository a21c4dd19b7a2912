"""Prompts of the revision stage (method.md §8): writing test sentences, and revising an explanation.

Bump the version strings whenever a prompt's text changes: they are stored with every
generated sentence and revised explanation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from neuron_assets.prompts.fewshot import Record
from neuron_assets.prompts.templates import EXPLANATION_PREFIX, format_records

SENTENCE_WRITER_PROMPT_VERSION = "sentence-writer-v1"
REVISER_PROMPT_VERSION = "reviser-v1"

SENTENCE_WRITER_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. Given an explanation of what a neuron responds to, write sentences on which, "
    "according to the explanation, the neuron should respond strongly. Make them varied: "
    "different topics, wordings and lengths, and include borderline cases that test whether "
    "the explanation is too broad."
)


def sentence_writer_messages(explanation: str, n_sentences: int) -> list[dict[str, str]]:
    """Ask for ``n_sentences`` numbered sentences that should make the explained neuron fire."""
    return [
        {"role": "system", "content": SENTENCE_WRITER_SYSTEM},
        {
            "role": "user",
            "content": (
                f"Explanation: {EXPLANATION_PREFIX} {explanation}.\n"
                f"Write {n_sentences} different sentences, one per line, numbered 1. to {n_sentences}."
            ),
        },
    ]


_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.):-]|[-*•])\s*(.+?)\s*$")


def parse_sentences(reply: str) -> list[str]:
    """The numbered (or bulleted) lines of a reply, without their numbers and enclosing quotes.

    A reply of plain lines, with no numbering at all, is read line by line. Empty lines and
    duplicates are dropped; the caller decides what to do when too few remain.
    """
    lines = [line for line in reply.splitlines() if line.strip()]
    numbered = [m.group(1) for line in lines if (m := _NUMBERED.match(line))]
    chosen = numbered if numbered else [line.strip() for line in lines]
    sentences: list[str] = []
    for text in chosen:
        while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
            text = text[1:-1].strip()
        if text and text not in sentences:
            sentences.append(text)
    return sentences


REVISER_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. You will see text excerpts, one token per line as token<tab>activation, between "
    "<start> and <end>. Activations run from 0 to 10: 0 means the neuron is silent, and "
    "higher numbers mean a stronger response. Say in one short phrase what the neuron "
    "responds to, so that the phrase fits all the evidence, including the texts where the "
    "neuron stays silent. Describe the pattern; do not just list the tokens."
)


def revision_messages(
    records: Sequence[Record], new_records: Sequence[Record], explanation: str | None
) -> list[dict[str, str]]:
    """The reviser's question: the original top excerpts, the explanation to revise (``None``
    for the re-explain control) and the new texts with the neuron's real activations.

    Both listings are on the original excerpts' scale, so a new text on which the neuron
    stays silent shows 0s where the explanation predicted a response.
    """
    top = max((max(r.activations, default=0.0) for r in records), default=0.0)
    question = f"Neuron activations on its top excerpts:\n{format_records(records, top)}\n\n"
    if explanation is not None:
        question += f"A first explanation was: {EXPLANATION_PREFIX} {explanation}.\n\n"
    question += f"Activations on new texts:\n{format_records(new_records, top)}\n\n"
    question += (
        f"Complete the sentence with an explanation that fits all of these texts. Explanation: {EXPLANATION_PREFIX}"
    )
    return [{"role": "system", "content": REVISER_SYSTEM}, {"role": "user", "content": question}]
