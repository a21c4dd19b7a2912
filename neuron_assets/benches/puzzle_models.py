"""``make bench-puzzles``: which local LLM, in which simulator mode, can tell explanations apart.

Runs the puzzle scorer test (method.md §10) for every (model, mode) asked for, each on a
local llama.cpp server and without the response cache (so the seconds are real), and
prints one table: top-1 and top-2 counts of the true explanation, what chance gives, the
mean score of the true explanation and of the best false one, and seconds per puzzle.

    make bench-puzzles ARGS="--model gemma=/path/gemma-3-270m.gguf --modes all_at_once,json"

The packaged SmolLM2-135M-Instruct is measured unless ``--without-packaged``; ``--model
NAME=PATH`` adds a GGUF.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import openai
import polars as pl

from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.puzzles.evaluation import TRUE, scorer_summary, scorer_test
from neuron_assets.puzzles.puzzle_file import OUR_PUZZLES, Puzzle, load_puzzles
from neuron_assets.simulators.modes import MODES
from neuron_assets.simulators.probes import probe_ten_handling


def measure(client: CachingClient, model: str, puzzles: list[Puzzle], mode: str) -> dict[str, object]:
    """One scorer test, timed, with its summary."""
    started = time.perf_counter()
    ten_handling = probe_ten_handling(client, model, mode)
    ranked = scorer_test(client, model, puzzles, mode=mode, ten_handling=ten_handling)
    seconds = time.perf_counter() - started
    true = ranked.filter(pl.col("candidate_kind") == TRUE)["correlation"]
    best_false = ranked.filter(pl.col("candidate_kind") != TRUE).group_by("puzzle").agg(pl.col("correlation").max())
    return {
        **scorer_summary(ranked),
        "mean_true_score": true.mean(),
        "mean_best_false_score": best_false["correlation"].mean(),
        "s_per_puzzle": seconds / len(puzzles),
        "ten_handling": ten_handling,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH of another GGUF to measure")
    parser.add_argument(
        "--modes", default="all_at_once,chat_logprobs,json", help=f"comma-separated, of {sorted(MODES)}"
    )
    parser.add_argument("--puzzles", default=str(OUR_PUZZLES), help="puzzle file")
    parser.add_argument(
        "--limit", type=int, default=None, help="only the first N puzzles (one_at_a_time is a call per token)"
    )
    parser.add_argument("--without-packaged", action="store_true", help="measure only the --model GGUFs")
    args = parser.parse_args(argv)

    models = {} if args.without_packaged else {"smollm2-135m-instruct": packaged_gguf_path()}
    for item in args.model:
        name, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            parser.error(f"--model {item!r}: give NAME=PATH of an existing GGUF file")
        models[name] = Path(path)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {sorted(MODES)}")
    puzzles = load_puzzles(args.puzzles)[: args.limit]

    print(f"CPU: {cpu_model()}")
    print(f"{len(puzzles)} puzzles from {args.puzzles}, no response cache\n")
    rows = []
    for name, path in models.items():
        with LocalLlamaServer(path, PACKAGED_MODEL_ALIAS) as server:
            for mode in modes:
                client = CachingClient(
                    openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0), name, None
                )
                try:
                    result = measure(client, PACKAGED_MODEL_ALIAS, puzzles, mode)
                except Exception as error:  # a model that cannot do a mode is a row of the table, not a crash
                    result = {
                        "error": f"{type(error).__name__}: "
                        + "; ".join(s.strip() for s in str(error).splitlines())[:400]
                    }
                rows.append({"model": name, "mode": mode, **result})
                print(rows[-1], flush=True)
    table = pl.DataFrame(rows, infer_schema_length=None)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=2, tbl_width_chars=200):
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
