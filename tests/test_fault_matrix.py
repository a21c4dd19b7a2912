"""The fault matrix: the pipeline, through Dagster, with a fault-injecting proxy between it
and the real llama.cpp server serving the packaged model.

For every fault: the run completes (transient faults) or fails with a message naming the
neuron and the problem (persistent ones), what was stored before is untouched, and the
re-run stores exactly the rows a clean run stores: no loss, no duplicates.
"""

import shutil

import dagster as dg
import pytest
from fault_proxy import FaultProxy

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES
from neuron_assets.llm.llama_server import PACKAGED_MODEL_ALIAS, LocalLlamaServer, packaged_gguf_path
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.settings import Settings
from neuron_assets.simulators.probes import ALIGNMENT_EXPLANATION, TEN_PROBE_TEXT
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow
EXP = Experiment(PACKAGED_SUBJECT_MODEL)  # the one subject model and variant these tests materialize
TIMEOUT_S = 20  # the clean run's: its prompts reach the server for the first time
# The transient faults' runs send the clean run's requests again, which the proxy answers at
# once from the server's replies then (replay), so the "slow" fault's wait past it is short.
REPLAY_TIMEOUT_S = 5
LLM_TABLES = ("explanations", "simulations", "scores")
KEYS = {
    "explanations": ["layer", "neuron", "sample"],
    "simulations": ["layer", "neuron", "sample", "method", "excerpt_id"],
    "scores": ["layer", "neuron", "sample", "method", "scoring_set"],
}
ENDPOINT = {"all_at_once": "completions", "json": "chat/completions"}


def simulation_request(body):
    """An all-at-once simulation request, not one of the probes that come before it ("10", alignment)."""
    prompt = body.get("prompt") or ""
    return bool(body.get("echo")) and prompt != TEN_PROBE_TEXT and ALIGNMENT_EXPLANATION not in prompt


def run_config(mode):
    return {
        "ops": {
            "excerpts": {"config": {"length": 32}},  # half the default: every request half as long
            "activation_records": {"config": {"n_neurons": 1, "n_random": 4, "batch_size": 32}},
            "scoring_excerpts": {
                "config": {"n_top": 1, "n_random": 1, "n_calibration_top": 0, "n_calibration_random": 0}
            },
            "explanations": {"config": {"methods": ["explanation"], "n_examples": 2, "max_tokens": 30}},
            "simulations": {"config": {"methods": ["explanation"], "mode": mode}},
        }
    }


def materialize(proxy, data_dir, steps=None, mode="all_at_once", timeout_s=TIMEOUT_S):
    settings = Settings(
        subject_models=(PACKAGED_SUBJECT_MODEL,),
        data_dir=data_dir,
        llm_base_url=proxy.url,
        explainer_model=PACKAGED_MODEL_ALIAS,
        simulator_model=PACKAGED_MODEL_ALIAS,
    )
    # behind the proxy is the local llama-cpp-python server: its json replies are held to a schema
    defs = build_definitions(settings, timeout_s=timeout_s, max_attempts=3, json_schema_format="json_object")
    # By default the pipeline up to the scores: revision and the puzzles are other tests' business.
    selection = EXP.selection(*UP_TO_SCORES)
    with dg.DagsterInstance.ephemeral() as instance:
        return defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=EXP.run_config(run_config(mode)),
            instance=instance,
            partition_key="layer-0",
            raise_on_error=False,
            asset_selection=list(selection.resolve(defs.resolve_asset_graph()))
            if steps is None
            else [EXP.key(s) for s in steps],
        )


def stored_rows(data_dir):
    """Rows per LLM table of layer 0, after checking that no key appears twice."""
    store, counts = ResultStore(data_dir), {}
    for table in LLM_TABLES:
        frame = store.read(table, ["0"], EXP.prefix(table))
        assert not frame.select(KEYS[table]).is_duplicated().any(), f"duplicate rows in {table}"
        counts[table] = len(frame)
    return counts


def error_text(result):
    return "\n".join(str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure)


def metadata(result, step, name):
    (materialization,) = result.asset_materializations_for_node(EXP.op_name(step))
    return materialization.metadata[name].value


@pytest.fixture(scope="module")
def proxy():
    # The runs send the server the same requests again and again (the clean run's, then each
    # json-mode one): the proxy asks it once and replays its reply (faults are applied after),
    # since the server would compute the same reply each time (temperature 0, or a seed per request).
    with LocalLlamaServer(packaged_gguf_path(), PACKAGED_MODEL_ALIAS) as server:
        proxy = FaultProxy(server.base_url, slow_s=REPLAY_TIMEOUT_S + 2, replay=True)
        yield proxy
        proxy.close()


@pytest.fixture(scope="module")
def baseline(proxy, tmp_path_factory):
    """A clean run of the whole pipeline for layer 0 through the proxy."""
    data_dir = tmp_path_factory.mktemp("baseline")
    assert materialize(proxy, data_dir).success
    return data_dir, stored_rows(data_dir)


@pytest.fixture
def results(baseline, tmp_path):
    """A copy of the baseline's stored results without its response cache, so every call reaches the proxy."""
    data_dir = tmp_path / "results"
    shutil.copytree(baseline[0], data_dir, ignore=shutil.ignore_patterns("llm_cache"))
    return data_dir


@pytest.mark.parametrize("fault", ["rate_limit", "server_error", "reset", "slow", "malformed_json"])
def test_a_transient_transport_fault_is_retried_and_the_run_completes(fault, proxy, baseline, results):
    for endpoint in ("chat/completions", "completions"):
        proxy.inject(fault, endpoint, times=1)
    injected = proxy.injected[fault]
    result = materialize(proxy, results, LLM_TABLES, timeout_s=REPLAY_TIMEOUT_S)
    proxy.clear()
    assert result.success, error_text(result)
    assert proxy.injected[fault] - injected == 2  # met once by the explainer, once by the simulator
    assert metadata(result, "explanations", "llm_retries") >= 1
    assert metadata(result, "simulations", "llm_retries") >= 1
    assert stored_rows(results) == baseline[1]


@pytest.mark.parametrize("fault", ["digits_as_words", "truncated", "ignore_format"])
def test_one_unreadable_reply_is_rejected_asked_again_and_the_run_completes(fault, proxy, baseline, results):
    proxy.inject(fault, "completions", times=1, only=simulation_request)
    seen = len(proxy.seen)
    result = materialize(proxy, results, ["simulations", "scores"])
    proxy.clear()
    assert result.success, error_text(result)
    assert metadata(result, "simulations", "llm_rejected_replies") == 1, proxy.seen[seen:]
    assert stored_rows(results) == baseline[1]


@pytest.mark.parametrize(
    "mode, fault, problem",
    [
        ("all_at_once", "digits_as_words", "no activation could be read"),
        ("all_at_once", "truncated", "truncated"),
        ("all_at_once", "ignore_format", "no activation could be read"),
        ("json", "digits_as_words", "no JSON array"),
        ("json", "truncated", "no JSON array"),
        ("json", "ignore_format", "no JSON array"),
    ],
)
def test_a_persistent_content_fault_fails_clearly_keeps_what_was_stored_and_a_rerun_finishes(
    mode, fault, problem, proxy, baseline, results
):
    store = ResultStore(results)
    before = {table: store.path(table, "0", EXP.prefix(table)).read_bytes() for table in ("simulations", "scores")}
    proxy.inject(fault, ENDPOINT[mode], times=None, only=simulation_request if mode == "all_at_once" else None)
    failed = materialize(proxy, results, ["simulations", "scores"], mode)
    proxy.clear()
    assert not failed.success
    message = error_text(failed)
    assert "simulation failed for 1 neuron(s)" in message and "layer 0 neuron" in message and problem in message
    assert {table: store.path(table, "0", EXP.prefix(table)).read_bytes() for table in before} == before

    rerun = materialize(proxy, results, ["simulations", "scores"], mode)
    assert rerun.success, error_text(rerun)
    assert stored_rows(results) == baseline[1]
    assert store.read("simulations", ["0"], EXP.prefix("simulations"))["simulation_mode"].unique().to_list() == [mode]
