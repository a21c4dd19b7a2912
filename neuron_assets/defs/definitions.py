"""The code location: ``dagster dev`` and the daemon load ``defs`` from here.

Each pipeline stage is a domain module (``recording``, ``explanation``, ``simulation``,
``scoring``, ``ablation``, ``revision``, ``directions``; ``puzzles`` beside them, unpartitioned)
with its configs, assets and checks;
this module puts them together: once per subject model for what the model's variants share
(``build_model_assets``), and once per variant for the LLM stages (``build_variant_assets``).

Loading must stay cheap: layer partitions come from model metadata (no weights), heavy
libraries are imported inside the assets, and the results database is not opened.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from neuron_assets.defs import (
    ablation,
    classifiers,
    directions,
    explanation,
    puzzles,
    recording,
    revision,
    scoring,
    simulation,
)
from neuron_assets.defs.experiments import Experiment, llm_key
from neuron_assets.defs.partitions import layer_partitions
from neuron_assets.defs.resources import (
    LLMResource,
    ResultStoreIOManager,
    ResultStoreResource,
    SubjectModelResource,
    with_defaults,
)
from neuron_assets.recording.subject_model import model_shape
from neuron_assets.settings import Settings

DOMAINS = (recording, explanation, simulation, scoring, classifiers, ablation, revision, directions)


def build_definitions(settings: Settings, **llm_options: Any) -> dg.Definitions:
    """The code location for ``settings``; ``llm_options`` set other ``LLMResource`` fields (timeouts, retries)."""
    built = [*puzzles.build_assets()]
    for subject_model in settings.subject_models:
        partitions = layer_partitions(model_shape(subject_model).n_layers)
        experiments = [
            Experiment(
                subject_model,
                variant,
                partitions,
                settings.viewer_url,
                settings.llm_layers_per_run,
                settings.recording_layers_per_run,
                settings.settings_of(variant),
            )
            for variant in settings.variants
        ]
        built += [
            a
            for domain in DOMAINS
            if hasattr(domain, "build_model_assets")
            for a in domain.build_model_assets(experiments[0])
        ]
        built += [
            a
            for experiment in experiments
            for domain in DOMAINS
            if hasattr(domain, "build_variant_assets")
            for a in domain.build_variant_assets(experiment)
        ]
    results = ResultStoreResource(
        data_dir=str(settings.data_dir), local_dir=str(settings.local_dir) if settings.local_dir else None
    )
    urls = [url.strip() for url in (settings.llm_base_url or "").split(",") if url.strip()]
    llm = {
        "base_url": urls[0] if urls else None,
        "base_urls": urls[1:],
        "explainer_model": settings.explainer_model,
        "simulator_model": settings.simulator_model,
        **llm_options,
    }
    # a variant whose settings name LLM fields has its own LLM resource, those settings its defaults
    variant_llms = {
        llm_key(variant): with_defaults(LLMResource, **{**llm, **variant.llm})(results=results)
        for variant in settings.variant_settings
        if llm_key(variant) != "llm"
    }
    return dg.Definitions(
        assets=[a for a in built if not isinstance(a, dg.AssetChecksDefinition)],
        asset_checks=[a for a in built if isinstance(a, dg.AssetChecksDefinition)],
        resources={
            "results": results,
            "io_manager": ResultStoreIOManager(results=results),
            # the settings are defaults: a run config block that names one field keeps the others
            "subject_model": with_defaults(SubjectModelResource, device=settings.device)(),
            "llm": with_defaults(LLMResource, **llm)(results=results),
            **variant_llms,
        },
        executor=executor(settings),
    )


def executor(settings: Settings) -> dg.ExecutorDefinition:
    """Where a run's steps execute: in the run's own process (the default: its steps share one
    loaded subject model and one LLM client), or, given ``dask_scheduler``, each step as a task on
    that Dask cluster's workers (dagster-dask), which re-runs a step whose worker died on another.
    Dask knows a task by its job and step name, so two runs of one job must not run at once on
    one cluster (``run_queue.max_concurrent_runs: 1``)."""
    if settings.dask_scheduler is None:
        return dg.in_process_executor
    from dagster_dask import dask_executor

    return dask_executor.configured({"cluster": {"existing": {"address": settings.dask_scheduler}}})


defs = build_definitions(Settings.from_environment())
