"""``make puzzles``: the scorer and explainer puzzle tests, through Dagster, then their results.

``make puzzles ARGS="--path other.json --mode json"`` runs them on another puzzle file or
simulator mode; ``--scorer detection --scorer fuzzing`` ranks the candidates by those scorers
too (or instead: the explainer test then needs 'simulation' among them). The LLMs are the
configured ones (the packaged SmolLM2 by default).
"""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from neuron_assets.instance import instance_for_command, results_for_command
from neuron_assets.puzzles.evaluation import chance_of_at_least
from neuron_assets.puzzles.puzzle_file import OUR_PUZZLES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", default=str(OUR_PUZZLES), help="puzzle file in the study's format")
    parser.add_argument("--mode", default="auto", help="simulator mode, as for simulations")
    parser.add_argument("--scorer-only", action="store_true", help="skip the explainer test")
    parser.add_argument(
        "--scorer",
        action="append",
        dest="scorers",
        help="what ranks the candidates (repeatable): simulation (the default), detection, fuzzing, surprisal",
    )
    args = parser.parse_args(argv)
    scorers = args.scorers or ["simulation"]
    scorer_only = args.scorer_only or "simulation" not in scorers
    instance = instance_for_command()

    from neuron_assets.defs.definitions import defs
    from neuron_assets.settings import Settings

    store = results_for_command(Settings.from_environment())
    selection = [dg.AssetKey("puzzle_scores")] + ([] if scorer_only else [dg.AssetKey("puzzle_explanations")])
    config = {"path": args.path, "mode": args.mode, "scorers": scorers}
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config={"ops": {"puzzle_scores": {"config": config}}},
        instance=instance,
        asset_selection=selection,
        raise_on_error=False,
    )
    if not result.success:
        errors = [str(e.step_failure_data.error.message) for e in result.all_events if e.is_step_failure]
        print("the puzzle run failed:\n" + "\n".join(errors), file=sys.stderr)
        return 1
    with store.connect() as db:
        print("Scorer test: the true explanation's rank among the candidates (1 = the scorer picked it)")
        print(
            db.sql(
                "SELECT scorer, puzzle, rank, n_candidates, round(metric, 3) AS true_score, "
                "(SELECT round(max(o.metric), 3) FROM puzzle_scores o WHERE o.puzzle = t.puzzle "
                " AND o.scorer = t.scorer AND o.candidate_kind <> 'true') AS best_other_score "
                "FROM puzzle_scores t WHERE candidate_kind = 'true' ORDER BY scorer, puzzle"
            )
            .pl()
            .to_pandas()
            .to_string(index=False)
        )
        print()
        print(
            db.sql("SELECT * EXCLUDE (puzzle_file) FROM puzzle_scorer_summary").pl().to_pandas().to_string(index=False)
        )
        true = db.sql("SELECT scorer, rank, n_candidates FROM puzzle_scores WHERE candidate_kind = 'true'").pl()
        for (scorer,), rows in true.group_by("scorer", maintain_order=True):
            top_1, chances = int((rows["rank"] == 1).sum()), (1 / rows["n_candidates"]).to_list()
            print(
                f"{scorer}: chance alone ranks the true explanation first {top_1} or more times with "
                f"probability {chance_of_at_least(top_1, chances):.4f}"
            )
        if not scorer_only:
            print("\nExplainer test: the explainer's explanation, scored on the puzzle beside the true one")
            print(
                db.sql(
                    "SELECT puzzle, explanation, round(correlation, 3) AS score, "
                    "round(true_correlation, 3) AS true_score, "
                    "beats_false_explanations FROM puzzle_explainer_results ORDER BY puzzle"
                )
                .pl()
                .to_pandas()
                .to_string(index=False, max_colwidth=60)
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
