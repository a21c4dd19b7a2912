"""Per-neuron LLM work: one job per neuron, and prompts shortened to fit the context window.

``map_neurons`` runs a step's jobs concurrently: a job's expected error fails only its neuron
(all such failures are raised together as ``NeuronFailures``), any other error stops the step.
``fit_to_context`` sends the fullest of a prompt's variants that the backend's context takes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

from neuron_assets.llm.errors import ContextLengthError

T = TypeVar("T")
V = TypeVar("V")
NeuronKey = tuple[int, int]


def fit_to_context(variants: Sequence[V], start: int, send: Callable[[V], T], *, too_long: str) -> tuple[T, int]:
    """``send(variants[start])``, then the next, shorter variants, until the backend takes one.

    ``variants`` run from the fullest prompt to the shortest. Returns the reply and the
    index of the variant that fitted, so later prompts can start there. When even the last
    is refused as too long, raises ``ContextLengthError`` with ``too_long`` and the
    backend's own message.
    """
    for index in range(start, len(variants)):
        try:
            return send(variants[index]), index
        except ContextLengthError as error:
            refusal = error
    raise ContextLengthError(f"{too_long}: {refusal}") from refusal


def map_neurons(
    stage: str,
    jobs: Sequence[tuple[NeuronKey, Callable[[], T]]],
    *,
    expected_errors: tuple[type[Exception], ...],
    concurrency: int = 1,
    on_done: Callable[[int, int], None] | None = None,
) -> list[T]:
    """Run one job per neuron, at most ``concurrency`` at a time; results in job order.

    A job that raises one of ``expected_errors`` does not stop the others: all such
    failures are raised together at the end as ``NeuronFailures``. Any other error (the
    backend died, a bug) stops the step: jobs not yet started are skipped and the error
    is raised as it is. ``on_done`` is called in the caller's thread as each
    neuron finishes.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    results: dict[NeuronKey, T] = {}
    failures: dict[NeuronKey, str] = {}
    stopped = threading.Event()  # set by the first unexpected error; later jobs then never start

    def guarded(job: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            if stopped.is_set():
                raise _NotStarted
            try:
                return job()
            except expected_errors:
                raise
            except BaseException:
                stopped.set()
                raise

        return run

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(guarded(job)): key for key, job in jobs}
        for future in as_completed(futures):
            key = futures[future]
            try:
                results[key] = future.result()
            except expected_errors as error:
                failures[key] = str(error)
                continue
            except _NotStarted:
                continue
            if on_done is not None:
                on_done(*key)
    if failures:
        raise NeuronFailures(stage, failures)
    return [results[key] for key, _ in jobs]


class _NotStarted(Exception):
    """A neuron's job skipped because an unexpected error had already stopped the step."""


class NeuronFailures(RuntimeError):
    """Some neurons' LLM work failed. The others finished, and their responses are cached,
    so running the step again redoes only the failed neurons."""

    def __init__(self, stage: str, failures: dict[tuple[int, int], str]) -> None:
        self.failures = failures
        lines = [f"  layer {layer} neuron {neuron}: {message}" for (layer, neuron), message in sorted(failures.items())]
        super().__init__(f"{stage} failed for {len(failures)} neuron(s):\n" + "\n".join(lines))
