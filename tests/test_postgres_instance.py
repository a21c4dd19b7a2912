"""A shared Dagster instance on PostgreSQL: ``dagster_home/postgres/dagster.yaml``, selected by
pointing ``DAGSTER_HOME`` at its folder, every connection field read from the environment.

One real PostgreSQL server serves the file (``tests/postgres_server.py``: the distribution's
binaries, initdb in a temporary folder, a free port, a user with a password); where none can
be found or started, the tests that need it skip saying why. A real ``dagster-daemon`` runs a
backfill of layers 0-1 of a tiny GPT-2 with the scripted LLM into that instance, one run per
layer, its results in an S3 bucket (a real SeaweedFS server, ``tests/seaweedfs_server.py``),
while a researcher's DuckDB session queries the results; the backfill, its runs and
their materializations per partition are read back from PostgreSQL. An unreachable endpoint,
a wrong password or a missing database fail within seconds, naming the endpoint, with the
password in no message, log or stored event. (Dagster alone, given such an endpoint, retries
for about ten seconds and then says "too many retries for DB connection", whatever the cause.)
"""

import collections
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.execution.backfill import BulkActionStatus
from test_parallel_runs import REPOSITORY, request_backfill, start_daemon, write_workspace
from test_storage import ask, open_reader  # a researcher's DuckDB session in another process
from test_viewer import CONFIG, answer  # the viewer's small run config and scripted LLM

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers
from neuron_assets.instance import InstanceStorageError, check_instance
from neuron_assets.llm.llama_server import _free_port
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

SQLITE_YAML = REPOSITORY / "dagster_home" / "dagster.yaml"
POSTGRES_YAML = REPOSITORY / "dagster_home" / "postgres" / "dagster.yaml"
N_DOCUMENTS = 40  # of the Lee corpus: enough excerpts for 3 neurons' top, random and calibration ones
READER_QUERY = "SELECT count(*) || ' ' || count(DISTINCT run_id) FROM scores"  # rows, and runs that wrote them
FAIL_WITHIN_S = 5  # an endpoint that cannot be used is named this soon
WRONG_PASSWORD = "pw-wrong-0123456789"
LAYERS = ["layer-0", "layer-1", "layer-2", "layer-3"]
SIMULATION_DELAY_S = 0.4  # per simulation call until a worker is killed: its step lasts a few seconds


@pytest.fixture(scope="module")
def server():
    from postgres_server import PostgresServer, Unavailable

    running = PostgresServer()
    try:
        running.start()
    except Unavailable as error:
        running.stop()
        pytest.skip(f"no PostgreSQL server for the shared-instance tests: {error}")
    yield running
    running.stop()


@pytest.fixture
def postgres_home(tmp_path):
    """A DAGSTER_HOME holding the repository's PostgreSQL dagster.yaml (local artifacts go beside it)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(POSTGRES_YAML, home / "dagster.yaml")
    return home


def set_environment(monkeypatch, variables: dict[str, str]) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def test_the_postgres_instance_is_the_default_one_with_its_storage_from_the_environment(monkeypatch):
    sqlite, postgres = (yaml.safe_load(path.read_text()) for path in (SQLITE_YAML, POSTGRES_YAML))
    assert "storage" not in sqlite and check_instance(SQLITE_YAML.parent) == []  # the default: SQLite files
    assert {key: value for key, value in postgres.items() if key != "storage"} == sqlite
    fields = postgres["storage"]["postgres"]["postgres_db"]
    connection = {name: value for name, value in fields.items() if name not in ("scheme", "params")}
    assert set(connection) == {"hostname", "port", "db_name", "username", "password"}
    assert all(set(value) == {"env"} for value in connection.values()), "a connection field is written in the file"
    for name in ("HOST", "PORT", "DB", "USER", "PASSWORD"):
        monkeypatch.delenv(f"DAGSTER_POSTGRES_{name}", raising=False)
    monkeypatch.setenv("DAGSTER_POSTGRES_HOST", "db.example")
    with pytest.raises(InstanceStorageError) as unset:
        check_instance(POSTGRES_YAML.parent)
    assert str(unset.value) == (
        f"the PostgreSQL storage in {POSTGRES_YAML} reads DAGSTER_POSTGRES_DB, DAGSTER_POSTGRES_PASSWORD, "
        "DAGSTER_POSTGRES_PORT, DAGSTER_POSTGRES_USER from the environment, and those are not set here"
    )


UNUSABLE = {  # what is changed in the server's environment, and what the error says of it
    "unreachable port": (lambda: {"port": _free_port()}, 'is unreachable (connection to server at "127.0.0.1", port'),
    "wrong password": (lambda: {"password": WRONG_PASSWORD}, "refused the credentials"),
    "missing database": (lambda: {"db": "no_such_db"}, "has no such database"),
}


@pytest.mark.parametrize("case", UNUSABLE)
def test_an_endpoint_that_cannot_be_used_is_named_within_seconds_without_the_password(
    server, postgres_home, monkeypatch, case
):
    change, problem = UNUSABLE[case]
    change = change()
    variables = server.environment(**change)
    set_environment(monkeypatch, variables)
    started = time.monotonic()
    with pytest.raises(InstanceStorageError) as error:
        check_instance(postgres_home)
    took = time.monotonic() - started
    message = str(error.value)
    endpoint = f"{server.host}:{variables['DAGSTER_POSTGRES_PORT']}/{variables['DAGSTER_POSTGRES_DB']}"
    assert message.startswith(f"the Dagster instance's PostgreSQL at {endpoint} (user '{server.user}') "), message
    assert problem in message
    assert took < FAIL_WITHIN_S
    assert variables["DAGSTER_POSTGRES_PASSWORD"] not in message and server.password not in message


def test_make_demo_on_a_wrong_password_ends_in_seconds_naming_the_endpoint_and_writes_nothing(
    server, postgres_home, tmp_path
):
    """``make demo DAGSTER_HOME=$PWD/dagster_home/postgres`` with a wrong password (the demo's
    recipe, ``python -W ignore -m neuron_assets.demo``): it stops before loading anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEURON_ASSETS_", "DAGSTER_"))}
    env.update(server.environment(password=WRONG_PASSWORD), DAGSTER_HOME=str(postgres_home))
    env["NEURON_ASSETS_DATA_DIR"] = str(tmp_path / "data")
    tables_before = rows_holding(server, "")
    started = time.monotonic()
    demo = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "neuron_assets.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    output = demo.stdout + demo.stderr
    assert demo.returncode == 1 and "Traceback" not in output, output
    assert f"PostgreSQL at {server.host}:{server.port}/{server.database} (user '{server.user}') refused" in output
    assert took < 30, f"{took:.0f} s, most of it importing"  # Dagster alone would retry for 10 s more
    assert WRONG_PASSWORD not in output and server.password not in output
    assert not (tmp_path / "data").exists() and sorted(p.name for p in postgres_home.iterdir()) == ["dagster.yaml"]
    assert rows_holding(server, "") == tables_before  # no table of the instance's database gained or lost a row


def small_corpus(folder: Path) -> Path:
    folder.mkdir()
    documents = load_documents("lee")["text"].head(N_DOCUMENTS).to_list()
    (folder / "lee_head.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    return folder


def rows_holding(server, text: str) -> dict[str, int]:
    """Per table of the instance's database, the rows whose text holds ``text`` (all rows for "")."""
    connection = server.connect()
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        found = {}
        for (table,) in cursor.fetchall():
            cursor.execute(f'SELECT count(*) FROM "{table}" AS row WHERE row::text LIKE %s', (f"%{text}%",))
            found[table] = cursor.fetchone()[0]
        return found
    finally:
        connection.close()


@pytest.mark.slow
def test_a_labs_setup_backfills_on_dask_workers_into_postgres_and_a_bucket_while_a_reader_goes_on(
    server, postgres_home, bucket, seaweedfs, tmp_path, monkeypatch
):
    """A lab's setup: the instance on PostgreSQL, the results in an S3 bucket (SeaweedFS), the
    steps on a Dask cluster's workers. Layers 0-3 first, in this process; then a backfill of
    their LLM stages, one run per layer (NEURON_ASSETS_LLM_LAYERS_PER_RUN=1), launched by a real
    ``dagster-daemon``, each step a task on one of two ``dask worker`` processes
    (NEURON_ASSETS_DASK_SCHEDULER). The daemon, its runs, the workers and this process share the
    instance only through PostgreSQL and the results only through the bucket; the workers keep
    their own local folder (response cache, views), as on other machines. The worker running the
    first run's simulations is killed half-way through them: that step runs again on the other
    worker. A DuckDB session opened on the results before the backfill queries them throughout:
    it never fails, and every answer counts every score once, as the runs replace each layer."""
    from dask_cluster import DaskCluster, kill_the_worker_running, step_events
    from gpt2_tokenizer import MissingRanks, save_tiny_gpt2
    from scripted_openai import ScriptedOpenAI

    try:
        save_tiny_gpt2(tmp_path / "gpt2", n_layers=len(LAYERS))
    except MissingRanks as error:
        pytest.fail(str(error), pytrace=False)
    model, data_dir, local_dir = str(tmp_path / "gpt2"), f"s3://{bucket}/lab", tmp_path / "local"
    experiment = Experiment(model)
    ops = {**CONFIG["ops"], "documents": {"config": {"source": str(small_corpus(tmp_path / "corpus"))}}}
    ops["activation_records"] = {"config": {**ops["activation_records"]["config"], "n_random": 8}}  # 4 layers' worth
    config = experiment.run_config({"ops": ops})
    instance_yaml = yaml.safe_load(POSTGRES_YAML.read_text())
    del instance_yaml["run_queue"]  # one run at a time (Dask knows a task by job and step name), dequeued each second
    instance_yaml["run_coordinator"] = {
        "module": "dagster.core.run_coordinator",
        "class": "QueuedRunCoordinator",
        "config": {"max_concurrent_runs": 1, "dequeue_interval_seconds": 1},
    }
    (postgres_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    set_environment(monkeypatch, server.environment())
    slow = threading.Event()  # set from the backfill's start until a worker has been killed

    def answer_slowly_while_a_worker_is_to_be_killed(body):
        if body["messages"][-1]["content"].startswith("Explanation: ") and slow.is_set():
            time.sleep(SIMULATION_DELAY_S)
        return answer(body)

    with ScriptedOpenAI(answer_slowly_while_a_worker_is_to_be_killed) as llm:
        settings = Settings((model,), data_dir, llm.url, "x", "y", llm_layers_per_run=1, local_dir=local_dir)
        defs = build_definitions(settings)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_ASSETS_")}
        env.update(
            DAGSTER_HOME=str(postgres_home),
            NEURON_ASSETS_SUBJECT_MODEL=model,
            NEURON_ASSETS_DATA_DIR=data_dir,
            NEURON_ASSETS_LOCAL_DIR=str(tmp_path / "worker_local"),
            NEURON_ASSETS_LLM_BASE_URL=llm.url,
            NEURON_ASSETS_EXPLAINER_MODEL="x",
            NEURON_ASSETS_SIMULATOR_MODEL="y",
            NEURON_ASSETS_LLM_LAYERS_PER_RUN="1",
            PYTHONWARNINGS="ignore",
        )
        llm_stages = experiment.selection(*UP_TO_SCORES) & dg.AssetSelection.key_prefixes(
            [experiment.slug, experiment.variant]
        )
        keys = sorted(llm_stages.resolve(defs.resolve_asset_graph()), key=lambda key: key.to_user_string())
        cluster = DaskCluster(tmp_path, env, ["worker-a", "worker-b"])  # they start meanwhile
        env["NEURON_ASSETS_DASK_SCHEDULER"] = cluster.address
        log_path = tmp_path / "daemon.log"
        log = log_path.open("w")
        daemon = start_daemon(write_workspace(tmp_path / "workspace.yaml"), env, log)  # it boots meanwhile
        reader, kill, workers = None, None, {}
        joined = threading.Thread(target=lambda: workers.update(cluster.wait_for_workers(2)))
        joined.start()  # the workers join and import the code location while the first run records
        try:
            with dg.DagsterInstance.from_config(str(postgres_home)) as instance:
                first = materialize_layers(defs, 0, len(LAYERS) - 1, config, instance, UP_TO_SCORES, experiment)
            assert first.success
            store = ResultStore(data_dir, local_dir)
            n_scores = query(store, "SELECT count(*) FROM scores")[0][0]
            reader = open_reader(store)
            answers = [ask(reader, READER_QUERY)]
            joined.join()
            assert len(workers) == 2, cluster.logs()
            with dg.DagsterInstance.from_config(str(postgres_home)) as instance:
                slow.set()
                backfill_id = request_backfill(instance, defs, LAYERS, llm_stages, config)
                deadline = time.monotonic() + 300
                while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
                    assert time.monotonic() < deadline and daemon.poll() is None, log_path.read_text()[-5000:]
                    answers.append(ask(reader, READER_QUERY))
                    if kill is None and (kill := kill_the_worker_running(instance, "simulations", workers)):
                        slow.clear()
                    time.sleep(0.3)
                answers.append(ask(reader, READER_QUERY))
                status = instance.get_backfill(backfill_id).status
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                steps = {run.dagster_run.run_id: step_events(instance, run.dagster_run.run_id) for run in runs}
                latest = {
                    (key, partition): instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
                    ).records[0]
                    for key in keys
                    for partition in LAYERS
                }
                materialized = {key: instance.get_materialized_partitions(key) for key in keys}
                earlier = instance.get_run_record_by_id(first.run_id)
        finally:
            if reader is not None:
                reader.kill()
                reader.wait()
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()
            cluster.stop()
    daemon_log = log_path.read_text()
    assert status == BulkActionStatus.COMPLETED_SUCCESS, daemon_log[-5000:]

    # the runs, one per layer, read back from PostgreSQL
    assert all(run.dagster_run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    run_of = {partition_of(run.dagster_run.tags): run.dagster_run.run_id for run in runs}
    assert sorted(run_of) == LAYERS and len(runs) == len(LAYERS), [r.dagster_run.tags for r in runs]
    assert earlier.dagster_run.status == dg.DagsterRunStatus.SUCCESS  # the first run, kept beside them
    # every LLM stage's latest materialization of each layer is from that layer's run
    assert len(latest) == len(LAYERS) * len(keys) and len(keys) >= 4
    for (key, partition), record in latest.items():
        assert record.run_id == run_of[partition], (key, partition)
    assert all(partitions == set(LAYERS) for partitions in materialized.values())

    # every step ran on a Dask worker, none in its run's own process; the killed worker's step
    # had started there and succeeded on the other one
    worker_of = {pid: name for name, pid in workers.items()}
    succeeded_on = {
        (run_id, step): worker_of.get(pid, f"pid {pid}")
        for run_id, events in steps.items()
        for step, kind, pid in events
        if kind == "STEP_SUCCESS"
    }
    assert len(succeeded_on) == len(LAYERS) * len(keys) and set(succeeded_on.values()) <= set(workers), succeeded_on
    assert kill is not None, "no worker was seen running a simulations step"
    killed_run, killed_worker = kill
    [killed_step] = [
        step for step, kind, _ in steps[killed_run] if kind == "STEP_START" and step.endswith("simulations")
    ][:1]
    starts = [worker_of[pid] for step, kind, pid in steps[killed_run] if step == killed_step and kind == "STEP_START"]
    assert starts[0] == killed_worker and succeeded_on[(killed_run, killed_step)] != killed_worker, starts
    started_on = collections.Counter(
        worker_of[pid] for events in steps.values() for _, kind, pid in events if kind == "STEP_START"
    )
    print(f"step starts per worker: {dict(started_on)}, successes: {dict(collections.Counter(succeeded_on.values()))}")

    # the same runs wrote the results the DuckDB views read, each row once
    runs_in_results = dict(query(store, "SELECT layer, any_value(run_id) FROM scores GROUP BY layer"))
    assert runs_in_results == {int(layer.split("-")[1]): run_of[layer] for layer in LAYERS}
    assert query(store, "SELECT count(DISTINCT run_id) = 1 FROM scores GROUP BY layer") == [(True,)] * len(LAYERS)
    key = "layer, neuron, polarity, sample, method, scoring_set"
    assert query(store, f"SELECT count(*) FROM (SELECT {key} FROM scores GROUP BY ALL HAVING count(*) > 1)") == [(0,)]

    # the reader counted every score once in every answer: from the first run's files, then with
    # one more layer replaced after each run of the backfill (up to 1 + 3 runs' rows), then from
    # the backfill's runs alone. A query may fail only where an object it had opened was replaced
    # before it was read (s3fs will not mix two versions of an object); it never sees half of one.
    failed = [a for a in answers if a.startswith("error: ")]
    assert all("no longer exists" in a for a in failed), failed
    counted = [a for a in answers if a not in failed]
    assert len(counted) > 2 and counted[0] == f"{n_scores} 1" and counted[-1] == f"{n_scores} {len(LAYERS)}"
    runs_seen = [int(a.split()[1]) for a in counted]
    assert {a.split()[0] for a in counted} == {str(n_scores)} and runs_seen == sorted(runs_seen), answers
    print(f"reader: {len(counted)} answers, {len(failed)} queries failed on a replaced object")

    # every result is in the bucket; only the views' database and the response cache are local
    assert {path.name for path in local_dir.iterdir()} == {"results.duckdb", "llm_cache"}
    assert store.fs.find(f"{bucket}/lab/scores") == [
        f"{bucket}/lab/scores/{experiment.slug}/{experiment.variant}/{layer}.parquet" for layer in range(len(LAYERS))
    ]

    # neither the password nor the S3 secret is in any row of the instance's database (runs,
    # events, backfills), the daemon's log, a local file or an object of the bucket
    for secret in (server.password, seaweedfs.secret):
        holding = rows_holding(server, secret)
        assert {"runs", "event_logs", "bulk_actions"} <= set(holding) and not any(holding.values()), holding
        assert secret not in daemon_log
        for folder in (postgres_home, local_dir, tmp_path / "worker_local"):
            leaked = [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            assert not leaked, leaked
        assert not [key for key in store.fs.find(bucket) if secret.encode() in store.fs.cat_file(key)]


def partition_of(tags) -> str:
    """The one layer a backfill run covers: its partition tag, or a range of one."""
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]
    assert start == end, tags
    return start


def query(store: ResultStore, sql: str) -> list[tuple]:
    with store.connect() as connection:
        return connection.execute(sql).fetchall()
