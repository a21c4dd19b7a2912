"""Questions asked of the backend once per run: which mode it supports (``auto``) and how it writes "10".

Both are ordinary requests, cached like every other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuron_assets.llm.errors import LLMError, ReplyFormatError
from neuron_assets.simulators.modes import MODES
from neuron_assets.simulators.modes.base import TOP_LOGPROBS, SimulationMode


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
    try:
        response = client.completions.create(
            model=model, prompt=PROBE_TEXT, max_tokens=1, temperature=0.0, echo=True, logprobs=TOP_LOGPROBS
        )
        logprobs = response["choices"][0].get("logprobs") or {}
        if any(logprobs.get("top_logprobs") or []) and logprobs.get("text_offset"):
            return SimulationMode.ALL_AT_ONCE.value
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
            return SimulationMode.CHAT_LOGPROBS.value
    except LLMError as error:
        if error.status not in UNSUPPORTED_STATUS:
            raise
    return SimulationMode.JSON.value
