"""Project-wide settings read from the environment when the Dagster definitions load.

They are the few choices that shape the asset graph itself (the subject model fixes the
layer partitions) or where results live; everything else is per-run Dagster config.
Secrets are not settings: the API key is read from the environment at call time only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL


@dataclass(frozen=True)
class Settings:
    subject_model: str
    data_dir: Path
    llm_base_url: str | None
    explainer_model: str | None
    simulator_model: str | None

    @classmethod
    def from_environment(cls) -> Settings:
        env = os.environ
        return cls(
            subject_model=env.get("NEURON_ASSETS_SUBJECT_MODEL", PACKAGED_SUBJECT_MODEL),
            data_dir=Path(env.get("NEURON_ASSETS_DATA_DIR", "data")).resolve(),
            llm_base_url=env.get("NEURON_ASSETS_LLM_BASE_URL") or None,
            explainer_model=env.get("NEURON_ASSETS_EXPLAINER_MODEL") or None,
            simulator_model=env.get("NEURON_ASSETS_SIMULATOR_MODEL") or None,
        )
