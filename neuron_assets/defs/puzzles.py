"""Puzzles: the scorer and explainer tests on synthetic neurons with known explanations (method.md §10).

Unpartitioned: a puzzle file is small, and its results replace the previous run's.
"""

from typing import Any

import dagster as dg
import polars as pl
from pydantic import Field

from neuron_assets.defs.common import column_schema, table
from neuron_assets.defs.resources import LLMResource
from neuron_assets.puzzles.puzzle_file import OUR_PUZZLES

GROUP = "puzzles"


class PuzzleConfig(dg.Config):
    path: str = Field(default=str(OUR_PUZZLES), description="puzzle file in the study's JSON format (default: ours)")
    mode: str = Field(default="auto", description="simulator mode, as for simulations")
    scorers: list[str] = Field(
        default_factory=lambda: ["simulation"],
        description="what ranks the candidates: 'simulation' (the correlation score) and/or the classifier scorers "
        "'detection', 'fuzzing', 'surprisal' (needs prompt log-probabilities)",
    )


class PuzzleExplainerConfig(dg.Config):
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int = 0


def build_assets() -> list[Any]:
    """The puzzle assets (they do not depend on the subject model, so they have no partitions)."""

    @dg.asset(group_name=GROUP, metadata={"dagster/column_schema": column_schema("puzzle_scores")})
    def puzzle_scores(context: dg.AssetExecutionContext, config: PuzzleConfig, llm: LLMResource) -> pl.DataFrame:
        """The scorer test: the true explanation, the false ones and the 3 most common firing tokens
        of every puzzle, simulated (or classified) and ranked; the true one should rank first."""
        import time

        from neuron_assets.defs.classifiers import check_surprisal_backend
        from neuron_assets.puzzles.classifier_test import BORROW_RULE, classifier_scorer_test
        from neuron_assets.puzzles.evaluation import scorer_summary, scorer_test
        from neuron_assets.puzzles.puzzle_file import load_puzzles
        from neuron_assets.scorers.classifier_neurons import SCORERS, SURPRISAL

        puzzles = load_puzzles(config.path)
        unknown = [s for s in config.scorers if s not in ("simulation", *SCORERS)]
        if unknown or not config.scorers:
            raise ValueError(
                f"puzzle_scores config 'scorers': {unknown or 'none'} not among {['simulation', *SCORERS]}"
            )
        classifiers = [s for s in config.scorers if s != "simulation"]
        if "simulation" in config.scorers:  # one client (its counts in the metadata) for every scorer
            client, simulator, mode, ten_handling, shift = llm.simulator(config.mode)
        else:
            client, (_, simulator) = llm.client(), llm.model_names()
        if SURPRISAL in classifiers:
            check_surprisal_backend(llm, client, simulator)
        frames, metadata = [], {}
        for scorer in dict.fromkeys(config.scorers):
            started = time.perf_counter()
            if scorer == "simulation":
                frame = scorer_test(
                    client,
                    simulator,
                    puzzles,
                    mode=mode,
                    ten_handling=ten_handling,
                    distribution_shift=shift,
                    concurrency=llm.max_concurrency,
                    on_puzzle=lambda name: context.log.info(f"simulated puzzle {name}"),
                )
                metadata["simulation_mode"] = mode
            else:
                frame = classifier_scorer_test(
                    client,
                    simulator,
                    puzzles,
                    scorer,
                    concurrency=llm.max_concurrency,
                    on_puzzle=lambda name, scorer=scorer: context.log.info(f"{scorer}: puzzle {name}"),
                )
                metadata["borrowed_sentences"] = BORROW_RULE.format(seed=0)
            seconds = time.perf_counter() - started
            summary = scorer_summary(frame)
            metadata[f"{scorer}_top_1"] = summary["top_1"]
            metadata[f"{scorer}_top_2"] = summary["top_2"]
            metadata[f"{scorer}_p_top_1"] = dg.MetadataValue.float(round(summary["p_top_1"], 4))
            # near 0 when every response was cached
            metadata[f"{scorer}_seconds_per_puzzle"] = round(seconds / len(puzzles), 2)
            frames.append(frame)
        frame = pl.concat(frames, how="diagonal_relaxed").with_columns(
            run_id=pl.lit(context.run.run_id), puzzle_file=pl.lit(str(config.path))
        )
        summary = scorer_summary(frame.filter(pl.col("scorer") == config.scorers[0]))
        context.add_output_metadata(
            {
                "puzzles": summary["puzzles"],
                "chance_top_1": dg.MetadataValue.float(round(summary["chance_top_1"], 2)),
                "chance_top_2": dg.MetadataValue.float(round(summary["chance_top_2"], 2)),
                **metadata,
                **client.stats.as_metadata(),
                "ranks": table(
                    frame.filter(pl.col("candidate_kind") == "true").select(
                        "scorer", "puzzle", "rank", "n_candidates", pl.col("metric").round(3)
                    )
                ),
            }
        )
        return frame

    @dg.asset(group_name=GROUP, metadata={"dagster/column_schema": column_schema("puzzle_explanations")})
    def puzzle_explanations(
        context: dg.AssetExecutionContext, config: PuzzleExplainerConfig, llm: LLMResource, puzzle_scores: pl.DataFrame
    ) -> pl.DataFrame:
        """The explainer test: the explainer explains each puzzle from its sentences, and its
        explanation is scored on the puzzle beside the true one (same simulator as
        puzzle_scores)."""
        from neuron_assets.prompts.templates import EXPLAINER_PROMPT_VERSION
        from neuron_assets.puzzles.evaluation import (
            GENERATED,
            TRUE,
            explain_puzzles,
            score_candidates,
            simulate_candidates,
        )
        from neuron_assets.puzzles.puzzle_file import load_puzzles

        puzzle_scores = puzzle_scores.filter(pl.col("scorer") == "simulation")
        if puzzle_scores.is_empty():
            raise ValueError(
                "puzzle_explanations scores the explainer's explanation with the simulator: materialize puzzle_scores "
                "with 'simulation' among its scorers first"
            )
        path = puzzle_scores["puzzle_file"][0]
        puzzles = load_puzzles(path)
        if set(p.name for p in puzzles) != set(puzzle_scores["puzzle"]):
            raise ValueError(f"{path} changed since puzzle_scores was materialized: materialize puzzle_scores again")
        explainer, simulator = llm.model_names()
        client = llm.client()
        written = explain_puzzles(
            client, explainer, puzzles, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed
        )
        mode = puzzle_scores["simulation_mode"][0]
        ten_handling = puzzle_scores["ten_handling"][0]
        candidates = written.select("puzzle", "explanation").with_columns(
            candidate=pl.lit(0, dtype=pl.Int64), candidate_kind=pl.lit(GENERATED)
        )
        simulations = simulate_candidates(
            client,
            simulator,
            puzzles,
            candidates,
            mode=mode,
            ten_handling=ten_handling,
            distribution_shift=llm.distribution_shift(client, simulator, mode, ten_handling),
            concurrency=llm.max_concurrency,
        )
        reference = puzzle_scores.group_by("puzzle").agg(
            pl.col("explanation").filter(pl.col("candidate_kind") == TRUE).first().alias("true_explanation"),
            pl.col("correlation").filter(pl.col("candidate_kind") == TRUE).first().alias("true_correlation"),
            pl.col("correlation").filter(pl.col("candidate_kind") != TRUE).max().alias("best_false_correlation"),
        )
        frame = (
            written.join(score_candidates(simulations).select("puzzle", "correlation", "undefined_reason"), on="puzzle")
            .join(reference, on="puzzle")
            .with_columns(
                run_id=pl.lit(context.run.run_id),
                puzzle_file=pl.lit(path),
                explainer_model=pl.lit(explainer),
                prompt_version=pl.lit(EXPLAINER_PROMPT_VERSION),
                simulator_model=pl.lit(simulator),
                simulation_mode=pl.lit(mode),
            )
        )
        matched = int((frame["correlation"] >= frame["true_correlation"]).fill_null(False).sum())
        beats_false = int((frame["correlation"] > frame["best_false_correlation"]).fill_null(False).sum())
        context.add_output_metadata(
            {
                "puzzles": len(frame),
                "scored_at_least_as_well_as_the_true_explanation": matched,
                "scored_above_every_false_candidate": beats_false,
                "explainer_model": explainer,
                **client.stats.as_metadata(),
                "explanations": table(
                    frame.select(
                        "puzzle",
                        "true_explanation",
                        "explanation",
                        pl.col("correlation").round(3),
                        pl.col("true_correlation").round(3),
                    )
                ),
            }
        )
        return frame

    return [puzzle_scores, puzzle_explanations]
