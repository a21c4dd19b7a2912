"""``make bench``: activation-recording throughput as ratios to a bare forward pass.

All timings come from one process on the same excerpts, interleaved round by round so
that machine noise hits every variant alike; the median round is reported. The bare pass
is the subject model's transformer body (no hooks, no LM head) over the same batches.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import polars as pl
import torch

from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.recording.recorder import random_sample, record
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL, SubjectModel, load_subject_model
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=PACKAGED_SUBJECT_MODEL)
    parser.add_argument("--excerpts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--early-layer", type=int, default=2)
    args = parser.parse_args(argv)

    model = load_subject_model(args.model)
    excerpts = make_excerpts(load_documents("lee"), model.tokenize, model.token_text, model.name)
    excerpts = excerpts.sort("pool").gather_every(max(1, len(excerpts) // args.excerpts)).head(args.excerpts)
    randoms = random_sample(excerpts, 4, seed=0)
    all_neurons = list(range(model.d_mlp))
    batches = [
        _with_start(model, excerpts.slice(i, args.batch_size)) for i in range(0, len(excerpts), args.batch_size)
    ]
    n_tokens = sum(b.numel() for b in batches)

    def bare() -> None:
        for tokens in batches:
            model.bare_forward(tokens)

    def bridge() -> None:
        for tokens in batches:
            model.bridge.run_with_hooks(tokens, fwd_hooks=[], stop_at_layer=model.n_layers)

    def recording(layers: list[int], selected: list[int]) -> Callable[[], object]:
        neurons = {layer: selected for layer in layers}
        return lambda: record(
            model.run_with_mlp_hooks, excerpts, neurons, randoms,
            start_token_id=model.document_start_token_id(), batch_size=args.batch_size,
        )  # fmt: skip

    every_layer = list(range(model.n_layers))
    variants = {
        "bare forward (body, no LM head)": bare,
        "TransformerBridge forward, no hooks": bridge,
        f"record all {model.n_layers} layers x {model.d_mlp} neurons": recording(every_layer, all_neurons),
        f"record all {model.n_layers} layers x 3 neurons": recording(every_layer, [0, 1, 2]),
        f"record layer {args.early_layer} x {model.d_mlp} neurons": recording([args.early_layer], all_neurons),
    }
    torch.set_grad_enabled(False)
    for run in variants.values():  # warm-up: allocator, kernels, caches
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            times[name].append(_timed(run))

    bare_s = statistics.median(times["bare forward (body, no LM head)"])
    print(f"CPU: {cpu_model()}")
    print(f"model {model.name}, {len(excerpts)} excerpts, {n_tokens} tokens/round, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'variant':45s} {'median s':>9s} {'tokens/s':>9s} {'x bare':>7s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:45s} {median:9.3f} {n_tokens / median:9.0f} {bare_s / median:7.2f}")


def _with_start(model: SubjectModel, batch: pl.DataFrame) -> torch.Tensor:
    """The batch's tokens preceded by the document-start token, as recording feeds them."""
    tokens = torch.tensor(batch["token_ids"].to_list(), dtype=torch.long)
    start = model.document_start_token_id()
    if start is None:
        return tokens
    return torch.cat([torch.full((len(tokens), 1), start), tokens], dim=1)


if __name__ == "__main__":
    main()
