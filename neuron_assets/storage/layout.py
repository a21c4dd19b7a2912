"""Which experiment a result belongs to: its subject model and, for the LLM stages, its variant.

A variant is a named configuration of the LLM stages (explainer, simulator, prompts,
settings). Its name and the subject model's become folder names and Dagster asset key
parts, so both are held to what is safe in either.
"""

from __future__ import annotations

import re

# Tables an LLM (or what follows one) writes: one set per variant. Every other per-model
# table (excerpts, recordings, token baselines) is shared by all variants of the model.
VARIANT_TABLES = (
    "explanations",
    "simulations",
    "scores",
    "method_comparisons",
    "ablation_scores",
    "classifier_scores",
    "direction_rounds",
    "direction_summaries",
    "revision_sentences",
    "revisions",
    "revision_scores",
    "revision_comparisons",
)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,47}")


class ExperimentNameError(ValueError):
    """A variant name that cannot be a folder and asset key part."""


def prefix(model_folder: str, variant: str, table: str) -> list[str]:
    """The folders (and asset key parts) ``table``'s results go under: the model's, then the
    variant's for an LLM stage."""
    return [model_folder, variant] if table in VARIANT_TABLES else [model_folder]


def check_variant(name: str) -> str:
    """``name`` if it can name a variant; else an ``ExperimentNameError`` saying what is allowed."""
    if not _NAME.fullmatch(name):
        raise ExperimentNameError(
            f"variant name {name!r} cannot be part of a file name and asset key: use 1-48 lowercase letters, "
            f"digits and '_', starting with a letter (e.g. 'default', 'gpt4o_explainer')"
        )
    return name


def model_slug(subject_model: str) -> str:
    """The subject model's folder and asset key prefix: ``gpt2``, ``smollm2_135m_instruct_gguf``."""
    slug = re.sub(r"[^a-z0-9]+", "_", subject_model.lower().rsplit("/", 1)[-1]).strip("_")
    if not slug:
        raise ExperimentNameError(f"subject model name {subject_model!r} has no letter or digit to name its results by")
    return slug if slug[0].isalpha() else f"m_{slug}"
