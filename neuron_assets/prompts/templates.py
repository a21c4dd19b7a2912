"""Explainer and simulator prompts (method.md §3 and §4), and parsing of what comes back.

Both prompts show excerpts one token per line as ``token<TAB>activation`` between
``<start>`` and ``<end>``. The few-shot neurons are our own (``fewshot``).
Bump the version strings whenever a prompt's text changes: they are stored with every
explanation and simulation so lineage can tell results of different prompts apart.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuron_assets.prompts.fewshot import EXAMPLE_NEURONS, Record

EXPLAINER_PROMPT_VERSION = "explainer-v2"
LOOKUP_EXPLAINER_PROMPT_VERSION = "lookup-explainer-v1"
SIMULATOR_PROMPT_VERSION = "simulator-all-at-once-v2"
JSON_SIMULATOR_PROMPT_VERSION = "simulator-json-v2"
CHAT_SIMULATOR_PROMPT_VERSION = "simulator-chat-logprobs-v2"
ONE_AT_A_TIME_PROMPT_VERSION = "simulator-one-at-a-time-v1"
EXPLANATION_PREFIX = "the main thing this neuron does is find"
MAX_NORMALIZED = 10
REPEAT_NONZERO_BELOW = 0.2
UNKNOWN = "unknown"


class ExplanationParseError(ValueError):
    """The explainer's reply holds no usable explanation."""


def normalize(activations: Sequence[float], max_activation: float, top: int = MAX_NORMALIZED) -> list[int]:
    """Map activations to integers 0..``top`` (10 unless a tokenizer needs 9): negatives to 0,
    ``max_activation`` to ``top``."""
    if max_activation <= 0:
        return [0] * len(activations)
    return [min(top, math.floor(top * max(a, 0.0) / max_activation)) for a in activations]


def display_token(token: str) -> str:
    """Escape the characters that would break the one-token-per-line format."""
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def format_records(records: Sequence[Record], max_activation: float | None = None) -> str:
    """The explainer's view of a neuron: normalized listings, plus the sparse-neuron repeat.

    Activations are normalized on ``max_activation`` (default: the records' own maximum).
    When fewer than 20% of shown tokens are non-zero after normalization, the study's
    layout follows: every record's full listing first, then one "zeros filtered out"
    section listing each record's non-zero (token, activation) pairs again.
    """
    if max_activation is None:
        max_activation = max((max(r.activations, default=0.0) for r in records), default=0.0)
    normalized = [normalize(r.activations, max_activation) for r in records]
    n_tokens = sum(len(n) for n in normalized)
    n_nonzero = sum(1 for n in normalized for v in n if v > 0)
    repeat = n_tokens > 0 and n_nonzero / n_tokens < REPEAT_NONZERO_BELOW
    pairs = list(zip(records, normalized, strict=True))
    parts = [_listing(record.tokens, values, keep_zeros=True) for record, values in pairs]
    if repeat:
        parts.append("Same activations, but with all zeros filtered out:")
        parts += [_listing(record.tokens, values, keep_zeros=False) for record, values in pairs]
    return "\n".join(parts)


def _listing(tokens: Sequence[str], values: Sequence[int | str], keep_zeros: bool) -> str:
    lines = ["<start>"]
    lines += [f"{display_token(t)}\t{v}" for t, v in zip(tokens, values, strict=True) if keep_zeros or v != 0]
    lines.append("<end>")
    return "\n".join(lines)


EXPLAINER_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. You will see text excerpts, one token per line as token<tab>activation, between "
    "<start> and <end>. Activations run from 0 to 10: 0 means the neuron is silent, and "
    "higher numbers mean a stronger response. Say in one short phrase what the neuron "
    "responds to. Describe the pattern; do not just list the tokens."
)


def explainer_messages(records: Sequence[Record], n_fewshot: int | None = None) -> list[dict[str, str]]:
    """Chat messages asking for the completion of "the main thing this neuron does is find".

    ``n_fewshot`` worked example neurons (default: all) come first; fewer make a shorter prompt.
    """
    messages = [{"role": "system", "content": EXPLAINER_SYSTEM}]
    for i, example in enumerate(EXAMPLE_NEURONS[:n_fewshot], start=1):
        messages.append({"role": "user", "content": _explainer_question(i, example.records)})
        messages.append({"role": "assistant", "content": f"{example.explanation}."})
    messages.append({"role": "user", "content": _explainer_question(len(EXAMPLE_NEURONS[:n_fewshot]) + 1, records)})
    return messages


def _explainer_question(number: int, records: Sequence[Record]) -> str:
    return (
        f"Neuron {number}\nActivations:\n{format_records(records)}\n\n"
        f"Complete the sentence. Explanation of neuron {number}: {EXPLANATION_PREFIX}"
    )


LOOKUP_EXPLAINER_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. You will see the tokens on which a neuron is most active on average, one per line "
    "as token<tab>activation, strongest first. Activations run from 0 to 10. Say in one short "
    "phrase what the neuron responds to. Describe the pattern; do not just list the tokens."
)
LOOKUP_EXAMPLE = (
    [(" Monday", 10.0), (" Sunday", 9.6), (" Friday", 9.1), (" Thursday", 8.8), (" weekend", 3.0), (" holiday", 1.4)],
    "names of the days of the week",
)


def lookup_explainer_messages(tokens: Sequence[str], means: Sequence[float]) -> list[dict[str, str]]:
    """Chat messages asking to summarize a token lookup table's top tokens (method.md §6).

    Mean activations are normalized like the excerpt listings: negatives to 0, the
    largest shown to 10.
    """
    example_tokens, example_explanation = LOOKUP_EXAMPLE
    return [
        {"role": "system", "content": LOOKUP_EXPLAINER_SYSTEM},
        {
            "role": "user",
            "content": _lookup_question(1, [t for t, _ in example_tokens], [m for _, m in example_tokens]),
        },
        {"role": "assistant", "content": f"{example_explanation}."},
        {"role": "user", "content": _lookup_question(2, tokens, means)},
    ]


def _lookup_question(number: int, tokens: Sequence[str], means: Sequence[float]) -> str:
    values = normalize(means, max(means, default=0.0))
    listing = "\n".join(f"{display_token(t)}\t{v}" for t, v in zip(tokens, values, strict=True))
    return (
        f"Neuron {number}\nTokens with the highest mean activation:\n<start>\n{listing}\n<end>\n\n"
        f"Complete the sentence. Explanation of neuron {number}: {EXPLANATION_PREFIX}"
    )


def parse_explanation(raw: str) -> str:
    """Clean a reply into an explanation: no prefix, one line, no enclosing quotes, no trailing period.

    Quotes go only as a pair enclosing the whole explanation, so quoted words inside it
    (``the word "dogs"``, ``"dogs" and "cats"``) keep their quotes.
    """
    text = raw.strip()
    # Models often echo the end of the question before answering.
    echoed = re.search(re.escape(EXPLANATION_PREFIX), text, flags=re.IGNORECASE)
    if echoed is not None and echoed.start() < 60:
        text = text[echoed.end() :]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = _trim(text)
    while len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and text[0] not in text[1:-1]:
        text = _trim(text[1:-1])
    if not text:
        raise ExplanationParseError(f"explainer reply holds no explanation: {raw!r}")
    return text


def _trim(text: str) -> str:
    """``text`` without surrounding spaces, colons or a trailing period."""
    return text.strip().strip(":").strip().rstrip(".").strip()


def _simulator_preamble(top: int) -> str:
    return (
        "We study neurons of a language model. Each neuron responds to some particular thing in "
        "text. Given an explanation of what a neuron does, predict its activation on each token. "
        f"The format is token<tab>activation; activations run from 0 to {top}, most are 0, and "
        f'"{UNKNOWN}" marks an activation still to be predicted.\n\n'
    )


@dataclass(frozen=True)
class SimulatorPrompt:
    """A completions prompt and the character offset of each target token's placeholder."""

    text: str
    placeholder_offsets: list[int]


def simulator_prompt(
    explanation: str, tokens: Sequence[str], seed: int = 0, n_fewshot: int | None = None, top: int = MAX_NORMALIZED
) -> SimulatorPrompt:
    """All-at-once prompt: few-shot neurons, then the target excerpt with every activation unknown."""
    return simulator_prompt_for_excerpts(explanation, [tokens], seed, n_fewshot, top)


def simulator_prompt_for_excerpts(
    explanation: str,
    excerpts: Sequence[Sequence[str]],
    seed: int = 0,
    n_fewshot: int | None = None,
    top: int = MAX_NORMALIZED,
) -> SimulatorPrompt:
    """All-at-once prompt for one or more excerpts of one neuron, each listed after the
    explanation between ``<start>`` and ``<end>``; placeholder offsets run over all of them.

    Few-shot listings switch from "unknown" to real values at a random position, so the
    model learns that a number may follow a tab at any point, including after "unknown".
    Values run from 0 to ``top``: 10, or 9 for a simulator whose tokenizer has no token "10"
    (its every value is then one token, and one forward pass reads them all).
    """
    rng = random.Random(seed)
    text = _simulator_preamble(top)
    for i, example in enumerate(EXAMPLE_NEURONS[:n_fewshot], start=1):
        text += _simulator_header(i, example.explanation)
        for record in example.records:
            values: list[int | str] = list(normalize(record.activations, _max(example.records), top))
            switch = rng.randrange(len(values))
            values = [UNKNOWN if j < switch else v for j, v in enumerate(values)]
            text += _listing(record.tokens, values, keep_zeros=True) + "\n\n"
    text += _simulator_header(len(EXAMPLE_NEURONS[:n_fewshot]) + 1, explanation)
    offsets = []
    for i, excerpt in enumerate(excerpts):
        text += "\n<start>\n" if i else "<start>\n"  # a blank line between listings, as in the examples
        for token in excerpt:
            text += f"{display_token(token)}\t"
            offsets.append(len(text))
            text += f"{UNKNOWN}\n"
        text += "<end>\n"
    return SimulatorPrompt(text, offsets)


JSON_SIMULATOR_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. Given an explanation of what a neuron does and a list of tokens, predict the "
    "neuron's activation on each token, from 0 (silent) to 10 (strongest); most are 0. "
    "Reply with only a JSON array of integers, one per token, in the same order."
)


def json_simulator_messages(
    explanation: str, tokens: Sequence[str], n_fewshot: int | None = None
) -> list[dict[str, str]]:
    """Chat messages for the log-prob-free simulator: the activations come back as a JSON array."""
    return _simulator_chat(
        JSON_SIMULATOR_SYSTEM, _json_question, lambda _, values: json.dumps(values), explanation, tokens, n_fewshot
    )


def _json_question(explanation: str, tokens: Sequence[str]) -> str:
    return (
        f"Explanation: {EXPLANATION_PREFIX} {explanation}.\n"
        f"Tokens ({len(tokens)}): {json.dumps(list(tokens), ensure_ascii=False)}"
    )


CHAT_SIMULATOR_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. Given an explanation of what a neuron does and a text excerpt, one token per line, "
    "write the excerpt again with the neuron's predicted activation after each token, as "
    "token<tab>activation, from 0 (silent) to 10 (strongest); most are 0. Keep every token "
    "exactly as given, one per line, between <start> and <end>."
)


def chat_simulator_messages(
    explanation: str, tokens: Sequence[str], n_fewshot: int | None = None
) -> list[dict[str, str]]:
    """Chat messages for the generated-token simulator: the model rewrites the excerpt with values.

    The expected value at each token is then read from the digit distribution of the
    generated token that follows the tab, so one call per excerpt suffices on backends that
    return ``top_logprobs`` for generated tokens only (OpenAI chat models).
    """
    return _simulator_chat(
        CHAT_SIMULATOR_SYSTEM,
        _chat_question,
        lambda example_tokens, values: _listing(example_tokens, values, True),
        explanation,
        tokens,
        n_fewshot,
    )


def _simulator_chat(
    system: str,
    question: Callable[[str, Sequence[str]], str],
    answer: Callable[[Sequence[str], list[int]], str],
    explanation: str,
    tokens: Sequence[str],
    n_fewshot: int | None,
) -> list[dict[str, str]]:
    """The chat simulators' messages: each few-shot neuron's first record asked and answered, then the excerpt."""
    messages = [{"role": "system", "content": system}]
    for example in EXAMPLE_NEURONS[:n_fewshot]:
        record = example.records[0]
        messages.append({"role": "user", "content": question(example.explanation, record.tokens)})
        values = normalize(record.activations, _max(example.records))
        messages.append({"role": "assistant", "content": answer(record.tokens, values)})
    messages.append({"role": "user", "content": question(explanation, tokens)})
    return messages


def _chat_question(explanation: str, tokens: Sequence[str]) -> str:
    listing = "\n".join(["<start>", *(display_token(t) for t in tokens), "<end>"])
    return f"Explanation: {EXPLANATION_PREFIX} {explanation}.\nExcerpt:\n{listing}"


ONE_AT_A_TIME_SYSTEM = (
    "We study neurons of a language model. Each neuron responds to some particular thing in "
    "text. Given an explanation of what a neuron does and a text, say how strongly the neuron "
    "responds to the last token of the text, in its context, from 0 (silent) to 10 (strongest). "
    "Most tokens get 0. Reply with the number only."
)


def one_at_a_time_messages(
    explanation: str, tokens: Sequence[str], position: int, n_fewshot: int | None = None
) -> list[dict[str, str]]:
    """Chat messages asking for the activation of ``tokens[position]``, shown with the text before it.

    The study's one-at-a-time format, in our words: the text up to and including the token,
    the token named again, and one number asked for. Each few-shot neuron contributes two
    worked questions from its first record: its strongest token and a silent one.
    """
    messages = [{"role": "system", "content": ONE_AT_A_TIME_SYSTEM}]
    for example in EXAMPLE_NEURONS[:n_fewshot]:
        record = example.records[0]
        values = normalize(record.activations, _max(example.records))
        strongest = max(range(len(values)), key=values.__getitem__)
        silent = next((i for i in range(strongest, len(values)) if values[i] == 0), values.index(0))
        for i in sorted({strongest, silent}):
            messages.append({"role": "user", "content": _one_at_a_time_question(example.explanation, record.tokens, i)})
            messages.append({"role": "assistant", "content": str(values[i])})
    messages.append({"role": "user", "content": _one_at_a_time_question(explanation, tokens, position)})
    return messages


def _one_at_a_time_question(explanation: str, tokens: Sequence[str], position: int) -> str:
    text = "".join(tokens[: position + 1])
    return (
        f"Explanation: {EXPLANATION_PREFIX} {explanation}.\n"
        f"Text: {text}\n"
        f"Last token: {json.dumps(tokens[position], ensure_ascii=False)}\n"
        "Activation of the last token (0-10):"
    )


def shortening_steps(n_records: int) -> list[tuple[int, int]]:
    """(few-shot neurons, excerpts) to try, from the full prompt down, when a backend's context is too small.

    Few-shot examples go first, one at a time, then the lowest-ranked excerpts, down to one.
    """
    n = len(EXAMPLE_NEURONS)
    return [(k, n_records) for k in range(n, -1, -1)] + [(0, m) for m in range(n_records - 1, 0, -1)]


def describe_shortening(n_fewshot: int, n_records: int, n_records_wanted: int) -> str | None:
    """What was left out of a prompt to fit the context, for the results table; None when nothing was."""
    dropped = []
    if n_fewshot < len(EXAMPLE_NEURONS):
        dropped.append(f"{len(EXAMPLE_NEURONS) - n_fewshot} of {len(EXAMPLE_NEURONS)} few-shot neurons")
    if n_records < n_records_wanted:
        dropped.append(f"{n_records_wanted - n_records} of {n_records_wanted} excerpts")
    return f"dropped {' and '.join(dropped)} to fit the backend's context" if dropped else None


def _simulator_header(number: int, explanation: str) -> str:
    return (
        f"Neuron {number}\nExplanation of neuron {number} behavior: {EXPLANATION_PREFIX} {explanation}.\nActivations:\n"
    )


def _max(records: Sequence[Record]) -> float:
    return max(max(r.activations) for r in records)
