"""The per-neuron loop: every explanation simulated on its neuron's scoring excerpts, as one table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl

from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import fit_to_context, map_neurons
from neuron_assets.prompts.templates import EXAMPLE_NEURONS, describe_shortening
from neuron_assets.simulators.modes import MODES
from neuron_assets.simulators.modes.base import (
    Simulation,
    SimulationError,
    SimulationMode,
    TenHandling,
)
from neuron_assets.storage.schemas import Simulations, polars_schema

# The columns one simulated excerpt's row holds before the simulator's settings are added.
SIMULATION_SCHEMA = polars_schema(
    Simulations,
    [
        "layer",
        "neuron",
        "sample",
        "method",
        "explanation_neuron",
        "excerpt_id",
        "excerpt_kind",
        "simulated",
        "true_activations",
        "n_unsimulated",
        "n_misaligned",
        "prompt_tokens",
        "prompt_shortening",
    ],
)


def simulate_neurons(
    client: Any,
    model: str,
    explanations: pl.DataFrame,
    scoring: pl.DataFrame,
    excerpts: pl.DataFrame,
    *,
    mode: SimulationMode | str = SimulationMode.ALL_AT_ONCE,
    distribution_shift: int = 0,
    ten_handling: TenHandling | str | None = None,
    concurrency: int = 1,
    on_neuron: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Simulate every explanation on its neuron's scoring and calibration excerpts, one call per excerpt.

    ``explanations`` has (layer, neuron, sample, method, explanation_neuron, explanation):
    the neuron's own explanations, its baselines' and its controls' (another neuron's).
    ``scoring`` has (layer, neuron, excerpt_id, excerpt_kind, activations), as
    ``scoring.select_scoring_excerpts`` chooses them. ``mode`` names a ``SimulationMode``;
    ``distribution_shift`` only matters for ``all_at_once``. ``ten_handling`` is how the
    simulator reads "10" (``probes.probe_ten_handling`` answers it); by default "10" is taken
    to be one token. A name the mode does not know is a ``ValueError`` before any request.

    A prompt the backend refuses as too long loses few-shot neurons until it fits (kept
    for the neuron's later excerpts), and the shortening is recorded per simulation.

    Up to ``concurrency`` neurons are simulated at once, each neuron's excerpts in turn.
    A neuron whose simulation fails stops at that excerpt and the others go on; the
    failures are raised together as ``NeuronFailures``.
    """
    simulator = MODES[SimulationMode(mode)]
    ten_handling = simulator.reading_of_ten(ten_handling)
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
            lambda n_fewshot: simulator.simulate(
                client,
                model,
                explanation,
                tokens,
                n_fewshot=n_fewshot,
                ten_handling=ten_handling,
                distribution_shift=distribution_shift,
            ),
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
    return pl.DataFrame(rows, schema=SIMULATION_SCHEMA, orient="row").with_columns(
        simulator_model=pl.lit(model),
        simulation_mode=pl.lit(simulator.name.value),
        prompt_version=pl.lit(simulator.prompt_version),
        ten_handling=pl.lit(ten_handling.value),
    )
