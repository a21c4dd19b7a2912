"""Simulators (method.md §4): predicted activations for an excerpt from an explanation.

- ``all_at_once`` (default): one completions call per excerpt. The prompt lists the
  excerpt with ``unknown`` in place of every activation; the server echoes the prompt
  with log-probabilities, and at each ``unknown`` position the probabilities of the
  strings "0".."10" give an expected activation in [0, 10].
- ``one_at_a_time``: the study's other format, one chat call per token: the text up to
  and including the token, the token named again, and one number asked for; the
  expected value is read from the first generated token's ``top_logprobs``. A different
  prompt from ``all_at_once``, so the two can disagree; ``make bench-modes`` measures by
  how much. It works on any chat model with ``top_logprobs`` (OpenAI's included), at a
  call per token.
- ``chat_logprobs``: for chat backends that give log-probabilities of generated tokens
  only (current OpenAI chat models, at most 20 per position): one chat call per excerpt
  in which the model writes the excerpt again as ``token<TAB>activation`` lines; the
  expected value at each token is read from the distribution of the generated token
  after its tab. The written lines are aligned with the excerpt's tokens; merged, split,
  missing or extra lines leave their tokens unsimulated and are counted as misaligned.
- ``json``: the log-prob-free simulator for backends without log-probabilities; one chat
  call per excerpt returns a JSON array of integers, used as they are. A reply whose
  length differs from the excerpt's is aligned position by position, and the tokens it
  leaves without a value (or the extra values) are counted as misaligned, never
  zero-filled.

``auto`` picks the first of all_at_once, chat_logprobs, json that the backend supports,
found with one tiny probe request per endpoint (cached like every other request).

**The value 10.** Many tokenizers (SmolLM2's, Qwen's, Mistral's, Gemma's) have no token
"10": the model writes "1" then "0", and reading the probability of "1" as the value 1
loses every 10. ``probe_ten_handling`` asks the simulator's own tokenizer, through the
server, how it writes "10", and every simulation stores the answer in ``ten_handling``:

- ``single_token``: "10" is one token (OpenAI's tokenizers); its probability is read.
- ``top_nine`` (all_at_once on a tokenizer that splits "10"): the prompt's scale runs
  from 0 to 9, so every value is one token and the one echoed forward pass still reads
  them all; the expected value is mapped back onto 0..10 (x 10/9). Reading what follows
  each "1" instead costs a call per token: SmolLM2 puts a median 31% of its digit mass on
  "1", so nearly every token would need one.
- ``second_read`` (the chat modes on such a tokenizer): the distribution of the token
  generated after a written "1" gives P("0" | "1"), and that share of the "1" mass moves
  to 10 (where the model wrote another digit, the "1" mass stays 1).
- ``written``: json mode reads numbers written out, so "10" is 10 already.
"""

from __future__ import annotations

import bisect
import difflib
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from neuron_assets.llm.errors import LLMError, ReplyFormatError
from neuron_assets.llm.fan_out import fit_to_context, map_neurons
from neuron_assets.prompts.templates import (
    CHAT_SIMULATOR_PROMPT_VERSION,
    EXAMPLE_NEURONS,
    JSON_SIMULATOR_PROMPT_VERSION,
    ONE_AT_A_TIME_PROMPT_VERSION,
    SIMULATOR_PROMPT_VERSION,
    SimulatorPrompt,
    chat_simulator_messages,
    describe_shortening,
    display_token,
    json_simulator_messages,
    one_at_a_time_messages,
    simulator_prompt,
)

DIGIT_VALUES = {str(i): i for i in range(11)}
TOP_LOGPROBS = 20
SINGLE_TOKEN, TOP_NINE, SECOND_READ, WRITTEN = "single_token", "top_nine", "second_read", "written"


class SimulationError(ReplyFormatError):
    """The server's reply cannot be read as a simulation.

    Raised from inside the client's reply check, so the reply is not cached and is asked
    for again before the neuron fails."""


@dataclass(frozen=True)
class Simulation:
    """Expected activations for one excerpt; ``None`` where no digit was among the top log-probabilities."""

    expected: list[float | None]
    prompt_tokens: int
    n_misaligned: int = 0

    @property
    def n_unsimulated(self) -> int:
        return sum(1 for v in self.expected if v is None)


class TokenizerProbeError(ReplyFormatError):
    """The server's answer to the tokenizer probe does not say how the simulator writes "10".

    Raised from inside the client's reply check, so the answer is not cached and is asked
    for again before the step fails."""


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
    """Probability of the token "0" (whitespace stripped) in a next-token distribution."""
    return sum(math.exp(lp) for token, lp in (top_logprobs or {}).items() if token.strip() == "0")


TEN_PROBE_TEXT = "Activations:\n<start>\nthe\t10\n<end>\n"


def probe_ten_handling(client: Any, model: str, mode: str) -> str:
    """How the simulator's tokenizer writes "10", asked through the server (one cached call).

    Where the completions endpoint echoes prompts (llama.cpp, vLLM), the echoed tokens of
    a listing holding "10" say it, whatever the mode; elsewhere (OpenAI chat models) the
    model is asked to write 10 and its generated tokens say it. An answer that shows
    neither "10" nor "1" then "0" is a ``TokenizerProbeError`` naming what came back.
    """
    if mode == "json":
        return WRITTEN
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
    if not split:
        return SINGLE_TOKEN
    return TOP_NINE if mode == "all_at_once" else SECOND_READ


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


def placeholder_distributions(
    prompt: SimulatorPrompt,
    text_offsets: Sequence[int],
    top_logprobs: Sequence[Mapping[str, float] | None],
    distribution_shift: int,
) -> list[Mapping[str, float] | None]:
    """The next-token distribution at each placeholder, found by character offset in the echoed tokens.

    ``distribution_shift`` says where a server puts the distribution that predicted token j:
    0 when ``top_logprobs[j]`` is it (OpenAI and vLLM semantics), -1 when it sits one entry
    earlier, at ``top_logprobs[j - 1]``, as llama-cpp-python reports echoed prompts.
    """
    if len(text_offsets) != len(top_logprobs):
        raise SimulationError("server returned text offsets and log-probabilities of different lengths")
    distributions = []
    for offset in prompt.placeholder_offsets:
        j = bisect.bisect_right(text_offsets, offset) - 1
        k = j + distribution_shift
        if j < 0 or not 0 <= k < len(top_logprobs):
            raise SimulationError(f"no echoed token covers prompt offset {offset}")
        distributions.append(top_logprobs[k])
    return distributions


def simulate(
    client: Any,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    distribution_shift: int,
    n_fewshot: int | None = None,
    ten_handling: str = SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one completions call that echoes the prompt's log-probabilities.

    Every call shares the same few-shot prefix, so servers with prefix caching (llama.cpp,
    vLLM) evaluate only the explanation and the excerpt. With ``top_nine`` the prompt's
    scale tops at 9 (see the module's docstring).
    """
    top = 9 if ten_handling == TOP_NINE else 10
    prompt = simulator_prompt(explanation, tokens, n_fewshot=n_fewshot, top=top)

    def read(response: dict[str, Any]) -> list[float | None]:
        logprobs = response["choices"][0].get("logprobs")
        if not logprobs or not logprobs.get("top_logprobs") or not logprobs.get("text_offset"):
            raise SimulationError(
                f"model {model!r} returned no prompt log-probabilities; the all-at-once simulator "
                "needs a completions endpoint with echo and logprobs (vLLM, llama.cpp with --logits_all)"
            )
        if logprobs["text_offset"][-1] < prompt.placeholder_offsets[-1]:
            raise SimulationError("the echoed prompt stops before the excerpt's last token (a truncated reply)")
        distributions = placeholder_distributions(
            prompt, logprobs["text_offset"], logprobs["top_logprobs"], distribution_shift
        )
        return _some_value([expected_value(distribution, top=top) for distribution in distributions])

    def keep(response: dict[str, Any]) -> dict[str, Any]:
        """For the cache: the offsets, and the distributions at the placeholders only (nearly all
        of an echoed response is distributions at prompt positions no reader looks at)."""
        choice = response["choices"][0]
        offsets = choice["logprobs"]["text_offset"]
        read_at = {
            bisect.bisect_right(offsets, offset) - 1 + distribution_shift for offset in prompt.placeholder_offsets
        }
        distributions = [d if k in read_at else None for k, d in enumerate(choice["logprobs"]["top_logprobs"])]
        logprobs = {"text_offset": offsets, "top_logprobs": distributions}
        return {**response, "choices": [{**choice, "logprobs": logprobs}]}

    response = client.completions.create(
        model=model,
        prompt=prompt.text,
        max_tokens=1,
        temperature=0.0,
        echo=True,
        logprobs=TOP_LOGPROBS,
        read=read,
        keep=keep,
    )
    return Simulation(read(response), _prompt_tokens(response))


def generated_tokens(response: dict[str, Any], model: str, mode: str) -> list[tuple[str, dict[str, float]]]:
    """Each generated token of a chat reply with its top log-probabilities; none is a ``SimulationError``."""
    content = (response["choices"][0].get("logprobs") or {}).get("content")
    if not content:
        raise SimulationError(
            f"model {model!r} returned no log-probabilities for generated tokens; the {mode} "
            "simulator needs a chat endpoint with logprobs and top_logprobs"
        )
    return [
        (item["token"], {top["token"]: top["logprob"] for top in item.get("top_logprobs") or []}) for item in content
    ]


def simulate_one_at_a_time(
    client: Any,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    n_fewshot: int | None = None,
    ten_handling: str = SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one chat call per token, reading one generated number each.

    With ``second_read`` two tokens are generated, so a written "1" is followed by the
    distribution of what comes after it.
    """

    def read(response: dict[str, Any]) -> float | None:
        written = generated_tokens(response, model, "one_at_a_time")
        (token, first), share = written[0], None
        if ten_handling == SECOND_READ and token.strip() == "1" and len(written) > 1:
            share = zero_probability(written[1][1])
        return expected_value(first, share)

    expected: list[float | None] = []
    prompt_tokens = 0
    for position in range(len(tokens)):
        response = client.chat.completions.create(
            model=model,
            messages=one_at_a_time_messages(explanation, tokens, position, n_fewshot),
            max_tokens=2 if ten_handling == SECOND_READ else 1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
            read=read,
        )
        expected.append(read(response))
        prompt_tokens += _prompt_tokens(response)
    return Simulation(_some_value(expected), prompt_tokens)


def parse_json_activations(reply: str, n_tokens: int) -> tuple[list[float | None], int]:
    """Activations from a JSON-array reply, and how many positions did not line up.

    Values are clipped to 0..10; a non-number leaves its token unsimulated. Missing
    values leave the trailing tokens unsimulated and extra values are dropped; both count
    as misaligned.
    """
    start, end = reply.find("["), reply.rfind("]")
    try:
        items = json.loads(reply[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list):
        raise SimulationError(f"reply holds no JSON array of activations: {reply[:200]!r}")
    values: list[float | None] = [
        min(10.0, max(0.0, float(v))) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        for v in items[:n_tokens]
    ]
    values += [None] * (n_tokens - len(values))
    return values, abs(len(items) - n_tokens)


def simulate_json(
    client: Any, model: str, explanation: str, tokens: Sequence[str], *, n_fewshot: int | None = None
) -> Simulation:
    """Simulate one excerpt with one chat call asking for a JSON array (no log-probabilities)."""

    def read(response: dict[str, Any]) -> tuple[list[float | None], int]:
        return parse_json_activations(response["choices"][0]["message"]["content"] or "", len(tokens))

    response = client.chat.completions.create(
        model=model,
        messages=json_simulator_messages(explanation, tokens, n_fewshot),
        temperature=0.0,
        max_tokens=4 * len(tokens) + 16,
        read=read,
    )
    values, misaligned = read(response)
    return Simulation(values, _prompt_tokens(response), misaligned)


def read_written_listing(
    written: Sequence[tuple[str, Mapping[str, float] | None]], tokens: Sequence[str], ten_handling: str = SINGLE_TOKEN
) -> tuple[list[float | None], int]:
    """Expected values per excerpt token from a generated ``token<TAB>value`` listing.

    ``written`` holds each generated token with its top log-probabilities. Each line's
    value is read from the generated token that covers the character after the line's
    last tab. Lines are matched to the excerpt's tokens by their text (whitespace
    stripped) with a sequence alignment: matched tokens take their line's value; tokens
    in merged, split, missing or changed lines stay unsimulated, and they and any extra
    lines are counted as misaligned.
    """
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
        if ten_handling == SECOND_READ and written[at][0].strip() == "1" and at + 1 < len(written):
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
    ten_handling: str = SINGLE_TOKEN,
) -> Simulation:
    """Simulate one excerpt with one chat call, from the generated tokens' top log-probabilities."""

    def read(response: dict[str, Any]) -> tuple[list[float | None], int]:
        written = generated_tokens(response, model, "chat_logprobs")
        expected, misaligned = read_written_listing(written, tokens, ten_handling)
        return _some_value(expected), misaligned

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
    return Simulation(expected, _prompt_tokens(response), misaligned)


def _some_value(expected: list[float | None]) -> list[float | None]:
    """``expected`` itself, unless not one token got a value: then the reply held no digits
    where they belong (digits written as words, a format ignored), which is an error."""
    if expected and all(value is None for value in expected):
        raise SimulationError(
            f"no activation could be read for any of the {len(expected)} tokens: the reply has no digit "
            "where a value belongs (digits written as words, or the format ignored)"
        )
    return expected


def _prompt_tokens(response: dict[str, Any]) -> int:
    """The prompt size a response reports (0 where the server reports no usage)."""
    return int((response.get("usage") or {}).get("prompt_tokens") or 0)


MODES: dict[str, tuple[str, Callable[..., Simulation]]] = {
    "all_at_once": (SIMULATOR_PROMPT_VERSION, simulate),
    "one_at_a_time": (ONE_AT_A_TIME_PROMPT_VERSION, simulate_one_at_a_time),
    "chat_logprobs": (CHAT_SIMULATOR_PROMPT_VERSION, simulate_chat),
    "json": (JSON_SIMULATOR_PROMPT_VERSION, simulate_json),
}
AUTO = "auto"
UNSUPPORTED_STATUS = frozenset({400, 404, 405, 422})  # not 401/403: a bad key is no capability answer
PROBE_TEXT = "Activations:\n<start>\nthe\t0\n<end>\n"


def resolve_mode(client: Any, model: str, requested: str) -> str:
    """The simulation mode to use: ``requested`` itself, or for ``auto`` what the backend supports.

    ``auto`` tries, in order of cost and fidelity, prompt log-probabilities through the
    completions endpoint with echo (all_at_once), generated-token ``top_logprobs`` through
    the chat endpoint (chat_logprobs), and falls back to json. A probe the backend refuses
    (400/404/405/422, such as "echo is not supported") means "not supported"; any other
    failure is raised, so a flaky server or a bad key never silently downgrades the mode.
    """
    if requested != AUTO:
        if requested not in MODES:
            raise ValueError(f"simulation mode {requested!r} is not one of {sorted([AUTO, *MODES])}")
        return requested
    try:
        response = client.completions.create(
            model=model, prompt=PROBE_TEXT, max_tokens=1, temperature=0.0, echo=True, logprobs=TOP_LOGPROBS
        )
        logprobs = response["choices"][0].get("logprobs") or {}
        if any(logprobs.get("top_logprobs") or []) and logprobs.get("text_offset"):
            return "all_at_once"
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
    try:
        response = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say 0."}],
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
        )
        content = (response["choices"][0].get("logprobs") or {}).get("content") or []
        if content and content[0].get("top_logprobs"):
            return "chat_logprobs"
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
    return "json"


def simulate_neurons(
    client: Any,
    model: str,
    explanations: pl.DataFrame,
    scoring: pl.DataFrame,
    excerpts: pl.DataFrame,
    *,
    mode: str = "all_at_once",
    distribution_shift: int = 0,
    ten_handling: str | None = None,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Simulate every explanation on its neuron's scoring and calibration excerpts, one call per excerpt.

    ``explanations`` has (layer, neuron, sample, method, explanation_neuron, explanation):
    the neuron's own explanations, its baselines' and its controls' (another neuron's).
    ``scoring`` has (layer, neuron, excerpt_id, excerpt_kind, activations), as
    ``scoring.select_scoring_excerpts`` chooses them. ``mode`` is a key of ``MODES``;
    ``distribution_shift`` only matters for ``all_at_once``. ``ten_handling`` says how the
    simulator's tokenizer writes "10" (``probe_ten_handling``); by default "10" is taken to be
    one token, and json mode reads written numbers.

    A prompt the backend refuses as too long loses few-shot neurons until it fits (kept
    for the neuron's later excerpts), and the shortening is recorded per simulation.

    Up to ``concurrency`` neurons are simulated at once, each neuron's excerpts in turn.
    A neuron whose simulation fails stops at that excerpt and the others go on; the
    failures are raised together as ``NeuronFailures``.
    """
    if mode not in MODES:
        raise ValueError(f"simulation mode {mode!r} is not one of {sorted(MODES)}")
    prompt_version, simulate_one = MODES[mode]
    ten_handling = WRITTEN if mode == "json" else (ten_handling or SINGLE_TOKEN)
    fitting = {"json": (WRITTEN,), "all_at_once": (SINGLE_TOKEN, TOP_NINE)}.get(mode, (SINGLE_TOKEN, SECOND_READ))
    if ten_handling not in fitting:
        raise ValueError(f"ten_handling {ten_handling!r} does not fit mode {mode!r}, which takes one of {fitting}")
    options: dict[str, Any] = {} if mode == "json" else {"ten_handling": ten_handling}
    if mode == "all_at_once":
        options["distribution_shift"] = distribution_shift
    jobs = (
        explanations.select("layer", "neuron", "sample", "method", "explanation_neuron", "explanation")
        .join(scoring.select("layer", "neuron", "excerpt_id", "excerpt_kind", "activations"), on=["layer", "neuron"])
        .join(excerpts.select("excerpt_id", "tokens"), on="excerpt_id")
        .sort(
            "layer",
            "neuron",
            "method",
            "sample",
            "excerpt_kind",
            "excerpt_id",
            descending=[False, False, False, False, True, False],
        )
    )

    fewshot_sizes = range(len(EXAMPLE_NEURONS), -1, -1)  # few-shot neurons in the prompt, all to none

    def simulate_fitting(explanation: str, tokens: list[str], start: int) -> tuple[Simulation, int]:
        return fit_to_context(
            fewshot_sizes,
            start,
            lambda n_fewshot: simulate_one(client, model, explanation, tokens, n_fewshot=n_fewshot, **options),
            too_long=f"{len(tokens)} tokens are too long for {model!r} even without few-shot examples",
        )

    def job(layer: int, neuron: int, neuron_jobs: pl.DataFrame) -> Callable[[], list[tuple[Any, ...]]]:
        def run() -> list[tuple[Any, ...]]:
            rows = []
            size = 0  # a prompt shortened for one excerpt starts the neuron's next excerpts short
            for (
                sample,
                method,
                explanation_neuron,
                explanation,
                excerpt_id,
                kind,
                true,
                tokens,
            ) in neuron_jobs.iter_rows():
                try:
                    simulation, size = simulate_fitting(explanation, tokens, size)
                except (SimulationError, LLMError) as error:
                    raise type(error)(f"excerpt {excerpt_id}: {error}") from error
                rows.append(
                    (
                        layer,
                        neuron,
                        sample,
                        method,
                        explanation_neuron,
                        excerpt_id,
                        kind,
                        simulation.expected,
                        true,
                        simulation.n_unsimulated,
                        simulation.n_misaligned,
                        simulation.prompt_tokens,
                        describe_shortening(fewshot_sizes[size], 1, 1),
                    )
                )
            return rows

        return run

    per_neuron = map_neurons(
        "simulation",
        [
            ((layer, neuron), job(layer, neuron, group.drop("layer", "neuron")))
            for (layer, neuron), group in jobs.group_by("layer", "neuron", maintain_order=True)
        ],
        expected_errors=(SimulationError, LLMError),
        concurrency=concurrency,
        on_done=on_neuron,
    )
    rows = [row for neuron_rows in per_neuron for row in neuron_rows]
    return pl.DataFrame(
        rows,
        schema={
            "layer": pl.Int64,
            "neuron": pl.Int64,
            "sample": pl.Int64,
            "method": pl.String,
            "explanation_neuron": pl.Int64,
            "excerpt_id": pl.Int64,
            "excerpt_kind": pl.String,
            "simulated": pl.List(pl.Float64),
            "true_activations": pl.List(pl.Float64),
            "n_unsimulated": pl.Int64,
            "n_misaligned": pl.Int64,
            "prompt_tokens": pl.Int64,
            "prompt_shortening": pl.String,
        },
        orient="row",
    ).with_columns(
        simulator_model=pl.lit(model),
        simulation_mode=pl.lit(mode),
        prompt_version=pl.lit(prompt_version),
        ten_handling=pl.lit(ten_handling),
    )
