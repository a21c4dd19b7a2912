"""The whole pipeline through Dagster, with the packaged subject model and a real llama.cpp server."""

import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import duckdb
import pytest

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.demo import materialize_layers
from neuron_assets.llama_server import LocalLlamaServer
from neuron_assets.settings import Settings
from neuron_assets.storage import ResultStore
from neuron_assets.subject_model import PACKAGED_SUBJECT_MODEL, SubjectModel

pytestmark = pytest.mark.slow
SECRET = "sk-neuron-assets-test-0123456789"

TINY = {
    "ops": {
        "activation_records": {"config": {"n_neurons": 1, "n_random": 4, "batch_size": 32}},
        "explanations": {"config": {"n_examples": 2, "max_tokens": 30}},
        "simulations": {"config": {"n_top": 2, "n_random": 2}},
    }
}


def settings(data_dir, **overrides):
    values = dict(
        subject_model=PACKAGED_SUBJECT_MODEL, data_dir=data_dir,
        llm_base_url=None, explainer_model=None, simulator_model=None,
    )  # fmt: skip
    return Settings(**{**values, **overrides})


def query(store, sql):
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture(scope="module")
def backfill(tmp_path_factory):
    """One single-run backfill of layers 0-1, counting the subject model's forward passes.

    The data directory's path holds a quote, a space and non-ASCII characters, as a user's may.
    """
    data_dir = tmp_path_factory.mktemp("results") / "o'brien data ü" / "results"
    passes = []
    original = SubjectModel.run_with_mlp_hooks

    def counting(self, tokens, hooks, stop_at_layer):
        passes.append((sorted(hooks), stop_at_layer))
        return original(self, tokens, hooks, stop_at_layer)

    SubjectModel.run_with_mlp_hooks = counting
    os.environ["OPENAI_API_KEY"] = SECRET  # sent to the server on every call
    try:
        with dg.instance_for_test() as instance:
            result = materialize_layers(build_definitions(settings(data_dir)), 0, 1, TINY, instance)
    finally:
        SubjectModel.run_with_mlp_hooks = original
        del os.environ["OPENAI_API_KEY"]
    assert result.success
    return result, ResultStore(data_dir), passes


def test_a_two_layer_backfill_runs_the_subject_model_over_the_corpus_once(backfill):
    _, store, passes = backfill
    n_excerpts = query(store, "SELECT count(*) FROM excerpts")[0][0]
    assert len(passes) == math.ceil(n_excerpts / 32)
    assert {(tuple(layers), stop) for layers, stop in passes} == {((0, 1), 2)}


def test_neuron_scores_view_lists_every_scored_neuron_with_its_models(backfill):
    _, store, _ = backfill
    rows = query(
        store,
        "SELECT subject_model, layer, explanation, explainer_model, simulator_model, "
        "top_and_random_score, random_only_score, top_and_random_undefined_reason FROM neuron_scores ORDER BY layer",
    )
    assert [r[1] for r in rows] == [0, 1]
    for subject, _, explanation, explainer, simulator, top_and_random, _, reason in rows:
        assert subject == PACKAGED_SUBJECT_MODEL and explanation
        assert explainer == simulator == "SmolLM2-135M-Instruct-Q4_1"
        assert (top_and_random is None) == (reason is not None)
        assert top_and_random is None or -1.0 <= top_and_random <= 1.0


def test_recordings_store_the_document_start_token_they_put_before_each_excerpt(backfill):
    _, store, _ = backfill
    for table in ("activation_records", "neuron_stats"):
        assert query(store, f"SELECT DISTINCT document_start_token FROM {table}") == [("<|endoftext|>",)]


def test_layer_scores_show_each_mean_with_the_neurons_it_covers_and_leaves_out(backfill):
    _, store, _ = backfill
    rows = query(
        store,
        "SELECT layer, scoring_set, mean_score, n_scored, n_undefined, n_many_unsimulated "
        "FROM layer_scores ORDER BY layer, scoring_set",
    )
    assert [(layer, scoring_set) for layer, scoring_set, *_ in rows] == [
        (0, "random_only"), (0, "top_and_random"), (1, "random_only"), (1, "top_and_random"),
    ]  # fmt: skip
    flagged = dict(query(store, "SELECT layer || '/' || scoring_set, unsimulated_share > 0.05 FROM ("
                            "SELECT layer, 'top_and_random' AS scoring_set, top_and_random_unsimulated_share AS unsimulated_share "
                            "FROM neuron_scores UNION ALL SELECT layer, 'random_only', random_only_unsimulated_share FROM neuron_scores)"))
    for layer, scoring_set, mean, scored, undefined, many_unsimulated in rows:
        assert scored + undefined == 1  # one neuron per layer in this run
        assert (mean is None) == (scored == 0)
        assert many_unsimulated == int(flagged[f"{layer}/{scoring_set}"])


def test_a_score_with_more_than_five_percent_unsimulated_tokens_is_flagged(backfill):
    _, store, _ = backfill
    shares = query(
        store,
        "SELECT top_and_random_unsimulated_share, random_only_unsimulated_share, many_unsimulated FROM explanation_scores",
    )
    assert shares
    for top_and_random, random_only, flagged in shares:
        assert flagged == (top_and_random > 0.05 or random_only > 0.05)


def test_lineage_view_traces_every_score_to_its_run_prompts_models_and_excerpts(backfill):
    result, store, _ = backfill
    rows = query(
        store,
        "SELECT explainer_prompt_version, simulator_prompt_version, explanation_excerpt_ids, "
        "scoring_excerpt_ids, corpus, recording_run_id, explanation_run_id, simulation_run_id, score_run_id "
        "FROM score_lineage",
    )
    assert len(rows) == 4  # 2 neurons x 2 scoring sets
    for explainer_v, simulator_v, shown, scored, corpus, *runs in rows:
        assert explainer_v.startswith("explainer-") and simulator_v.startswith("simulator-")
        assert len(shown) == 2 and len(scored) == 4 and not set(shown) & set(scored)
        assert corpus == "lee" and set(runs) == {result.run_id}


def test_explanation_and_scoring_excerpts_come_from_different_documents(backfill):
    _, store, _ = backfill
    shared = query(
        store,
        """
        WITH shown AS (SELECT unnest(explanation_excerpt_ids) AS excerpt_id FROM score_lineage),
             scored AS (SELECT unnest(scoring_excerpt_ids) AS excerpt_id FROM score_lineage)
        SELECT count(*) FROM (SELECT doc_id FROM excerpts JOIN shown USING (excerpt_id)
                              INTERSECT SELECT doc_id FROM excerpts JOIN scored USING (excerpt_id))
        """,
    )
    assert shared == [(0,)]


def test_rematerializing_a_layer_replaces_its_rows_and_keeps_the_others(backfill):
    first, store, _ = backfill
    before = query(store, "SELECT layer, count(*) FROM scores GROUP BY layer ORDER BY layer")
    definitions = build_definitions(settings(store.root))
    reader = subprocess.Popen(  # a researcher's session, open on the results during the run
        [sys.executable, "-c", f"import duckdb, sys; c = duckdb.connect({str(store.database)!r}, read_only=True); "
         "print('open', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "open"
        with dg.instance_for_test() as instance:
            job = definitions.resolve_implicit_global_asset_job_def()
            second = job.execute_in_process(run_config=TINY, instance=instance, partition_key="layer-1")
            logs = instance.all_logs(second.run_id)
    finally:
        reader.kill()
        reader.wait()
    assert second.success
    assert not [log.user_message for log in logs if log.level >= logging.WARNING]  # no view needed rewriting
    assert query(store, "SELECT layer, count(*) FROM scores GROUP BY layer ORDER BY layer") == before
    runs = dict(query(store, "SELECT layer, any_value(run_id) FROM scores GROUP BY layer"))
    assert runs == {0: first.run_id, 1: second.run_id}
    assert query(store, "SELECT DISTINCT partition FROM scores WHERE layer = 1") == [("layer-1",)]
    for step in ("explanations", "simulations"):  # unchanged work: every response from the cache
        (materialization,) = second.asset_materializations_for_node(step)
        assert materialization.metadata["llm_calls"].value == 0
        assert materialization.metadata["llm_cache_hits"].value > 0


def copy_without_cache(store, tmp_path):
    """The stored results in a new folder, without the response cache or the database file."""
    target = tmp_path / "copy"
    shutil.copytree(store.root, target, ignore=shutil.ignore_patterns("llm_cache", "results.duckdb*"))
    return ResultStore(target)


def test_neuron_scores_lists_scored_explanations_and_unscored_ones_wait_in_their_own_view(backfill, tmp_path):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    copy.path("scores", "1").unlink()  # as between the explanation and score steps of layer 1
    copy.refresh_views()
    assert [layer for layer, in query(copy, "SELECT layer FROM neuron_scores")] == [0]
    assert [layer for layer, in query(copy, "SELECT layer FROM unscored_explanations")] == [1]


def test_the_local_server_killed_mid_run_fails_the_step_naming_the_signal_and_a_rerun_resumes(backfill, tmp_path):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    before = {table: copy.path(table, "0").read_bytes() for table in ("simulations", "scores")}
    servers, killed_at = [], []
    enter = LocalLlamaServer.__enter__

    def remembering_enter(self):
        servers.append(self)
        return enter(self)

    def kill_after_two_responses():  # the explanation and the simulator's mode probe
        cache, deadline = copy.root / "llm_cache", time.monotonic() + 600
        while len(list(cache.rglob("*.json"))) < 2:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(servers[0].pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    LocalLlamaServer.__enter__ = remembering_enter
    killer = threading.Thread(target=kill_after_two_responses, daemon=True)
    killer.start()
    llm_steps = [dg.AssetKey(name) for name in ("explanations", "simulations", "scores")]
    job = build_definitions(settings(copy.root)).resolve_implicit_global_asset_job_def()
    try:
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                run_config=TINY, instance=instance, partition_key="layer-0", raise_on_error=False,
                asset_selection=llm_steps,
            )  # fmt: skip
    finally:
        LocalLlamaServer.__enter__ = enter
    failed_at = time.monotonic()
    assert killed_at and not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert failure.step_key == "simulations"
    assert "the local llama.cpp server exited (signal 9, SIGKILL); the last lines of its log:" in message
    print(f"step failed {failed_at - killed_at[0]:.1f} s after the kill (teardown included)")
    assert {table: copy.path(table, "0").read_bytes() for table in before} == before
    cached = len(list((copy.root / "llm_cache").rglob("*.json")))
    with dg.instance_for_test() as instance:
        rerun = job.execute_in_process(run_config=TINY, instance=instance, partition_key="layer-0", asset_selection=llm_steps)
    assert rerun.success
    hits = sum(rerun.asset_materializations_for_node(step)[0].metadata["llm_cache_hits"].value
               for step in ("explanations", "simulations"))  # fmt: skip
    assert hits == cached  # every response stored before the kill is reused
    assert rerun.asset_materializations_for_node("explanations")[0].metadata["llm_calls"].value == 0


def test_an_unreachable_llm_server_fails_clearly_and_keeps_stored_explanations(backfill):
    _, store, _ = backfill
    stored = store.path("explanations", "0").read_bytes()
    unreachable = settings(
        store.root, llm_base_url="http://127.0.0.1:9/v1", explainer_model="m", simulator_model="m"
    )
    job = build_definitions(unreachable).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=TINY, instance=instance, partition_key="layer-0", raise_on_error=False,
            asset_selection=[dg.AssetKey("explanations")],
        )  # fmt: skip
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "cannot reach the LLM server at http://127.0.0.1:9/v1" in str(failure.step_failure_data.error)
    assert store.path("explanations", "0").read_bytes() == stored


def test_stored_scores_pass_the_asset_check(backfill):
    result, _, _ = backfill
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)


def test_every_example_query_runs_on_the_results(backfill):
    _, store, _ = backfill
    from neuron_assets.storage import sql_statements

    statements = sql_statements("examples.sql")
    assert len(statements) >= 5
    for statement in statements:
        query(store, statement)


def test_the_api_key_is_stored_nowhere_neither_in_results_cache_logs_nor_metadata(backfill):
    result, store, _ = backfill
    for path in store.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in "".join(str(event) for event in result.all_events)
