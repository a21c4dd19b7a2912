"""Runs in parallel on one machine, after one run of what they share (recordings, scoring
excerpts, token baselines), on one data directory, response cache and scripted LLM.

Three processes materialize the LLM stages of layers 0, 1 and 1 again at once (the same
partition twice); and a real ``dagster-daemon`` runs a backfill's two runs from the queue
under this repository's dagster.yaml.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id
from test_viewer import CONFIG, answer  # the viewer's small run config and scripted LLM

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow
REPOSITORY = Path(__file__).resolve().parent.parent
EXP = Experiment(PACKAGED_SUBJECT_MODEL)
RUN_LAYER = """
import json, sys
import dagster as dg
from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.settings import Settings
data_dir, url, layer, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
experiment = Experiment(PACKAGED_SUBJECT_MODEL)
defs = build_definitions(Settings((PACKAGED_SUBJECT_MODEL,), data_dir, url, "x", "y"))
stages = experiment.selection("explanation", "simulation", "scoring") & dg.AssetSelection.key_prefixes(
    [experiment.slug, experiment.variant])
with dg.instance_for_test() as instance:
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        run_config=experiment.run_config(config), instance=instance, partition_key=f"layer-{layer}",
        asset_selection=list(stages.resolve(defs.resolve_asset_graph())), raise_on_error=False)
print("RUN", result.run_id, result.success)
"""


def record_shared_stages(defs: dg.Definitions) -> None:
    """One run of what every variant shares (recordings, scoring excerpts, baselines) for layers 0-1."""
    shared = EXP.selection("recording", "simulation") - dg.AssetSelection.key_prefixes([EXP.slug, EXP.variant])
    with dg.instance_for_test() as instance:
        recording = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=EXP.run_config(CONFIG),
            instance=instance,
            asset_selection=list(shared.resolve(defs.resolve_asset_graph())),
            tags={"dagster/asset_partition_range_start": "layer-0", "dagster/asset_partition_range_end": "layer-1"},
        )
    assert recording.success


def test_parallel_runs_write_complete_duplicate_free_partitions(tmp_path):
    from scripted_openai import ScriptedOpenAI

    data_dir = tmp_path / "data"
    with ScriptedOpenAI(answer) as server:
        record_shared_stages(build_definitions(Settings((PACKAGED_SUBJECT_MODEL,), data_dir, server.url, "x", "y")))
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RUN_LAYER, str(data_dir), server.url, str(layer), json.dumps(CONFIG)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for layer in (0, 1, 1)
        ]
        outputs = [process.communicate(timeout=900)[0] for process in processes]
    runs = [line.split()[1:] for output in outputs for line in output.splitlines() if line.startswith("RUN ")]
    assert [success for _, success in runs] == ["True"] * 3, "\n".join(o[-3000:] for o in outputs)
    assert_complete_and_duplicate_free(data_dir)


def assert_complete_and_duplicate_free(data_dir) -> None:
    """Layers 0-1 of the LLM stages: every recorded neuron, no row twice, each partition file from one run."""
    store = ResultStore(data_dir)
    records = store.read("activation_records", ["0", "1"], EXP.prefix("activation_records"))
    neurons = records.select("layer", "neuron").unique()
    keys = {
        "explanations": ["layer", "neuron", "polarity", "sample", "method"],
        "simulations": ["layer", "neuron", "polarity", "sample", "method", "excerpt_id"],
        "scores": ["layer", "neuron", "polarity", "sample", "method", "scoring_set"],
    }
    for table, key in keys.items():
        frame = store.read(table, ["0", "1"], EXP.prefix(table))
        assert not frame.select(key).is_duplicated().any(), table
        assert frame.select("layer", "neuron").unique().sort("layer", "neuron").equals(neurons.sort("layer", "neuron"))
        for layer in (0, 1):  # each partition file was written whole by one run
            assert frame.filter(pl.col("layer") == layer)["run_id"].n_unique() == 1, (table, layer)
    scores = store.read("scores", ["0", "1"], EXP.prefix("scores"))
    assert len(scores) == len(neurons) * 2 * scores["method"].n_unique()  # every method, both scoring sets
    assert ResponseCache(data_dir / "llm_cache").count() > 0
    assert not list(data_dir.rglob("*.tmp")) and not list(data_dir.rglob("*.migrating"))


def write_workspace(path: Path) -> Path:
    """A workspace.yaml that loads this repository's code location (what ``make dev`` loads)."""
    path.write_text(
        "load_from:\n  - python_module:\n      module_name: neuron_assets.defs.definitions\n"
        f"      working_directory: {REPOSITORY}\n"
    )
    return path


# Dagster's backfill daemon looks for work every 30 s, a constant with no setting
# (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS): a test would wait up to 30 s
# for its backfill's runs to be submitted and up to 30 s more for its status to turn. The
# tests' daemon is the real one, started as the ``dagster-daemon`` script does, that
# constant set to 2 s.
DAEMON_WITH_SHORT_TICKS = (
    "import sys; import dagster._daemon.controller as controller; "
    "controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2; "
    "from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())"
)


def start_daemon(workspace: Path, env: dict[str, str], log) -> subprocess.Popen:
    """A real ``dagster-daemon`` on ``workspace`` under ``env`` (its DAGSTER_HOME), writing to
    ``log``, looking for backfills every 2 s instead of 30."""
    return subprocess.Popen(
        [sys.executable, "-c", DAEMON_WITH_SHORT_TICKS, "run", "-w", str(workspace)],
        cwd=REPOSITORY,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def request_backfill(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    partitions: list[str],
    selection: dg.AssetSelection,
    run_config: dict,
) -> str:
    """Asks for a backfill of ``selection``'s ``partitions``, as the UI's backfill button does; its id."""
    backfill_id = make_new_backfill_id()
    instance.add_backfill(
        PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id,
            asset_graph=defs.resolve_asset_graph(),
            partition_names=partitions,
            asset_selection=list(selection.resolve(defs.resolve_asset_graph())),
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            all_partitions=False,
            title=None,
            description=None,
            run_config=run_config,
        )
    )
    return backfill_id


def test_the_daemons_run_queue_runs_a_backfills_runs_two_at_a_time(tmp_path):
    """The user's path: a backfill of the LLM stages of layers 0-1, one run per layer
    (NEURON_ASSETS_LLM_LAYERS_PER_RUN=1), queued and launched by a real ``dagster-daemon``
    under this repository's dagster.yaml (max_concurrent_runs 2): both runs are in flight
    at once, both succeed, and the partitions are complete and duplicate-free."""
    from scripted_openai import ScriptedOpenAI

    home, data_dir = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    shutil.copy(REPOSITORY / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    workspace = write_workspace(tmp_path / "workspace.yaml")
    with ScriptedOpenAI(answer) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "NEURON_ASSETS_DATA_DIR": str(data_dir),
            "NEURON_ASSETS_LLM_BASE_URL": server.url,
            "NEURON_ASSETS_EXPLAINER_MODEL": "x",
            "NEURON_ASSETS_SIMULATOR_MODEL": "y",
            "NEURON_ASSETS_LLM_LAYERS_PER_RUN": "1",
            "PYTHONWARNINGS": "ignore",
        }
        settings = Settings((PACKAGED_SUBJECT_MODEL,), data_dir, server.url, "x", "y", llm_layers_per_run=1)
        defs = build_definitions(settings)
        stages = EXP.selection("explanation", "simulation", "scoring") & dg.AssetSelection.key_prefixes(
            [EXP.slug, EXP.variant]
        )
        log = (tmp_path / "daemon.log").open("w")
        daemon = start_daemon(workspace, env, log)  # it loads the code location while this process records
        try:
            record_shared_stages(defs)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                backfill_id = request_backfill(instance, defs, ["layer-0", "layer-1"], stages, EXP.run_config(CONFIG))
                deadline = time.monotonic() + 900
                while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
                    assert time.monotonic() < deadline and daemon.poll() is None, (tmp_path / "daemon.log").read_text()
                    time.sleep(2)
                status = instance.get_backfill(backfill_id).status
                records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
            log.close()
    assert status == BulkActionStatus.COMPLETED_SUCCESS, (tmp_path / "daemon.log").read_text()[-5000:]
    assert len(records) == 2 and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in records)
    first, second = sorted(records, key=lambda r: r.start_time)
    assert second.start_time < first.end_time, "the queue ran the two runs one after the other"
    assert_complete_and_duplicate_free(data_dir)
