"""The Dask cluster a lab's launched runs send their steps to (``NEURON_ASSETS_DASK_SCHEDULER``)
is checked before ``make dev`` starts: a scheduler that does not answer, or has no worker (a
run's steps would wait for one without end), is named within seconds. The steps on workers
themselves are tested in ``test_postgres_instance.py`` (the lab's setup).
"""

import os
import subprocess
import sys
import time

import pytest
from dask_cluster import REPOSITORY, DaskCluster

from neuron_assets.llm.llama_server import _free_port
from neuron_assets.workers import WorkersError, check_workers


def instance_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m neuron_assets.instance``, what ``make dev`` runs first, on the default SQLite instance."""
    env = {**os.environ, "DAGSTER_HOME": str(REPOSITORY / "dagster_home"), "PYTHONWARNINGS": "ignore", **env}
    return subprocess.run(
        [sys.executable, "-m", "neuron_assets.instance"], capture_output=True, text=True, env=env, timeout=60
    )


def test_a_scheduler_that_does_not_answer_is_named_within_its_timeout():
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(WorkersError, match=f"the Dask scheduler at {address} .* did not answer within 1 s"):
        check_workers(address, timeout_s=1)
    assert time.monotonic() - started < 5


def test_make_dev_stops_on_a_scheduler_without_workers_and_goes_on_once_one_has_joined(tmp_path):
    cluster = DaskCluster(tmp_path, {**os.environ, "PYTHONWARNINGS": "ignore"}, workers=[])
    try:
        check = instance_check({"NEURON_ASSETS_DASK_SCHEDULER": cluster.address})
        assert check.returncode == 1, check.stdout + check.stderr
        assert f"the Dask scheduler at {cluster.address} (NEURON_ASSETS_DASK_SCHEDULER) has no worker" in check.stderr
        cluster.add_worker("worker-a")
        deadline = time.monotonic() + 60
        while True:
            try:
                assert check_workers(cluster.address) == 1
                break
            except WorkersError:
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.3)
        check = instance_check({"NEURON_ASSETS_DASK_SCHEDULER": cluster.address})
        assert check.returncode == 0 and f"the Dask scheduler at {cluster.address}: 1 worker" in check.stdout
    finally:
        cluster.stop()
