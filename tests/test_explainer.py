from types import SimpleNamespace

import polars as pl
import pytest

from neuron_assets.explainers.explainer import explain, explain_neurons
from neuron_assets.llm.errors import LLMError
from neuron_assets.llm.fan_out import NeuronFailures
from neuron_assets.prompts.templates import EXPLAINER_PROMPT_VERSION, Record


class ScriptedChat:
    """Stands in for CachingClient: answers chat requests with the given texts, as JSON."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **request):
        self.requests.append(request)
        return {"choices": [{"message": {"content": self.replies.pop(0)}}]}


RECORDS = [Record(["a", "b"], [0.0, 1.0])]


def test_each_sample_is_one_chat_call_with_its_own_seed():
    client = ScriptedChat(["cats.", "dogs."])
    explanations = explain(client, "m", RECORDS, n_samples=2, temperature=0.7)
    assert [e.text for e in explanations] == ["cats", "dogs"]
    assert [r["seed"] for r in client.requests] == [0, 1000]
    assert all(r["temperature"] == 0.7 and r["model"] == "m" for r in client.requests)


def test_an_empty_reply_is_sampled_again():
    client = ScriptedChat(["", "commas."])
    assert [e.text for e in explain(client, "m", RECORDS)] == ["commas"]
    assert len(client.requests) == 2


def test_unparseable_replies_end_in_an_error_that_names_the_neuron_and_the_reply():
    client = ScriptedChat(["   ", ".", "the main thing this neuron does is find"])
    records = pl.DataFrame(
        {
            "layer": [3],
            "neuron": [42],
            "pool": ["explanation"],
            "kind": ["top"],
            "rank": [0],
            "excerpt_id": [7],
            "activations": [[0.0, 1.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [7], "tokens": [["a", "b"]]})
    with pytest.raises(NeuronFailures, match=r"layer 3 neuron 42: 3 replies from 'm' held no explanation"):
        explain_neurons(client, "m", records, excerpts, n_examples=1)


def test_explanation_rows_record_model_prompt_version_and_excerpts_shown():
    client = ScriptedChat(["vowels."])
    records = pl.DataFrame(
        {
            "layer": [0, 0, 0],
            "neuron": [1, 1, 1],
            "pool": ["explanation", "explanation", "scoring"],
            "kind": ["top", "top", "top"],
            "rank": [1, 0, 0],
            "excerpt_id": [8, 7, 9],
            "activations": [[0.0, 2.0], [1.0, 0.0], [5.0, 5.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [7, 8, 9], "tokens": [["a", "b"], ["c", "d"], ["e", "f"]]})
    row = explain_neurons(client, "m", records, excerpts, n_examples=2).row(0, named=True)
    assert row["explanation"] == "vowels" and row["excerpt_ids"] == [7, 8]
    assert row["explainer_model"] == "m" and row["prompt_version"] == EXPLAINER_PROMPT_VERSION
    shown = client.requests[0]["messages"][-1]["content"]
    assert "a\t5" in shown and "d\t10" in shown and "e\t" not in shown  # ranks 0,1 of the explanation pool only


def test_a_failing_neuron_is_reported_by_name_after_the_others_are_explained():
    class FailsForNeuronOne(ScriptedChat):
        def _create(self, **request):
            if "x\t10" in request["messages"][-1]["content"]:
                self.requests.append(request)
                raise LLMError("backend refused the request (400): context too long")
            return super()._create(**request)

    client = FailsForNeuronOne(["commas."])
    records = pl.DataFrame(
        {
            "layer": [0, 0],
            "neuron": [1, 2],
            "pool": ["explanation"] * 2,
            "kind": ["top"] * 2,
            "rank": [0, 0],
            "excerpt_id": [7, 8],
            "activations": [[1.0], [1.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [7, 8], "tokens": [["x"], ["y"]]})
    with pytest.raises(NeuronFailures) as failure:
        explain_neurons(client, "m", records, excerpts, n_examples=1)
    assert list(failure.value.failures) == [(0, 1)]
    assert "context too long" in str(failure.value)
    assert len(client.requests) == 2  # neuron 2 was still explained


def test_asking_to_show_more_excerpts_than_were_recorded_is_an_error():
    records = pl.DataFrame(
        {
            "layer": [0],
            "neuron": [1],
            "pool": ["explanation"],
            "kind": ["top"],
            "rank": [0],
            "excerpt_id": [7],
            "activations": [[1.0]],
        }
    )
    excerpts = pl.DataFrame({"excerpt_id": [7], "tokens": [["x"]]})
    with pytest.raises(ValueError, match="shown 5 top excerpts per neuron but only 1 were recorded"):
        explain_neurons(ScriptedChat([]), "m", records, excerpts, n_examples=5)


def _context_limited_client(max_chars):
    """A chat backend that refuses prompts longer than ``max_chars`` as too long for its context."""
    from types import SimpleNamespace

    from neuron_assets.llm.errors import ContextLengthError

    seen = []

    def create(**request):
        size = sum(len(m["content"]) for m in request["messages"])
        seen.append(size)
        if size > max_chars:
            raise ContextLengthError(f"maximum context length exceeded ({size} chars)")
        return {"choices": [{"message": {"content": "numbers"}}]}

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create))), seen


def test_a_prompt_too_long_for_the_context_drops_few_shot_neurons_then_excerpts_and_says_so():
    from neuron_assets.prompts.templates import Record, explainer_messages

    records = [Record([f" w{i}{j}" for j in range(30)], [float(j % 7) for j in range(30)]) for i in range(4)]
    fits = sum(len(m["content"]) for m in explainer_messages(records[:2], 0))
    client, seen = _context_limited_client(fits)
    (result,) = explain(client, "m", records, n_samples=1)
    assert result.n_shown == 2
    assert result.shortening == "dropped 2 of 2 few-shot neurons and 2 of 4 excerpts to fit the backend's context"
    assert seen == sorted(seen, reverse=True) and len(seen) == 5  # 2, 1, 0 few-shot; then 3, 2 excerpts


def test_a_prompt_that_never_fits_fails_naming_the_model():
    from neuron_assets.llm.errors import ContextLengthError
    from neuron_assets.prompts.templates import Record

    client, _ = _context_limited_client(10)
    with pytest.raises(ContextLengthError, match="even one excerpt without few-shot examples is too long for 'm'"):
        explain(client, "m", [Record([" a"], [1.0])] * 2)


def test_the_next_token_view_pairs_each_activation_with_the_token_after_it():
    import polars as pl

    from neuron_assets.explainers.next_token import next_token_view

    records = pl.DataFrame({"excerpt_id": [1], "activations": [[0.0, 5.0, 9.0]], "max_activation": [9.0]})
    excerpts = pl.DataFrame({"excerpt_id": [1], "tokens": [["a", "b", "c"]]})
    shifted, texts = next_token_view(records, excerpts)
    assert shifted["activations"].to_list() == [[0.0, 5.0]] and shifted["max_activation"].to_list() == [5.0]
    assert texts["tokens"].to_list() == [["b", "c"]]  # activation 5 (at "b") now sits beside "c"
