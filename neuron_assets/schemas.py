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

    run_id: str = pa.Field(description="Dagster run that wrote the row")
    partition: str = pa.Field(description="Dagster partition that wrote the row: 'layer-N' (a bare 'N' before partition keys named the layer)")


class Documents(pa.DataFrameModel):
    doc_id: int = pa.Field(ge=0, unique=True, description="document number within the corpus")
    corpus: str = pa.Field(description="corpus source as configured ('lee', a folder, 'hf:NAME')")
    source: str = pa.Field(description="where the document came from (file name, dataset row)")
    text: str = pa.Field(str_length={"min_value": 1}, description="the document's text")


class Excerpts(pa.DataFrameModel):
    """Excerpts depend on the tokenizer, so they name the subject model that cut them."""

    excerpt_id: int = pa.Field(ge=0, unique=True, description="excerpt number, referenced by every later table")
    corpus: str = pa.Field(description="corpus the excerpt was cut from")
    subject_model: str = pa.Field(description="subject model whose tokenizer cut the excerpt")
    doc_id: int = pa.Field(ge=0, description="document the excerpt comes from")
    pool: str = pa.Field(isin=POOLS, description="'explanation' (shown to the explainer) or 'scoring' (held out for scores); whole documents go to one pool")
    position: int = pa.Field(ge=0, description="index of the excerpt's first token within its document")
    token_ids: list[int] = pa.Field(description="the excerpt's token ids")
    tokens: list[str] = pa.Field(description="the excerpt's tokens as text")


class ActivationRecords(Lineage):
    """Per-token activations of one neuron on one excerpt, and why that excerpt was kept."""

    subject_model: str = pa.Field(description="subject model whose neuron this is")
    corpus: str = pa.Field(description="corpus the excerpts come from")
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    pool: str = pa.Field(isin=POOLS, description="pool of the excerpt: 'explanation' or 'scoring'")
    kind: str = pa.Field(isin=["top", "random", "quantile"], description="why the excerpt was kept: highest max activation, uniform sample, or quantile bin")
    quantile_bin: Optional[str] = pa.Field(nullable=True, description="for kind 'quantile': the bin of the excerpt's max activation")
    rank: int = pa.Field(ge=0, description="position within its kind (0 = highest for 'top')")
    excerpt_id: int = pa.Field(ge=0, description="the excerpt (see excerpts)")
    document_start_token: Optional[str] = pa.Field(nullable=True, description="token put before each excerpt when recording (what the model saw between documents); null for none")
    max_activation: float = pa.Field(description="the neuron's largest activation on the excerpt")
    activations: list[float] = pa.Field(description="the neuron's activation at every token of the excerpt")


class NeuronStats(Lineage):
    subject_model: str = pa.Field(description="subject model whose neuron this is")
    corpus: str = pa.Field(description="corpus the statistics were computed over")
    document_start_token: Optional[str] = pa.Field(nullable=True, description="token put before each excerpt when recording; null for none")
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    mean: float = pa.Field(description="mean activation over every recorded token")
    variance: float = pa.Field(ge=0, description="variance of the activation over every recorded token")
    max: float = pa.Field(description="largest activation seen")
    min: float = pa.Field(description="smallest activation seen (gated MLPs go negative)")
    frac_firing: float = pa.Field(ge=0, le=1, description="share of tokens with a positive activation")
    n_tokens: int = pa.Field(gt=0, description="tokens the statistics cover")


class Explanations(Lineage):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which of the neuron's sampled explanations")
    explanation: str = pa.Field(str_length={"min_value": 1}, description="what the neuron finds, as the explainer completed the sentence")
    raw_reply: str = pa.Field(description="the explainer's reply before cleaning")
    explainer_model: str = pa.Field(description="model that wrote the explanation")
    prompt_version: str = pa.Field(description="version of the explainer prompt")
    temperature: float = pa.Field(description="sampling temperature")
    excerpt_ids: list[int] = pa.Field(description="excerpts the explainer was shown, best first")
    prompt_shortening: Optional[str] = pa.Field(nullable=True, description="what was dropped to fit the explainer's context; null if nothing")


class Simulations(Lineage):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample was simulated")
    excerpt_id: int = pa.Field(ge=0, description="the scoring excerpt simulated")
    excerpt_kind: str = pa.Field(isin=["top", "random"], description="'top' or 'random' scoring excerpt")
    simulator_model: str = pa.Field(description="model that simulated the neuron from the explanation")
    simulation_mode: str = pa.Field(isin=["all_at_once", "chat_logprobs", "one_at_a_time", "json"], description="how the simulator was asked (see README, simulator modes)")
    prompt_version: str = pa.Field(description="version of the simulator prompt")
    simulated: list[float] = pa.Field(description="expected activation 0..10 at every token; null where unsimulated")
    true_activations: list[float] = pa.Field(description="the neuron's real activation at every token")
    n_unsimulated: int = pa.Field(ge=0, description="tokens with no simulated value")
    n_misaligned: int = pa.Field(ge=0, description="tokens (and extra lines) the written reply did not line up with")
    prompt_tokens: int = pa.Field(ge=0, description="prompt tokens the backend reported for the call(s)")
    prompt_shortening: Optional[str] = pa.Field(nullable=True, description="what was dropped to fit the simulator's context; null if nothing")


class Scores(Lineage):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample was scored")
    scoring_set: str = pa.Field(isin=SCORING_SETS, description="'top_and_random' (top + random excerpts) or 'random_only'")
    correlation: Optional[float] = pa.Field(nullable=True, ge=-1.0, le=1.0, description="Pearson correlation of simulated with true activations, pooled over the set's tokens; null when undefined")
    explained_variance: Optional[float] = pa.Field(nullable=True, le=1.0, description="1 - E[(calibrated simulation - truth)^2] / Var(truth); the calibration is fitted on these same tokens, so today it equals correlation squared")
    calibration_slope: Optional[float] = pa.Field(nullable=True, description="slope of the linear map from the 0..10 simulation to the neuron's scale")
    calibration_intercept: Optional[float] = pa.Field(nullable=True, description="intercept of that map")
    n_tokens: int = pa.Field(ge=0, description="tokens scored, unsimulated ones included")
    n_unsimulated: int = pa.Field(ge=0, description="tokens without a simulated value, scored as 0 (see README)")
    undefined_reason: Optional[str] = pa.Field(nullable=True, description="why the correlation is undefined (constant activations); null when it is defined")


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
