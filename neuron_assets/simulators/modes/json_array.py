"""The json mode: one chat call per excerpt returning a JSON array of integers.

The log-prob-free simulator, for backends without log-probabilities: the integers are used
as they are, so a value is 0..10 in whole steps. A reply whose length differs from the
excerpt's is aligned position by position; the tokens it leaves without a value, and any
extra values, are counted as misaligned, never zero-filled. Where the backend takes a JSON
schema (the client's ``json_schema_format``), the reply is held to an array of integers 0..10,
one per token, so a weak simulator's reply can still be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuron_assets.llm.json_schema import schema_request
from neuron_assets.prompts.templates import JSON_SIMULATOR_PROMPT_VERSION, json_simulator_messages
from neuron_assets.simulators.modes.base import (
    Simulation,
    SimulationError,
    SimulationMode,
    SimulatorMode,
    TenHandling,
    json_array,
    reported_prompt_tokens,
)


class JsonArray(SimulatorMode):
    """One chat call per excerpt for a JSON array (``simulate_json``); needs no log-probabilities."""

    name = SimulationMode.JSON
    prompt_version = JSON_SIMULATOR_PROMPT_VERSION
    ten_if_one_token = ten_if_split = TenHandling.WRITTEN

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
        self.reading_of_ten(ten_handling)  # refuses an unknown name; any known one reads as written
        return simulate_json(client, model, explanation, tokens, n_fewshot=n_fewshot)


JSON_ARRAY = JsonArray()


def parse_json_activations(reply: str, n_tokens: int) -> tuple[list[float | None], int]:
    """Activations from a JSON-array reply, and how many positions did not line up.

    Values are clipped to 0..10; a non-number leaves its token unsimulated. Missing
    values leave the trailing tokens unsimulated and extra values are dropped; both count
    as misaligned.
    """
    items = json_array(reply)
    if items is None:
        raise SimulationError(f"reply holds no JSON array of activations: {reply[:200]!r}")
    values: list[float | None] = [
        min(10.0, max(0.0, float(v))) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        for v in items[:n_tokens]
    ]
    values += [None] * (n_tokens - len(values))
    return values, abs(len(items) - n_tokens)


def activations_schema(n_tokens: int) -> dict[str, Any]:
    """The JSON schema of a reply: exactly ``n_tokens`` integers from 0 to 10 (an ``enum``, which
    llama-cpp-python's grammar enforces where it ignores ``minimum`` and ``maximum``)."""
    item = {"type": "integer", "enum": list(range(11))}
    return {"type": "array", "items": item, "minItems": n_tokens, "maxItems": n_tokens}


def simulate_json(
    client: Any, model: str, explanation: str, tokens: Sequence[str], *, n_fewshot: int | None = None
) -> Simulation:
    """Simulate one excerpt with one chat call asking for a JSON array (no log-probabilities),
    held to ``activations_schema`` in the form the client's backend takes (none: the prompt alone)."""

    def read(response: dict[str, Any]) -> tuple[list[float | None], int]:
        return parse_json_activations(response["choices"][0]["message"]["content"] or "", len(tokens))

    response = client.chat.completions.create(
        model=model,
        messages=json_simulator_messages(explanation, tokens, n_fewshot),
        temperature=0.0,
        max_tokens=4 * len(tokens) + 16,
        read=read,
        **schema_request(client, "activations", activations_schema(len(tokens))),
    )
    values, misaligned = read(response)
    return Simulation(values, reported_prompt_tokens(response), misaligned)
