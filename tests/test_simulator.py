import json
import math

import pytest

from neuron_assets.prompts.templates import simulator_prompt
from neuron_assets.simulators.expected_value import expected_value
from neuron_assets.simulators.modes.all_at_once import placeholder_distributions
from neuron_assets.simulators.modes.base import SimulationError


def read_placeholders(prompt, offsets, tops, distribution_shift):
    return [expected_value(d) for d in placeholder_distributions(prompt, offsets, tops, distribution_shift)]


def lp(p):
    return math.log(p)


def test_expected_value_weights_each_digit_by_its_probability():
    assert expected_value({"0": lp(0.5), "10": lp(0.5)}) == pytest.approx(5.0)


def test_expected_value_renormalizes_over_listed_digits_and_ignores_other_tokens():
    value = expected_value({"2": lp(0.2), "4": lp(0.2), "\n": lp(0.5), "unknown": lp(0.1)})
    assert value == pytest.approx(3.0)


def test_expected_value_merges_digits_written_with_and_without_whitespace():
    assert expected_value({" 8": lp(0.3), "8": lp(0.1), "0": lp(0.4)}) == pytest.approx(8 * 0.4 / 0.8)


def test_expected_value_is_none_when_no_digit_is_listed():
    assert expected_value({"\n": lp(0.9)}) is None
    assert expected_value(None) is None


def test_numbers_outside_zero_to_ten_are_not_digits():
    assert expected_value({"11": lp(0.9), "-1": lp(0.05), "3": lp(0.05)}) == pytest.approx(3.0)


def _echo(prompt_text, pieces, distributions):
    """Offsets and top_logprobs for the given tokenization of prompt_text."""
    assert "".join(pieces) == prompt_text
    offsets, at = [], 0
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    return offsets, distributions


def test_placeholders_read_the_distribution_of_the_token_at_their_offset():
    prompt = simulator_prompt("x", ["a", "b"])
    first, second = prompt.placeholder_offsets
    pieces = [prompt.text[:first], "unknown", prompt.text[first + 7 : second], "unknown", prompt.text[second + 7 :]]
    dists = [None, {"3": 0.0}, {"x": 0.0}, {"7": 0.0}, None]
    offsets, tops = _echo(prompt.text, pieces, dists)
    assert read_placeholders(prompt, offsets, tops, distribution_shift=0) == [3.0, 7.0]


def test_a_shift_of_minus_one_reads_distributions_filed_one_token_early():
    prompt = simulator_prompt("x", ["a"])
    (first,) = prompt.placeholder_offsets
    pieces = [prompt.text[:first], "unknown", prompt.text[first + 7 :]]
    offsets, tops = _echo(prompt.text, pieces, [{"6": 0.0}, {"1": 0.0}, None])
    assert read_placeholders(prompt, offsets, tops, distribution_shift=-1) == [6.0]


def test_mismatched_echo_lengths_are_an_error():
    prompt = simulator_prompt("x", ["a"])
    with pytest.raises(SimulationError, match="different lengths"):
        read_placeholders(prompt, [0, 1], [None], distribution_shift=0)


def test_a_backend_without_prompt_logprobs_is_named_in_the_error():
    from types import SimpleNamespace

    from neuron_assets.simulators.modes.all_at_once import simulate

    reply = {"choices": [{"text": "", "logprobs": None}], "usage": None}
    client = SimpleNamespace(completions=SimpleNamespace(create=lambda **_: reply))
    with pytest.raises(SimulationError, match="model 'gpt-x' returned no prompt log-probabilities"):
        simulate(client, "gpt-x", "cats", ["a"], distribution_shift=0)


def test_scoring_excerpts_are_scoring_pool_top_ranks_and_random_ranks():
    import polars as pl

    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts

    records = pl.DataFrame(
        {
            "layer": [0] * 6,
            "neuron": [1] * 6,
            "pool": ["explanation", "scoring", "scoring", "scoring", "scoring", "scoring"],
            "kind": ["top", "top", "top", "random", "random", "quantile"],
            "rank": [0, 0, 1, 0, 1, 0],
            "excerpt_id": [1, 2, 3, 4, 5, 6],
            "activations": [[0.0]] * 6,
        }
    )
    chosen = scoring_excerpts(records, n_top=1, n_random=2)
    assert sorted(zip(chosen["excerpt_id"], chosen["excerpt_kind"], strict=True)) == [
        (2, "top"),
        (4, "random"),
        (5, "random"),
    ]


def test_a_random_excerpt_that_is_also_a_top_one_is_scored_once_and_the_next_random_one_taken():
    import polars as pl

    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts

    records = pl.DataFrame(
        {
            "layer": [0] * 5,
            "neuron": [1] * 5,
            "pool": ["scoring"] * 5,
            "kind": ["top", "random", "random", "random", "random"],
            "rank": [0, 0, 1, 2, 3],
            "excerpt_id": [7, 8, 7, 9, 10],
            "activations": [[0.0]] * 5,
        }
    )
    chosen = scoring_excerpts(records, n_top=1, n_random=2)
    assert sorted(zip(chosen["excerpt_id"], chosen["excerpt_kind"], strict=True)) == [
        (7, "top"),
        (8, "random"),
        (9, "random"),
    ]


def test_calibration_excerpts_are_the_next_top_and_random_ones_and_never_scored():
    import polars as pl

    from neuron_assets.scorers.scoring import select_scoring_excerpts

    records = pl.DataFrame(
        {
            "layer": [0] * 8,
            "neuron": [1] * 8,
            "pool": ["scoring"] * 8,
            "kind": ["top", "top", "top", "random", "random", "random", "random", "random"],
            "rank": [0, 1, 2, 0, 1, 2, 3, 4],
            "excerpt_id": [2, 3, 4, 3, 5, 6, 7, 8],
            "activations": [[0.0]] * 8,
        }
    )
    chosen = select_scoring_excerpts(records, n_top=1, n_random=2, n_calibration_top=1, n_calibration_random=2)
    kinds = dict(zip(chosen["excerpt_id"], chosen["excerpt_kind"], strict=True))
    # excerpt 3 is a calibration top excerpt, so it is not also taken as a random one
    assert kinds == {
        2: "top",
        5: "random",
        6: "random",
        3: "calibration_top",
        7: "calibration_random",
        8: "calibration_random",
    }
    with pytest.raises(ValueError, match="3 further top scoring-pool \\(calibration\\) excerpts per neuron but only 2"):
        select_scoring_excerpts(records, n_top=1, n_random=2, n_calibration_top=3)


def test_a_neuron_whose_simulation_fails_is_named_and_the_others_still_run():
    from types import SimpleNamespace

    import polars as pl

    from neuron_assets.llm.errors import LLMError
    from neuron_assets.llm.fan_out import NeuronFailures
    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts
    from neuron_assets.simulators.neurons import simulate_neurons

    prompts = []

    def create(**request):
        prompts.append(request["prompt"])
        if "find broken." in request["prompt"]:
            raise LLMError("still failing after 5 attempts: 503")
        return _echo_of_threes(request["prompt"])

    client = SimpleNamespace(completions=SimpleNamespace(create=create))
    explanations = pl.DataFrame(
        {"layer": [0, 0], "neuron": [1, 2], "sample": [0, 0], "explanation": ["broken", "fine"]}
    )
    records = pl.DataFrame(
        {
            "layer": [0, 0, 0, 0],
            "neuron": [1, 1, 2, 2],
            "pool": ["scoring"] * 4,
            "kind": ["top", "top", "top", "top"],
            "rank": [0, 1, 0, 1],
            "excerpt_id": [5, 6, 5, 6],
            "activations": [[1.0]] * 4,
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [5, 6], "tokens": [["a"], ["b"]]})
    with pytest.raises(NeuronFailures) as failure:
        simulate_neurons(client, "m", _own(explanations), scoring_excerpts(records, 2, 0), excerpts)
    assert list(failure.value.failures) == [(0, 1)]
    assert "503" in str(failure.value)
    assert sum("find fine." in p for p in prompts) == 2  # both excerpts of neuron 2 were simulated
    assert sum("find broken." in p for p in prompts) == 1  # neuron 1 stopped at its first failure


def test_asking_to_score_on_more_excerpts_than_were_recorded_is_an_error():
    import polars as pl

    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts

    records = pl.DataFrame(
        {
            "layer": [0, 0],
            "neuron": [1, 1],
            "pool": ["scoring", "scoring"],
            "kind": ["top", "random"],
            "rank": [0, 0],
            "excerpt_id": [2, 4],
            "activations": [[0.0]] * 2,
        }
    )
    with pytest.raises(ValueError, match="scoring needs 3 random excerpts per neuron but only 1 were recorded"):
        scoring_excerpts(records, n_top=1, n_random=3)
    with pytest.raises(ValueError, match="scoring needs 2 top scoring-pool excerpts per neuron but only 1"):
        scoring_excerpts(records, n_top=2, n_random=1)


@pytest.mark.parametrize(
    "reply, expected, misaligned",
    [
        ("[0, 3, 10]", [0.0, 3.0, 10.0], 0),
        ("Sure! [0, 12, -1] hope that helps", [0.0, 10.0, 0.0], 0),
        ("[1, 2]", [1.0, 2.0, None], 1),
        ("[1, 2, 3, 4, 5]", [1.0, 2.0, 3.0], 2),
        ('[1, "two", null]', [1.0, None, None], 0),
    ],
)
def test_json_replies_are_clipped_aligned_and_their_gaps_counted(reply, expected, misaligned):
    from neuron_assets.simulators.modes.json_array import parse_json_activations

    assert parse_json_activations(reply, 3) == (expected, misaligned)


@pytest.mark.parametrize("reply", ["zero, three, ten", "[0, 3,", "{}", ""])
def test_a_reply_without_a_json_array_is_a_simulation_error(reply):
    from neuron_assets.simulators.modes.json_array import parse_json_activations

    with pytest.raises(SimulationError, match="no JSON array"):
        parse_json_activations(reply, 3)


@pytest.mark.parametrize(
    "schema_format, field",
    [
        ("json_schema", {"type": "json_schema", "json_schema": {"name": "activations", "schema": "SCHEMA"}}),
        ("json_object", {"type": "json_object", "schema": "SCHEMA"}),
        ("none", None),
    ],
)
def test_the_json_reply_is_held_to_one_integer_per_token_in_the_form_the_backend_takes(schema_format, field):
    from types import SimpleNamespace

    from neuron_assets.simulators.modes.json_array import activations_schema, simulate_json

    sent = []

    def create(**request):
        sent.append(request)
        return {"choices": [{"message": {"content": "[4, 0]"}}], "usage": {"prompt_tokens": 50}}

    client = SimpleNamespace(
        chat=SimpleNamespace(completions=SimpleNamespace(create=create)), json_schema_format=schema_format
    )
    assert simulate_json(client, "m", "x", ["a", "b"]).expected == [4.0, 0.0]
    schema = activations_schema(2)
    assert schema == {
        "type": "array",
        "items": {"type": "integer", "enum": list(range(11))},
        "minItems": 2,
        "maxItems": 2,
    }
    expected = None if field is None else json.loads(json.dumps(field).replace('"SCHEMA"', json.dumps(schema)))
    assert sent[0].get("response_format") == expected


def test_an_unknown_json_schema_format_is_refused_naming_the_known_ones():
    from neuron_assets.llm.client import CachingClient

    with pytest.raises(ValueError, match=r"json_schema_format 'grammar' is not one of \['json_schema', 'json_object'"):
        CachingClient(object(), "b", None, json_schema_format="grammar")


def test_json_mode_is_recorded_with_each_simulation():
    from types import SimpleNamespace

    import polars as pl

    from neuron_assets.prompts.templates import JSON_SIMULATOR_PROMPT_VERSION
    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts
    from neuron_assets.simulators.neurons import simulate_neurons

    def create(**request):
        return {"choices": [{"message": {"content": "[4]"}}], "usage": {"prompt_tokens": 50}}

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    explanations = pl.DataFrame({"layer": [0], "neuron": [1], "sample": [0], "explanation": ["x"]})
    records = pl.DataFrame(
        {
            "layer": [0],
            "neuron": [1],
            "pool": ["scoring"],
            "kind": ["top"],
            "rank": [0],
            "excerpt_id": [5],
            "activations": [[1.0, 0.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [5], "tokens": [["a", "b"]]})
    row = simulate_neurons(client, "m", _own(explanations), scoring_excerpts(records, 1, 0), excerpts, mode="json").row(
        0, named=True
    )
    assert row["simulation_mode"] == "json" and row["prompt_version"] == JSON_SIMULATOR_PROMPT_VERSION
    assert row["simulated"] == [4.0, None] and row["n_unsimulated"] == 1 and row["n_misaligned"] == 1
    with pytest.raises(ValueError, match="simulation mode 'magic' is not one of"):
        simulate_neurons(client, "m", _own(explanations), scoring_excerpts(records, 1, 0), excerpts, mode="magic")


def _written(text_pieces, value_dists):
    """Generated tokens: each piece with a distribution; digits get the next one from value_dists."""
    dists = iter(value_dists)
    return [(piece, next(dists) if piece.strip().isdigit() else {piece: 0.0}) for piece in text_pieces]


def _listing_pieces(lines):
    pieces = ["<start>", "\n"]
    for name, value in lines:
        pieces += [name, "\t", value, "\n"]
    return pieces + ["<end>"]


def test_a_written_listing_is_read_at_the_token_after_each_tab():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = _written(_listing_pieces([(" a", "0"), (" b", "3")]), [{"0": lp(0.5), "10": lp(0.5)}, {"3": 0.0}])
    assert read_written_listing(written, [" a", " b"]) == ([5.0, 3.0], 0)


def test_merged_lines_leave_their_tokens_unsimulated_and_counted():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = _written(_listing_pieces([(" New York", "7"), (" city", "1")]), [{"7": 0.0}, {"1": 0.0}])
    assert read_written_listing(written, [" New", " York", " city"]) == ([None, None, 1.0], 2)


def test_missing_and_extra_lines_are_counted_and_the_rest_still_line_up():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = _written(
        _listing_pieces([(" a", "1"), (" c", "3"), (" extra", "9")]), [{"1": 0.0}, {"3": 0.0}, {"9": 0.0}]
    )
    assert read_written_listing(written, [" a", " b", " c"]) == ([1.0, None, 3.0], 2)


def test_a_listing_cut_off_after_a_tab_leaves_that_token_and_the_rest_unsimulated():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = _written(["<start>", "\n", " a", "\t", "4", "\n", " b", "\t"], [{"4": 0.0}])
    assert read_written_listing(written, [" a", " b", " c"]) == ([4.0, None, None], 1)


def test_a_reply_that_ignores_the_format_simulates_nothing_and_counts_every_token():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = _written(["I", " cannot", " help", " with", " that", "."], [])
    assert read_written_listing(written, [" a", " b"]) == ([None, None], 2)


def _probe_client(completions, chat):
    from types import SimpleNamespace

    return SimpleNamespace(
        completions=SimpleNamespace(create=completions), chat=SimpleNamespace(completions=SimpleNamespace(create=chat))
    )


def _refuse(**_):
    from neuron_assets.llm.errors import LLMError

    raise LLMError("refused (400): echo is not supported for this model", status=400)


def test_auto_mode_prefers_prompt_logprobs_then_chat_logprobs_then_json():
    from neuron_assets.simulators.probes import resolve_mode

    echo = {"choices": [{"text": "x", "logprobs": {"text_offset": [0, 1], "top_logprobs": [None, {"a": 0.0}]}}]}
    written = [{"token": "0", "top_logprobs": [{"token": "0", "logprob": 0.0}]}]
    chat = {"choices": [{"message": {"content": "0"}, "logprobs": {"content": written}}]}
    no_logprobs = {"choices": [{"message": {"content": "0"}, "logprobs": None}]}
    assert resolve_mode(_probe_client(lambda **_: echo, lambda **_: chat), "m", "auto") == "all_at_once"
    assert resolve_mode(_probe_client(_refuse, lambda **_: chat), "m", "auto") == "chat_logprobs"
    assert resolve_mode(_probe_client(_refuse, lambda **_: no_logprobs), "m", "auto") == "json"
    assert resolve_mode(_probe_client(_refuse, _refuse), "m", "one_at_a_time") == "one_at_a_time"


def test_auto_mode_raises_an_outage_or_a_bad_key_instead_of_downgrading():
    from neuron_assets.llm.errors import LLMError
    from neuron_assets.simulators.probes import resolve_mode

    def down(**_):
        raise LLMError("still failing after 5 attempts: 503")

    def bad_key(**_):
        raise LLMError("refused the request (401): invalid API key", status=401)

    with pytest.raises(LLMError, match="still failing"):
        resolve_mode(_probe_client(down, down), "m", "auto")
    with pytest.raises(LLMError, match="invalid API key"):
        resolve_mode(_probe_client(bad_key, bad_key), "m", "auto")
    with pytest.raises(ValueError, match="simulation mode 'fast' is not one of"):
        resolve_mode(_probe_client(down, down), "m", "fast")


def test_a_simulation_prompt_too_long_for_the_context_loses_few_shot_neurons_and_records_it():
    import polars as pl

    from neuron_assets.llm.errors import ContextLengthError
    from neuron_assets.prompts.templates import simulator_prompt
    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts
    from neuron_assets.simulators.neurons import simulate_neurons

    fits = len(simulator_prompt("x", ["a", "b"], n_fewshot=1).text)
    prompts = []

    def create(**request):
        prompts.append(request["prompt"])
        if len(request["prompt"]) > fits:
            raise ContextLengthError("maximum context length exceeded")
        return _echo_of_threes(request["prompt"])

    from types import SimpleNamespace

    client = SimpleNamespace(completions=SimpleNamespace(create=create))
    explanations = pl.DataFrame({"layer": [0], "neuron": [1], "sample": [0], "explanation": ["x"]})
    records = pl.DataFrame(
        {
            "layer": [0, 0],
            "neuron": [1, 1],
            "pool": ["scoring"] * 2,
            "kind": ["top"] * 2,
            "rank": [0, 1],
            "excerpt_id": [5, 6],
            "activations": [[1.0, 0.0]] * 2,
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [5, 6], "tokens": [["a", "b"], ["c", "d"]]})
    frame = simulate_neurons(
        client, "m", _own(explanations), scoring_excerpts(records, 2, 0), excerpts, mode="all_at_once"
    )
    assert frame["prompt_shortening"].to_list() == ["dropped 1 of 2 few-shot neurons to fit the backend's context"] * 2
    assert frame["simulated"].to_list() == [[3.0, 3.0]] * 2
    assert len(prompts) == 3  # the second excerpt starts at the level that fitted


def _own(explanations):
    """Explanations as the simulations asset passes them: each neuron's own, method 'explanation'."""
    import polars as pl

    return explanations.with_columns(method=pl.lit("explanation"), explanation_neuron=pl.col("neuron"))


def _echo_of_threes(prompt):
    """An echo whose every token is one character, each predicted by a distribution on "3"."""
    return {
        "usage": {"prompt_tokens": len(prompt)},
        "choices": [
            {
                "text": prompt,
                "logprobs": {"text_offset": list(range(len(prompt))), "top_logprobs": [{"3": 0.0}] * len(prompt)},
            }
        ],
    }


def test_an_echo_without_a_single_digit_at_the_placeholders_is_an_error_not_a_silent_blank():
    from types import SimpleNamespace

    from neuron_assets.simulators.modes.all_at_once import simulate

    def words_only(**request):
        reply = _echo_of_threes(request["prompt"])
        logprobs = reply["choices"][0]["logprobs"]
        logprobs["top_logprobs"] = [{"three": 0.0}] * len(logprobs["top_logprobs"])
        return reply

    client = SimpleNamespace(completions=SimpleNamespace(create=words_only))
    with pytest.raises(SimulationError, match="no activation could be read for any of the 2 tokens"):
        simulate(client, "m", "x", ["a", "b"], distribution_shift=0)


def test_a_truncated_echo_is_an_error_not_a_misread_distribution():
    from types import SimpleNamespace

    from neuron_assets.simulators.modes.all_at_once import simulate

    def truncated(**request):
        return _echo_of_threes(request["prompt"][: len(request["prompt"]) // 2])

    client = SimpleNamespace(completions=SimpleNamespace(create=truncated))
    with pytest.raises(SimulationError, match="truncated"):
        simulate(client, "m", "x", ["a", "b"], distribution_shift=0)


def test_a_one_followed_by_zero_is_read_as_ten_on_tokenizers_that_split_it():
    from neuron_assets.simulators.expected_value import expected_value

    always_one = {"1": lp(1.0)}
    assert expected_value(always_one) == pytest.approx(1.0)  # the naive read loses the 10
    assert expected_value(always_one, zero_after_one=0.98) == pytest.approx(9.82)
    assert expected_value({"0": lp(0.5), "1": lp(0.5)}, zero_after_one=1.0) == pytest.approx(5.0)


def test_on_a_tokenizer_without_ten_all_at_once_asks_on_a_zero_to_nine_scale_and_maps_it_back():
    from types import SimpleNamespace

    from neuron_assets.simulators.modes.all_at_once import simulate

    prompts = []

    def create(**request):
        prompts.append(prompt := request["prompt"])
        offsets = list(range(len(prompt)))
        tops = [{"0": lp(1.0)}] * len(prompt)
        start = prompt.rindex("<start>")
        tops[prompt.index("a\t", start) + 2] = {"9": lp(1.0)}  # the top of the scale after a's tab
        return {"choices": [{"text": prompt, "logprobs": {"text_offset": offsets, "top_logprobs": tops}}]}

    client = SimpleNamespace(completions=SimpleNamespace(create=create))
    result = simulate(client, "m", "x", ["a", "b"], distribution_shift=0, ten_handling="top_nine")
    assert result.expected == [pytest.approx(10.0), 0.0]  # one call, and the top reads as 10
    assert len(prompts) == 1 and "activations run from 0 to 9" in prompts[0]
    fewshot_values = {line.rsplit("\t", 1)[1] for line in prompts[0].split("\n") if "\t" in line}
    assert "10" not in fewshot_values and "9" in fewshot_values  # every value one token
    assert simulate(client, "m", "x", ["a", "b"], distribution_shift=0).expected == [9.0, 0.0]
    assert "activations run from 0 to 10" in prompts[-1]


def test_a_ten_on_the_zero_to_nine_scale_is_not_a_digit_and_a_second_read_needs_the_full_scale():
    assert expected_value({"9": lp(0.5), "10": lp(0.5)}, top=9) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="0..10 scale"):
        expected_value({"1": lp(1.0)}, zero_after_one=0.5, top=9)


def test_the_chat_listing_reads_a_written_one_zero_as_ten():
    from neuron_assets.simulators.modes.chat_logprobs import read_written_listing

    written = [
        ("<start>", None),
        ("\n", None),
        ("a", None),
        ("\t", None),
        ("1", {"1": lp(1.0)}),
        ("0", {"0": lp(0.95), "\n": lp(0.05)}),
        ("\n", None),
        ("<end>", None),
    ]
    assert read_written_listing(written, ["a"], "second_read")[0] == [pytest.approx(9.55)]
    assert read_written_listing(written, ["a"], "single_token")[0] == [1.0]


@pytest.mark.parametrize("pieces, expected", [(["10"], "single_token"), (["1", "0"], "top_nine")])
def test_the_tokenizer_probe_reads_how_the_echo_wrote_ten(pieces, expected):
    from types import SimpleNamespace

    from neuron_assets.simulators.probes import TEN_PROBE_TEXT, probe_ten_handling

    start = TEN_PROBE_TEXT.index("10")
    tokens = [TEN_PROBE_TEXT[:start], *pieces, TEN_PROBE_TEXT[start + 2 :]]
    offsets = [0, start, *([start + 1] if len(pieces) == 2 else []), start + 2]
    reply = {"tokens": tokens, "text_offset": offsets}
    client = SimpleNamespace(completions=SimpleNamespace(create=lambda **_: {"choices": [{"logprobs": reply}]}))
    assert probe_ten_handling(client, "m", "all_at_once") == expected


def test_a_chat_probe_that_shows_no_ten_is_an_error_naming_what_came_back():
    from types import SimpleNamespace

    from neuron_assets.llm.errors import LLMError
    from neuron_assets.simulators.probes import TokenizerProbeError, probe_ten_handling

    content = [{"token": "ten", "logprob": 0.0}]
    reply = {"choices": [{"logprobs": {"content": content}}]}
    client = SimpleNamespace(
        completions=SimpleNamespace(create=_refuse),  # a chat-only backend, as OpenAI's chat models
        chat=SimpleNamespace(completions=SimpleNamespace(create=lambda **_: reply)),
    )
    with pytest.raises(
        TokenizerProbeError, match=r"cannot tell how 'm' writes 10: the chat probe returned tokens \['ten'\]"
    ):
        probe_ten_handling(client, "m", "chat_logprobs")
    content[:] = [{"token": "1", "logprob": 0.0}, {"token": "0", "logprob": 0.0}]
    assert probe_ten_handling(client, "m", "chat_logprobs") == "second_read"
    content[:] = [{"token": "10", "logprob": 0.0}]
    assert probe_ten_handling(client, "m", "one_at_a_time") == "single_token"

    def down(**_):
        raise LLMError("still failing after 5 attempts: 503", status=503)

    with pytest.raises(LLMError, match="503"):  # not a capability answer: no fallback to the chat probe
        probe_ten_handling(_probe_client(down, lambda **_: reply), "m", "all_at_once")


def test_an_unknown_reading_of_ten_is_refused_naming_the_allowed_ones():
    from types import SimpleNamespace

    import polars as pl

    from neuron_assets.scorers.scoring import select_scoring_excerpts as scoring_excerpts
    from neuron_assets.simulators.modes.base import TenHandling
    from neuron_assets.simulators.neurons import simulate_neurons

    client = SimpleNamespace(completions=SimpleNamespace(create=lambda **request: _echo_of_threes(request["prompt"])))
    explanations = _own(pl.DataFrame({"layer": [0], "neuron": [1], "sample": [0], "explanation": ["x"]}))
    records = pl.DataFrame(
        {
            "layer": [0],
            "neuron": [1],
            "pool": ["scoring"],
            "kind": ["top"],
            "rank": [0],
            "excerpt_id": [5],
            "activations": [[1.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [5], "tokens": [["a"]]})
    allowed = r"\['second_read', 'single_token', 'top_nine', 'written'\]"
    with pytest.raises(ValueError, match=f"ten handling 'ten_tokens' is not one of {allowed}"):
        simulate_neurons(
            client, "m", explanations, scoring_excerpts(records, 1, 0), excerpts, ten_handling="ten_tokens"
        )
    with pytest.raises(ValueError, match="ten handling 'bogus' is not one of"):
        TenHandling("bogus")
    frame = simulate_neurons(
        client, "m", explanations, scoring_excerpts(records, 1, 0), excerpts, ten_handling="top_nine"
    )
    assert frame["ten_handling"].to_list() == ["top_nine"] and frame["simulation_mode"].to_list() == ["all_at_once"]


def test_the_mode_and_ten_names_are_the_strings_the_stored_tables_allow():
    from neuron_assets.simulators.modes.base import SimulationMode, TenHandling
    from neuron_assets.storage.schemas import Simulations

    columns = Simulations.to_schema().columns
    for column, names in (("simulation_mode", SimulationMode), ("ten_handling", TenHandling)):
        (isin,) = columns[column].checks
        assert sorted(isin.statistics["allowed_values"]) == sorted(name.value for name in names)
    assert TenHandling("top_nine") is TenHandling.TOP_NINE == "top_nine"
    assert repr(SimulationMode.JSON) == "'json'" and f"{SimulationMode.JSON}" == "json"


def test_the_probes_answer_plain_strings_because_dagster_metadata_refuses_enums():
    from neuron_assets.simulators.probes import probe_ten_handling, resolve_mode

    client = _probe_client(_refuse, _refuse)
    assert type(resolve_mode(client, "m", "json")) is str and type(probe_ten_handling(client, "m", "json")) is str


def test_each_mode_allows_only_its_own_readings_of_ten():
    from neuron_assets.simulators.modes import MODES

    assert {name: mode.ten_readings for name, mode in MODES.items()} == {
        "all_at_once": ("single_token", "top_nine"),
        "one_at_a_time": ("single_token", "second_read"),
        "chat_logprobs": ("single_token", "second_read"),
        "json": ("written",),
    }
    fits = r"\('single_token', 'top_nine'\)"
    with pytest.raises(ValueError, match=f"'second_read' does not fit mode 'all_at_once', which takes one of {fits}"):
        MODES["all_at_once"].reading_of_ten("second_read")
    assert MODES["json"].reading_of_ten("single_token") == "written"  # json reads written numbers, whatever it is told
    assert MODES["chat_logprobs"].reading_of_ten(None) == "single_token"
