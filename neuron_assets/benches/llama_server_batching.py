"""llama.cpp's own server (``make llama-server``) against the local server, on explainer requests.

``make bench-llm`` runs this part where the server is built (or ``--llama-server PATH``): the
same ``--requests`` explainer prompts (the explainer's own messages, two 50-word excerpts
each, temperature 0, 60 tokens at most) sent at concurrency 1 and ``--parallel``, to the local
server (llama-cpp-python's, one request at a time) and to llama-server with ``--parallel 1``
and ``--parallel N`` (continuous batching over N slots). Each (server, concurrency) starts a
fresh server, warmed with one request. Prints requests/s, completion tokens/s, the server's
peak resident memory (VmHWM), the slots it reports (``/props``: what the pipeline's client
now holds each server to), whether it returns the prompt-token log-probabilities that the
all-at-once simulator reads (``echo``), and whether a batch changes the answers.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import openai

from neuron_assets.benches.cache_size import word_excerpts
from neuron_assets.llm.llama_server import (
    PACKAGED_MODEL_ALIAS,
    LocalLlamaServer,
    _free_port,
    packaged_gguf_path,
    stop_process,
)
from neuron_assets.llm.process_memory import peak_resident_bytes
from neuron_assets.llm.server_pool import reported_slots
from neuron_assets.prompts.templates import Record, explainer_messages, simulator_prompt

MAX_TOKENS = 60


class LlamaCppServer(AbstractContextManager):
    """``llama-server`` on the packaged model, on a free loopback port, ``parallel`` slots of
    ``context_per_slot`` tokens each."""

    def __init__(self, binary: Path, parallel: int, context_per_slot: int = 4096) -> None:
        self.port = _free_port()
        self.command = [
            str(binary), "-m", str(packaged_gguf_path()), "--alias", PACKAGED_MODEL_ALIAS, "--host", "127.0.0.1",
            "--port", str(self.port), "--parallel", str(parallel), "--ctx-size", str(parallel * context_per_slot),
            "--cont-batching", "--no-webui",
        ]  # fmt: skip
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaCppServer:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"llama-server exited ({self.process.returncode}): {self.process.stderr.read()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"llama-server did not answer /health within 120 s: {' '.join(self.command)}")

    def __exit__(self, *exc_info: object) -> None:
        stop_process(self.process)


def explainer_requests(n: int) -> list[list[dict[str, Any]]]:
    """``n + 1`` explainer conversations (the last one warms the server up)."""
    excerpts = word_excerpts(2 * n + 2, length=50)
    return [
        explainer_messages(
            [
                Record(t, [float((j * 3 + k) % 7) for j in range(len(t))])
                for k, t in enumerate(excerpts[2 * i : 2 * i + 2])
            ],
            n_fewshot=0,
        )
        for i in range(n + 1)
    ]


def send(base_url: str, conversations: list[list[dict[str, Any]]], concurrency: int) -> tuple[float, list[str], int]:
    """Wall seconds, the answers in order, and the completion tokens of sending ``conversations``."""
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=600)

    def one(messages: list[dict[str, Any]]) -> tuple[str, int]:
        reply = client.chat.completions.create(
            model=PACKAGED_MODEL_ALIAS, messages=messages, max_tokens=MAX_TOKENS, temperature=0.0, seed=1
        )
        return reply.choices[0].message.content or "", reply.usage.completion_tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, conversations))
    return time.perf_counter() - started, [a for a, _ in answers], sum(n for _, n in answers)


def echoes_prompt_logprobs(base_url: str) -> bool:
    """Whether the server returns log-probabilities of the prompt's tokens (``echo``), as the
    all-at-once simulator needs."""
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=600)
    prompt = simulator_prompt("words about sport", word_excerpts(1)[0]).text
    try:
        reply = client.completions.create(
            model=PACKAGED_MODEL_ALIAS, prompt=prompt, echo=True, logprobs=5, max_tokens=1, temperature=0
        )
    except openai.APIStatusError:
        return False
    logprobs = reply.choices[0].logprobs
    return bool(logprobs and logprobs.token_logprobs and len(logprobs.token_logprobs) > 10)


def compare(binary: Path, n_requests: int, parallel: int) -> None:
    """Print the table and the answers' agreement (see the module's docstring)."""
    conversations = explainer_requests(n_requests)
    warm_up, asked = conversations[-1:], conversations[:-1]
    ways: list[tuple[str, Any, int]] = [
        ("local server (llama-cpp-python)", lambda: LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS), 1),
        (
            "local server (llama-cpp-python)",
            lambda: LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS),
            parallel,
        ),
        ("llama-server --parallel 1", lambda: LlamaCppServer(binary, 1), 1),
        (f"llama-server --parallel {parallel}", lambda: LlamaCppServer(binary, parallel), 1),
        (f"llama-server --parallel {parallel}", lambda: LlamaCppServer(binary, parallel), parallel),
    ]
    print(
        f"\n{n_requests} explainer requests, temperature 0, at most {MAX_TOKENS} tokens; each row a fresh server\n\n"
        "| server | concurrency | wall s | requests/s | completion tokens/s | peak RSS MiB | slots reported | echo |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|"
    )
    answers: dict[tuple[str, int], list[str]] = {}
    for name, start, concurrency in ways:
        with start() as server:
            send(server.base_url, warm_up, 1)
            wall, answers[(name, concurrency)], tokens = send(server.base_url, asked, concurrency)
            slots, echo = reported_slots(server.base_url), echoes_prompt_logprobs(server.base_url)
            peak = peak_resident_bytes(server.pid)
            memory = peak / 2**20 if peak is not None else float("nan")
        print(
            f"| {name} | {concurrency} | {wall:.1f} | {len(asked) / wall:.3f} | {tokens / wall:.1f} | {memory:.0f} | "
            f"{slots or '-'} | {'yes' if echo else 'no'} |"
        )
    keys = list(answers)
    print("\nSame answers (of each pair, request by request):")
    for a, b in ((keys[0], keys[1]), (keys[2], keys[3]), (keys[3], keys[4]), (keys[0], keys[2])):
        same = sum(x == y for x, y in zip(answers[a], answers[b], strict=True))
        print(f"- {a[0]} at {a[1]} vs {b[0]} at {b[1]}: {same}/{len(asked)}")
