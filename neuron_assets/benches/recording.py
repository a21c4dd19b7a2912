"""``make bench``: activation-recording throughput as ratios to a bare forward pass.

All timings come from one process on the same excerpts, interleaved round by round (the
order rotated each round) so that machine noise hits every variant alike. Each variant's
ratio to the bare pass is taken within a round and the median over rounds is reported,
with the lowest and highest. The bare pass is the subject model's transformer body (no
hooks, no LM head) over the same batches. On a virtual machine, time stolen by the host
shows up as noise: the share of CPU time stolen during the bench is printed beside it.

Recording is timed up to its state on the host (the torch fold's one copy off the GPU).
``--fold numba,torch`` times each recording variant with each fold, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import polars as pl
import torch

from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.recording.recorder import FOLDS, random_sample, record, resolve_fold
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
    parser.add_argument("--length", type=int, default=64, help="tokens per excerpt, as the excerpts asset cuts them")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--early-layer", type=int, default=2, help="the one layer recorded alone (at most the last)")
    parser.add_argument("--device", default="auto", help="torch device of the subject model (auto: CUDA if seen)")
    parser.add_argument(
        "--fold",
        default="auto",
        help="recording fold(s), comma-separated, each timed: auto (numba on the CPU, torch on a GPU), numba, torch",
    )
    args = parser.parse_args(argv)
    folds = args.fold.split(",")
    if unknown := [f for f in folds if f not in FOLDS]:
        parser.error(f"--fold {','.join(unknown)}: not one of {', '.join(FOLDS)}")

    model = load_subject_model(args.model, device=args.device)
    folds = list(dict.fromkeys(resolve_fold(fold, model.device) for fold in folds))  # auto named as it resolves
    excerpts = make_excerpts(load_documents("lee"), model.tokenize, model.token_text, model.name, length=args.length)
    excerpts = excerpts.sort("pool").gather_every(max(1, len(excerpts) // args.excerpts)).head(args.excerpts)
    randoms = random_sample(excerpts, 4, seed=0)
    all_neurons = list(range(model.d_mlp))
    batches = [_with_start(model, excerpts.slice(i, args.batch_size)) for i in range(0, len(excerpts), args.batch_size)]
    n_tokens = sum(b.numel() for b in batches)

    def bare() -> None:
        for tokens in batches:
            model.bare_forward(tokens)

    def bridge() -> None:
        for tokens in batches:
            model.bridge.run_with_hooks(tokens.to(model.device), fwd_hooks=[], stop_at_layer=model.n_layers)
        if model.device.startswith("cuda"):
            torch.cuda.synchronize()

    def recording(layers: list[int], selected: list[int], fold: str) -> Callable[[], object]:
        neurons = {layer: selected for layer in layers}

        def run() -> None:
            recorders = record(
                model.run_with_mlp_hooks,
                excerpts,
                neurons,
                randoms,
                start_token_id=model.document_start_token_id(),
                batch_size=args.batch_size,
                fold=fold,
            )
            for recorder in recorders.values():
                recorder.state()  # the torch fold's state comes to the host here, once

        return run

    every_layer = list(range(model.n_layers))
    early_layer = min(args.early_layer, model.n_layers - 1)
    variants = {
        "bare forward (body, no LM head)": bare,
        "TransformerBridge forward, no hooks": bridge,
    }
    for fold in folds:
        used = f" ({fold} fold)" if len(folds) > 1 else ""
        variants |= {
            f"record all {model.n_layers} layers x {model.d_mlp} neurons{used}": recording(
                every_layer, all_neurons, fold
            ),
            f"record all {model.n_layers} layers x 3 neurons{used}": recording(every_layer, [0, 1, 2], fold),
            f"record layer {early_layer} x {model.d_mlp} neurons{used}": recording([early_layer], all_neurons, fold),
        }
    torch.set_grad_enabled(False)
    for run in variants.values():  # warm-up: allocator, kernels, compiled fold, caches
        run()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    stolen_before = _cpu_ticks()
    for round_ in range(args.rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(_timed(variants[name]))
    stolen = _stolen_share(stolen_before, _cpu_ticks())

    bare = times[names[0]]
    print(
        f"CPU: {cpu_model()}; subject model on {model.device}"
        + (f" ({torch.cuda.get_device_name(model.device)})" if model.device.startswith("cuda") else "")
    )
    print(
        f"model {model.name}, {len(excerpts)} excerpts, {n_tokens} tokens/round, {args.rounds} rounds, "
        f"torch threads {torch.get_num_threads()}, CPU time stolen by the host {stolen}, "
        f"fold {', '.join(folds)}"
    )
    width = max(45, *map(len, names))
    print(f"{'variant':{width}s} {'median s':>9s} {'tokens/s':>9s} {'x bare':>7s} {'rounds':>11s}")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratios = [b / s for b, s in zip(bare, samples, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{name:{width}s} {median:9.3f} {n_tokens / median:9.0f} {statistics.median(ratios):7.2f} {spread:>11s}")


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU time counters (Linux /proc/stat), to tell how much the host stole."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def _stolen_share(before: list[int] | None, after: list[int] | None) -> str:
    """Share of CPU time stolen between two readings ('steal' is /proc/stat's eighth counter)."""
    if before is None or after is None or len(after) < 8:
        return "unknown"
    spent = [b - a for a, b in zip(before, after, strict=False)]
    return f"{spent[7] / max(1, sum(spent)):.1%}"


def _with_start(model: SubjectModel, batch: pl.DataFrame) -> torch.Tensor:
    """The batch's tokens preceded by the document-start token, as recording feeds them."""
    tokens = torch.tensor(batch["token_ids"].to_list(), dtype=torch.long)
    start = model.document_start_token_id()
    if start is None:
        return tokens
    return torch.cat([torch.full((len(tokens), 1), start), tokens], dim=1)


if __name__ == "__main__":
    main()
