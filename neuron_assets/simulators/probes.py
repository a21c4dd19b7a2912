"""Questions asked of the backend once per run: which mode it supports (``auto``), how it writes "10",
and, for all_at_once, whether its echo lines up with the placeholders and where it files distributions.

Both are ordinary requests, cached like every other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from neuron_assets.llm.errors import LLMError, ReplyFormatError
from neuron_assets.prompts.templates import SimulatorPrompt, simulator_prompt
from neuron_assets.simulators.modes import MODES
from neuron_assets.simulators.modes.all_at_once import ALL_AT_ONCE, AlignmentError, placeholder_positions, tokens_around
from neuron_assets.simulators.modes.base import TOP_LOGPROBS, SimulationMode, TenHandling


class TokenizerProbeError(ReplyFormatError):
    """The server's answer to the tokenizer probe does not say how the simulator writes "10".

    Raised from inside the client's reply check, so the answer is not cached and is asked
    for again before the step fails."""


TEN_PROBE_TEXT = "Activations:\n<start>\nthe\t10\n<end>\n"


def probe_ten_handling(client: Any, model: str, mode: SimulationMode | str) -> str:
    """How the simulator's tokenizer writes "10", asked through the server (one cached call).

    Where the completions endpoint echoes prompts (llama.cpp, vLLM), the echoed tokens of
    a listing holding "10" say it, whatever the mode; elsewhere (OpenAI chat models) the
    model is asked to write 10 and its generated tokens say it. An answer that shows
    neither "10" nor "1" then "0" is a ``TokenizerProbeError`` naming what came back.
    The mode says which reading goes with each answer; a mode that reads "10" one way only
    asks nothing. The answer is a ``TenHandling`` value as a plain string, as stored tables
    and Dagster metadata take it (Dagster refuses to serialize an Enum).
    """
    simulator = MODES[SimulationMode(mode)]
    if len(simulator.ten_readings) == 1:
        return simulator.ten_readings[0].value
    try:
        split = _ask(
            client.completions.create, model, "echo", _echoed_ten, prompt=TEN_PROBE_TEXT, echo=True, logprobs=1
        )
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
        messages = [{"role": "user", "content": "Write the number 10 and nothing else."}]
        split = _ask(
            client.chat.completions.create,
            model,
            "chat",
            _generated_ten,
            messages=messages,
            logprobs=True,
            top_logprobs=1,
            max_tokens=4,
        )
    return (simulator.ten_if_split if split else simulator.ten_if_one_token).value


def _ask(
    create: Callable[..., Any], model: str, how: str, tokens_of: Callable[[dict[str, Any]], list[str]], **request: Any
) -> bool:
    """One probe request; True when its tokens show "10" written as "1" then "0", False as one token."""

    def read(response: dict[str, Any]) -> bool:
        written = tokens_of(response)
        stripped = [t.strip() for t in written]
        if stripped[:1] == ["10"]:
            return False
        if stripped[:2] == ["1", "0"]:
            return True
        raise TokenizerProbeError(
            f"cannot tell how {model!r} writes 10: the {how} probe returned tokens {written!r}, "
            "neither '10' nor '1' then '0'"
        )

    request.setdefault("max_tokens", 1)
    return read(create(model=model, temperature=0.0, read=read, **request))


def _echoed_ten(response: dict[str, Any]) -> list[str]:
    """The echoed tokens that cover the "10" of ``TEN_PROBE_TEXT``."""
    logprobs = response["choices"][0].get("logprobs") or {}
    tokens, offsets = logprobs.get("tokens") or [], logprobs.get("text_offset") or []
    start = TEN_PROBE_TEXT.index("10")
    return [t for t, o in zip(tokens, offsets, strict=False) if start <= o < start + 2 or o < start < o + len(t)]


def _generated_ten(response: dict[str, Any]) -> list[str]:
    """The generated tokens from the first digit on (two of them), or all of them if none is a digit."""
    content = (response["choices"][0].get("logprobs") or {}).get("content") or []
    tokens = [item["token"] for item in content]
    first = next((i for i, t in enumerate(tokens) if t.strip()[:1].isdigit()), None)
    return tokens if first is None else tokens[first : first + 2]


AUTO = "auto"
UNSUPPORTED_STATUS = frozenset({400, 404, 405, 422})  # not 401/403: a bad key is no capability answer
PROBE_TEXT = "Activations:\n<start>\nthe\t0\n<end>\n"


def resolve_mode(client: Any, model: str, requested: SimulationMode | str) -> str:
    """The simulation mode to use: ``requested`` itself, or for ``auto`` what the backend supports.

    ``auto`` tries, in order of cost and fidelity, prompt log-probabilities through the
    completions endpoint with echo (all_at_once), generated-token ``top_logprobs`` through
    the chat endpoint (chat_logprobs), and falls back to json. A probe the backend refuses
    (400/404/405/422, such as "echo is not supported") means "not supported"; any other
    failure is raised, so a flaky server or a bad key never silently downgrades the mode.
    The answer is a ``SimulationMode`` value as a plain string, as stored tables and Dagster
    metadata take it.
    """
    if requested != AUTO:
        if requested not in MODES:
            raise ValueError(f"simulation mode {requested!r} is not one of {sorted([AUTO, *MODES])}")
        return SimulationMode(requested).value
    if gives_prompt_logprobs(client, model):
        return SimulationMode.ALL_AT_ONCE.value
    if gives_chat_logprobs(client, model):
        return SimulationMode.CHAT_LOGPROBS.value
    return SimulationMode.JSON.value


def gives_prompt_logprobs(client: Any, model: str) -> bool:
    """Whether the backend echoes a prompt with its log-probabilities (completions, ``echo``): one
    tiny probe; a refusal as unsupported is False, any other failure is raised."""
    try:
        response = client.completions.create(
            model=model, prompt=PROBE_TEXT, max_tokens=1, temperature=0.0, echo=True, logprobs=TOP_LOGPROBS
        )
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
        return False
    logprobs = response["choices"][0].get("logprobs") or {}
    return bool(any(logprobs.get("top_logprobs") or []) and logprobs.get("text_offset"))


def gives_chat_logprobs(client: Any, model: str) -> bool:
    """Whether the backend's chat endpoint gives generated tokens' ``top_logprobs``: one tiny
    probe; a refusal as unsupported is False, any other failure is raised."""
    try:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say 0."}],
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
        )
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
        return False
    content = (response["choices"][0].get("logprobs") or {}).get("content") or []
    return bool(content and content[0].get("top_logprobs"))


ALIGNMENT_EXPLANATION = "words about animals"
# A short excerpt of the kinds of tokens excerpts hold: words with and without a leading space,
# punctuation, a number, an escaped newline.
ALIGNMENT_TOKENS = ("The", " cat", " sat", ",", " 42", " dogs", ".", "\n", " End")
SHIFTS = (0, -1)  # where servers file the distribution that predicted token j: at j, or at j - 1
MATCH_NATS = 0.25  # mean difference of the reference's top log-probabilities that still matches
N_SAMPLED = 3  # placeholders checked against a direct next-token query
COMPARED_TOP = 5  # the reference's top tokens compared
MISSING_NATS = 1.0  # the least a top token absent from the compared distribution misses by


def alignment_prompt(ten_handling: str | None = None) -> SimulatorPrompt:
    """The all-at-once prompt the alignment probe sends: the real layout, without few-shot neurons."""
    top = 9 if ALL_AT_ONCE.reading_of_ten(ten_handling) is TenHandling.TOP_NINE else 10
    return simulator_prompt(ALIGNMENT_EXPLANATION, ALIGNMENT_TOKENS, n_fewshot=0, top=top)


def probe_alignment(client: Any, model: str, ten_handling: str | None = None, *, n_sampled: int = N_SAMPLED) -> int:
    """Where the server files the distribution that predicted each echoed token (0 or -1), checked
    on a real all-at-once prompt; ``AlignmentError`` where the echo cannot be read.

    One echoed call of ``alignment_prompt`` must have a token beginning at every placeholder
    (a tokenizer that joins the tab to the letters after it has none). Then, at ``n_sampled``
    placeholders, a completions call on the prompt cut just before the placeholder gives the
    distribution that predicts it unambiguously (a generated token's); the shift is the one
    whose echoed distribution there has the same top log-probabilities. The echo's own
    ``token_logprobs`` are no guide: llama-cpp-python computes them from the same misfiled rows.
    Every call is cached like any other, so a run asks once per backend and simulator model.
    """
    prompt = alignment_prompt(ten_handling)

    def aligned(response: dict[str, Any]) -> dict[str, Any]:
        logprobs = response["choices"][0].get("logprobs") or {}
        if not logprobs.get("top_logprobs") or not logprobs.get("text_offset"):
            raise AlignmentError(f"model {model!r} returned no prompt log-probabilities for the alignment probe")
        if len(logprobs["text_offset"]) != len(logprobs["top_logprobs"]):
            raise AlignmentError(f"the alignment probe's echo from {model!r} has offsets and distributions unpaired")
        placeholder_positions(prompt, logprobs["text_offset"], 0, model=model, tokens=logprobs.get("tokens"))
        return logprobs

    echo = aligned(
        client.completions.create(
            model=model,
            prompt=prompt.text,
            max_tokens=1,
            temperature=0.0,
            echo=True,
            logprobs=TOP_LOGPROBS,
            read=aligned,
        )
    )
    tokens = echo.get("tokens")
    starts = placeholder_positions(prompt, echo["text_offset"], 0, model=model, tokens=tokens)
    picked = sorted({round(i * (len(starts) - 1) / max(n_sampled - 1, 1)) for i in range(n_sampled)})
    misses: dict[int, list[float]] = {shift: [] for shift in SHIFTS}
    for n in picked:
        reference = next_token_distribution(client, model, prompt.text[: prompt.placeholder_offsets[n]])
        for shift in SHIFTS:
            k = starts[n] + shift
            candidate = echo["top_logprobs"][k] if 0 <= k < len(echo["top_logprobs"]) else None
            misses[shift].append(distribution_miss(reference, candidate))
    matching = [shift for shift in SHIFTS if max(misses[shift]) <= MATCH_NATS]
    if len(matching) != 1:
        seen = "; ".join(f"shift {shift}: {[round(m, 2) for m in misses[shift]]}" for shift in SHIFTS)
        around = tokens_around(tokens, echo["text_offset"], prompt.placeholder_offsets[picked[0]])
        raise AlignmentError(
            f"the echo of {model!r} files the distributions at its placeholders where "
            f"{'no' if not matching else 'more than one'} known convention puts them: against a direct next-token "
            f"query at placeholders {picked}, the mean log-probability differences were {seen} (a match is at most "
            f"{MATCH_NATS}); {around}"
        )
    return matching[0]


def next_token_distribution(client: Any, model: str, prefix: str) -> dict[str, float]:
    """The distribution predicting the token after ``prefix``: a generated token's top log-probabilities."""

    def read(response: dict[str, Any]) -> dict[str, float]:
        tops = (response["choices"][0].get("logprobs") or {}).get("top_logprobs") or []
        if not tops or not tops[0]:
            raise AlignmentError(f"model {model!r} returned no log-probabilities for a generated token")
        return dict(tops[0])

    return read(
        client.completions.create(
            model=model, prompt=prefix, max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, read=read
        )
    )


def distribution_miss(reference: Mapping[str, float], candidate: Mapping[str, float] | None) -> float:
    """Mean absolute difference (nats) over ``reference``'s top tokens; a token ``candidate`` lacks
    misses by at least ``MISSING_NATS``, and no candidate misses by infinity."""
    if not candidate:
        return math.inf
    top = sorted(reference, key=reference.__getitem__, reverse=True)[:COMPARED_TOP]
    return sum(abs(reference[t] - candidate[t]) if t in candidate else MISSING_NATS for t in top) / len(top)


def check_shift(found: int, configured: int | None, model: str) -> int:
    """The shift to read with: the probe's ``found``, which a ``configured`` (hand-set) one must agree with."""
    if configured is not None and configured != found:
        raise AlignmentError(
            f"prompt_logprobs_shift is set to {configured}, but the alignment probe found that the server files "
            f"the echoed distributions of {model!r} at shift {found}: remove the setting (the probe's answer is used) "
            f"or correct it"
        )
    return found
