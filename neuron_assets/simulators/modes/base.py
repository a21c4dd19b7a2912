"""What every simulator mode shares: its result, its error, and the helpers for reading replies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuron_assets.llm.client import ReplyFormatError

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
