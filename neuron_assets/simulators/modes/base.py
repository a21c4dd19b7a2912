"""What every simulator mode shares: its result, its error, and the helpers for reading replies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

from neuron_assets.llm.client import ReplyFormatError

TOP_LOGPROBS = 20


class _Choice(StrEnum):
    """A closed set of names that are stored and configured as their strings.

    Members equal their strings, so stored tables and configs keep working; ``repr`` is the
    string's, so messages read as they did; an unknown string is a ``ValueError`` naming the
    allowed ones.
    """

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def _missing_(cls, value: object) -> NoReturn:
        what = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
        raise ValueError(f"{what} {value!r} is not one of {sorted(member.value for member in cls)}")


class SimulationMode(_Choice):
    """How the simulator is asked for an excerpt's activations (one module each under ``modes``)."""

    ALL_AT_ONCE = "all_at_once"
    ONE_AT_A_TIME = "one_at_a_time"
    CHAT_LOGPROBS = "chat_logprobs"
    JSON = "json"


class TenHandling(_Choice):
    """How the value 10 is read (see the package docstring)."""

    SINGLE_TOKEN = "single_token"
    TOP_NINE = "top_nine"
    SECOND_READ = "second_read"
    WRITTEN = "written"


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
