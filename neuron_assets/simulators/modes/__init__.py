"""The simulator modes, one module each behind ``base.SimulatorMode``, by the name a configuration asks for."""

from __future__ import annotations

from neuron_assets.simulators.modes.all_at_once import ALL_AT_ONCE
from neuron_assets.simulators.modes.base import SimulationMode, SimulatorMode
from neuron_assets.simulators.modes.chat_logprobs import CHAT_LOGPROBS
from neuron_assets.simulators.modes.json_array import JSON_ARRAY
from neuron_assets.simulators.modes.one_at_a_time import ONE_AT_A_TIME

MODES: dict[SimulationMode, SimulatorMode] = {
    mode.name: mode for mode in (ALL_AT_ONCE, ONE_AT_A_TIME, CHAT_LOGPROBS, JSON_ARRAY)
}
