"""The classifier scorers through Dagster, with known answers.

The subject model is the hand-set GPT-2 of ``handset_gpt2``: layer 0's neuron 3 fires (10) on
" Palestinian" and nowhere else, neuron 5 on " police". Each word is in 6-10% of the scoring
pool's excerpts and every excerpt that shows the word holds it as that very token, so the
top excerpts all hold it and most random ones are silent.

The scripted LLM is an oracle: its explainer names the tokens shown firing, its simulator
writes 10 exactly on them (a correlation score of 1, as in test_known_answers), its detection
answer is 1 exactly for the excerpts that show a named word, and its fuzzing answer is 1
exactly where every marked token is a named word. So the neuron's own explanation and its
lookup explanation score balanced accuracy 1 in both, and the control (the other neuron's
explanation: a word the neuron ignores) scores near chance.
"""

import json
import re

import dagster as dg
import duckdb
import pytest
from handset_gpt2 import build_handset_gpt2

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers
from neuron_assets.prompts.classifiers import DETECTION_SYSTEM, FUZZING_SYSTEM, MARK_CLOSE, MARK_OPEN
from neuron_assets.prompts.templates import JSON_SIMULATOR_SYSTEM
from neuron_assets.recording.subject_model import default_cache_dir, materialize_packaged_model
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow

FIRING_WORDS = {3: " Palestinian", 5: " police"}
GROUPS = (*UP_TO_SCORES, "classifiers")
CONFIG = {
    "ops": {
        "activation_records": {"config": {"selection": "list", "neuron_indices": list(FIRING_WORDS), "batch_size": 32}},
        "explanations": {"config": {"methods": ["explanation", "lookup_explanation"]}},
        "classifier_scores": {"config": {"n_top": 5, "n_non_activating": 5}},
    }
}


def named_words(explanation: str) -> set[str]:
    """The words an explanation names, each token in double quotes, without its leading space."""
    return {token.strip() for token in re.findall(r'"([^"]*)"', explanation)}


def shows(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text) is not None


def oracle(body: dict) -> str:
    """The scripted LLM: explainer, json simulator, detection and fuzzing, each answering exactly right."""
    system, question = body["messages"][0]["content"], body["messages"][-1]["content"]
    if system == JSON_SIMULATOR_SYSTEM:  # 10 exactly on the named tokens
        explanation, listed = question.split("\n", 1)
        words = named_words(explanation)
        return json.dumps([10 if token.strip() in words else 0 for token in json.loads(listed.split("): ", 1)[1])])
    if system in (DETECTION_SYSTEM, FUZZING_SYSTEM):
        words = named_words(question.split("\n", 1)[0])
        examples = re.findall(r"^Example \d+: (.*)$", question, flags=re.MULTILINE)
        if system == DETECTION_SYSTEM:
            return json.dumps([int(any(shows(text, w) for w in words)) for text in examples])
        marks = [re.findall(rf"{re.escape(MARK_OPEN)}(.*?){re.escape(MARK_CLOSE)}", text) for text in examples]
        return json.dumps([int(bool(marked) and all(m.strip() in words for m in marked)) for marked in marks])
    if "<start>\n" not in question:  # the probe for top_logprobs ("Say 0."): answered without them
        return "0"
    listing = question.split("<start>\n", 1)[1]  # the explainer: the target neuron's listing
    shown = {line.rsplit("\t", 1)[0] for line in listing.splitlines() if re.search(r"\t[1-9]\d*$", line)}
    return "the tokens " + ", ".join(f'"{token}"' for token in sorted(shown))


@pytest.fixture(scope="module")
def subject_folder(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize_packaged_model(default_cache_dir()))
    ids = {n: tokenizer(word, add_special_tokens=False)["input_ids"] for n, word in FIRING_WORDS.items()}
    assert all(len(i) == 1 for i in ids.values()), ids  # each word is one token
    folder = tmp_path_factory.mktemp("subject") / "handset_gpt2"
    return build_handset_gpt2(folder, tokenizer, {n: i for n, i in ids.items()})


@pytest.fixture(scope="module")
def scored(subject_folder, tmp_path_factory):
    """Layer 0 recorded, explained, simulated and scored, and scored by detection and fuzzing, through the oracle."""
    from scripted_openai import ScriptedOpenAI

    data_dir = tmp_path_factory.mktemp("classifiers") / "results"
    server = ScriptedOpenAI(oracle).__enter__()
    settings = Settings(
        subject_models=(str(subject_folder),),
        data_dir=data_dir,
        llm_base_url=server.url,
        explainer_model="scripted",
        simulator_model="scripted",
        device="cpu",
    )
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize_layers(defs, 0, 0, CONFIG, instance, GROUPS, Experiment(str(subject_folder)))
    assert result.success
    yield defs, ResultStore(data_dir), server, Experiment(str(subject_folder))
    server.__exit__(None, None, None)


def query(store, sql):
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_the_oracle_scores_each_neurons_own_explanations_one_and_the_control_near_chance(scored):
    _, store, _, _ = scored
    rows = query(
        store,
        "SELECT neuron, method, scorer, balanced_accuracy, precision, recall, auroc, n_examples, n_activating "
        "FROM classifier_scores ORDER BY neuron, method, scorer",
    )
    assert {(n, m, s) for n, m, s, *_ in rows} == {
        (n, m, s)
        for n in FIRING_WORDS
        for m in ("control", "explanation", "lookup_explanation")
        for s in ("detection", "fuzzing")
    }
    for neuron, method, scorer, accuracy, precision, recall, auroc, n_examples, n_activating in rows:
        assert auroc is None  # the scripted server gives no log-probabilities: written answers only
        if method == "control":  # the other neuron's word: almost never in this neuron's examples
            assert accuracy <= 0.75, (neuron, scorer)
        else:
            assert (accuracy, precision, recall) == (1.0, 1.0, 1.0), (neuron, method, scorer)
        if scorer == "detection":  # 5 top excerpts (plus quantile ones) against 5 silent random ones
            assert n_examples - n_activating == 5 and n_activating >= 5


def test_a_neuron_page_of_the_viewer_shows_every_scorers_result(scored):
    from neuron_assets.viewer.data import ViewerData
    from neuron_assets.viewer.server import render

    _, store, _, experiment = scored
    html = render(ViewerData(store), f"/{experiment.slug}/{experiment.variant}/layer-0/neuron-3")
    table = html.split('<table id="scorers">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(\w+)</td><td>(\w+)</td><td class=\"num\">0</td><td class=\"num\">([\d.]*)</td>", table)
    assert {(scorer, method) for scorer, method, _ in rows} == {
        (s, m) for s in ("detection", "fuzzing") for m in ("control", "explanation", "lookup_explanation")
    }
    assert all(accuracy == "1.000" for _, method, accuracy in rows if method != "control")


def test_each_score_keeps_the_scoring_pool_excerpts_it_asked_about_with_their_truth_and_answers(scored):
    _, store, _, _ = scored
    rows = query(
        store,
        "SELECT c.neuron, c.scorer, c.excerpt_ids, c.example_kinds, c.labels, c.answers, c.prompt_version "
        "FROM classifier_scores c WHERE method = 'explanation'",
    )
    pools = dict(query(store, "SELECT excerpt_id, pool FROM excerpts"))
    for neuron, scorer, ids, kinds, labels, answers, version in rows:
        assert {pools[i] for i in ids} == {"scoring"}  # the explainer never saw these documents
        assert len(ids) == len(kinds) == len(labels) == len(answers) and answers == [int(x) for x in labels]
        assert version == f"{scorer}-v1"
        if scorer == "detection":
            assert labels == [kind != "non_activating" for kind in kinds]


def test_neuron_scorers_and_scorer_layers_show_every_scorer_beside_the_others(scored):
    _, store, _, _ = scored
    rows = query(
        store,
        "SELECT method, scorer, metric_name, n_neurons, mean_metric, ci_low, ci_high FROM scorer_layers "
        "WHERE layer = 0 ORDER BY scorer, method",
    )
    by_key = {(method, scorer): rest for method, scorer, *rest in rows}
    for scorer in ("detection", "fuzzing"):
        name, n, mean, low, high = by_key["explanation", scorer]
        assert (name, n, mean, low, high) == ("balanced_accuracy", 2, 1.0, 1.0, 1.0)
        assert by_key["control", scorer][2] < mean
    neurons = query(
        store,
        "SELECT neuron, method, detection_balanced_accuracy, fuzzing_balanced_accuracy, "
        "surprisal_auroc, simulation_score FROM scorers_beside_simulation WHERE method = 'explanation'",
    )
    assert sorted(n for n, *_ in neurons) == sorted(FIRING_WORDS)
    for *_, detection, fuzzing, surprisal, simulation in neurons:
        assert (detection, fuzzing, surprisal) == (1.0, 1.0, None)  # no surprisal without prompt log-probabilities
        assert simulation >= 0.99  # the exact simulator's top-and-random correlation, beside them


def test_the_scorer_views_need_no_simulation(scored, tmp_path):
    """A results folder with classifier scores but no scores table still has neuron_scorers and scorer_layers."""
    import shutil

    _, store, _, _ = scored
    copy = tmp_path / "results"
    shutil.copytree(store.root, copy, ignore=shutil.ignore_patterns("scores", "results.duckdb*", "llm_cache"))
    copied = ResultStore(copy)
    copied.refresh_views()
    assert query(copied, "SELECT count(*) FROM scorer_layers WHERE method = 'explanation'") == [(2,)]
    assert query(copied, "SELECT count(*) FROM neuron_scorers") == [(6,)]


def rerun(scored, config):
    defs, _, server, experiment = scored
    with dg.DagsterInstance.ephemeral() as instance:
        return materialize_layers(
            defs,
            0,
            0,
            {"ops": {"classifier_scores": {"config": config}}},
            instance,
            ("classifiers",),
            experiment,
            raise_on_error=False,
        )


def failure(result):
    return "\n".join(str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"n_non_activating": 30}, r"need 30 non-activating excerpts but only \d+ of the random scoring-pool"),
        ({"scorers": ["detection", "guessing"]}, r"\['guessing'\] not among the scorers"),
        ({"scorers": ["surprisal"]}, r"surprisal scorer needs prompt log-probabilities \(completions with echo\)"),
        ({"logprobs": "yes"}, r"gives no top_logprobs on its chat endpoint"),
    ],
)
def test_what_the_scorers_cannot_do_fails_naming_it_and_keeps_the_stored_scores(scored, config, message):
    _, store, server, experiment = scored
    stored = store.path("classifier_scores", "0", experiment.prefix("classifier_scores")).read_bytes()
    chat_calls = server.calls.count("/v1/chat/completions")
    result = rerun(scored, config)
    assert not result.success
    assert re.search(message, failure(result)), failure(result)
    if "n_non_activating" in config or "guessing" in str(config):  # refused before any call
        assert server.calls.count("/v1/chat/completions") == chat_calls
    assert store.path("classifier_scores", "0", experiment.prefix("classifier_scores")).read_bytes() == stored
