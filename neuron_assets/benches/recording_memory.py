"""``make bench-memory``: the recording's memory as the stream passes 10k, 25k and 50k excerpts.

One ``record`` call, as the ``activation_records`` asset makes it, over a corpus of at
least 50,000 excerpts (the study's pool size). At each checkpoint it prints the process's
resident memory now and its peak since the pass began, read from /proc/self/status
(Linux), beside what the recorders hold. The recorders' state is fixed when the pass starts: top-k slots and
statistics per neuron, and one row of token sums per distinct explanation-pool token of
the whole corpus (allocated at the start, filled in as tokens are first seen), so
memory should stay flat from one checkpoint to the next. The excerpts table itself
grows with the corpus and is loaded before the pass.

With no ``--corpus``, the corpus is a folder of ``.txt`` files made from this Python's
standard library sources (prose docstrings and code; any folder the project reads works).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.recording.recorder import random_sample, record
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL, load_subject_model
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=PACKAGED_SUBJECT_MODEL)
    parser.add_argument("--corpus", help="a corpus spec (folder, lee, hf:NAME); default: the standard library")
    parser.add_argument("--checkpoints", default="10000,25000,50000", help="excerpt counts to report at")
    parser.add_argument("--layers", default="0,1,2", help="layers recorded, every neuron of each")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    layers = [int(layer) for layer in args.layers.split(",")]

    torch.set_grad_enabled(False)
    model = load_subject_model(args.model, device=args.device)
    model.check_layers(layers)
    with tempfile.TemporaryDirectory() as folder:
        # About 6 characters per token of source code and prose is ample for the excerpts asked.
        corpus = args.corpus or str(_standard_library_corpus(Path(folder), checkpoints[-1] * 64 * 6))
        excerpts = make_excerpts(load_documents(corpus), model.tokenize, model.token_text, model.name)
    if len(excerpts) < checkpoints[-1]:
        raise SystemExit(f"the corpus gives {len(excerpts)} excerpts; the last checkpoint needs {checkpoints[-1]}")
    excerpts = excerpts.head(checkpoints[-1])
    neurons = {layer: list(range(model.d_mlp)) for layer in layers}
    randoms = random_sample(excerpts, 20, seed=0)
    print(f"CPU: {cpu_model()}; subject model {model.name} on {model.device}, torch threads {torch.get_num_threads()}")
    print(
        f"corpus {args.corpus or 'standard library sources'}: {len(excerpts)} excerpts of "
        f"{len(excerpts['token_ids'][0])} tokens ({excerpts.estimated_size() / 2**20:.0f} MiB as a table); "
        f"recording layers {layers}, all {model.d_mlp} neurons each"
    )
    # Loading peaks above what the pass needs: give freed memory back to the system and
    # reset the peak, so what follows is the pass's own.
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = _memory()
    print(f"before the pass: resident {before['VmRSS']:.0f} MiB (model, excerpts, libraries)")
    print(f"{'excerpts':>9s} {'seconds':>8s} {'resident MiB':>13s} {'peak since the pass began, MiB':>31s}")
    start = time.perf_counter()
    pending = list(checkpoints)

    def progress(done: int, total: int) -> None:
        while pending and done >= pending[0]:
            now = _memory()
            print(
                f"{pending.pop(0):9d} {time.perf_counter() - start:8.0f} {now['VmRSS']:13.0f} {now['VmHWM']:31.0f}",
                flush=True,
            )

    recorders = record(
        model.run_with_mlp_hooks,
        excerpts,
        neurons,
        randoms,
        start_token_id=model.document_start_token_id(),
        progress=progress,
    )
    state = sum(
        array.nbytes
        for s in (r.state() for r in recorders.values())
        for array in (s.top_values, s.top_ids, s.top_acts, s.random_acts, s.token_sums, s.token_counts)
    )
    vocabulary = len(next(iter(recorders.values())).vocabulary)
    print(
        f"recorder state allocated: {state / 2**20:.0f} MiB, of which token sums "
        f"{vocabulary} distinct tokens x {model.d_mlp} neurons x {len(recorders)} layers x 8 bytes"
    )


def _standard_library_corpus(folder: Path, characters: int) -> Path:
    """This Python's standard library sources (not site-packages), one ``.txt`` document per
    module, in path order until ``characters`` are written."""
    source = Path(sysconfig.get_paths()["stdlib"])
    written = 0
    for n, path in enumerate(sorted(p for p in source.rglob("*.py") if "site-packages" not in p.parts)):
        if written >= characters:
            break
        text = path.read_text(encoding="utf-8", errors="replace")
        (folder / f"{n:05d}.txt").write_text(text, encoding="utf-8")
        written += len(text)
    return folder


def _memory() -> dict[str, float]:
    """Resident memory now (VmRSS) and the peak since the last reset (VmHWM), in MiB."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


if __name__ == "__main__":
    main()
