"""The Dask cluster that launched runs send their steps to (``NEURON_ASSETS_DASK_SCHEDULER``),
checked before ``make dev`` starts the UI and daemon.

A run whose scheduler cannot be reached fails only when it starts, and one whose scheduler has
no worker waits for one without end: dagster-dask submits its steps and nothing runs them. So
``check_workers`` connects once with a short timeout and asks how many workers have joined,
and says which scheduler is unreachable or has none.
"""

from __future__ import annotations

CONNECT_TIMEOUT_S = 5


class WorkersError(RuntimeError):
    """The Dask cluster cannot run steps; the message names the scheduler's address."""


def check_workers(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """How many workers the scheduler at ``address`` has; a ``WorkersError`` naming the address
    when it does not answer within ``timeout_s`` or has none."""
    from distributed import Client

    try:
        with Client(address, timeout=timeout_s) as client:
            n_workers = len(client.scheduler_info()["workers"])
    except (OSError, TimeoutError) as error:
        raise WorkersError(
            f"the Dask scheduler at {address} (NEURON_ASSETS_DASK_SCHEDULER) did not answer within "
            f"{timeout_s:g} s ({type(error).__name__}: {error})"
        ) from None
    if n_workers == 0:
        raise WorkersError(
            f"the Dask scheduler at {address} (NEURON_ASSETS_DASK_SCHEDULER) has no worker: a run's steps would "
            f"wait for one without end; start `dask worker {address}` where the runs' environment is"
        )
    return n_workers
