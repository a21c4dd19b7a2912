"""``make bench-ablation``: what the ablation score costs per neuron, against one forward pass.

On the same excerpts (the embedded corpus, 64 tokens, after the document-start token): one
full forward pass with the LM head (what the original distributions cost), and, per layer
asked for, one neuron's ablation with ``--replacements`` replacements (the mean plus one per
scored method: 6 for the five default methods), once starting each perturbed pass at the
neuron's block from the cached residual stream and once from the embeddings. Printed: the
ablation per neuron as a ratio to the full pass, and the speed-up of the mid-model start.
Rounds are interleaved (order rotated) and medians reported, as in ``make bench``; one full
pass warms up first. The defaults take minutes on a 2-core CPU; ``--excerpts 4 --batch-size 4
--replacements 3 --rounds 1`` well under one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from neuron_assets.benches.recording import _cpu_ticks, _stolen_share
from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL, load_subject_model
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts
from neuron_assets.scorers.ablation import MEAN, ablation_divergences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=PACKAGED_SUBJECT_MODEL)
    parser.add_argument("--excerpts", type=int, default=16, help="excerpts per neuron (the study: 5 top + 5 random)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--replacements", type=int, default=6, help="the mean plus one per method")
    parser.add_argument("--layers", default="0,middle,last", help="comma-separated layers ('middle', 'last' allowed)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    model = load_subject_model(args.model, device=args.device)
    named = {"middle": model.n_layers // 2, "last": model.n_layers - 1}
    layers = [named[x] if x in named else int(x) for x in args.layers.split(",")]
    excerpts = make_excerpts(load_documents("lee"), model.tokenize, model.token_text, model.name)
    token_ids = excerpts.gather_every(max(1, len(excerpts) // args.excerpts)).head(args.excerpts)["token_ids"].to_list()
    start = model.document_start_token_id()
    prefix = [] if start is None else [start]
    batches = [
        torch.tensor([prefix + list(ids) for ids in token_ids[i : i + args.batch_size]])
        for i in range(0, len(token_ids), args.batch_size)
    ]
    rng = np.random.default_rng(0)
    replacements = {MEAN: [np.zeros(len(ids)) for ids in token_ids]}
    for k in range(args.replacements - 1):
        replacements[k] = [rng.normal(size=len(ids)) for ids in token_ids]

    def full_pass() -> None:
        with torch.inference_mode():
            for tokens in batches:
                model.bridge.original_model(input_ids=tokens.to(model.device), use_cache=False)

    def ablation(layer: int, mid_model: bool) -> Callable[[], object]:
        return lambda: ablation_divergences(
            model, layer, 0, token_ids, replacements, start, args.batch_size, mid_model=mid_model
        )

    variants: dict[str, Callable[[], object]] = {"full forward pass (with LM head)": full_pass}
    for layer in layers:
        variants[f"layer {layer}: one neuron, mid-model start"] = ablation(layer, True)
        variants[f"layer {layer}: one neuron, from the embeddings"] = ablation(layer, False)
    torch.set_grad_enabled(False)
    full_pass()  # warm-up: allocator, kernels
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    stolen_before = _cpu_ticks()
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            began = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - began)
    stolen = _stolen_share(stolen_before, _cpu_ticks())
    full = statistics.median(times[names[0]])
    print(f"CPU: {cpu_model()}; subject model {model.name} on {model.device}, torch threads {torch.get_num_threads()}")
    print(
        f"{len(token_ids)} excerpts of {len(token_ids[0])} tokens, batch {args.batch_size}, {args.replacements} "
        f"replacements per neuron (the mean + {args.replacements - 1} methods), {args.rounds} rounds, "
        f"CPU time stolen by the host {stolen}"
    )
    print(f"{'variant':48s} {'median s':>9s} {'x full pass':>12s}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:48s} {median:9.3f} {median / full:12.2f}")
    for layer in layers:
        mid = statistics.median(times[f"layer {layer}: one neuron, mid-model start"])
        embeddings = statistics.median(times[f"layer {layer}: one neuron, from the embeddings"])
        print(
            f"layer {layer} of {model.n_layers}: the mid-model start is {embeddings / mid:.2f}x as fast as "
            "running from the embeddings"
        )


if __name__ == "__main__":
    main()
