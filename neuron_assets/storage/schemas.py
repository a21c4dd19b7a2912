"""Pandera models: the single definition of every stored table's columns.

Every asset's output is validated against its model before it is written, and every
input is validated again when it is read back (see ``storage.ResultStore``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import pandera.polars as pa
import polars as pl

from neuron_assets.scorers.methods import (
    CLASSIFIED,
    CLASSIFIER_SCORERS,
    EXCERPT_KINDS,
    EXPLAINED,
    METHODS,
    SCORING_SETS,
    SIMULATED,
    TOKEN_BASELINES,
)

POOLS = ["explanation", "scoring"]


class Lineage(pa.DataFrameModel):
    """Columns every layer-partitioned row carries: which Dagster run and partition wrote it."""

    run_id: str = pa.Field(description="Dagster run that wrote the row")
    partition: str = pa.Field(
        description="Dagster partition that wrote the row: 'layer-N' (a bare 'N' before partition keys named the layer)"
    )


class NeuronSide(Lineage):
    """Rows about one side of a neuron: its activations, or (``negative``) their negation."""

    subject_model: str = pa.Field(description="subject model whose neuron this is")
    polarity: str = pa.Field(
        isin=["positive", "negative"],
        description=(
            "'positive' (the activations as recorded) or 'negative' (negated: the neuron's large negative values, "
            "explained and scored as a neuron of their own)"
        ),
    )


class VariantRows(NeuronSide):
    """Rows an LLM stage wrote: they belong to one variant (a named configuration of the LLM stages)."""

    variant: str = pa.Field(
        description="the variant (named configuration of explainer, simulator, prompts and settings) that wrote the row"
    )


class ConfiguredRows(VariantRows):
    """Rows an LLM stage wrote with settings: what its run (and the runs of the rows it was made from) used."""

    run_settings: Optional[str] = pa.Field(
        nullable=True,
        description=(
            "the settings the row's run used, after any run-config override, as canonical JSON keyed by stage: "
            "this stage's and those recorded in the rows it was made from (a score's: its simulation's and "
            "explanation's); compare it across rows of one variant (view variant_settings); null for token-baseline "
            "scores and for rows written before settings were recorded"
        ),
    )
    overridden_settings: Optional[list[str]] = pa.Field(
        nullable=True,
        description=(
            "which of those settings differ from the variant's defaults (its variants-file settings or the "
            "environment's), as 'stage.key' or 'llm.key'; empty when none; null where run_settings is"
        ),
    )


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
    pool: str = pa.Field(
        isin=POOLS,
        description=(
            "'explanation' (shown to the explainer) or 'scoring' (held out for scores); whole documents go to one pool"
        ),
    )
    position: int = pa.Field(ge=0, description="index of the excerpt's first token within its document")
    token_ids: list[int] = pa.Field(description="the excerpt's token ids")
    tokens: list[str] = pa.Field(description="the excerpt's tokens as text")


class ActivationRecords(NeuronSide):
    """Per-token activations of one neuron on one excerpt, and why that excerpt was kept."""

    corpus: str = pa.Field(description="corpus the excerpts come from")
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    pool: str = pa.Field(isin=POOLS, description="pool of the excerpt: 'explanation' or 'scoring'")
    kind: str = pa.Field(
        isin=["top", "random", "quantile"],
        description="why the excerpt was kept: highest max activation, uniform sample, or quantile bin",
    )
    quantile_bin: Optional[str] = pa.Field(
        nullable=True, description="for kind 'quantile': the bin of the excerpt's max activation"
    )
    rank: int = pa.Field(ge=0, description="position within its kind (0 = highest for 'top')")
    excerpt_id: int = pa.Field(ge=0, description="the excerpt (see excerpts)")
    document_start_token: Optional[str] = pa.Field(
        nullable=True,
        description=(
            "token put before each excerpt when recording (what the model saw between documents); null for none"
        ),
    )
    max_activation: float = pa.Field(description="the neuron's largest activation on the excerpt")
    activations: list[float] = pa.Field(description="the neuron's activation at every token of the excerpt")


class NeuronStats(NeuronSide):
    corpus: str = pa.Field(description="corpus the statistics were computed over")
    document_start_token: Optional[str] = pa.Field(
        nullable=True, description="token put before each excerpt when recording; null for none"
    )
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    mean: float = pa.Field(description="mean activation over every recorded token")
    variance: float = pa.Field(ge=0, description="variance of the activation over every recorded token")
    max: float = pa.Field(description="largest activation seen")
    min: float = pa.Field(description="smallest activation seen (gated MLPs go negative)")
    frac_firing: float = pa.Field(ge=0, le=1, description="share of tokens with a positive activation")
    n_tokens: int = pa.Field(gt=0, description="tokens the statistics cover")


class TokenLookup(NeuronSide):
    """The token lookup table (method.md §6): each token's mean activation over the explanation pool."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    token_id: int = pa.Field(ge=0, description="the token's id in the subject model's vocabulary")
    token: str = pa.Field(description="the token as text")
    count: int = pa.Field(gt=0, description="times the token occurs in the explanation pool")
    mean_activation: float = pa.Field(description="the neuron's mean activation on the token over the explanation pool")


class ScoringExcerpts(NeuronSide):
    """Which excerpts every method of a neuron is scored and calibrated on: the same for all."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    excerpt_id: int = pa.Field(ge=0, description="the scoring-pool excerpt (see excerpts)")
    excerpt_kind: str = pa.Field(
        isin=list(EXCERPT_KINDS),
        description=(
            "'top' or 'random' (scored), 'calibration_top' or 'calibration_random' (held out to fit the calibration)"
        ),
    )
    activations: list[float] = pa.Field(description="the neuron's real activation at every token")


class Explanations(ConfiguredRows):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which of the neuron's sampled explanations")
    method: str = pa.Field(
        isin=list(EXPLAINED),
        description=(
            "'explanation' (from top excerpts), 'next_token_explanation' (from top excerpts, each activation shown "
            "beside the next token) or 'lookup_explanation' (a summary of the token lookup table's top tokens, a "
            "baseline)"
        ),
    )
    explanation: str = pa.Field(
        str_length={"min_value": 1}, description="what the neuron finds, as the explainer completed the sentence"
    )
    raw_reply: str = pa.Field(description="the explainer's reply before cleaning")
    explainer_model: str = pa.Field(description="model that wrote the explanation")
    prompt_version: str = pa.Field(description="version of the explainer prompt")
    temperature: float = pa.Field(description="sampling temperature")
    excerpt_ids: list[int] = pa.Field(
        description="excerpts the explainer was shown, best first (empty for a lookup explanation)"
    )
    prompt_shortening: Optional[str] = pa.Field(
        nullable=True, description="what was dropped to fit the explainer's context; null if nothing"
    )


class Simulations(ConfiguredRows):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample was simulated")
    method: str = pa.Field(
        isin=list(SIMULATED),
        description=(
            "whose explanation was simulated: 'explanation', 'next_token_explanation' (simulated on the next tokens: "
            "one position fewer per excerpt), 'lookup_explanation' or 'control' (another neuron's)"
        ),
    )
    explanation_neuron: int = pa.Field(
        ge=0, description="the neuron the simulated explanation was written for (another one for 'control')"
    )
    excerpt_id: int = pa.Field(ge=0, description="the scoring or calibration excerpt simulated")
    excerpt_kind: str = pa.Field(
        isin=list(EXCERPT_KINDS),
        description="'top' or 'random' (scored), 'calibration_top' or 'calibration_random' (calibration only)",
    )
    simulator_model: str = pa.Field(description="model that simulated the neuron from the explanation")
    simulation_mode: str = pa.Field(
        isin=["all_at_once", "chat_logprobs", "one_at_a_time", "json"],
        description="how the simulator was asked (see README, simulator modes)",
    )
    prompt_version: str = pa.Field(description="version of the simulator prompt")
    ten_handling: str = pa.Field(
        isin=["single_token", "top_nine", "second_read", "written"],
        description=(
            "how the value 10 was read: 'single_token' ('10' is one token of the simulator's tokenizer), 'top_nine' "
            "(it is not: the all-at-once scale ran 0..9, mapped back x 10/9), 'second_read' (chat modes: what followed "
            "a written '1') or 'written' (json numbers)"
        ),
    )
    simulated: list[float] = pa.Field(description="expected activation 0..10 at every token; null where unsimulated")
    true_activations: list[float] = pa.Field(description="the neuron's real activation at every token")
    n_unsimulated: int = pa.Field(ge=0, description="tokens with no simulated value")
    n_misaligned: int = pa.Field(ge=0, description="tokens (and extra lines) the written reply did not line up with")
    prompt_tokens: int = pa.Field(ge=0, description="prompt tokens the backend reported for the call(s)")
    prompt_shortening: Optional[str] = pa.Field(
        nullable=True, description="what was dropped to fit the simulator's context; null if nothing"
    )


class TokenPredictions(NeuronSide):
    """What a token baseline predicts on each scoring and calibration excerpt (no LLM involved)."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    method: str = pa.Field(
        isin=list(TOKEN_BASELINES), description="'lookup_table' or 'weight_based' (see README, token baselines)"
    )
    excerpt_id: int = pa.Field(ge=0, description="the scoring or calibration excerpt")
    excerpt_kind: str = pa.Field(isin=list(EXCERPT_KINDS), description="as in scoring_excerpts")
    predicted: list[float] = pa.Field(description="the baseline's prediction at every token, on the neuron's scale")
    true_activations: list[float] = pa.Field(description="the neuron's real activation at every token")


class Scores(ConfiguredRows):
    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample was scored (0 for token baselines)")
    method: str = pa.Field(
        isin=list(METHODS),
        description=(
            "what was scored: 'explanation', a baseline ('lookup_table', 'weight_based', 'lookup_explanation') or "
            "'control'"
        ),
    )
    explanation_neuron: Optional[int] = pa.Field(
        nullable=True,
        description=(
            "the neuron the scored explanation was written for (another one for 'control'); null for token baselines"
        ),
    )
    scoring_set: str = pa.Field(
        isin=list(SCORING_SETS), description="'top_and_random' (top + random excerpts) or 'random_only'"
    )
    correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description=(
            "Pearson correlation of simulated with true activations, pooled over the set's tokens; null when undefined"
        ),
    )
    explained_variance: Optional[float] = pa.Field(
        nullable=True,
        le=1.0,
        description=(
            "1 - E[(calibrated simulation - truth)^2] / Var(truth) on the set's tokens, with the calibration fitted on "
            "the held-out calibration excerpts; can be negative; null when the correlation or the calibration is "
            "undefined"
        ),
    )
    calibration_slope: Optional[float] = pa.Field(
        nullable=True,
        description=(
            "slope of the linear map from the simulation to the neuron's scale, fitted on the calibration excerpts; "
            "null when it cannot be fitted (constant simulation there)"
        ),
    )
    calibration_intercept: Optional[float] = pa.Field(nullable=True, description="intercept of that map")
    n_calibration_tokens: int = pa.Field(ge=0, description="tokens the calibration was fitted on")
    n_tokens: int = pa.Field(ge=0, description="tokens scored, unsimulated ones included")
    n_unsimulated: int = pa.Field(ge=0, description="tokens without a simulated value, scored as 0 (see README)")
    undefined_reason: Optional[str] = pa.Field(
        nullable=True, description="why the correlation is undefined (constant activations); null when it is defined"
    )


class MethodComparisons(VariantRows):
    """Per layer, scoring set and method: mean score, and its paired difference from the explanation's."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    scoring_set: str = pa.Field(isin=list(SCORING_SETS), description="'top_and_random' or 'random_only'")
    method: str = pa.Field(isin=list(METHODS), description="the scored method (see scores.method)")
    n_neurons: int = pa.Field(
        ge=0, description="neurons with a defined score for the method (a neuron's samples averaged)"
    )
    mean_score: float = pa.Field(description="mean correlation score over those neurons")
    mean_ci_low: Optional[float] = pa.Field(
        nullable=True, description="lower end of the 95% bootstrap interval of the mean (null under 2 neurons)"
    )
    mean_ci_high: Optional[float] = pa.Field(nullable=True, description="upper end of that interval")
    n_paired: int = pa.Field(ge=0, description="neurons scored by both this method and the explanation")
    explanation_minus_method: Optional[float] = pa.Field(
        nullable=True,
        description=(
            "mean over those neurons of the explanation's score minus this method's; above 0 means the explanation "
            "does better"
        ),
    )
    difference_ci_low: Optional[float] = pa.Field(
        nullable=True, description="lower end of its 95% bootstrap interval over neurons; above 0 means reliably better"
    )
    difference_ci_high: Optional[float] = pa.Field(nullable=True, description="upper end of that interval")


class AblationScores(VariantRows):
    """The ablation score (method.md §5) of every scored method of a neuron, per scoring set."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample (0 for token baselines), as in scores")
    method: str = pa.Field(isin=list(METHODS), description="the scored method, as in scores")
    explanation_neuron: Optional[int] = pa.Field(
        nullable=True, description="as in scores: the neuron the explanation was written for; null for token baselines"
    )
    scoring_set: str = pa.Field(isin=list(SCORING_SETS), description="'top_and_random' or 'random_only'")
    ablation_score: Optional[float] = pa.Field(
        nullable=True,
        le=1.0,
        description=(
            "1 - E[JSD(simulated)] / E[JSD(mean)] over the set's tokens: the next-token distributions with the neuron "
            "replaced by its calibrated simulation, and by its mean activation, each against the original; 1 keeps "
            "the neuron's effect, 0 is no better than the mean, negative is worse; null when undefined"
        ),
    )
    mean_jsd_simulated: Optional[float] = pa.Field(
        nullable=True, ge=0.0, description="E[JSD] with the calibrated simulation in the neuron's place (nats)"
    )
    mean_jsd_mean: Optional[float] = pa.Field(
        nullable=True, ge=0.0, description="E[JSD] with the neuron's mean activation in its place (nats)"
    )
    mean_activation: float = pa.Field(
        description="the value put in the neuron's place for the mean ablation, on the recorded scale (both sides)"
    )
    calibration_slope: Optional[float] = pa.Field(
        nullable=True, description="the calibration used (from scores): slope from the simulation to the side's scale"
    )
    calibration_intercept: Optional[float] = pa.Field(nullable=True, description="its intercept")
    n_tokens: int = pa.Field(ge=0, description="tokens the expectations are over")
    undefined_reason: Optional[str] = pa.Field(
        nullable=True,
        description=(
            "why the score is undefined: no calibration (constant simulation on the calibration excerpts), or the "
            "mean ablation changes nothing; null when defined"
        ),
    )


class ClassifierScores(ConfiguredRows):
    """Every explanation of a neuron scored by the classifier scorers (detection, fuzzing,
    surprisal), with the examples each was asked about; beside the correlation score in ``scores``."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="which explanation sample was scored, as in scores")
    method: str = pa.Field(
        isin=list(CLASSIFIED), description="the scored explanation: 'explanation', 'lookup_explanation' or 'control'"
    )
    explanation_neuron: int = pa.Field(
        ge=0, description="the neuron the explanation was written for (another one for 'control')"
    )
    scorer: str = pa.Field(
        isin=list(CLASSIFIER_SCORERS),
        description="'detection' (which excerpts fire?), 'fuzzing' (are the marked tokens the firing ones?) or "
        "'surprisal' (does the explanation raise the likelihood of firing excerpts?)",
    )
    balanced_accuracy: Optional[float] = pa.Field(
        nullable=True,
        ge=0.0,
        le=1.0,
        description="mean of recall on both classes of the written answers; null "
        "for surprisal or when a class is empty",
    )
    precision: Optional[float] = pa.Field(nullable=True, ge=0.0, le=1.0, description="of the 'yes' answers")
    recall: Optional[float] = pa.Field(nullable=True, ge=0.0, le=1.0, description="of the positive examples")
    f1: Optional[float] = pa.Field(nullable=True, ge=0.0, le=1.0, description="harmonic mean of precision and recall")
    auroc: Optional[float] = pa.Field(
        nullable=True,
        ge=0.0,
        le=1.0,
        description="area under the ROC curve of the graded answers (P(yes) from log-probabilities) or, for "
        "surprisal, of the likelihood gain; null without log-probabilities or when a class is empty",
    )
    mean_gain_activating: Optional[float] = pa.Field(
        nullable=True, description="surprisal: mean log-likelihood gain (nats) of the activating excerpts"
    )
    mean_gain_non_activating: Optional[float] = pa.Field(
        nullable=True, description="surprisal: mean log-likelihood gain (nats) of the non-activating excerpts"
    )
    n_examples: int = pa.Field(ge=0, description="examples asked about")
    n_activating: int = pa.Field(ge=0, description="of them positive: activating (fuzzing: correctly marked)")
    n_unanswered: int = pa.Field(ge=0, description="examples the replies gave no answer (counted as 'no')")
    excerpt_ids: list[int] = pa.Field(description="the examples' excerpts, in the order asked (scoring pool only)")
    example_kinds: list[str] = pa.Field(description="each example's kind: 'top', 'quantile' or 'non_activating'")
    labels: list[bool] = pa.Field(description="each example's truth the metrics are against")
    answers: Optional[list[int]] = pa.Field(
        nullable=True, description="each example's written answer, 1 or 0 (null: unanswered); null for surprisal"
    )
    graded: Optional[list[float]] = pa.Field(
        nullable=True,
        description="each example's P(yes) (with log-probabilities) or surprisal's likelihood gain; null without",
    )
    prompt_tokens: int = pa.Field(ge=0, description="prompt tokens the scorer's calls reported, summed")
    scorer_model: str = pa.Field(description="the LLM that answered (the variant's simulator model)")
    prompt_version: str = pa.Field(description="the scorer's prompt version")


class DirectionRounds(VariantRows):
    """Every round of the coordinate ascent of an explainable direction (method.md §9).

    Written by the ``directions`` group's ``direction_rounds`` asset; the virtual neuron is
    recorded as is (``polarity`` 'positive').
    """

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    direction: int = pa.Field(ge=0, description="index of the direction among the run's directions")
    round: int = pa.Field(ge=0, description="ascent round, 0 for the random start")
    theta: list[float] = pa.Field(description="the unit direction θ (length d_mlp) explained in this round")
    explanation_kind: str = pa.Field(
        isin=["lookup_table"], description="how the virtual neuron was explained and simulated ('lookup_table')"
    )
    explanation: str = pa.Field(description="the explanation kept in this round (new, or re-used from an earlier one)")
    correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description=(
            "its correlation score on this round's θ over the direction's top and random scoring-pool excerpts; "
            "null when undefined"
        ),
    )
    correlation_after_update: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description="the same simulation's correlation on θ after the round's ascent steps; null in the last round",
    )
    reused_from_round: Optional[int] = pa.Field(
        nullable=True, ge=0, description="the round whose explanation was kept because it scored higher; null if new"
    )


class DirectionSummaries(VariantRows):
    """One row per explainable direction of a run (method.md §9): where its ascent started and
    ended, how close it lies to the others, and how many neurons carry its score."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    direction: int = pa.Field(ge=0, description="index of the direction, as in direction_rounds")
    explanation_kind: str = pa.Field(
        isin=["lookup_table"], description="how its virtual neuron was explained and simulated ('lookup_table')"
    )
    explanation: str = pa.Field(description="the explanation kept in the last round")
    start_correlation: Optional[float] = pa.Field(
        nullable=True, ge=-1.0, le=1.0, description="round 0's score: the random starting direction's"
    )
    found_correlation: Optional[float] = pa.Field(
        nullable=True, ge=-1.0, le=1.0, description="the last round's score: the found direction's"
    )
    max_abs_cosine: Optional[float] = pa.Field(
        nullable=True, ge=0.0, le=1.0, description="largest |cosine| between this found θ and another; null alone"
    )
    neurons_to_recover: Optional[int] = pa.Field(
        nullable=True,
        ge=1,
        description=(
            "fewest top-|weight| neurons (1, 2, 4, ..., d_mlp) of w = Σ^{-1/2}θ whose truncated virtual neuron scores "
            "at least recover_fraction of the found score with the same simulation; null when that score is undefined "
            "or not positive"
        ),
    )
    recovered_correlation: Optional[float] = pa.Field(
        nullable=True, ge=-1.0, le=1.0, description="the truncated virtual neuron's score at neurons_to_recover"
    )
    recover_fraction: float = pa.Field(gt=0.0, le=1.0, description="the share of the found score to recover")
    top_neurons: list[int] = pa.Field(description="the 10 neurons of largest |weight| in w = Σ^{-1/2}θ, largest first")
    top_weights: list[float] = pa.Field(description="their weights in w")


class PuzzleScores(pa.DataFrameModel):
    """The puzzle scorer test (method.md §10): every candidate explanation of every puzzle, scored and ranked."""

    run_id: str = pa.Field(description="Dagster run that wrote the row")
    puzzle_file: str = pa.Field(description="the puzzle file the puzzles were read from")
    puzzle: str = pa.Field(description="the puzzle's name")
    candidate: int = pa.Field(ge=0, description="the candidate's number within its puzzle (0 = the true explanation)")
    candidate_kind: str = pa.Field(
        isin=["true", "false", "common_tokens"],
        description=(
            "'true' (the puzzle's explanation), 'false' (one of its false explanations) or 'common_tokens' (the 3 "
            "tokens that most often fire)"
        ),
    )
    explanation: str = pa.Field(description="the candidate explanation that was scored")
    scorer: str = pa.Field(
        isin=["simulation", *CLASSIFIER_SCORERS],
        description="what scored the candidates: 'simulation' (the correlation score), 'detection', 'fuzzing' or "
        "'surprisal'",
    )
    metric: Optional[float] = pa.Field(
        nullable=True,
        description="what the candidates are ranked by: the correlation (simulation), the balanced accuracy "
        "(detection, fuzzing) or the AUROC (surprisal); null when undefined (and in rows written before scorers)",
    )
    correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description=(
            "correlation of simulated with true activations over all the puzzle's sentences; null when undefined "
            "and for the classifier scorers"
        ),
    )
    undefined_reason: Optional[str] = pa.Field(
        nullable=True, description="why the metric is undefined; null when defined"
    )
    n_tokens: int = pa.Field(ge=0, description="tokens scored (classifier scorers: of the examples asked about)")
    n_unsimulated: int = pa.Field(
        ge=0,
        description="tokens without a simulated value, scored as 0 (classifier scorers: examples without an answer)",
    )
    rank: int = pa.Field(
        ge=1,
        description=(
            "1 + the number of other candidates of the puzzle scoring at least as well (ties count against; undefined "
            "ranks last)"
        ),
    )
    n_candidates: int = pa.Field(ge=1, description="candidates of the puzzle")
    simulator_model: str = pa.Field(description="model that simulated (or classified) from each candidate")
    simulation_mode: Optional[str] = pa.Field(
        nullable=True, description="simulator mode (see simulations.simulation_mode); null for the classifier scorers"
    )
    prompt_version: str = pa.Field(description="version of the simulator's (or the classifier scorer's) prompt")
    ten_handling: Optional[str] = pa.Field(
        nullable=True,
        description="how the value 10 was read (see simulations.ten_handling); null for the classifier scorers",
    )


class PuzzleExplanations(pa.DataFrameModel):
    """The puzzle explainer test (method.md §10): the explainer's explanation of each puzzle, scored
    beside the true one."""

    run_id: str = pa.Field(description="Dagster run that wrote the row")
    puzzle_file: str = pa.Field(description="the puzzle file the puzzles were read from")
    puzzle: str = pa.Field(description="the puzzle's name")
    true_explanation: str = pa.Field(description="the puzzle's own explanation")
    explanation: str = pa.Field(
        str_length={"min_value": 1}, description="the explainer's explanation, from all the puzzle's sentences"
    )
    raw_reply: str = pa.Field(description="the explainer's reply before cleaning")
    explainer_model: str = pa.Field(description="model that wrote the explanation")
    prompt_version: str = pa.Field(description="version of the explainer prompt")
    prompt_shortening: Optional[str] = pa.Field(
        nullable=True, description="what was dropped to fit the explainer's context; null if nothing"
    )
    correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description="the explainer's explanation's score on the puzzle; null when undefined",
    )
    undefined_reason: Optional[str] = pa.Field(nullable=True, description="why that score is undefined")
    true_correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description="the true explanation's score on the puzzle, from puzzle_scores (same simulator)",
    )
    best_false_correlation: Optional[float] = pa.Field(
        nullable=True, ge=-1.0, le=1.0, description="the best false candidate's score, from puzzle_scores"
    )
    simulator_model: str = pa.Field(description="model that simulated the puzzle")
    simulation_mode: str = pa.Field(description="simulator mode")


class RevisionSentences(ConfiguredRows):
    """Sentences the explainer wrote to make a neuron fire by its explanation (method.md §8), and
    what the neuron did on them."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="the explanation sample the sentences were written for (0)")
    sentence: int = pa.Field(ge=0, description="the sentence's number in the explainer's reply(s)")
    text: str = pa.Field(description="the sentence as written")
    explanation: str = pa.Field(description="the explanation the sentence was written from")
    tokens: list[str] = pa.Field(description="the sentence in the subject model's tokens (empty when rejected)")
    activations: list[float] = pa.Field(description="the neuron's real activation at every token (empty when rejected)")
    max_activation: Optional[float] = pa.Field(
        nullable=True, description="the neuron's largest activation on the sentence; null when rejected"
    )
    is_false_positive: Optional[bool] = pa.Field(
        nullable=True,
        description=(
            "max_activation below false_positive_fraction of the neuron's recorded max: the explanation predicted a "
            "response that did not come; null when rejected"
        ),
    )
    false_positive_fraction: float = pa.Field(
        gt=0, le=1, description="the threshold, as a share of the neuron's max (neuron_stats.max)"
    )
    split: Optional[str] = pa.Field(
        nullable=True,
        isin=["revision", "scoring"],
        description=(
            "'revision' (shown to the reviser) or 'scoring' (added to the extended scoring set); null when rejected"
        ),
    )
    rejected_reason: Optional[str] = pa.Field(
        nullable=True,
        description="why the subject model was not run on the sentence (no token, too long); null when it was",
    )
    n_requested: int = pa.Field(
        gt=0, description="sentences asked for; fewer rows for the neuron mean the explainer wrote fewer"
    )
    explainer_model: str = pa.Field(description="model that wrote the sentences")
    prompt_version: str = pa.Field(description="version of the sentence-writer prompt")


class Revisions(ConfiguredRows):
    """Revised explanations (method.md §8) and the study's controls."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="the explanation sample revised (0)")
    revision_kind: str = pa.Field(
        isin=["revised", "reexplained", "random_sentences"],
        description=(
            "'revised' (old explanation + generated sentences), 'reexplained' (control: sentences without the old "
            "explanation) or 'random_sentences' (control: old explanation + firing excerpts instead of sentences)"
        ),
    )
    original_explanation: str = pa.Field(description="the explanation that was revised (see explanations)")
    explanation: str = pa.Field(str_length={"min_value": 1}, description="the revised explanation")
    raw_reply: str = pa.Field(description="the explainer's reply before cleaning")
    shown_sentences: list[int] = pa.Field(description="revision_sentences.sentence numbers shown to the reviser")
    shown_excerpt_ids: list[int] = pa.Field(description="corpus excerpts shown instead (random_sentences control)")
    explainer_model: str = pa.Field(description="model that revised")
    prompt_version: str = pa.Field(description="version of the reviser prompt")


class RevisionScores(ConfiguredRows):
    """Original and revised explanations scored on the original and the extended scoring set."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    neuron: int = pa.Field(ge=0, description="index of the neuron in the MLP's hidden layer")
    sample: int = pa.Field(ge=0, description="the explanation sample (0)")
    revision_kind: str = pa.Field(
        isin=["original", "revised", "reexplained", "random_sentences"],
        description="'original' (the explanation before revision) or a revisions.revision_kind",
    )
    explanation: str = pa.Field(description="the explanation scored")
    scoring_set: str = pa.Field(
        isin=["original", "extended"],
        description=(
            "'original' (the neuron's top and random scoring excerpts) or 'extended' (those plus the scoring split of "
            "the generated sentences)"
        ),
    )
    correlation: Optional[float] = pa.Field(
        nullable=True,
        ge=-1.0,
        le=1.0,
        description="correlation of simulated with true activations over the set; null when undefined",
    )
    n_tokens: int = pa.Field(ge=0, description="tokens scored")
    n_unsimulated: int = pa.Field(ge=0, description="tokens without a simulated value, scored as 0")
    undefined_reason: Optional[str] = pa.Field(nullable=True, description="why the correlation is undefined")
    simulator_model: str = pa.Field(description="model that simulated")
    simulation_mode: str = pa.Field(description="simulator mode")
    prompt_version: str = pa.Field(description="version of the simulator prompt")
    ten_handling: str = pa.Field(description="how the value 10 was read")


class RevisionComparisons(VariantRows):
    """Per layer, scoring set and revision kind: mean score and the paired difference from the original."""

    layer: int = pa.Field(ge=0, description="transformer block of the MLP")
    scoring_set: str = pa.Field(isin=["original", "extended"], description="as in revision_scores")
    revision_kind: str = pa.Field(description="as in revision_scores")
    n_neurons: int = pa.Field(ge=0, description="neurons with a defined score")
    mean_score: float = pa.Field(description="mean correlation over those neurons")
    mean_ci_low: Optional[float] = pa.Field(
        nullable=True, description="lower end of the 95% bootstrap interval of the mean (null under 2 neurons)"
    )
    mean_ci_high: Optional[float] = pa.Field(nullable=True, description="upper end of that interval")
    n_paired: int = pa.Field(ge=0, description="neurons with defined original and revised scores")
    revised_minus_original: Optional[float] = pa.Field(
        nullable=True,
        description="mean over those neurons of the revised score minus the original's; above 0: revision helped",
    )
    difference_ci_low: Optional[float] = pa.Field(
        nullable=True, description="lower end of its 95% bootstrap interval; above 0: reliably helped"
    )
    difference_ci_high: Optional[float] = pa.Field(nullable=True, description="upper end of that interval")
    n_improved: int = pa.Field(ge=0, description="neurons whose revised score is above the original's")


TABLES: dict[str, type[pa.DataFrameModel]] = {
    "documents": Documents,
    "excerpts": Excerpts,
    "activation_records": ActivationRecords,
    "neuron_stats": NeuronStats,
    "token_lookup": TokenLookup,
    "scoring_excerpts": ScoringExcerpts,
    "explanations": Explanations,
    "simulations": Simulations,
    "token_predictions": TokenPredictions,
    "scores": Scores,
    "method_comparisons": MethodComparisons,
    "ablation_scores": AblationScores,
    "classifier_scores": ClassifierScores,
    "direction_rounds": DirectionRounds,
    "direction_summaries": DirectionSummaries,
    "revision_sentences": RevisionSentences,
    "revisions": Revisions,
    "revision_scores": RevisionScores,
    "revision_comparisons": RevisionComparisons,
    "puzzle_scores": PuzzleScores,
    "puzzle_explanations": PuzzleExplanations,
}


# Tables kept per subject model (under its folder); the puzzles test the LLMs alone.
MODEL_TABLES = tuple(name for name in TABLES if not name.startswith("puzzle_"))


def validate(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Validate ``frame`` against the model of ``table``; raises pandera's error naming the column."""
    return TABLES[table].validate(frame)


def polars_schema(model: type[pa.DataFrameModel], columns: Sequence[str] | None = None) -> dict[str, pl.DataType]:
    """The polars types of ``model``'s columns: all of them in the model's order, or ``columns`` in their order.

    The pure-core stages build frames that hold some of a stored table's columns (the Dagster
    layer adds lineage: run, partition, subject model, variant, polarity); they take the types
    from here, so the model stays the one definition. A nullable column needs nothing more: any
    polars column holds nulls. A column the model lacks is a ValueError naming it.
    """
    declared = {name: column.dtype.type for name, column in model.to_schema().columns.items()}
    wanted = list(declared) if columns is None else list(columns)
    missing = [name for name in wanted if name not in declared]
    if missing:
        raise ValueError(f"{model.__name__} has no column(s) {missing}; it has {list(declared)}")
    # pandera gives a plain type as its class (pl.Int64), a nested one as an instance (pl.List(pl.Int64)).
    return {name: declared[name]() if isinstance(declared[name], type) else declared[name] for name in wanted}
