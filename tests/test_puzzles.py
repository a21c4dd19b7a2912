"""Neuron puzzles: the file format, the candidates, and the scorer and explainer tests on scripted LLMs."""

import json
from types import SimpleNamespace

import polars as pl
import pytest
from scripted_openai import ScriptedOpenAI

from neuron_assets.puzzles.evaluation import (
    COMMON_TOKENS,
    PuzzleFailures,
    candidate_explanations,
    common_tokens_explanation,
    explain_puzzles,
    rank_candidates,
    score_candidates,
    scorer_summary,
    simulate_candidates,
)
from neuron_assets.puzzles.puzzle_file import OUR_PUZZLES, PuzzleFormatError, load_puzzles

COLOURS = {
    "name": "colours",
    "explanation": "words for colours",
    "sentences": [["The", [" red", 10], " car"], ["A", " big", [" blue", 8], " sky"], ["No", " colour", " here"]],
    "false_explanations": ["words for vehicles", "articles"],
}


def _file(tmp_path, document, name="puzzles.json"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def test_our_puzzle_file_holds_at_least_twelve_puzzles_each_with_a_firing_token_and_false_explanations():
    puzzles = load_puzzles(OUR_PUZZLES)
    assert len(puzzles) >= 12
    assert len({p.name for p in puzzles}) == len(puzzles)
    for puzzle in puzzles:
        assert puzzle.false_explanations and puzzle.explanation not in puzzle.false_explanations
        assert any(a > 0 for sentence in puzzle.activations for a in sentence)
        assert any(a == 0 for sentence in puzzle.activations for a in sentence), f"{puzzle.name}: nothing is silent"


def test_the_19_puzzle_file_extends_ours_to_the_studys_shape():
    """19 puzzles of 6 sentences and 4-5 candidate explanations; our 14 come first, their
    sentences and false explanations kept as they are, with more after them."""
    ours = {p.name: p for p in load_puzzles(OUR_PUZZLES)}
    longer = load_puzzles(OUR_PUZZLES.with_name("neuron_puzzles_19.json"))
    assert len(longer) == 19 and len({p.name for p in longer}) == 19
    assert [p.name for p in longer[: len(ours)]] == list(ours)
    for puzzle in longer:
        assert len(puzzle.sentences) == 6 and 4 <= 1 + len(puzzle.false_explanations) <= 5, puzzle.name
        assert puzzle.explanation not in puzzle.false_explanations
        assert any(a > 0 for sentence in puzzle.activations for a in sentence)
        if puzzle.name in ours:
            old = ours[puzzle.name]
            assert puzzle.explanation == old.explanation
            assert puzzle.sentences[: len(old.sentences)] == old.sentences
            assert puzzle.false_explanations[: len(old.false_explanations)] == old.false_explanations


def test_a_puzzle_reads_plain_tokens_as_zero_and_pairs_as_their_activation(tmp_path):
    (puzzle,) = load_puzzles(_file(tmp_path, {"colours": COLOURS}))
    assert puzzle.tokens[0] == ["The", " red", " car"]
    assert puzzle.activations[0] == [0.0, 10.0, 0.0]
    assert puzzle.false_explanations == ("words for vehicles", "articles")


@pytest.mark.parametrize(
    "document, message",
    [
        ("{not json", "is not JSON"),
        ([COLOURS], "must hold a non-empty object"),
        ({}, "must hold a non-empty object"),
        ({"colours": {k: v for k, v in COLOURS.items() if k != "sentences"}}, "puzzle 'colours' lacks sentences"),
        ({"colours": {**COLOURS, "false_explanations": []}}, "'false_explanations' must be a non-empty list"),
        (
            {"colours": {**COLOURS, "sentences": [["a", ["b", "high"]]]}},
            r"sentence 0, item 1: \['b', 'high'\] is neither",
        ),
        ({"colours": {**COLOURS, "sentences": [["a", ["b", 1, 2]]]}}, "item 1: .* is neither"),
        ({"colours": {**COLOURS, "sentences": [["a", "b"], ["c"]]}}, "has no token with a non-zero activation"),
        ({"colours": {**COLOURS, "sentences": [[]]}}, "sentence 0 must be a non-empty list"),
    ],
)
def test_a_file_not_in_the_study_format_is_refused_naming_the_puzzle_and_the_item(tmp_path, document, message):
    with pytest.raises(PuzzleFormatError, match=message):
        load_puzzles(_file(tmp_path, document))


def test_a_missing_puzzle_file_is_named(tmp_path):
    with pytest.raises(PuzzleFormatError, match="does not exist"):
        load_puzzles(tmp_path / "nowhere.json")


def test_the_common_tokens_candidate_names_the_three_tokens_that_fire_most_often():
    tokens = [["a", " red", " red", " blue"], ["x", " green", " blue", " pink"]]
    values = [[0, 5, 5, 1], [0, 9, 1, 2]]
    # red and blue fire twice; green (9) beats pink (2) on summed activation; "a" and "x" never fire
    assert common_tokens_explanation(tokens, values) == 'the tokens "red", "blue", "green"'


def test_candidates_are_the_true_explanation_the_false_ones_and_the_common_tokens(tmp_path):
    puzzles = load_puzzles(_file(tmp_path, {"colours": COLOURS}))
    frame = candidate_explanations(puzzles)
    assert frame["candidate_kind"].to_list() == ["true", "false", "false", COMMON_TOKENS]
    assert frame["explanation"][0] == "words for colours"
    assert frame["explanation"][3] == 'the tokens "red", "blue"'


def test_ties_and_undefined_scores_count_against_a_candidate():
    scored = pl.DataFrame(
        {
            "puzzle": ["p"] * 3 + ["q"] * 3,
            "candidate": [0, 1, 2] * 2,
            "candidate_kind": ["true", "false", "false"] * 2,
            "correlation": [0.5, 0.5, 0.1, None, None, None],
        }
    )
    ranked = rank_candidates(scored)
    assert ranked["rank"].to_list() == [2, 2, 3, 3, 3, 3]
    summary = scorer_summary(ranked)
    assert (summary["top_1"], summary["top_2"], summary["puzzles"]) == (0, 1, 2)
    assert summary["chance_top_1"] == pytest.approx(2 / 3) and summary["chance_top_2"] == pytest.approx(4 / 3)


def _oracle_json_client(puzzles, calls):
    """A json-mode simulator that knows the true activations and reads a false explanation as 'nothing fires'."""
    truths = {(p.explanation, tuple(t)): a for p in puzzles for t, a in zip(p.tokens, p.activations, strict=True)}

    def create(**request):
        question = request["messages"][-1]["content"]
        explanation = question.split("find ", 1)[1].split(".\nTokens", 1)[0]
        tokens = json.loads(question.split("): ", 1)[1])
        calls.append(explanation)
        if explanation == "broken":
            return {"choices": [{"message": {"content": "no idea"}}], "usage": {"prompt_tokens": 9}}
        values = truths.get((explanation, tuple(tokens)))
        if values is None:  # a wrong explanation: fires on the first token of every sentence
            values = [10] + [0] * (len(tokens) - 1)
        return {
            "choices": [{"message": {"content": json.dumps([round(v) for v in values])}}],
            "usage": {"prompt_tokens": 9},
        }

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))


def test_the_chance_of_ranking_true_explanations_first_by_luck_is_the_poisson_binomial_tail():
    from neuron_assets.puzzles.evaluation import chance_of_at_least

    # two puzzles of 4 and 2 candidates: both first by luck 1/4 x 1/2; at least one 1 - 3/4 x 1/2
    assert chance_of_at_least(2, [0.25, 0.5]) == pytest.approx(0.125)
    assert chance_of_at_least(1, [0.25, 0.5]) == pytest.approx(0.625)
    assert chance_of_at_least(0, [0.25, 0.5]) == pytest.approx(1.0)
    # 19 puzzles of 5 candidates: 8 or more first by luck has the binomial tail P(X >= 8) = 0.0233
    assert chance_of_at_least(8, [0.2] * 19) == pytest.approx(0.02328, abs=1e-5)


def test_the_scorer_test_ranks_an_oracle_simulators_true_explanation_first(tmp_path):
    animals = {
        "name": "animals",
        "explanation": "animals",
        "sentences": [["A", [" fox", 10]], ["The", " car"], ["Two", [" cats", 9], " slept"]],
        "false_explanations": ["vehicles"],
    }
    puzzles = load_puzzles(_file(tmp_path, {"colours": COLOURS, "animals": animals}))
    candidates = candidate_explanations(puzzles)
    calls = []
    simulations = simulate_candidates(
        _oracle_json_client(puzzles, calls), "oracle", puzzles, candidates, mode="json", ten_handling=None
    )
    assert len(calls) == len(simulations) == 4 * 3 + 3 * 3  # every candidate on every sentence
    assert set(simulations["simulation_mode"]) == {"json"}
    ranked = rank_candidates(candidates.join(score_candidates(simulations), on=["puzzle", "candidate"]))
    true = ranked.filter(pl.col("candidate_kind") == "true")
    assert true["correlation"].to_list() == pytest.approx([1.0, 1.0], abs=0.02)
    assert true["rank"].to_list() == [1, 1]
    summary = scorer_summary(ranked)
    assert (summary["top_1"], summary["top_2"]) == (2, 2)
    assert summary["chance_top_1"] == pytest.approx(1 / 4 + 1 / 3)


def test_a_puzzle_whose_simulation_fails_is_named_by_its_name(tmp_path):
    puzzles = load_puzzles(_file(tmp_path, {"colours": {**COLOURS, "explanation": "broken"}}))
    with pytest.raises(PuzzleFailures, match="puzzle 'colours'"):
        simulate_candidates(
            _oracle_json_client(puzzles, []),
            "oracle",
            puzzles,
            candidate_explanations(puzzles),
            mode="json",
            ten_handling=None,
        )


def test_the_explainer_test_shows_every_sentence_and_names_a_puzzle_it_could_not_explain(tmp_path):
    puzzles = load_puzzles(_file(tmp_path, {"colours": COLOURS}))
    seen = []

    def create(**request):
        seen.append(request["messages"][-1]["content"])
        return {"choices": [{"message": {"content": "colour words such as red and blue."}}]}

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    frame = explain_puzzles(client, "m", puzzles)
    assert frame["explanation"].to_list() == ["colour words such as red and blue"]
    assert all(word in seen[0] for word in ("red", "blue", "colour"))  # all three sentences were shown

    def empty(**request):
        return {"choices": [{"message": {"content": ""}}]}

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=empty)))
    with pytest.raises(PuzzleFailures, match="puzzle 'colours'"):
        explain_puzzles(client, "m", puzzles)


def test_the_puzzle_assets_store_ranks_and_the_explainers_scores_and_the_views_summarize_them(tmp_path, monkeypatch):
    import dagster as dg
    import duckdb

    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
    from neuron_assets.settings import Settings
    from neuron_assets.storage.store import ResultStore

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    path = _file(tmp_path, {"colours": COLOURS})
    oracle = _oracle_json_client(load_puzzles(path), [])

    def answer(body):  # simulator requests to the oracle; explainer requests get a wrong explanation
        if body["messages"][-1]["content"].startswith("Explanation: "):
            return oracle.chat.completions.create(**body)["choices"][0]["message"]["content"]
        return "colour words such as red."

    with ScriptedOpenAI(answer) as server:
        settings = Settings((PACKAGED_SUBJECT_MODEL,), tmp_path / "data", server.url, "explainer", "simulator")
        job = build_definitions(settings, timeout_s=10, max_attempts=1).resolve_implicit_global_asset_job_def()
        run_config = {"ops": {"puzzle_scores": {"config": {"path": str(path)}}}}
        selection = [dg.AssetKey("puzzle_scores"), dg.AssetKey("puzzle_explanations")]
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(run_config=run_config, instance=instance, asset_selection=selection)
            assert result.success
            chat_calls = server.calls.count("/v1/chat/completions")
            bad = job.execute_in_process(
                run_config={"ops": {"puzzle_scores": {"config": {"path": str(tmp_path / "none.json")}}}},
                instance=instance,
                asset_selection=selection[:1],
                raise_on_error=False,
            )
            assert not bad.success and "none.json does not exist" in str(bad.all_events)
            again = job.execute_in_process(run_config=run_config, instance=instance, asset_selection=selection)
            # every answer came from the cache (only the refused completions probe is asked again)
            assert again.success and server.calls.count("/v1/chat/completions") == chat_calls
    store = ResultStore(tmp_path / "data")
    scores = store.read("puzzle_scores")
    assert len(scores) == 4 and scores.filter(pl.col("candidate_kind") == "true")["rank"].to_list() == [1]
    assert set(scores["simulation_mode"]) == {"json"}
    with duckdb.connect(str(store.database), read_only=True) as db:
        summary = db.sql("SELECT n_puzzles, top_1, top_2, chance_top_1 FROM puzzle_scorer_summary").fetchall()
        explained = db.sql(
            "SELECT explanation, true_correlation, matches_true_score FROM puzzle_explainer_results"
        ).fetchall()
    assert summary == [(1, 1, 1, 0.25)]
    from neuron_assets.storage.store import sql_statements

    (example,) = [s for s in sql_statements("examples.sql") if "puzzle_scorer_summary" in s]
    with duckdb.connect(str(store.database), read_only=True) as db:
        assert len(db.sql(example).fetchall()) == 1
    assert explained[0][0] == "colour words such as red" and explained[0][1] == pytest.approx(1.0, abs=0.02)
    assert explained[0][2] is False  # a wrong explanation, simulated as firing on first tokens, scores below the truth


def test_a_puzzle_with_too_few_silent_sentences_borrows_other_puzzles_silent_ones_by_a_seeded_rule(tmp_path):
    from neuron_assets.puzzles.classifier_test import puzzle_examples

    animals = {
        "name": "animals",
        "explanation": "animals",
        "sentences": [["A", [" fox", 10]], ["Two", [" cats", 9]], ["No", " pets"]],
        "false_explanations": ["vehicles"],
    }
    quiet = {
        "name": "quiet",
        "explanation": "x",
        "sentences": [["a"], ["b"], ["c", ["d", 5]]],
        "false_explanations": ["y"],
    }
    puzzles = load_puzzles(_file(tmp_path, {"colours": COLOURS, "animals": animals, "quiet": quiet}))
    examples = puzzle_examples(puzzles, seed=0)
    colours, pets = examples[0, 0], examples[0, 1]
    # colours: 2 firing sentences, 1 silent of its own and 1 borrowed; animals: 2 firing, 1 own, 1 borrowed
    assert sorted(colours.filter("activating")["excerpt_id"].to_list()) == [0, 1]
    assert sorted(colours.filter(~pl.col("activating"))["excerpt_id"].to_list())[0] == 2
    for frame, own in ((colours, 0), (pets, 1)):
        silent = frame.filter(~pl.col("activating"))
        assert len(silent) == len(frame) - len(silent) == 2
        borrowed = [i for i in silent["excerpt_id"].to_list() if i // 1000 != own]
        assert len(borrowed) == 1 and borrowed[0] in (1002, 2000, 2001, 2) and borrowed[0] // 1000 != own
        assert set(silent["example_kind"]) == {"non_activating"}
        assert all(max(v) == 0 for v in silent["activations"].to_list())
    assert puzzle_examples(puzzles, seed=0)[0, 0].equals(colours)  # the same rule gives the same examples


def test_detection_ranks_an_oracles_true_explanation_first_through_the_puzzle_asset(tmp_path, monkeypatch):
    """The oracle answers detection right for a puzzle's true explanation (1 exactly on that
    puzzle's firing sentences) and 'all fire' for any other candidate: balanced accuracy 1
    against 0.5, so every true explanation ranks first."""
    import re

    import dagster as dg
    import duckdb

    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.prompts.classifiers import DETECTION_SYSTEM, excerpt_text
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
    from neuron_assets.settings import Settings
    from neuron_assets.storage.store import ResultStore

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    path = _file(tmp_path, OUR_PUZZLES.read_text(encoding="utf-8"))
    puzzles = load_puzzles(path)
    firing = {
        (p.explanation, excerpt_text(t)): max(a) > 0
        for p in puzzles
        for t, a in zip(p.tokens, p.activations, strict=True)
    }

    def answer(body):
        system, question = body["messages"][0]["content"], body["messages"][-1]["content"]
        assert system == DETECTION_SYSTEM, question
        explanation = question.split("find ", 1)[1].split(".\n\n", 1)[0]
        texts = re.findall(r"^Example \d+: (.*)$", question, flags=re.MULTILINE)
        return json.dumps(
            [
                int(firing.get((explanation, text), explanation not in {p.explanation for p in puzzles}))
                for text in texts
            ]
        )

    with ScriptedOpenAI(answer) as server:
        settings = Settings((PACKAGED_SUBJECT_MODEL,), tmp_path / "data", server.url, "explainer", "scorer")
        job = build_definitions(settings, timeout_s=10, max_attempts=1).resolve_implicit_global_asset_job_def()
        config = {"path": str(path), "scorers": ["detection"]}
        with dg.instance_for_test() as instance:
            result = job.execute_in_process(
                run_config={"ops": {"puzzle_scores": {"config": config}}},
                instance=instance,
                asset_selection=[dg.AssetKey("puzzle_scores")],
            )
    assert result.success
    metadata = result.asset_materializations_for_node("puzzle_scores")[0].metadata
    assert (
        metadata["detection_top_1"].value == len(puzzles) and "assumed silent" in metadata["borrowed_sentences"].value
    )
    store = ResultStore(tmp_path / "data")
    scores = store.read("puzzle_scores")
    assert set(scores["scorer"]) == {"detection"} and scores["correlation"].is_null().all()
    true = scores.filter(pl.col("candidate_kind") == "true")
    assert true["metric"].to_list() == [1.0] * len(puzzles) and true["rank"].to_list() == [1] * len(puzzles)
    assert set(scores.filter(pl.col("candidate_kind") != "true")["metric"]) == {0.5}
    with duckdb.connect(str(store.database), read_only=True) as db:
        summary = db.sql(
            "SELECT scorer, n_puzzles, top_1, mean_true_score, mean_other_score FROM puzzle_scorer_summary"
        )
        assert summary.fetchall() == [("detection", len(puzzles), len(puzzles), 1.0, 0.5)]
