"""The local server's log-probabilities, computed a block of rows at a time, are the full-matrix ones."""

import numpy as np

from neuron_assets.llm.llama_server import LOGPROB_BLOCK_ROWS, echo_logprobs


class FakeLlama:
    """What ``echo_logprobs`` reads of a ``Llama``: scores, token ids, BOS, vocabulary, pieces."""

    def __init__(self, n_tokens, n_vocab=50, seed=0):
        rng = np.random.default_rng(seed)
        self.scores = rng.normal(0, 3, (n_tokens + 7, n_vocab)).astype(np.float32)  # rows past n_tokens unused
        self.input_ids = np.concatenate([[0], rng.integers(1, n_vocab, n_tokens - 1)]).astype(np.intc)
        self._n_vocab = n_vocab

    def token_bos(self):
        return 0

    def n_vocab(self):
        return self._n_vocab

    def detokenize(self, tokens, prev_tokens=None):
        return "".join(f"<{t}>" for t in tokens).encode()


def full_matrix_logprobs(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_each_echoed_token_gets_the_distribution_of_the_row_before_it_across_block_boundaries():
    n_tokens = 2 * LOGPROB_BLOCK_ROWS + 5  # three blocks, the last one short
    llama = FakeLlama(n_tokens)
    out = echo_logprobs(llama, n_tokens, top_n=5)
    expected = full_matrix_logprobs(llama.scores[: n_tokens - 1])
    assert out["tokens"][0] == f"<{llama.input_ids[1]}>"  # BOS left out; the first token is predicted after it
    assert len(out["top_logprobs"]) == n_tokens - 1
    for j in range(1, n_tokens):
        row = expected[j - 1]
        assert out["token_logprobs"][j - 1] == float(row[llama.input_ids[j]])
        top = np.argsort(row)[::-1][:5]
        assert out["top_logprobs"][j - 1] == {f"<{i}>": float(row[i]) for i in top}


def test_no_top_entries_are_asked_for_and_none_come_back():
    llama = FakeLlama(10)
    out = echo_logprobs(llama, 10, top_n=0)
    assert out["top_logprobs"] == [{}] * 9
