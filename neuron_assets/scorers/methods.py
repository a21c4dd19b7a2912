"""The ways a neuron gets scored, by name: its explanation, the token baselines, the control.

Every score carries one of these names in its ``method`` column, so one query compares
them per neuron and per layer (method.md §6). The names of the scoring sets, and of the
excerpt kinds they pool, live here too: the stored tables' models check them, and
``scorers.scoring`` takes its column types from those models, so they cannot import it.
"""

from __future__ import annotations

from collections.abc import Sequence

EXPLANATION = "explanation"
NEXT_TOKEN_EXPLANATION = "next_token_explanation"
LOOKUP_EXPLANATION = "lookup_explanation"
CONTROL = "control"
LOOKUP_TABLE = "lookup_table"
WEIGHT_BASED = "weight_based"

METHODS = {
    EXPLANATION: "the explainer's explanation from top-activating excerpts, simulated",
    NEXT_TOKEN_EXPLANATION: (
        "the explainer's explanation from top-activating excerpts with each activation shown beside the next "
        "token, simulated on the next tokens (method.md §7)"
    ),
    LOOKUP_EXPLANATION: "the explainer's summary of the token lookup table's top tokens, simulated",
    CONTROL: "another neuron's explanation from the same layer, simulated (the null distribution)",
    LOOKUP_TABLE: "mean activation of each token over the explanation pool (no LLM)",
    WEIGHT_BASED: "the neuron's activation on the pre-MLP norm of the token's embedding alone (no LLM)",
}
EXPLAINED = (EXPLANATION, LOOKUP_EXPLANATION, NEXT_TOKEN_EXPLANATION)
SIMULATED = (EXPLANATION, LOOKUP_EXPLANATION, CONTROL, NEXT_TOKEN_EXPLANATION)
# What runs unless a config names methods: next-token explanations cost as much again as the
# explanation itself and pay off only in some (mostly late-layer) neurons, so they are opt-in.
DEFAULT_EXPLAINED = (EXPLANATION, LOOKUP_EXPLANATION)
DEFAULT_SIMULATED = (EXPLANATION, LOOKUP_EXPLANATION, CONTROL)
TOKEN_BASELINES = (LOOKUP_TABLE, WEIGHT_BASED)
BASELINES = (LOOKUP_TABLE, WEIGHT_BASED, LOOKUP_EXPLANATION)

# The classifier scorers beside simulation (delphi's): each asks about whole excerpts, not
# per-token activations; and the methods they score (explanations written for excerpt text).
CLASSIFIER_SCORERS = {
    "detection": "does the neuron fire in this excerpt? answered from the explanation, per excerpt",
    "fuzzing": "are the tokens marked in this excerpt the ones the neuron fires on?",
    "surprisal": "does the explanation, as a prefix, raise the likelihood of excerpts the neuron fires on?",
}
CLASSIFIED = (EXPLANATION, LOOKUP_EXPLANATION, CONTROL)

# A scoring set names the excerpt kinds it pools; the calibration kinds are held out to fit the calibration.
SCORING_SETS = {"top_and_random": ("top", "random"), "random_only": ("random",)}
CALIBRATION_KINDS = ("calibration_top", "calibration_random")
EXCERPT_KINDS = ("top", "random", *CALIBRATION_KINDS)


def check_methods(requested: Sequence[str], allowed: Sequence[str], where: str) -> list[str]:
    """``requested`` as a list, or a ValueError naming every unknown or misplaced method."""
    unknown = [m for m in requested if m not in METHODS]
    if unknown:
        raise ValueError(f"{where}: unknown method(s) {unknown}; known methods are {sorted(METHODS)}")
    misplaced = [m for m in requested if m not in allowed]
    if misplaced:
        raise ValueError(f"{where}: method(s) {misplaced} are not made here; this step makes {list(allowed)}")
    return list(dict.fromkeys(requested))
