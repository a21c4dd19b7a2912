"""The whole pipeline through Dagster, with the packaged subject model and a real llama.cpp server."""

import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import duckdb
import polars as pl
import pytest

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers, print_results
from neuron_assets.llm.llama_server import LocalLlamaServer
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL, SubjectModel
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow
EXP = Experiment(PACKAGED_SUBJECT_MODEL)  # the one subject model and variant these tests materialize
SECRET = "sk-neuron-assets-test-0123456789"

EXCERPT_LENGTH = 32  # half the default: every LLM request about half as long
TINY = {
    "ops": {
        "excerpts": {"config": {"length": EXCERPT_LENGTH}},
        "activation_records": {"config": {"n_neurons": 2, "n_random": 4, "batch_size": 32}},
        "scoring_excerpts": {"config": {"n_top": 1, "n_random": 1, "n_calibration_top": 1, "n_calibration_random": 1}},
        "explanations": {"config": {"n_examples": 2, "max_tokens": 30, "lookup_tokens": 8}},
    }
}
METHODS = ["control", "explanation", "lookup_explanation", "lookup_table", "weight_based"]
# The killed-server test redoes layer 0's LLM stages without the cache: its own explanation only.
OWN_EXPLANATION_ONLY = {
    "ops": {
        **TINY["ops"],
        "explanations": {"config": {**TINY["ops"]["explanations"]["config"], "methods": ["explanation"]}},
        "simulations": {"config": {"methods": ["explanation"]}},
    }
}
# Revision runs on this backfill's results with a scripted LLM (test_revision_*): with the
# real one it would add minutes of sentence writing and simulation to the suite.
# Example queries over tables this backfill does not make; the tests that make them run them.
MATERIALIZED_ELSEWHERE = ("revision_layers", "puzzle_scorer_summary")


def settings(data_dir, **overrides):
    values = dict(
        subject_models=(PACKAGED_SUBJECT_MODEL,),
        data_dir=data_dir,
        llm_base_url=None,
        explainer_model=None,
        simulator_model=None,
    )
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
        with dg.DagsterInstance.ephemeral() as instance:
            result = materialize_layers(build_definitions(settings(data_dir)), 0, 1, TINY, instance, UP_TO_SCORES)
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
    assert [r[1] for r in rows] == [0, 0, 1, 1]
    for subject, _, explanation, explainer, simulator, top_and_random, _, reason in rows:
        assert subject == PACKAGED_SUBJECT_MODEL and explanation
        assert explainer == simulator == "SmolLM2-135M-Instruct-Q4_1"
        assert (top_and_random is None) == (reason is not None)
        assert top_and_random is None or -1.0 <= top_and_random <= 1.0


def test_recordings_store_the_document_start_token_they_put_before_each_excerpt(backfill):
    _, store, _ = backfill
    for table in ("activation_records", "neuron_stats"):
        assert query(store, f"SELECT DISTINCT document_start_token FROM {table}") == [("<|endoftext|>",)]


def test_layer_scores_show_each_methods_mean_with_the_neurons_it_covers_and_leaves_out(backfill):
    _, store, _ = backfill
    rows = query(
        store,
        "SELECT layer, method, scoring_set, mean_score, n_scored, n_undefined, n_many_unsimulated "
        "FROM layer_scores ORDER BY layer, method, scoring_set",
    )
    assert [(layer, method, scoring_set) for layer, method, scoring_set, *_ in rows] == [
        (layer, method, scoring_set)
        for layer in (0, 1)
        for method in METHODS
        for scoring_set in ("random_only", "top_and_random")
    ]
    flagged = dict(
        query(
            store,
            "SELECT layer || '/' || method || '/' || scoring_set, count(*) FILTER (WHERE share > 0.05) FROM ("
            "SELECT layer, method, 'top_and_random' AS scoring_set, top_and_random_unsimulated_share AS share "
            "FROM method_scores UNION ALL SELECT layer, method, 'random_only', random_only_unsimulated_share "
            "FROM method_scores) GROUP BY ALL",
        )
    )
    for layer, method, scoring_set, mean, scored, undefined, many_unsimulated in rows:
        assert scored + undefined == 2  # two neurons per layer in this run
        assert (mean is None) == (scored == 0)
        assert many_unsimulated == flagged[f"{layer}/{method}/{scoring_set}"]


def test_every_method_is_scored_on_the_same_tokens_with_a_held_out_calibration(backfill):
    _, store, _ = backfill
    rows = query(
        store,
        "SELECT layer, neuron, scoring_set, count(DISTINCT method), count(DISTINCT n_tokens), "
        "count(DISTINCT n_calibration_tokens), min(n_calibration_tokens) FROM scores GROUP BY ALL",
    )
    assert len(rows) == 8  # 2 layers x 2 neurons x 2 scoring sets
    for *_, methods, token_counts, calibration_counts, calibration_tokens in rows:
        assert (methods, token_counts, calibration_counts) == (5, 1, 1)
        assert calibration_tokens == 2 * EXCERPT_LENGTH  # one top and one random calibration excerpt
    scored = query(store, "SELECT list(excerpt_id) FROM scoring_excerpts GROUP BY layer, neuron")
    for (ids,) in scored:
        assert len(ids) == len(set(ids)) == 4  # 1 top, 1 random, 2 calibration: none twice
    # a calibration fitted elsewhere: explained variance is not the correlation squared
    gaps = query(
        store, "SELECT abs(explained_variance - correlation ^ 2) FROM scores WHERE explained_variance IS NOT NULL"
    )
    assert gaps and max(gap for (gap,) in gaps) > 1e-6


def test_neuron_scores_show_the_explanation_beside_its_best_baseline_and_its_control(backfill):
    _, store, _ = backfill
    rows = query(
        store,
        "SELECT n.layer, n.neuron, n.best_baseline, n.best_baseline_score, n.control_score, "
        "n.control_explanation_neuron, n.lookup_table_score, n.weight_based_score, n.lookup_explanation_score "
        "FROM neuron_scores n ORDER BY layer, neuron",
    )
    for layer, neuron, best, best_score, control, control_neuron, *baselines in rows:
        defined = [b for b in baselines if b is not None]
        assert best_score == max(defined) and best in ("lookup_table", "weight_based", "lookup_explanation")
        assert control_neuron != neuron
        assert (
            control
            == query(
                store,
                f"SELECT correlation FROM scores WHERE layer = {layer} AND neuron = {neuron} "
                "AND method = 'control' AND scoring_set = 'top_and_random'",
            )[0][0]
        )
    verdicts = query(
        store, "SELECT layer, method, n_neurons, verdict FROM layer_methods WHERE scoring_set = 'top_and_random'"
    )
    assert {(layer, method) for layer, method, _, _ in verdicts} == {(layer, m) for layer in (0, 1) for m in METHODS}
    for _, method, n_neurons, verdict in verdicts:
        assert (verdict is None) == (method == "explanation")
        assert n_neurons <= 2 and verdict in (None, "too few neurons")  # below verdict_rules.min_neurons


def test_the_demo_prints_each_neurons_explanation_best_baseline_and_control_scores(backfill, capsys):
    _, store, _ = backfill
    print_results(store, 0, 1)
    printed = capsys.readouterr().out
    per_neuron, per_layer = printed.split("Per layer")
    for column in ("explanation_score", "best_baseline", "best_baseline_score", "control_score"):
        assert column in per_neuron
    for layer, neuron in query(store, "SELECT layer, neuron FROM neuron_scores"):
        assert f"{neuron}" in per_neuron
    for method in METHODS:
        assert method in per_layer
    assert "difference_95ci" in per_layer and "verdict" in per_layer


def test_a_lookup_explanation_is_stored_with_the_explanations_and_shows_no_excerpt(backfill):
    _, store, _ = backfill
    rows = query(store, "SELECT prompt_version, excerpt_ids FROM explanations WHERE method = 'lookup_explanation'")
    assert len(rows) == 4 and all(v == "lookup-explainer-v1" and ids == [] for v, ids in rows)


def test_a_score_with_more_than_five_percent_unsimulated_tokens_is_flagged(backfill):
    _, store, _ = backfill
    shares = query(
        store,
        (
            "SELECT top_and_random_unsimulated_share, random_only_unsimulated_share, many_unsimulated "
            "FROM explanation_scores"
        ),
    )
    assert shares
    for top_and_random, random_only, flagged in shares:
        assert flagged == (top_and_random > 0.05 or random_only > 0.05)


def test_lineage_view_traces_every_score_to_its_run_prompts_models_and_excerpts(backfill):
    result, store, _ = backfill
    rows = query(
        store,
        "SELECT explainer_prompt_version, simulator_prompt_version, explanation_excerpt_ids, "
        "scoring_excerpt_ids, calibration_excerpt_ids, corpus, recording_run_id, explanation_run_id, "
        "simulation_run_id, score_run_id FROM score_lineage WHERE method = 'explanation'",
    )
    assert len(rows) == 8  # 4 neurons x 2 scoring sets
    for explainer_v, simulator_v, shown, scored, calibration, corpus, *runs in rows:
        assert explainer_v.startswith("explainer-") and simulator_v.startswith("simulator-")
        assert len(shown) == 2 and len(scored) == 2 and not set(shown) & set(scored)
        assert len(calibration) == 2 and not set(calibration) & set(scored)
        assert corpus == "lee" and set(runs) == {result.run_id}
    baselines = query(
        store,
        "SELECT DISTINCT method, explanation, simulator_model FROM score_lineage "
        "WHERE method IN ('lookup_table', 'weight_based')",
    )
    assert sorted(baselines) == [("lookup_table", None, None), ("weight_based", None, None)]


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
        [
            sys.executable,
            "-c",
            f"import duckdb, sys; c = duckdb.connect({str(store.database)!r}, read_only=True); "
            "print('open', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "open"
        with dg.DagsterInstance.ephemeral() as instance:
            job = definitions.resolve_implicit_global_asset_job_def()
            selection = EXP.selection(*UP_TO_SCORES).resolve(definitions.resolve_asset_graph())
            second = job.execute_in_process(
                run_config=EXP.run_config(TINY),
                instance=instance,
                partition_key="layer-1",
                asset_selection=list(selection),
            )
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
        (materialization,) = second.asset_materializations_for_node(EXP.op_name(step))
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
    copy.path("scores", "1", EXP.prefix("scores")).unlink()  # as between the explanation and score steps of layer 1
    copy.refresh_views()
    assert query(copy, "SELECT DISTINCT layer FROM neuron_scores") == [(0,)]
    assert query(copy, "SELECT DISTINCT layer FROM unscored_explanations") == [(1,)]


def test_a_neurons_score_is_the_mean_of_its_samples_in_neuron_scores_as_in_the_layer_comparisons(backfill, tmp_path):
    """A second explanation sample scoring 0.9 higher: neuron_scores compares the mean of the two
    with the single-sample control and baselines (as method_comparisons does), and shows the
    best sample's text and score beside it."""
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    layer, neuron = 0, query(store, "SELECT min(neuron) FROM neuron_scores WHERE layer = 0")[0][0]
    own = (pl.col("neuron") == neuron) & (pl.col("method") == "explanation") & (pl.col("sample") == 0)
    for table, second in (
        ("explanations", lambda rows: rows.with_columns(sample=pl.lit(1), explanation=pl.lit("a second sample"))),
        ("scores", lambda rows: rows.with_columns(sample=pl.lit(1), correlation=0.9, undefined_reason=None)),
    ):
        stored = copy.read(table, ["0"], EXP.prefix(table))
        copy.write(
            table, pl.concat([stored, second(stored.filter(own))], how="vertical_relaxed"), "0", EXP.prefix(table)
        )
    copy.refresh_views()
    ((first,),) = query(
        copy,
        f"SELECT correlation FROM scores WHERE layer = {layer} AND neuron = {neuron} AND sample = 0 "
        "AND method = 'explanation' AND scoring_set = 'top_and_random'",
    )
    ((mean, n_samples, best_sample, best_score, text, beats_control, control),) = query(
        copy,
        "SELECT top_and_random_score, n_samples, best_sample, best_sample_score, explanation, beats_control, "
        f"control_score FROM neuron_scores WHERE layer = {layer} AND neuron = {neuron} AND polarity = 'positive'",
    )
    assert n_samples == 2 and best_sample == 1 and best_score == pytest.approx(0.9) and text == "a second sample"
    defined = [value for value in (first, 0.9) if value is not None]
    assert mean == pytest.approx(sum(defined) / len(defined))
    assert beats_control == (mean > control)


def test_the_local_server_killed_mid_run_fails_the_step_naming_the_signal_and_a_rerun_resumes(backfill, tmp_path):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    before = {table: copy.path(table, "0", EXP.prefix(table)).read_bytes() for table in ("simulations", "scores")}
    servers, killed_at = [], []
    enter = LocalLlamaServer.__enter__

    def remembering_enter(self):
        servers.append(self)
        return enter(self)

    def kill_after_five_responses():  # 2 explanations, then the simulator's probes
        cache, deadline = copy.root / "llm_cache", time.monotonic() + 600
        while ResponseCache(cache).count() < 5:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(servers[0].pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    LocalLlamaServer.__enter__ = remembering_enter
    killer = threading.Thread(target=kill_after_five_responses, daemon=True)
    killer.start()
    llm_steps = [EXP.key(name) for name in ("explanations", "simulations", "scores")]
    job = build_definitions(settings(copy.root)).resolve_implicit_global_asset_job_def()
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                run_config=EXP.run_config(OWN_EXPLANATION_ONLY),
                instance=instance,
                partition_key="layer-0",
                raise_on_error=False,
                asset_selection=llm_steps,
            )
    finally:
        LocalLlamaServer.__enter__ = enter
    failed_at = time.monotonic()
    assert killed_at and not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = str(failure.step_failure_data.error)
    assert failure.step_key == EXP.op_name("simulations")
    assert re.search(
        r"the local llama.cpp server exited \(signal 9, SIGKILL\); its resident memory was \d+\.\d\d GiB at the "
        r"last sample \(peak .*; its own limit 6.00 GiB; the host has .*; the last lines of its log:",
        message,
    ), message
    assert "out of memory" not in message  # killed far below any limit: not put down to memory
    print(f"step failed {failed_at - killed_at[0]:.1f} s after the kill (teardown included)")
    assert {table: copy.path(table, "0", EXP.prefix(table)).read_bytes() for table in before} == before
    cached = ResponseCache(copy.root / "llm_cache").count()
    with dg.DagsterInstance.ephemeral() as instance:
        rerun = job.execute_in_process(
            run_config=EXP.run_config(OWN_EXPLANATION_ONLY),
            instance=instance,
            partition_key="layer-0",
            asset_selection=llm_steps,
        )
    assert rerun.success
    calls = sum(
        rerun.asset_materializations_for_node(EXP.op_name(step))[0].metadata["llm_calls"].value
        for step in ("explanations", "simulations")
    )
    # every response stored before the kill is reused: each call of the rerun stored a new
    # response, none asked again for one already stored (identical requests, such as a
    # control whose explanation reads like the neuron's own, are hits within the run too)
    assert calls == ResponseCache(copy.root / "llm_cache").count() - cached
    assert rerun.asset_materializations_for_node(EXP.op_name("explanations"))[0].metadata["llm_calls"].value == 0


def test_an_unreachable_llm_server_fails_clearly_and_keeps_stored_explanations(backfill):
    _, store, _ = backfill
    stored = store.path("explanations", "0", EXP.prefix("explanations")).read_bytes()
    unreachable = settings(store.root, llm_base_url="http://127.0.0.1:9/v1", explainer_model="m", simulator_model="m")
    job = build_definitions(unreachable).resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=EXP.run_config(TINY),
            instance=instance,
            partition_key="layer-0",
            raise_on_error=False,
            asset_selection=[EXP.key("explanations")],
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "cannot reach the LLM server at http://127.0.0.1:9/v1" in str(failure.step_failure_data.error)
    assert store.path("explanations", "0", EXP.prefix("explanations")).read_bytes() == stored


def error_messages(error):
    """The messages of an error and of every error it was raised from or during."""
    messages = []
    while error is not None:
        messages.append(error.message)
        error = error.cause or error.context
    return "\n".join(messages)


def test_a_baseline_asked_for_on_a_layer_that_was_not_recorded_names_what_is_missing(backfill):
    _, store, _ = backfill
    job = build_definitions(settings(store.root)).resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key="layer-5",
            raise_on_error=False,
            asset_selection=[EXP.key("token_predictions")],
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    messages = error_messages(failure.step_failure_data.error)
    assert "table 'scoring_excerpts' has not been materialized" in messages  # the first input it loads
    assert f"scoring_excerpts/{EXP.slug}/5.parquet" in messages
    assert not store.path("token_predictions", "5", EXP.prefix("token_predictions")).exists()


def test_an_unknown_method_fails_the_step_naming_it_and_keeps_stored_simulations(backfill):
    _, store, _ = backfill
    stored = store.path("simulations", "0", EXP.prefix("simulations")).read_bytes()
    job = build_definitions(settings(store.root)).resolve_implicit_global_asset_job_def()
    config = {"ops": {"simulations": {"config": {"methods": ["explanation", "random_words"]}}}}
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=EXP.run_config(config),
            instance=instance,
            partition_key="layer-0",
            raise_on_error=False,
            asset_selection=[EXP.key("simulations")],
        )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "unknown method(s) ['random_words']" in str(failure.step_failure_data.error)
    assert store.path("simulations", "0", EXP.prefix("simulations")).read_bytes() == stored


def test_stored_scores_pass_the_asset_check(backfill):
    result, _, _ = backfill
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations)


def test_every_example_query_runs_on_the_results(backfill):
    _, store, _ = backfill
    from neuron_assets.storage.store import sql_statements

    statements = sql_statements("examples.sql")
    assert len(statements) >= 5
    elsewhere = [s for s in statements if any(view in s for view in MATERIALIZED_ELSEWHERE)]
    assert len(elsewhere) == len(MATERIALIZED_ELSEWHERE)
    for statement in statements:
        if statement not in elsewhere:
            query(store, statement)


def test_the_api_key_is_stored_nowhere_neither_in_results_cache_logs_nor_metadata(backfill):
    result, store, _ = backfill
    for path in store.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    cached = json.dumps(list(ResponseCache(store.root / "llm_cache").entries()))  # rows are compressed
    assert "choices" in cached and SECRET not in cached
    assert SECRET not in "".join(str(event) for event in result.all_events)


@contextlib.contextmanager
def scripted_llm_job(store, answer):
    """(server, the asset job on ``store``, a test instance), the LLM a ``ScriptedOpenAI`` answering with ``answer``."""
    from scripted_openai import ScriptedOpenAI

    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with ScriptedOpenAI(answer) as server, dg.DagsterInstance.ephemeral() as instance:
            defs = build_definitions(
                settings(store.root, llm_base_url=server.url, explainer_model="x", simulator_model="y")
            )
            yield server, defs.resolve_implicit_global_asset_job_def(), instance
    finally:
        del os.environ["OPENAI_API_KEY"]


def _scripted_revision_llm(short_first=True):
    """Sentences (the first neuron's writer falls short: 4 of 6), revisions, and json simulations
    that fire on tokens holding 'cat'."""
    from neuron_assets.prompts.revision import REVISER_SYSTEM, SENTENCE_WRITER_SYSTEM

    first = []

    def answer(body):
        system, question = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system == SENTENCE_WRITER_SYSTEM:
            if not first:
                first.append(question)
            n = 4 if short_first and question == first[0] else 6
            return "\n".join(f"{i + 1}. The cat number {i} sat on mat {i}." for i in range(n))
        if system == REVISER_SYSTEM:
            return "cats, but not on mats." if "A first explanation was" in question else "the word cat."
        tokens = json.loads(question.split("): ", 1)[1])
        return json.dumps([10 if "cat" in t else 0 for t in tokens])

    return answer


def test_revision_stores_sentences_with_real_activations_revisions_controls_and_scores_on_both_sets(backfill, tmp_path):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    config = {
        "ops": {
            "revision_sentences": {"config": {"n_sentences": 6, "n_revision": 3}},
            "revisions": {"config": {"kinds": ["revised", "reexplained", "random_sentences"], "n_examples": 2}},
            "revision_scores": {"config": {"mode": "json"}},
        }
    }
    steps = [EXP.key(name) for name in ("revision_sentences", "revisions", "revision_scores", "revision_comparisons")]
    with scripted_llm_job(copy, _scripted_revision_llm()) as (server, job, instance):
        tags = {"dagster/asset_partition_range_start": "layer-0", "dagster/asset_partition_range_end": "layer-1"}
        result = job.execute_in_process(
            run_config=EXP.run_config(config), instance=instance, asset_selection=steps, tags=tags
        )
        assert result.success
        written = result.asset_materializations_for_node(EXP.op_name("revision_sentences"))[0]  # one per layer
        calls = len(server.calls)
        again = job.execute_in_process(
            run_config=EXP.run_config(config), instance=instance, asset_selection=steps, tags=tags
        )
        assert again.success and len(server.calls) == calls  # every response from the cache
    assert written.metadata["neurons_short_of_sentences"].value == 1
    sentences = copy.read("revision_sentences", ["0", "1"], EXP.prefix("revision_sentences"))
    per_neuron = sorted(sentences.group_by("layer", "neuron").len()["len"].to_list())
    assert per_neuron == [4, 6, 6, 6]  # the shortfall is on record, not padded
    assert (sentences["tokens"].list.len() == sentences["activations"].list.len()).all()
    assert sentences["split"].value_counts().sort("split").rows() == [("revision", 12), ("scoring", 10)]
    assert not sentences.select("layer", "neuron", "sentence").is_duplicated().any()
    revisions = copy.read("revisions", ["0", "1"], EXP.prefix("revisions"))
    assert revisions.group_by("revision_kind").len().sort("revision_kind").rows() == [
        ("random_sentences", 4),
        ("reexplained", 4),
        ("revised", 4),
    ]
    assert set(revisions.filter(pl.col("revision_kind") == "revised")["explanation"]) == {"cats, but not on mats"}
    scores = copy.read("revision_scores", ["0", "1"], EXP.prefix("revision_scores"))
    assert (
        len(scores) == 4 * 4 * 2
        and not scores.select("layer", "neuron", "revision_kind", "scoring_set").is_duplicated().any()
    )
    tokens = dict(
        scores.filter(pl.col("revision_kind") == "original")
        .group_by("scoring_set")
        .agg(pl.col("n_tokens").sum())
        .rows()
    )
    assert tokens["extended"] > tokens["original"]  # the scoring split of the sentences joined the set
    rows = query(copy, "SELECT count(*), count(revised_minus_original) FROM revision_neurons")
    assert rows[0][0] == 12
    verdicts = query(copy, "SELECT DISTINCT verdict FROM revision_layers")
    assert {v for (v,) in verdicts} <= {"too few neurons"}  # fewer than 10 neurons a layer
    from neuron_assets.storage.store import sql_statements

    (example,) = [s for s in sql_statements("examples.sql") if "revision_layers" in s]
    # at most layers x scoring sets x kinds: a set where no neuron has a defined score has no row
    assert 0 < len(query(copy, example)) <= 2 * 2 * 3


def test_a_next_token_explanation_is_written_and_simulated_on_the_next_tokens_and_scored_beside_the_explanation(
    backfill, tmp_path
):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)
    shown = []

    def answer(body):
        question = body["messages"][-1]["content"]
        if question.startswith("Explanation: "):  # json simulator
            return json.dumps([0] * len(json.loads(question.split("): ", 1)[1])))
        shown.append(question)
        return "whatever comes next."

    methods = ["explanation", "next_token_explanation"]
    config = {
        "ops": {
            **TINY["ops"],
            "explanations": {"config": {**TINY["ops"]["explanations"]["config"], "methods": methods}},
            "simulations": {"config": {"methods": methods, "mode": "json"}},
        }
    }
    steps = [EXP.key(name) for name in ("explanations", "simulations", "token_predictions", "scores")]
    with scripted_llm_job(copy, answer) as (_, job, instance):
        result = job.execute_in_process(
            run_config=EXP.run_config(config), instance=instance, asset_selection=steps, partition_key="layer-0"
        )
    assert result.success
    records = copy.read("activation_records", ["0"], EXP.prefix("activation_records")).filter(
        (pl.col("kind") == "top") & (pl.col("pool") == "explanation") & (pl.col("rank") == 0)
    )
    tokens = dict(copy.read("excerpts", None, EXP.prefix("excerpts")).select("excerpt_id", "tokens").rows())
    excerpt_id = records["excerpt_id"][0]
    from neuron_assets.prompts.templates import display_token

    def listing_starting_at(position):  # the excerpt's listing from that token on, values whatever they are
        first, second = (re.escape(display_token(t)) for t in tokens[excerpt_id][position : position + 2])
        return re.compile(f"<start>\n{first}\t\\d+\n{second}\t")

    assert len(shown) == 4  # 2 neurons x (explanation, next-token explanation)
    as_is = [q for q in shown if listing_starting_at(0).search(q)]
    shifted = [q for q in shown if listing_starting_at(1).search(q)]
    assert as_is and shifted and not set(as_is) & set(shifted)  # the next-token prompt is shifted by one
    simulations = copy.read("simulations", ["0"], EXP.prefix("simulations"))
    lengths = simulations.group_by("method").agg(pl.col("true_activations").list.len().max()).sort("method").rows()
    assert lengths == [("explanation", EXCERPT_LENGTH), ("next_token_explanation", EXCERPT_LENGTH - 1)]
    assert result.get_asset_check_evaluations() and all(e.passed for e in result.get_asset_check_evaluations())
    rows = query(copy, "SELECT count(*), count(next_token_explanation_score) FROM neuron_scores WHERE layer = 0")
    assert rows == [(2, 0)]  # all-zero simulations: undefined scores, still one row per neuron


def test_both_signs_of_a_neuron_are_recorded_in_one_pass_and_explained_and_scored_as_their_own_rows(backfill, tmp_path):
    _, store, _ = backfill
    copy = copy_without_cache(store, tmp_path)

    def answer(body):
        question = body["messages"][-1]["content"]
        if question.startswith("Explanation: "):  # json simulator: fires on the first half of the excerpt
            n = len(json.loads(question.split("): ", 1)[1]))
            return json.dumps([10] * (n // 2) + [0] * (n - n // 2))
        return "some pattern."

    config = {
        "ops": {
            **TINY["ops"],
            "activation_records": {"config": {**TINY["ops"]["activation_records"]["config"], "polarity": "both"}},
            "simulations": {"config": {"mode": "json"}},
        }
    }
    steps = [
        EXP.key(name)
        for name in (
            "activation_records",
            "neuron_stats",
            "token_lookup",
            "scoring_excerpts",
            "explanations",
            "simulations",
            "token_predictions",
            "scores",
            "method_comparisons",
        )
    ]
    with scripted_llm_job(copy, answer) as (_, job, instance):
        result = job.execute_in_process(
            run_config=EXP.run_config(config), instance=instance, asset_selection=steps, partition_key="layer-0"
        )
    assert result.success
    (stats_event,) = [
        m
        for m in result.asset_materializations_for_node(EXP.op_name("activation_records"))
        if m.asset_key == EXP.key("neuron_stats")
    ]
    assert stats_event.metadata["polarities"].value == "['positive', 'negative']"
    assert 0 <= stats_event.metadata["neurons_with_a_larger_negative_than_positive_range"].value <= 2
    stats = copy.read("neuron_stats", ["0"], EXP.prefix("neuron_stats"))
    sides = {
        p: dict(stats.filter(pl.col("polarity") == p).select("neuron", "max").rows()) for p in ("positive", "negative")
    }
    minima = dict(stats.filter(pl.col("polarity") == "positive").select("neuron", "min").rows())
    assert sides["negative"] == pytest.approx({n: -m for n, m in minima.items()})
    records = copy.read("activation_records", ["0"], EXP.prefix("activation_records")).filter(
        (pl.col("kind") == "top") & (pl.col("rank") == 0)
    )
    negative_top = dict(
        records.filter((pl.col("polarity") == "negative") & (pl.col("pool") == "explanation"))
        .select("neuron", "max_activation")
        .rows()
    )
    assert all(negative_top[n] <= sides["negative"][n] + 1e-6 for n in negative_top)
    for table in (
        "scoring_excerpts",
        "explanations",
        "simulations",
        "token_predictions",
        "scores",
        "method_comparisons",
    ):
        assert set(copy.read(table, ["0"], EXP.prefix(table))["polarity"]) == {"positive", "negative"}, table
    rows = query(
        copy, "SELECT polarity, count(*) FROM neuron_scores WHERE layer = 0 GROUP BY polarity ORDER BY polarity"
    )
    assert rows == [("negative", 2), ("positive", 2)]
    assert all(e.passed for e in result.get_asset_check_evaluations())
