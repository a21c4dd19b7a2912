"""Scripted stand-ins for the LLM client in the classifier scorers' tests, and synthetic examples.

The synthetic neuron fires on the token " cat": activating excerpts hold it (activation 5.0
there, small values elsewhere), non-activating ones do not.
"""

import math
import re
from types import SimpleNamespace

import polars as pl

WORDS = [" the", " dog", " sat", " on", " a", " mat", " and", " slept", "."]


def synthetic_examples(n_activating: int, n_non_activating: int) -> pl.DataFrame:
    """Examples in select_examples' layout, activating and non-activating interleaved."""
    paired = min(n_activating, n_non_activating)
    labels = [True, False] * paired + [n_activating > paired] * (n_activating + n_non_activating - 2 * paired)
    rows = []
    for i, activating in enumerate(labels):
        tokens = ["Once", f" w{i}", *WORDS[: 3 + i % 5]]
        activations = [0.1 * (j % 3) for j in range(len(tokens))]
        if activating:
            at = 2 + i % 3
            tokens.insert(at, " cat")
            activations.insert(at, 5.0)
        rows.append(
            {
                "excerpt_id": i,
                "example_kind": "top" if activating else "non_activating",
                "activating": activating,
                "tokens": tokens,
                "activations": activations,
            }
        )
    return pl.DataFrame(rows)


def asked_texts(request: dict) -> list[str]:
    """The excerpts a detection or fuzzing request shows, in order."""
    return re.findall(r"^Example \d+: (.*)$", request["messages"][-1]["content"], flags=re.MULTILINE)


def chat_reply(content: str, logprobs: list[tuple[str, dict[str, float]]] | None = None) -> dict:
    """A chat response as the client returns it; ``logprobs``: each generated token with its top ones."""
    choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if logprobs is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": token,
                    "logprob": tops.get(token, -1.0),
                    "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops.items()],
                }
                for token, tops in logprobs
            ]
        }
    return {"choices": [choice], "usage": {"prompt_tokens": 11, "completion_tokens": 3}}


def graded_reply(probabilities: list[float]) -> dict:
    """A reply whose digits are written with planted probabilities of "1": each answer is the more
    likely digit. The first digit is written as the one token "[1" or "[0", as some tokenizers do."""
    tokens = []
    for n, p in enumerate(probabilities):
        digit = "1" if p > 0.5 else "0"
        lead = "[" if n == 0 else ""
        tops = {f"{lead}1": math.log(p), f"{lead}0": math.log(1 - p)}
        tokens.append((lead + digit, tops))
        tokens.append(("," if n + 1 < len(probabilities) else "]", {}))
    return chat_reply("".join(token for token, _ in tokens), tokens)


def fake_chat_client(answer, *, json_schema_format: str = "none") -> SimpleNamespace:
    """A client whose chat calls return ``answer(request)`` after its reply check has read it, as
    CachingClient does (a check that raises ends the call here: there is no second ask)."""
    calls = []

    def create(read=None, keep=None, **request):
        calls.append(request)
        response = answer(request)
        if read is not None:
            read(response)
        return response

    return SimpleNamespace(
        chat=SimpleNamespace(completions=SimpleNamespace(create=create)),
        json_schema_format=json_schema_format,
        calls=calls,
    )


class FakeOpenAI:
    """An openai-style object for the real CachingClient: its chat calls answer the scripted replies in turn."""

    def __init__(self, contents: list[str]) -> None:
        self.contents = iter(contents)
        self.requests = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    def _create(self, **request):
        self.requests.append(request)
        reply = chat_reply(next(self.contents))
        return SimpleNamespace(model_dump=lambda mode="json": reply)
