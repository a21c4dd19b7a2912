"""Asking an LLM yes/no questions about batches of examples, and reading its answers: the part the
detection and fuzzing scorers share.

One chat call per batch, at temperature 0, asks for a JSON array of 0s and 1s, one per example.
Where the client's backend takes a JSON schema (``json_schema_format``, see ``llm.json_schema``)
the reply is held to exactly that many integers 0..1. A reply from which no JSON array of the
right length can be read is an ``AnswerError``, raised inside the client's reply check, so the
reply is not cached and is asked for again before the scorer fails naming the problem. An
element that is not 0 or 1 leaves its example unanswered (counted as "no" by the metrics).

With ``use_logprobs`` the call also asks for the top log-probabilities of the generated tokens,
and each answer's probability of "yes" is read at the token that wrote its digit:
P("1") / (P("1") + P("0")), from that position's alternatives. These graded answers give an
AUROC; the written answers alone give none.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from neuron_assets.llm.errors import ReplyFormatError
from neuron_assets.llm.json_schema import schema_request
from neuron_assets.simulators.modes.base import TOP_LOGPROBS, json_array, reported_prompt_tokens

BATCH_SIZE = 5  # most examples per call
ANSWER_COLUMNS = {"answer": pl.Int64, "probability": pl.Float64, "batch": pl.Int64, "prompt_tokens": pl.Int64}
ITEM = re.compile(r"[^\s,\[\]]+")  # one element of a flat JSON array of numbers or short strings


class AnswerError(ReplyFormatError):
    """A classifier reply that holds no JSON array of one answer per example (or, asked for
    log-probabilities, has none). Raised in the client's reply check, so it is asked again."""


def answers_schema(n_examples: int) -> dict[str, Any]:
    """The JSON schema of a reply: exactly ``n_examples`` integers 0 or 1 (an ``enum``, which
    llama-cpp-python's grammar enforces where it ignores ``minimum`` and ``maximum``)."""
    item = {"type": "integer", "enum": [0, 1]}
    return {"type": "array", "items": item, "minItems": n_examples, "maxItems": n_examples}


def parse_answers(reply: str, n_examples: int) -> list[tuple[int | None, int | None]]:
    """Each example's answer (1, 0, or None for any other element) and the character offset in
    ``reply`` of the digit that wrote it (None where there is no such digit).

    The array runs from the reply's first "[" to its last "]"; one that cannot be parsed, or
    whose length is not ``n_examples``, is an ``AnswerError``, as is an array without one 0 or 1.
    """
    items = json_array(reply)
    if items is None:
        raise AnswerError(f"reply holds no JSON array of answers: {reply[:200]!r}")
    if len(items) != n_examples:
        raise AnswerError(f"reply's JSON array has {len(items)} answers for {n_examples} examples: {reply[:200]!r}")
    answers = [_answer(item) for item in items]
    if all(answer is None for answer in answers):
        raise AnswerError(f"no element of the reply's JSON array is 0 or 1: {reply[:200]!r}")
    written = [(m.start(), m.group()) for m in ITEM.finditer(reply, reply.find("[") + 1, reply.rfind("]"))]
    if len(written) != n_examples:  # elements with spaces or commas inside: offsets unknown
        return [(answer, None) for answer in answers]
    return [
        (answer, None if answer is None else at + text.find(str(answer)))
        for answer, (at, text) in zip(answers, written, strict=True)
    ]


def _answer(item: Any) -> int | None:
    """1 or 0 from an element written as that integer (or as the string "1" or "0"); else None."""
    if isinstance(item, bool):
        return None
    if isinstance(item, int) and item in (0, 1):
        return item
    if isinstance(item, str) and item.strip() in ("0", "1"):
        return int(item.strip())
    return None


def written_tokens(response: dict[str, Any], model: str) -> list[tuple[str, dict[str, float]]]:
    """Each generated token of a chat reply with its top log-probabilities; none is an ``AnswerError``."""
    content = (response["choices"][0].get("logprobs") or {}).get("content")
    if not content:
        raise AnswerError(
            f"model {model!r} returned no log-probabilities for generated tokens; graded answers (use_logprobs) "
            "need a chat endpoint with logprobs and top_logprobs"
        )
    return [
        (item["token"], {top["token"]: top["logprob"] for top in item.get("top_logprobs") or []}) for item in content
    ]


def yes_probability(token: str, at: int, alternatives: Mapping[str, float]) -> float | None:
    """P("1") / (P("1") + P("0")) at the generated ``token`` whose character ``at`` is the digit.

    The alternatives for "1" and "0" are ``token`` with that digit replaced (so a token such as
    "[1" or "1," is compared with "[0" or "0,"), merged with any variant that differs only in
    surrounding whitespace. None when neither is among the top log-probabilities."""
    one = (token[:at] + "1" + token[at + 1 :]).strip()
    zero = (token[:at] + "0" + token[at + 1 :]).strip()
    p_one = sum(math.exp(lp) for t, lp in alternatives.items() if t.strip() == one)
    p_zero = sum(math.exp(lp) for t, lp in alternatives.items() if t.strip() == zero)
    return None if p_one + p_zero == 0 else p_one / (p_one + p_zero)


def read_answers(
    response: dict[str, Any], n_examples: int, *, use_logprobs: bool, model: str
) -> tuple[list[int | None], list[float | None]]:
    """A reply's answers and, with ``use_logprobs``, each answer's probability of "yes" (else all None)."""
    if not use_logprobs:
        parsed = parse_answers(response["choices"][0]["message"]["content"] or "", n_examples)
        return [answer for answer, _ in parsed], [None] * n_examples
    written = written_tokens(response, model)
    starts = list(itertools.accumulate((len(token) for token, _ in written[:-1]), initial=0))
    parsed = parse_answers("".join(token for token, _ in written), n_examples)
    probabilities: list[float | None] = []
    for answer, offset in parsed:
        if answer is None or offset is None:
            probabilities.append(None)
            continue
        k = bisect.bisect_right(starts, offset) - 1
        probabilities.append(yes_probability(written[k][0], offset - starts[k], written[k][1]))
    return [answer for answer, _ in parsed], probabilities


def balanced_batches(n_rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, length) of ``ceil(n_rows / batch_size)`` consecutive batches whose lengths differ by at most one."""
    n_batches = -(-n_rows // batch_size)
    if n_batches == 0:
        return []
    base, extra = divmod(n_rows, n_batches)
    lengths = [base + 1] * extra + [base] * (n_batches - extra)
    return list(zip(itertools.accumulate([0, *lengths[:-1]]), lengths, strict=True))


def ask_in_batches(
    client: Any,
    model: str,
    examples: pl.DataFrame,
    messages: Callable[[pl.DataFrame], list[dict[str, str]]],
    *,
    batch_size: int = BATCH_SIZE,
    use_logprobs: bool = False,
) -> pl.DataFrame:
    """``examples`` with ``ANSWER_COLUMNS`` added: one chat call per batch of consecutive rows.

    The rows are cut into as few batches of at most ``batch_size`` as hold them, of sizes that
    differ by at most one (11 rows at 5 are 4 + 4 + 3, not 5 + 5 + 1): small models answer a
    lone example with several answers (Qwen2.5-Coder 0.5B and 1.5B on the puzzles did).
    ``messages(batch)`` writes a batch's prompt from its rows, numbering them in order.
    ``answer`` is 1, 0 or null (the reply gave that example no answer); ``probability`` is its
    probability of "yes" (null without ``use_logprobs``); ``batch`` the call's index;
    ``prompt_tokens`` the prompt size that call reported, repeated on each of its rows (sum it
    over distinct batches, not over rows).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    columns: dict[str, list[Any]] = {name: [] for name in ANSWER_COLUMNS}
    for number, (start, n) in enumerate(balanced_batches(examples.height, batch_size)):
        batch = examples.slice(start, n)

        def read(response: dict[str, Any], n: int = n) -> tuple[list[int | None], list[float | None]]:
            return read_answers(response, n, use_logprobs=use_logprobs, model=model)

        logprobs = {"logprobs": True, "top_logprobs": TOP_LOGPROBS} if use_logprobs else {}
        response = client.chat.completions.create(
            model=model,
            messages=messages(batch),
            temperature=0.0,
            max_tokens=4 * n + 16,
            read=read,
            **logprobs,
            **schema_request(client, "answers", answers_schema(n)),
        )
        answers, probabilities = read(response)
        columns["answer"] += answers
        columns["probability"] += probabilities
        columns["batch"] += [number] * n
        columns["prompt_tokens"] += [reported_prompt_tokens(response)] * n
    return examples.with_columns(pl.Series(name, columns[name], dtype=t) for name, t in ANSWER_COLUMNS.items())
