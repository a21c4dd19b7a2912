"""Prompts of the classifier scorers (delphi's detection, fuzzing and surprisal, EleutherAI).

- detection: the explanation, then a numbered batch of excerpts; the model answers with a JSON
  array, 1 where the neuron fires somewhere in the excerpt, 0 where it does not.
- fuzzing: the same, but some tokens of each excerpt are marked ``<<like this>>``; the model
  answers 1 where the marked tokens are the ones the neuron fires on.
- surprisal: no question at all: a completions prompt puts the excerpt after a prefix that
  names the explanation, or after a neutral prefix, and the excerpt's own log-likelihood is read.

Excerpts are shown as their text, with ``display_token``'s escapes so each stays on one line.
The explanation is the completion of "the main thing this neuron does is find", as stored.
Bump a version whenever its prompt's text changes: versions are stored with every score.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from neuron_assets.prompts.templates import EXPLANATION_PREFIX, display_token

DETECTION_PROMPT_VERSION = "detection-v1"
FUZZING_PROMPT_VERSION = "fuzzing-v1"
SURPRISAL_PROMPT_VERSION = "surprisal-v1"
MARK_OPEN, MARK_CLOSE = "<<", ">>"

DETECTION_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in text. "
    "You will get an explanation of what one neuron responds to, then numbered text excerpts. For each "
    "excerpt, decide whether the neuron responds to something in it, as the explanation describes: 1 if it "
    "does, 0 if it does not. Reply with only a JSON array of 0s and 1s, one per excerpt, in order."
)

FUZZING_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in text. "
    f"You will get an explanation of what one neuron responds to, then numbered text excerpts in which "
    f"some tokens are marked {MARK_OPEN}like this{MARK_CLOSE}. For each excerpt, decide whether the marked "
    "tokens are the ones the neuron responds to, as the explanation describes: 1 if the marking is correct, "
    "0 if it is not. Reply with only a JSON array of 0s and 1s, one per excerpt, in order."
)


def excerpt_text(tokens: Sequence[str]) -> str:
    """An excerpt as one line of text: its tokens joined, newlines and tabs escaped, ends trimmed."""
    return "".join(display_token(token) for token in tokens).strip()


def marked_text(tokens: Sequence[str], marked: Collection[int]) -> str:
    """``excerpt_text`` with the tokens at positions ``marked`` written ``<<token>>``.

    A token's leading whitespace stays outside its mark (`` <<cat>>``, not ``<< cat>>``), so the
    marks do not change how words are separated; each marked token is marked on its own."""
    pieces = []
    for position, token in enumerate(tokens):
        shown = display_token(token)
        if position in marked:
            body = shown.lstrip()
            shown = f"{shown[: len(shown) - len(body)]}{MARK_OPEN}{body}{MARK_CLOSE}"
        pieces.append(shown)
    return "".join(pieces).strip()


def _question(explanation: str, texts: Sequence[str]) -> str:
    listing = "\n".join(f"Example {number}: {text}" for number, text in enumerate(texts, start=1))
    return (
        f"Explanation: {EXPLANATION_PREFIX} {explanation}.\n\n{listing}\n\n"
        f"Reply with a JSON array of {len(texts)} integers, each 0 or 1."
    )


def detection_messages(explanation: str, excerpts: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """Chat messages asking whether the neuron fires in each of ``excerpts`` (tokens each), numbered from 1."""
    return [
        {"role": "system", "content": DETECTION_SYSTEM},
        {"role": "user", "content": _question(explanation, [excerpt_text(tokens) for tokens in excerpts])},
    ]


def fuzzing_messages(
    explanation: str, excerpts: Sequence[Sequence[str]], marked: Sequence[Collection[int]]
) -> list[dict[str, str]]:
    """Chat messages asking, for each excerpt with its ``marked`` token positions, whether the marks are right."""
    if len(excerpts) != len(marked):
        raise ValueError(f"{len(excerpts)} excerpts but {len(marked)} sets of marked positions")
    texts = [marked_text(tokens, positions) for tokens, positions in zip(excerpts, marked, strict=True)]
    return [{"role": "system", "content": FUZZING_SYSTEM}, {"role": "user", "content": _question(explanation, texts)}]


# Surprisal: the explained and the neutral prefix share their frame, so only the words naming
# what the text is differ; "text" says nothing about any topic or token. The frame and the
# excerpt's position in the prompt are the same in both, so their effect on the excerpt's
# likelihood cancels in the difference.
SURPRISAL_FRAME = "The following text is an example of: {description}.\n\n"
NEUTRAL_DESCRIPTION = "text"


@dataclass(frozen=True)
class SurprisalPrompt:
    """A completions prompt: a prefix, then the excerpt's text from character ``excerpt_start``."""

    text: str
    excerpt_start: int


def surprisal_prompt(explanation: str | None, tokens: Sequence[str]) -> SurprisalPrompt:
    """The excerpt's raw text (as the subject model read it) after the prefix naming ``explanation``,
    or after the neutral prefix for ``None``."""
    prefix = SURPRISAL_FRAME.format(description=NEUTRAL_DESCRIPTION if explanation is None else explanation)
    return SurprisalPrompt(prefix + "".join(tokens), len(prefix))
