"""``make directions``: record one layer and search its explainable directions (method.md §9), then print them.

Runs the ``recording`` and ``directions`` groups through the same Dagster definitions the UI
loads, for one layer, recorded in the Dagster instance of ``DAGSTER_HOME`` (so the run shows in
the UI); lookup-table explanations need no LLM. Prints the three-way comparison (found
directions, random starts, the layer's neurons) and each direction's summary.
"""

from __future__ import annotations

import argparse
import sys
import time

from neuron_assets.instance import instance_for_command, results_for_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--directions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per round")
    parser.add_argument("--neurons", type=int, default=3, help="random neurons recorded (activation_records)")
    parser.add_argument("--variant", default=None, help="variant (default: the first configured)")
    args = parser.parse_args(argv)
    instance = instance_for_command()

    import polars as pl

    from neuron_assets.defs.definitions import defs
    from neuron_assets.defs.experiments import Experiment
    from neuron_assets.demo import materialize_layers
    from neuron_assets.settings import Settings
    from neuron_assets.storage.store import sql_string

    settings = Settings.from_environment()
    store = results_for_command(settings)
    experiment = Experiment(
        settings.subject_model, args.variant or settings.variants[0], viewer_url=settings.viewer_url
    )
    config = {
        "ops": {
            "activation_records": {"config": {"n_neurons": args.neurons}},
            "direction_rounds": {
                "config": {"n_directions": args.directions, "rounds": args.rounds, "steps_per_round": args.steps}
            },
        }
    }
    started = time.perf_counter()
    result = materialize_layers(defs, args.layer, args.layer, config, instance, ("recording", "directions"), experiment)
    if not result.success:
        print("the directions run failed; see the errors above", file=sys.stderr)
        return 1
    print(f"{settings.subject_model}, layer {args.layer}: run took {time.perf_counter() - started:.0f} s")
    [summary] = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "direction_summaries"]
    records = summary.materialization.metadata["comparison"].records
    comparison = pl.DataFrame([row.data for row in records])
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=70, tbl_width_chars=200):
        print("\nMean top-and-random lookup-table score with 95% intervals (normal approximation):")
        print(comparison)
        with store.connect() as connection:
            where = (
                f"layer = {int(args.layer)} AND subject_model = {sql_string(experiment.subject_model)} "
                f"AND variant = {sql_string(experiment.variant)}"
            )
            directions = connection.sql(
                "SELECT direction, round(start_correlation, 3) AS start, round(found_correlation, 3) AS found, "
                "round(max_abs_cosine, 3) AS max_abs_cos, neurons_to_recover, explanation "
                f"FROM direction_summaries WHERE {where} ORDER BY direction"
            ).pl()
        print("\nPer direction (max_abs_cos: to the other found directions; neurons_to_recover: top-|weight| n):")
        print(directions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
