"""The pure-core stages' polars schemas come from the pandera models, the one definition of each table's columns."""

import subprocess
import sys

import polars as pl
import pytest

from neuron_assets.baselines.controls import COMPARISON_SCHEMA, CONTROL_SCHEMA
from neuron_assets.baselines.token_baselines import PREDICTION_SCHEMA
from neuron_assets.explainers.explainer import EXPLANATION_SCHEMA
from neuron_assets.scorers.scoring import SCORE_SCHEMA
from neuron_assets.simulators.neurons import SIMULATION_SCHEMA
from neuron_assets.storage.schemas import (
    TABLES,
    Explanations,
    MethodComparisons,
    Scores,
    Simulations,
    TokenPredictions,
    polars_schema,
)

DERIVED = {
    "SCORE_SCHEMA": (SCORE_SCHEMA, Scores),
    "EXPLANATION_SCHEMA": (EXPLANATION_SCHEMA, Explanations),
    "PREDICTION_SCHEMA": (PREDICTION_SCHEMA, TokenPredictions),
    "COMPARISON_SCHEMA": (COMPARISON_SCHEMA, MethodComparisons),
    "SIMULATION_SCHEMA": (SIMULATION_SCHEMA, Simulations),
}


def stored_dtypes(model) -> dict:
    """The model's dtypes as pandera declares them, read without ``polars_schema``."""
    return {name: column.dtype.type for name, column in model.to_schema().columns.items()}


@pytest.mark.parametrize("name", DERIVED)
def test_each_pure_core_schema_has_its_stored_tables_dtypes_for_its_columns(name):
    schema, model = DERIVED[name]
    stored = stored_dtypes(model)
    assert set(schema) <= set(stored), f"{name} has columns {model.__name__} lacks"
    assert schema == {column: stored[column] for column in schema}


def test_the_control_schema_takes_the_explanation_from_explanations_and_the_rest_from_simulations():
    simulations, explanations = stored_dtypes(Simulations), stored_dtypes(Explanations)
    assert list(CONTROL_SCHEMA) == ["layer", "neuron", "sample", "method", "explanation_neuron", "explanation"]
    assert CONTROL_SCHEMA == {
        **{column: simulations[column] for column in list(CONTROL_SCHEMA)[:-1]},
        "explanation": explanations["explanation"],
    }


def test_nested_and_nullable_columns_map_to_their_polars_types():
    schema = polars_schema(Scores, ["explanation_neuron", "correlation", "undefined_reason"])
    assert schema == {"explanation_neuron": pl.Int64(), "correlation": pl.Float64(), "undefined_reason": pl.String()}
    assert polars_schema(Simulations, ["simulated"]) == {"simulated": pl.List(pl.Float64)}
    assert all(isinstance(dtype, pl.DataType) for dtype in polars_schema(Simulations).values())


def test_the_columns_come_in_the_order_asked_for_and_all_of_them_in_the_models_order_by_default():
    assert list(polars_schema(Scores, ["n_tokens", "layer"])) == ["n_tokens", "layer"]
    assert list(polars_schema(Scores)) == list(Scores.to_schema().columns)


@pytest.mark.parametrize("table", TABLES)
def test_an_empty_frame_of_a_models_full_schema_passes_its_validation(table):
    model = TABLES[table]
    model.validate(pl.DataFrame(schema=polars_schema(model)))


def test_asking_for_a_column_the_model_lacks_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"Explanations has no column\(s\) \['explanation_neuron', 'nope'\]"):
        polars_schema(Explanations, ["layer", "explanation_neuron", "nope"])


def test_the_pure_core_stages_import_no_dagster():
    modules = [
        "neuron_assets.scorers.scoring",
        "neuron_assets.scorers.ablation",
        "neuron_assets.explainers.explainer",
        "neuron_assets.baselines.token_baselines",
        "neuron_assets.baselines.controls",
        "neuron_assets.simulators.neurons",
        "neuron_assets.revision.reviser",
        "neuron_assets.revision.sentences",
        "neuron_assets.revision.scores",
        "neuron_assets.puzzles.evaluation",
        "neuron_assets.sampling.corpus",
        "neuron_assets.directions.search",
    ]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if 'dagster' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
