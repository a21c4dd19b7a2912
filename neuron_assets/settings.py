"""Project-wide settings read from the environment when the Dagster definitions load.

They are the few choices that shape the asset graph itself (the subject model fixes the
layer partitions) or where results live; everything else is per-run Dagster config.
Secrets are not settings: the API key is read from the environment at call time only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.storage.layout import check_variant, model_slug
from neuron_assets.storage.object_store import is_object_store
from neuron_assets.storage.store import DEFAULT_VARIANT, ResultStore
from neuron_assets.variants import VariantSettings, combine, read_variants_file
from neuron_assets.viewer import DEFAULT_URL as VIEWER_URL


@dataclass(frozen=True)
class Settings:
    """``subject_models``: one or more (comma-separated in the environment), each with its own
    assets and layer partitions; ``variants``: named configurations of the LLM stages, each
    with its own LLM-stage assets, so results of each stay side by side; ``variant_settings``:
    the settings a variants file gives some of them (the others have the default settings);
    ``data_dir``: a local folder, or ``s3://bucket/prefix`` (kept as written), with ``local_dir``
    the local folder for what cannot live in a bucket (see ``storage.store``)."""

    subject_models: tuple[str, ...]
    data_dir: Path | str
    llm_base_url: str | None
    explainer_model: str | None
    simulator_model: str | None
    variants: tuple[str, ...] = (DEFAULT_VARIANT,)
    viewer_url: str = VIEWER_URL
    llm_layers_per_run: int | None = None  # None: a backfill's LLM stages run as one run
    recording_layers_per_run: int | None = None  # None: one forward pass records every layer of a backfill
    device: str = "auto"  # the subject models' torch device: auto (a CUDA GPU if torch sees one), cpu, cuda[:N]
    variant_settings: tuple[VariantSettings, ...] = ()
    local_dir: Path | None = None  # None: the data dir, or data/s3/<bucket>/<prefix> for a bucket
    dask_scheduler: str | None = None  # a Dask scheduler's address: each step runs on its workers

    def __post_init__(self) -> None:
        if not self.subject_models or not self.variants:
            raise ValueError("settings need at least one subject model and one variant")
        unlisted = [v.name for v in self.variant_settings if v.name not in self.variants]
        if unlisted or len({v.name for v in self.variant_settings}) < len(self.variant_settings):
            raise ValueError(
                f"variant settings are given for {[v.name for v in self.variant_settings]}: each must be one of "
                f"the variants {list(self.variants)}, and given once"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        for variant in self.variants:
            check_variant(variant)
        for names, what in ((self.subject_models, "subject model"), (self.variants, "variant")):
            if len(set(names)) < len(names):
                raise ValueError(f"a {what} is named twice in {list(names)}")
        slugs = [model_slug(name) for name in self.subject_models]
        if len(set(slugs)) < len(slugs):
            raise ValueError(f"subject models {list(self.subject_models)} would share a results folder ({slugs})")

    @property
    def subject_model(self) -> str:
        """The first subject model: the one ``make demo`` materializes."""
        return self.subject_models[0]

    def result_store(self) -> ResultStore:
        """The results of ``data_dir`` (a bucket's is checked once here: reachable, credentials taken)."""
        return ResultStore(self.data_dir, self.local_dir)

    def settings_of(self, variant: str) -> VariantSettings:
        """``variant``'s settings: from the variants file, or the default settings."""
        return next((v for v in self.variant_settings if v.name == variant), VariantSettings(variant))

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ
        variants, variant_settings = _variants(env)
        return cls(
            subject_models=_names(env.get("NEURON_ASSETS_SUBJECT_MODEL", PACKAGED_SUBJECT_MODEL)),
            data_dir=_data_dir(env.get("NEURON_ASSETS_DATA_DIR", "data")),
            local_dir=Path(env["NEURON_ASSETS_LOCAL_DIR"]).resolve() if env.get("NEURON_ASSETS_LOCAL_DIR") else None,
            llm_base_url=env.get("NEURON_ASSETS_LLM_BASE_URL") or None,
            explainer_model=env.get("NEURON_ASSETS_EXPLAINER_MODEL") or None,
            simulator_model=env.get("NEURON_ASSETS_SIMULATOR_MODEL") or None,
            variants=variants,
            variant_settings=variant_settings,
            viewer_url=env.get("NEURON_ASSETS_VIEWER_URL", VIEWER_URL),
            llm_layers_per_run=_positive(env, "NEURON_ASSETS_LLM_LAYERS_PER_RUN"),
            recording_layers_per_run=_positive(env, "NEURON_ASSETS_RECORDING_LAYERS_PER_RUN"),
            device=env.get("NEURON_ASSETS_DEVICE", "auto").strip() or "auto",
            dask_scheduler=env.get("NEURON_ASSETS_DASK_SCHEDULER", "").strip() or None,
        )


def _data_dir(text: str) -> Path | str:
    """A bucket's URL as written, a folder resolved against the working directory."""
    return text.strip() if is_object_store(text.strip()) else Path(text).resolve()


def _positive(env: os._Environ[str], name: str) -> int | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a whole number of layers, at least 1; got {text!r}")
    return int(text)


def _variants(env: os._Environ[str]) -> tuple[tuple[str, ...], tuple[VariantSettings, ...]]:
    """The variant names and the settings the variants file (if any) gives them."""
    file = env.get("NEURON_ASSETS_VARIANTS_FILE", "").strip()
    if not file:
        return _names(env.get("NEURON_ASSETS_VARIANTS", DEFAULT_VARIANT)), ()
    listed = _names(env["NEURON_ASSETS_VARIANTS"]) if env.get("NEURON_ASSETS_VARIANTS", "").strip() else None
    path = Path(file).expanduser().resolve()
    return combine(listed, read_variants_file(path), path)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())
