"""What a simulator mode is: the interface every mode implements, its result and its error, the
names of the modes and of the readings of "10", and the helpers the modes share to read replies."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, NoReturn

from neuron_assets.llm.errors import ReplyFormatError

TOP_LOGPROBS = 20  # log-probabilities asked per position: the most OpenAI's chat models give


class _Choice(StrEnum):
    """A closed set of names that are stored and configured as their strings.

    Members equal their strings, so stored tables and configs keep working; ``repr`` is the
    string's, so messages read as they would with plain strings; an unknown string is a
    ``ValueError`` naming the allowed ones.
    """

    def __repr__(self) -> str:
        return repr(self.value)

    @classmethod
    def _missing_(cls, value: object) -> NoReturn:
        what = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
        raise ValueError(f"{what} {value!r} is not one of {sorted(member.value for member in cls)}")


class SimulationMode(_Choice):
    """How the simulator is asked for an excerpt's activations; one module each under ``modes``."""

    ALL_AT_ONCE = "all_at_once"
    ONE_AT_A_TIME = "one_at_a_time"
    CHAT_LOGPROBS = "chat_logprobs"
    JSON = "json"


class TenHandling(_Choice):
    """How the value 10 is read, stored with every simulation.

    Many tokenizers (SmolLM2's, Qwen's, Mistral's, Gemma's) have no token "10": the model
    writes "1" then "0", and reading the probability of "1" as the value 1 loses every 10.
    ``probes.probe_ten_handling`` asks the simulator's tokenizer how it writes "10"; each
    mode says which reading it uses for either answer (``SimulatorMode``).
    """

    SINGLE_TOKEN = "single_token"
    """The string "10" is one token (OpenAI's tokenizers): its probability is read like any digit's."""
    TOP_NINE = "top_nine"
    """all_at_once on a tokenizer that splits "10": the prompt's scale runs 0..9, so every value is
    one token and one echoed forward pass still reads them all; the result is mapped x 10/9.
    (Reading what follows each "1" instead would cost a call per token that may be a 10.)"""
    SECOND_READ = "second_read"
    """The chat modes on such a tokenizer: the token generated after a written "1" gives
    P("0" | "1"), and that share of the "1" mass moves to 10."""
    WRITTEN = "written"
    """json reads numbers written out, so "10" is 10 already."""


class SimulationError(ReplyFormatError):
    """The server's reply cannot be read as a simulation.

    Raised from inside the client's reply check, so the reply is not cached and is asked
    for again before the neuron fails."""


@dataclass(frozen=True)
class Simulation:
    """Expected activations (0..10) for one excerpt, ``None`` where the reply gave a token no value."""

    expected: list[float | None]
    prompt_tokens: int
    n_misaligned: int = 0

    @property
    def n_unsimulated(self) -> int:
        """Tokens without a value; scoring counts them as 0 rather than dropping them."""
        return sum(1 for v in self.expected if v is None)


class SimulatorMode(ABC):
    """One way of asking the simulator: the prompt it sends, how it reads the reply into one value
    per token, and which readings of "10" it can make.

    A mode module builds its requests from its prompt in ``prompts.templates``, reads the reply
    itself, and names the reading of "10" it uses where the tokenizer has "10" as one token and
    where it writes "1" then "0" (the same reading twice when the mode does not depend on it).
    """

    name: ClassVar[SimulationMode]
    prompt_version: ClassVar[str]
    ten_if_one_token: ClassVar[TenHandling]
    ten_if_split: ClassVar[TenHandling]

    @property
    def ten_readings(self) -> tuple[TenHandling, ...]:
        """The readings of "10" this mode allows, the one for a single-token "10" first."""
        return tuple(dict.fromkeys((self.ten_if_one_token, self.ten_if_split)))

    def reading_of_ten(self, ten_handling: TenHandling | str | None = None) -> TenHandling:
        """``ten_handling`` checked against this mode's readings; none given means "10" is one token.

        A mode that reads "10" one way only reads it that way whatever it is told; otherwise a
        reading the mode cannot make is a ``ValueError``, so a probe's answer for another mode
        is never silently read as something else.
        """
        if not ten_handling:
            return self.ten_if_one_token
        asked = TenHandling(ten_handling)
        if len(self.ten_readings) == 1:
            return self.ten_readings[0]
        if asked not in self.ten_readings:
            raise ValueError(
                f"ten_handling {asked!r} does not fit mode {self.name!r}, which takes one of {self.ten_readings}"
            )
        return asked

    @abstractmethod
    def simulate(
        self,
        client: Any,
        model: str,
        explanation: str,
        tokens: Sequence[str],
        *,
        n_fewshot: int | None = None,
        ten_handling: TenHandling | str | None = None,
        distribution_shift: int = 0,
    ) -> Simulation:
        """One excerpt simulated: a value per token of ``tokens``, from the explanation alone.

        ``n_fewshot`` limits the few-shot neurons in the prompt (``None``: all of them);
        ``distribution_shift`` is where the server files echoed distributions, and only the
        modes that read echoed prompts use it. A reply that cannot be read is a
        ``SimulationError``.
        """


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


def some_value(expected: list[float | None]) -> list[float | None]:
    """``expected`` itself, unless not one token got a value: then the reply held no digits
    where they belong (digits written as words, a format ignored), which is an error."""
    if expected and all(value is None for value in expected):
        raise SimulationError(
            f"no activation could be read for any of the {len(expected)} tokens: the reply has no digit "
            "where a value belongs (digits written as words, or the format ignored)"
        )
    return expected


def json_array(reply: str) -> list[Any] | None:
    """The JSON array a reply holds from its first "[" to its last "]" (text around it, such as
    a sentence or a code fence, is ignored); None when there is none or it does not parse."""
    start, end = reply.find("["), reply.rfind("]")
    try:
        items = json.loads(reply[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        return None
    return items if isinstance(items, list) else None


def reported_prompt_tokens(response: dict[str, Any]) -> int:
    """The prompt size a response reports (0 where the server reports no usage)."""
    return int((response.get("usage") or {}).get("prompt_tokens") or 0)
