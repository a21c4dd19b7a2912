"""Runs in parallel on one machine (what the daemon's run queue does with max_concurrent_runs > 1).

Three processes materialize the LLM stages of layers 0, 1 and 1 again at once, on one data
directory, one response cache and one scripted LLM, after one run of what they share
(recordings, scoring excerpts, token baselines).
"""

import json
import os
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest
from test_viewer import CONFIG, answer  # the viewer's small run config and scripted LLM

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.llm.client import ResponseCache
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow
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


def test_parallel_runs_write_complete_duplicate_free_partitions(tmp_path):
    from scripted_openai import ScriptedOpenAI

    data_dir = tmp_path / "data"
    with ScriptedOpenAI(answer) as server:
        settings = Settings((PACKAGED_SUBJECT_MODEL,), data_dir, server.url, "x", "y")
        defs = build_definitions(settings)
        shared = EXP.selection("recording", "simulation") - dg.AssetSelection.key_prefixes([EXP.slug, EXP.variant])
        with dg.instance_for_test() as instance:  # what every variant shares: recordings, scoring excerpts, baselines
            recording = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                run_config=EXP.run_config(CONFIG), instance=instance,
                asset_selection=list(shared.resolve(defs.resolve_asset_graph())),
                tags={"dagster/asset_partition_range_start": "layer-0", "dagster/asset_partition_range_end": "layer-1"},
            )  # fmt: skip
        assert recording.success
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RUN_LAYER, str(data_dir), server.url, str(layer), json.dumps(CONFIG)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            )  # fmt: skip
            for layer in (0, 1, 1)
        ]
        outputs = [process.communicate(timeout=900)[0] for process in processes]
    runs = [line.split()[1:] for output in outputs for line in output.splitlines() if line.startswith("RUN ")]
    assert [success for _, success in runs] == ["True"] * 3, "\n".join(o[-3000:] for o in outputs)
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
