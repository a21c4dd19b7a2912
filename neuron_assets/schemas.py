"""Pandera models: the single definition of every stored table's columns.

Every asset's output is validated against its model before it is written, and every
input is validated again when it is read back (see ``storage.ResultStore``).
"""

from __future__ import annotations

from typing import Optional

import pandera.polars as pa
import polars as pl

POOLS = ["explanation", "scoring"]
SCORING_SETS = ["top_and_random", "random_only"]


class Lineage(pa.DataFrameModel):
    """Columns every layer-partitioned row carries: which Dagster run and partition wrote it."""

    run_id: str
    partition: str


class Documents(pa.DataFrameModel):
    doc_id: int = pa.Field(ge=0, unique=True)
    corpus: str
    source: str
    text: str = pa.Field(str_length={"min_value": 1})


class Excerpts(pa.DataFrameModel):
    """Excerpts depend on the tokenizer, so they name the subject model that cut them."""

    excerpt_id: int = pa.Field(ge=0, unique=True)
    corpus: str
    subject_model: str
    doc_id: int = pa.Field(ge=0)
    pool: str = pa.Field(isin=POOLS)
    position: int = pa.Field(ge=0)
    token_ids: list[int]
    tokens: list[str]


class ActivationRecords(Lineage):
    """Per-token activations of one neuron on one excerpt, and why that excerpt was kept."""

    subject_model: str
    corpus: str
    layer: int = pa.Field(ge=0)
    neuron: int = pa.Field(ge=0)
    pool: str = pa.Field(isin=POOLS)
    kind: str = pa.Field(isin=["top", "random", "quantile"])
    quantile_bin: Optional[str] = pa.Field(nullable=True)
    rank: int = pa.Field(ge=0)
    excerpt_id: int = pa.Field(ge=0)
    max_activation: float
    activations: list[float]


class NeuronStats(Lineage):
    subject_model: str
    corpus: str
    layer: int = pa.Field(ge=0)
    neuron: int = pa.Field(ge=0)
    mean: float
    variance: float = pa.Field(ge=0)
    max: float
    min: float
    frac_firing: float = pa.Field(ge=0, le=1)
    n_tokens: int = pa.Field(gt=0)


class Explanations(Lineage):
    layer: int = pa.Field(ge=0)
    neuron: int = pa.Field(ge=0)
    sample: int = pa.Field(ge=0)
    explanation: str = pa.Field(str_length={"min_value": 1})
    raw_reply: str
    explainer_model: str
    prompt_version: str
    temperature: float
    excerpt_ids: list[int]
    prompt_shortening: Optional[str] = pa.Field(nullable=True)


class Simulations(Lineage):
    layer: int = pa.Field(ge=0)
    neuron: int = pa.Field(ge=0)
    sample: int = pa.Field(ge=0)
    excerpt_id: int = pa.Field(ge=0)
    excerpt_kind: str = pa.Field(isin=["top", "random"])
    simulator_model: str
    simulation_mode: str = pa.Field(isin=["all_at_once", "chat_logprobs", "one_at_a_time", "json"])
    prompt_version: str
    simulated: list[float]
    true_activations: list[float]
    n_unsimulated: int = pa.Field(ge=0)
    n_misaligned: int = pa.Field(ge=0)
    prompt_tokens: int = pa.Field(ge=0)
    prompt_shortening: Optional[str] = pa.Field(nullable=True)


class Scores(Lineage):
    layer: int = pa.Field(ge=0)
    neuron: int = pa.Field(ge=0)
    sample: int = pa.Field(ge=0)
    scoring_set: str = pa.Field(isin=SCORING_SETS)
    correlation: Optional[float] = pa.Field(nullable=True, ge=-1.0, le=1.0)
    explained_variance: Optional[float] = pa.Field(nullable=True, le=1.0)
    calibration_slope: Optional[float] = pa.Field(nullable=True)
    calibration_intercept: Optional[float] = pa.Field(nullable=True)
    n_tokens: int = pa.Field(ge=0)
    n_unsimulated: int = pa.Field(ge=0)
    undefined_reason: Optional[str] = pa.Field(nullable=True)


TABLES: dict[str, type[pa.DataFrameModel]] = {
    "documents": Documents,
    "excerpts": Excerpts,
    "activation_records": ActivationRecords,
    "neuron_stats": NeuronStats,
    "explanations": Explanations,
    "simulations": Simulations,
    "scores": Scores,
}


def validate(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Validate ``frame`` against the model of ``table``; raises pandera's error naming the column."""
    return TABLES[table].validate(frame)
