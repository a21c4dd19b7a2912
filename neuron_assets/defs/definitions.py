"""The code location: ``dagster dev`` and the daemon load ``defs`` from here.

Each pipeline stage is a domain module (``recording``, ``explanation``, ``simulation``,
``scoring``, ``revision``; ``puzzles`` beside them, unpartitioned) with its configs, assets and checks;
this module puts them together.

Loading must stay cheap: layer partitions come from model metadata (no weights), heavy
libraries are imported inside the assets, and the results database is not opened.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from neuron_assets.defs import explanation, puzzles, recording, revision, scoring, simulation
from neuron_assets.defs.partitions import layer_partitions
from neuron_assets.defs.resources import (
    LLMResource,
    ResultStoreIOManager,
    ResultStoreResource,
    SubjectModelResource,
)
from neuron_assets.recording.subject_model import model_shape
from neuron_assets.settings import Settings

DOMAINS = (recording, explanation, simulation, scoring, revision)


def build_definitions(settings: Settings, **llm_options: Any) -> dg.Definitions:
    """The code location for ``settings``; ``llm_options`` set other ``LLMResource`` fields (timeouts, retries)."""
    partitions = layer_partitions(model_shape(settings.subject_model).n_layers)
    results = ResultStoreResource(data_dir=str(settings.data_dir))
    return dg.Definitions(
        assets=[*(asset for domain in DOMAINS for asset in domain.build_assets(partitions)), *puzzles.build_assets()],
        asset_checks=[check for domain in DOMAINS for check in getattr(domain, "CHECKS", [])],
        resources={
            "results": results,
            "io_manager": ResultStoreIOManager(results=results),
            "subject_model": SubjectModelResource(name=settings.subject_model),
            "llm": LLMResource(
                results=results,
                base_url=settings.llm_base_url,
                explainer_model=settings.explainer_model,
                simulator_model=settings.simulator_model,
                **llm_options,
            ),
        },
        executor=dg.in_process_executor,
    )


defs = build_definitions(Settings.from_environment())
