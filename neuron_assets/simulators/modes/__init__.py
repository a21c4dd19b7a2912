"""The simulator modes, one module each, by the name a configuration asks for."""

from __future__ import annotations

from collections.abc import Callable

from neuron_assets.prompts.templates import (
    CHAT_SIMULATOR_PROMPT_VERSION,
    JSON_SIMULATOR_PROMPT_VERSION,
    ONE_AT_A_TIME_PROMPT_VERSION,
    SIMULATOR_PROMPT_VERSION,
)
from neuron_assets.simulators.modes.all_at_once import simulate
from neuron_assets.simulators.modes.base import Simulation, SimulationMode
from neuron_assets.simulators.modes.chat_logprobs import simulate_chat
from neuron_assets.simulators.modes.json_array import simulate_json
from neuron_assets.simulators.modes.one_at_a_time import simulate_one_at_a_time

MODES: dict[SimulationMode, tuple[str, Callable[..., Simulation]]] = {
    SimulationMode.ALL_AT_ONCE: (SIMULATOR_PROMPT_VERSION, simulate),
    SimulationMode.ONE_AT_A_TIME: (ONE_AT_A_TIME_PROMPT_VERSION, simulate_one_at_a_time),
    SimulationMode.CHAT_LOGPROBS: (CHAT_SIMULATOR_PROMPT_VERSION, simulate_chat),
    SimulationMode.JSON: (JSON_SIMULATOR_PROMPT_VERSION, simulate_json),
}
