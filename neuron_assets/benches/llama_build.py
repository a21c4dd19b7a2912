"""``make bench-llama-build``: the llama.cpp builds we install against a native one, side by side.

Each build is a folder holding an installed ``llama_cpp`` package (``pip install --target``).
Every measurement runs in a fresh subprocess with one build's folder first on ``sys.path``,
and the builds alternate round by round in a rotating order, so machine noise hits them
alike. Each process warms up once and reports the median of 3 timings; the median
round is reported. Measured is what the pipeline asks of the local server: evaluating a
simulator-sized prompt with logits for every token (``logits_all``, as the all-at-once
simulator needs), and generating tokens one by one (the explainer).

A build is started the way the local server starts it (``llama_server._prepare_build``:
extra buffer types off where the build has AMX kernels). ``--as-is`` also runs each build
without that, to show what a build does on this host when nothing keeps it off a trapped
instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from neuron_assets.llm.llama_build import cpu_model
from neuron_assets.llm.llama_server import _describe_exit, packaged_gguf_path

PROMPT_TOKENS = 600
GENERATED_TOKENS = 32

# Not raw: each backslash-newline below is dropped from the text, so the script gets those lines whole.
MEASURE = """
import json, os, sys, time
build, gguf, prepare, n_prompt, n_generated = sys.argv[1], sys.argv[2], sys.argv[3] == "1", \
int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, build)
if prepare:
    from neuron_assets.llm.llama_server import _prepare_build
    _prepare_build()
import llama_cpp
from neuron_assets.llm.llama_build import compiled_features
from neuron_assets.llm.llama_server import STARTUP_PROMPT
threads = os.cpu_count() or 1
llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, logits_all=True, n_threads=threads, \
n_threads_batch=threads, verbose=False)
tokens = llm.tokenize(STARTUP_PROMPT.encode())
tokens = (tokens * (n_prompt // len(tokens) + 1))[:n_prompt]
def timed(run):
    start = time.perf_counter(); run(); return time.perf_counter() - start
def prompt():
    llm.reset(); llm.eval(tokens)
def generate():
    llm.reset(); llm.eval(tokens[:64])
    start = time.perf_counter()
    for _ in range(n_generated):
        llm.eval([llm.sample(temp=0.0)])
    return time.perf_counter() - start
prompt()  # warm-up: first-touch of weights and buffers
prompt_s = sorted(timed(prompt) for _ in range(3))[1]
generate_s = sorted(generate() for _ in range(3))[1]
features = sorted(compiled_features(llama_cpp.llama_print_system_info().decode()))
print(json.dumps({"prompt_tok_s": n_prompt / prompt_s, "generate_tok_s": n_generated / generate_s, \
"features": features}))
"""


def measure(build: Path, prepare: bool, prompt_tokens: int, generated_tokens: int) -> dict:
    """One measurement of ``build`` in a fresh process; a crash is reported, not raised."""
    project = str(Path(__file__).resolve().parents[2])
    command = [
        sys.executable,
        "-c",
        MEASURE,
        str(build),
        str(packaged_gguf_path()),
        "1" if prepare else "0",
        str(prompt_tokens),
        str(generated_tokens),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": project})
    if done.returncode != 0:
        return {"crashed": _describe_exit(done.returncode)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "builds", nargs="+", help="NAME=FOLDER of each installed llama_cpp build; the first is the reference"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--as-is", action="store_true", help="also run each build without the server's start-up settings"
    )
    args = parser.parse_args(argv)
    builds = dict(item.split("=", 1) for item in args.builds)
    variants = [(name, True) for name in builds] + ([(name, False) for name in builds] if args.as_is else [])

    print(f"CPU: {cpu_model()} ({platform.machine()}, {len(os.sched_getaffinity(0))} cores)")
    print(f"prompt: {PROMPT_TOKENS} tokens evaluated with logits_all; generation: {GENERATED_TOKENS} tokens\n")
    results: dict[tuple[str, bool], list[dict]] = {v: [] for v in variants}
    for round_ in range(args.rounds):  # the order rotates, so no variant always runs first or last
        for name, prepare in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
            results[(name, prepare)].append(measure(Path(builds[name]), prepare, PROMPT_TOKENS, GENERATED_TOKENS))

    reference = statistics.median(r["prompt_tok_s"] for r in results[variants[0]] if "crashed" not in r)
    print(
        f"{'build':<12} {'start-up':<10} {'prompt tok/s':>12} {'× ' + variants[0][0]:>12} "
        f"{'gen tok/s':>10}  features / outcome"
    )
    for (name, prepare), runs in results.items():
        settings = "server" if prepare else "as-is"
        crashed = [r for r in runs if "crashed" in r]
        if crashed:
            print(
                f"{name:<12} {settings:<10} {'crashed':>12} {'':>12} {'':>10}  "
                f"{crashed[0]['crashed']} in {len(crashed)}/{len(runs)} runs"
            )
            continue
        prompt = statistics.median(r["prompt_tok_s"] for r in runs)
        generate = statistics.median(r["generate_tok_s"] for r in runs)
        features = " ".join(f for f in runs[0]["features"] if f not in {"LLAMAFILE", "OPENMP", "REPACK"})
        print(f"{name:<12} {settings:<10} {prompt:>12.0f} {prompt / reference:>12.2f} {generate:>10.1f}  {features}")


if __name__ == "__main__":
    main()
