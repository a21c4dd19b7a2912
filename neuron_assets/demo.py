"""``make demo``: materialize the default pipeline for a few layers, then print the results.

Runs through the same Dagster definitions the UI loads, as one single-run backfill over a
layer range, recorded in the Dagster instance of ``DAGSTER_HOME`` so it shows in the UI.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import dagster as dg

from neuron_assets.defs.experiments import Experiment
from neuron_assets.defs.partitions import layer_key
from neuron_assets.instance import instance_for_command, results_for_command
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.storage.store import ResultStore

EXAMPLE_QUERY = (
    "SELECT layer, neuron, explanation, top_and_random_score, best_baseline_score, control_score "
    "FROM neuron_scores ORDER BY top_and_random_score DESC NULLS LAST LIMIT 5"
)


UP_TO_SCORES = ("recording", "explanation", "simulation", "scoring")
PIPELINE_GROUPS = (*UP_TO_SCORES, "revision")


def materialize_layers(
    defs: dg.Definitions,
    first_layer: int,
    last_layer: int,
    run_config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
    groups: tuple[str, ...] = PIPELINE_GROUPS,
    experiment: Experiment = Experiment(PACKAGED_SUBJECT_MODEL),
    raise_on_error: bool = True,
) -> dg.ExecuteInJobResult:
    """Materialize the assets of ``groups`` of ``experiment`` for layers first..last in one run (one
    forward pass, one server); ``run_config``'s ops are named by table. The puzzles are apart: they
    test the scorer and explainer, not these layers. ``raise_on_error=False`` returns a failed run's result."""
    job = defs.resolve_implicit_global_asset_job_def()
    selection = experiment.selection(*groups).resolve(defs.resolve_asset_graph())
    return job.execute_in_process(
        run_config=experiment.run_config(run_config or {}),
        instance=instance,
        asset_selection=sorted(selection, key=lambda key: key.to_user_string()),
        raise_on_error=raise_on_error,
        tags={
            "dagster/asset_partition_range_start": layer_key(first_layer),
            "dagster/asset_partition_range_end": layer_key(last_layer),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first-layer", type=int, default=0)
    parser.add_argument("--last-layer", type=int, default=1)
    parser.add_argument("--neurons", type=int, default=3, help="random neurons per layer")
    parser.add_argument("--no-revision", action="store_true", help="stop at the scores (revision is the slowest stage)")
    parser.add_argument("--variant", default=None, help="variant of the LLM stages (default: the first configured)")
    parser.add_argument(
        "--ablation", action="store_true", help="also the ablation scores of every scored method (make ablation)"
    )
    parser.add_argument(
        "--config",
        default=None,
        help="a YAML run config ('ops' by table name, as in the Launchpad) laid over the demo's own",
    )
    args = parser.parse_args(argv)
    if args.config is not None:
        try:
            overrides = read_run_config(args.config)
        except ValueError as error:
            parser.error(str(error))
    instance = instance_for_command()  # before anything is loaded or written: a bad instance ends it here

    from neuron_assets.defs.definitions import defs
    from neuron_assets.settings import Settings

    settings = Settings.from_environment()
    store = results_for_command(settings)
    experiment = Experiment(
        settings.subject_model, args.variant or settings.variants[0], viewer_url=settings.viewer_url
    )
    config = {"ops": {"activation_records": {"config": {"n_neurons": args.neurons}}}}
    if args.config is not None:
        config = overlay_run_config(config, overrides)
    groups = (*(UP_TO_SCORES if args.no_revision else PIPELINE_GROUPS), *(("ablation",) if args.ablation else ()))
    result = materialize_layers(defs, args.first_layer, args.last_layer, config, instance, groups, experiment)
    if not result.success:
        print("the demo run failed; see the errors above", file=sys.stderr)
        return 1
    print_results(store, args.first_layer, args.last_layer, experiment)
    return 0


def read_run_config(path: str) -> dict[str, Any]:
    """A run config file's contents (a mapping whose one key, ``ops``, maps tables to their config),
    or a ``ValueError`` naming the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"run config {path!r} cannot be read: {error}") from None
    if not isinstance(config, dict) or set(config) != {"ops"} or not isinstance(config["ops"], dict):
        raise ValueError(f"run config {path!r} must be a mapping with one key, 'ops', of tables (as in the Launchpad)")
    return config


def overlay_run_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merged key by key, any other value of ``over`` taking the place of base's."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay_run_config(merged[key], value)
        else:
            merged[key] = value
    return merged


def print_results(
    store: ResultStore, first_layer: int, last_layer: int, experiment: Experiment = Experiment(PACKAGED_SUBJECT_MODEL)
) -> None:
    """The scored neurons of the demo's layers beside their baselines and controls, read back from the DuckDB views."""

    from neuron_assets.storage.store import sql_string

    layers = (
        f"layer BETWEEN {int(first_layer)} AND {int(last_layer)} "
        f"AND subject_model = {sql_string(experiment.subject_model)} "
        f"AND variant = {sql_string(experiment.variant)}"
    )
    with store.connect() as connection:
        neurons = connection.sql(
            "SELECT layer, neuron, explanation, round(top_and_random_score, 3) AS explanation_score, "
            "best_baseline, round(best_baseline_score, 3) AS best_baseline_score, "
            "round(control_score, 3) AS control_score, round(random_only_score, 3) AS random_only "
            f"FROM neuron_scores WHERE {layers} ORDER BY layer, neuron"
        )
        print("Per neuron, top-and-random correlation scores (the control simulates another neuron's explanation):")
        print(neurons.pl().to_pandas().to_string(index=False, max_colwidth=60))
        methods = connection.sql(
            "SELECT layer, method, n_neurons, round(mean_score, 3) AS mean, "
            "'[' || round(mean_ci_low, 3) || ', ' || round(mean_ci_high, 3) || ']' AS mean_95ci, "
            "round(explanation_minus_method, 3) AS explanation_minus_method, "
            "'[' || round(difference_ci_low, 3) || ', ' || round(difference_ci_high, 3) || ']' AS difference_95ci, "
            f"verdict FROM layer_methods WHERE {layers} AND scoring_set = 'top_and_random' ORDER BY layer, method"
        )
        print("\nPer layer, top-and-random, with 95% bootstrap intervals over neurons:")
        print(methods.pl().to_pandas().to_string(index=False))
        has_revisions = connection.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'revision_neurons'"
        ).fetchall()[0][0]  # fetchall: DuckDB 2 refuses the next query while a result is half read
        revised = (
            None
            if not has_revisions
            else connection.sql(
                "SELECT layer, neuron, revised_explanation, round(original_score, 3) AS original, "
                "round(revised_score, 3) AS revised, round(original_extended_score, 3) AS original_ext, "
                "round(revised_extended_score, 3) AS revised_ext, "
                "n_false_positives || '/' || n_sentences AS false_positives "
                f"FROM revision_neurons WHERE {layers} AND revision_kind = 'revised' ORDER BY layer, neuron"
            )
        )
        if revised is not None:
            print("\nRevision: original vs revised explanation, on the original and the extended scoring set:")
            print(revised.pl().to_pandas().to_string(index=False, max_colwidth=50))
        has_ablation = connection.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'ablation_layers'"
        ).fetchall()[0][0]
        if has_ablation:
            ablation = connection.sql(
                "SELECT layer, method, scoring_set, n_neurons, n_undefined, round(mean_correlation, 3) AS correlation, "
                "round(mean_ablation, 3) AS ablation, "
                "'[' || round(ablation_ci_low, 3) || ', ' || round(ablation_ci_high, 3) || ']' AS ablation_95ci, "
                "round(rank_correlation, 3) AS rank_correlation "
                f"FROM ablation_layers WHERE {layers} AND polarity = 'positive' ORDER BY layer, method, scoring_set"
            )
            print("\nPer layer, correlation vs ablation score (normal-approximation 95% intervals over neurons):")
            print(ablation.pl().to_pandas().to_string(index=False))
    database = str(store.database)
    print(f"\nNeuron viewer (make view): {experiment.viewer}/")
    print(f"Results database: {database}" + (f" (its views read {store.location})" if store.remote else ""))
    if store.remote:  # the views need the bucket's filesystem registered, which this project's store does
        print("Example query, with Python from this project's venv (the same AWS variables set):")
        python = (
            "from neuron_assets.settings import Settings; "
            f"Settings.from_environment().result_store().connect().sql({EXAMPLE_QUERY!r}).show()"
        )
    else:
        print("Example query, with the duckdb CLI (2.0) or with Python from this project's venv:")
        print(f"  duckdb -readonly {shell_quote(database)} {shell_quote(EXAMPLE_QUERY)}")
        python = f"import duckdb; duckdb.connect({database!r}, read_only=True).sql({EXAMPLE_QUERY!r}).show()"
    print(f"  .venv/bin/python -c {shell_quote(python)}")


def shell_quote(text: str) -> str:
    """``text`` as one shell word: in double quotes where nothing in it is special there, else shlex's quoting."""
    if not any(c in text for c in '"\\$`!'):
        return f'"{text}"'
    return shlex.quote(text)


if __name__ == "__main__":
    sys.exit(main())
