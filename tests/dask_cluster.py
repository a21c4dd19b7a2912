"""A real Dask cluster for tests: ``dask scheduler`` and named ``dask worker`` processes on
loopback (the ``distributed`` package's own command-line modules), one thread each and no
nanny, so a worker killed by a test stays dead and its tasks go to the others. Plus what the
tests read back: which worker process ran each step of a Dagster run, from the process id
Dagster records with every step event.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from neuron_assets.llm.llama_server import _free_port

REPOSITORY = Path(__file__).resolve().parent.parent


class DaskCluster:
    """``dask scheduler`` and named ``dask worker`` processes on loopback, one thread each."""

    def __init__(self, folder: Path, env: dict[str, str], workers: list[str]) -> None:
        self.folder, self.env = folder, env
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._start("scheduler", ["dask_scheduler", "--host", "127.0.0.1", "--port", str(port)])
        for name in workers:
            self.add_worker(name)

    def add_worker(self, name: str) -> None:
        """Start one more worker process, named ``name``."""
        self._start(name, ["dask_worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny"])

    def _start(self, name: str, arguments: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("w")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", f"distributed.cli.{arguments[0]}", *arguments[1:], "--no-dashboard"],
            cwd=REPOSITORY,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def wait_for_workers(self, n: int, timeout: float = 60) -> dict[str, int]:
        """The workers' names and process ids, once ``n`` have joined the scheduler and each has
        imported the code location (as its first step would: done ahead, off the test's clock)."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout) as client:
            while len(client.scheduler_info()["workers"]) < n:
                assert time.monotonic() < deadline, self.logs()
                time.sleep(0.2)
            client.run(importlib.import_module, "neuron_assets.defs.definitions")
            pid_at = client.run(os.getpid)  # worker address -> its process id
            return {w["name"]: pid_at[address] for address, w in client.scheduler_info()["workers"].items()}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.folder.glob("*.log"))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def step_events(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str, int]]:
    """(step key, event type, process id) of a run's step start and success events, in order."""
    records = instance.get_records_for_run(run_id).records
    return [
        (
            r.event_log_entry.step_key,
            r.event_log_entry.dagster_event.event_type_value,
            r.event_log_entry.dagster_event.pid,
        )
        for r in records
        if r.event_log_entry.is_dagster_event
        and r.event_log_entry.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")
    ]


def kill_the_worker_running(
    instance: dg.DagsterInstance, step_name: str, workers: dict[str, int]
) -> tuple[str, str] | None:
    """SIGKILL the worker that has started a step named ``step_name`` in a run that has not
    finished it, a second later (half-way through); the (run id, worker name) killed, or None
    while no such step runs."""
    worker_of = {pid: name for name, pid in workers.items()}
    for record in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        events = step_events(instance, record.dagster_run.run_id)
        started = [pid for step, kind, pid in events if step.endswith(step_name) and kind == "STEP_START"]
        done = [pid for step, kind, pid in events if step.endswith(step_name) and kind == "STEP_SUCCESS"]
        if started and not done and started[0] in worker_of:
            time.sleep(1.0)
            os.kill(started[0], signal.SIGKILL)
            return record.dagster_run.run_id, worker_of[started[0]]
    return None
