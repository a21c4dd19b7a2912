"""The surprisal scorer: the gain in an excerpt's log-likelihood from knowing the explanation."""

import re
from types import SimpleNamespace

import pytest
from classifier_fakes import synthetic_examples

from neuron_assets.llm.client import CachingClient
from neuron_assets.llm.response_cache import ResponseCache
from neuron_assets.prompts.classifiers import surprisal_prompt
from neuron_assets.scorers.surprisal import SurprisalError, excerpt_log_likelihood, score_surprisal

TOKEN = re.compile(r" ?\w+|\s|[^\s\w]")
PREFIX_LOGPROB = -100.0  # planted on the prefix's tokens: counted, they would swamp every sum
GENERATED_LOGPROB = -50.0  # planted on the generated token, which is not the excerpt's either


def echo(prompt: str, *, helps: bool = True) -> dict:
    """A completions reply echoing ``prompt``: every excerpt token has log-probability -1, or -0.5
    after the explained prefix in an excerpt holding " cat" when the explanation ``helps``."""
    tokens = TOKEN.findall(prompt)
    offsets = [sum(map(len, tokens[:j])) for j in range(len(tokens))]
    excerpt_start = prompt.index("\n\n") + 2
    excerpt = prompt[excerpt_start:]
    explained = not prompt.startswith(surprisal_prompt(None, []).text)
    per_token = -0.5 if helps and explained and "cat" in excerpt else -1.0
    token_logprobs = [None] + [PREFIX_LOGPROB if at < excerpt_start else per_token for at in offsets[1:]]
    logprobs = {
        "tokens": tokens + [" the"],
        "text_offset": offsets + [len(prompt)],
        "token_logprobs": token_logprobs + [GENERATED_LOGPROB],
        "top_logprobs": [None] + [{t: lp} for t, lp in zip(tokens[1:], token_logprobs[1:], strict=True)] + [{}],
    }
    choice = {"index": 0, "finish_reason": "length", "text": prompt + " the", "logprobs": logprobs}
    return {"choices": [choice], "usage": {"prompt_tokens": len(tokens), "completion_tokens": 1}}


def fake_completions_client(reply=echo) -> SimpleNamespace:
    """Stands in for CachingClient: the reply check reads each reply (and raises) as the real one does."""
    calls = []

    def create(read=None, keep=None, **request):
        calls.append(request)
        response = reply(request["prompt"])
        if read is not None:
            read(response)
        return response

    return SimpleNamespace(completions=SimpleNamespace(create=create), calls=calls)


def test_an_explanation_that_raises_the_activating_excerpts_likelihood_scores_auroc_one():
    examples = synthetic_examples(5, 5)
    client = fake_completions_client()
    scored, score = score_surprisal(client, "base", "the word cat", examples)
    assert score.auroc == 1.0
    assert (score.n_examples, score.n_activating) == (10, 5)
    # every excerpt token gains 0.5 nats in an activating excerpt, none elsewhere
    activating = scored.filter(scored["activating"])
    assert activating["gain"].to_list() == pytest.approx((0.5 * activating["n_tokens"]).to_list())
    assert score.mean_gain_non_activating == 0.0
    assert len(client.calls) == 20
    assert all(call["echo"] is True and call["logprobs"] == 1 and call["max_tokens"] == 1 for call in client.calls)
    assert scored.columns == [
        "excerpt_id",
        "example_kind",
        "activating",
        "log_likelihood_explained",
        "log_likelihood_neutral",
        "gain",
        "n_tokens",
        "prompt_tokens",
    ]


def test_an_explanation_that_changes_nothing_scores_one_half():
    client = fake_completions_client(lambda prompt: echo(prompt, helps=False))
    _, score = score_surprisal(client, "base", "the word cat", synthetic_examples(3, 3))
    assert score.auroc == 0.5  # every gain is 0: all pairs tie


def test_only_the_excerpts_own_tokens_are_summed():
    tokens = ["Once", " upon", " a", " time", "."]
    total, n_tokens, prompt_tokens = excerpt_log_likelihood(
        fake_completions_client(), "base", surprisal_prompt("cats", tokens)
    )
    # 5 tokens at -1 each: no prefix token (-100), no generated token (-50)
    assert (total, n_tokens) == (-5.0, 5)
    assert prompt_tokens > n_tokens


def test_a_reply_without_prompt_log_probabilities_is_a_clear_error_at_the_first_call():
    def no_echo(prompt):
        return {"choices": [{"index": 0, "text": " the", "logprobs": None}], "usage": None}

    client = fake_completions_client(no_echo)
    with pytest.raises(SurprisalError, match="model 'chat-only' returned no prompt log-probabilities.*echo"):
        score_surprisal(client, "chat-only", "cats", synthetic_examples(2, 2))
    assert len(client.calls) == 1


def test_a_reply_with_offsets_but_no_token_logprobs_is_the_same_error():
    def tops_only(prompt):
        reply = echo(prompt)
        del reply["choices"][0]["logprobs"]["token_logprobs"]
        return reply

    with pytest.raises(SurprisalError, match="no prompt log-probabilities"):
        score_surprisal(fake_completions_client(tops_only), "m", "cats", synthetic_examples(1, 1))


def test_a_server_that_files_log_probabilities_one_token_early_is_refused():
    with pytest.raises(ValueError, match="distribution shift -1"):
        score_surprisal(fake_completions_client(), "m", "cats", synthetic_examples(1, 1), distribution_shift=-1)


def test_the_cached_reply_keeps_only_what_is_read_and_a_rerun_makes_no_call(tmp_path):
    requests = []

    def create(**request):
        requests.append(request)
        return SimpleNamespace(model_dump=lambda mode="json": echo(request["prompt"]))

    raw = SimpleNamespace(completions=SimpleNamespace(create=create))
    examples = synthetic_examples(2, 2)
    first, _ = score_surprisal(CachingClient(raw, "fake", ResponseCache(tmp_path)), "m", "cats", examples)
    again, _ = score_surprisal(CachingClient(raw, "fake", ResponseCache(tmp_path)), "m", "cats", examples)
    assert len(requests) == 8  # 4 examples x 2 prefixes, the second run all from the cache
    assert again.equals(first)
