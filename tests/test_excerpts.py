import polars as pl
import pytest

from neuron_assets.sampling.excerpts import EXPLANATION_POOL, SCORING_POOL, ExcerptError, assign_pools, make_excerpts


def char_tokenize(texts):
    return [[ord(c) for c in text] for text in texts]


def char_text(ids):
    return [chr(i) for i in ids]


def documents(*texts):
    return pl.DataFrame(
        {
            "doc_id": list(range(len(texts))),
            "corpus": "test",
            "source": [f"d{i}" for i in range(len(texts))],
            "text": list(texts),
        }
    )


def test_excerpts_never_cross_a_document_boundary_and_drop_short_tails():
    docs = documents("a" * 10, "b" * 25, "c" * 3)
    excerpts = make_excerpts(docs, char_tokenize, char_text, "m", length=8)
    per_doc = excerpts.group_by("doc_id").len().sort("doc_id")
    assert per_doc.rows() == [(0, 1), (1, 3)]
    for row in excerpts.iter_rows(named=True):
        text = docs["text"][row["doc_id"]]
        assert "".join(row["tokens"]) == text[row["position"] : row["position"] + 8]
        assert len(row["token_ids"]) == 8


def test_a_long_document_gives_each_of_its_windows_once_in_order():
    text = "".join(chr(65 + i % 26) for i in range(5000))
    excerpts = make_excerpts(documents(text, "z" * 70), char_tokenize, char_text, "m", length=64)
    first = excerpts.filter(pl.col("doc_id") == 0)
    assert first["position"].to_list() == list(range(0, 4992, 64))  # 78 windows; the 8-token tail dropped
    assert "".join("".join(tokens) for tokens in first["tokens"]) == text[:4992]
    assert excerpts["excerpt_id"].to_list() == list(range(79))


def test_excerpt_ids_are_unique_and_carry_their_tokenizer():
    excerpts = make_excerpts(documents("x" * 16, "y" * 16), char_tokenize, char_text, "model-a", length=4)
    assert excerpts["excerpt_id"].is_unique().all()
    assert set(excerpts["subject_model"]) == {"model-a"}
    assert set(excerpts["corpus"]) == {"test"}


def test_pools_split_whole_documents():
    docs = documents(*[chr(97 + i) * 20 for i in range(10)])
    excerpts = make_excerpts(docs, char_tokenize, char_text, "m", length=5, scoring_fraction=0.3)
    pools_per_doc = excerpts.group_by("doc_id").agg(pl.col("pool").n_unique())
    assert pools_per_doc["pool"].max() == 1
    assert set(excerpts["pool"]) == {EXPLANATION_POOL, SCORING_POOL}
    assert excerpts.filter(pl.col("pool") == SCORING_POOL)["doc_id"].n_unique() == 3


def test_pool_split_is_reproducible_for_a_seed():
    assert assign_pools(range(20), 0.5, seed=1) == assign_pools(range(20), 0.5, seed=1)
    assert assign_pools(range(20), 0.5, seed=1) != assign_pools(range(20), 0.5, seed=2)


def test_documents_all_shorter_than_an_excerpt_are_an_error():
    with pytest.raises(ExcerptError, match="no document is at least 64 tokens"):
        make_excerpts(documents("short", "tiny"), char_tokenize, char_text, "m")


def test_a_single_usable_document_cannot_feed_both_pools():
    with pytest.raises(ExcerptError, match="at least 2 are required"):
        make_excerpts(documents("a" * 100, "b"), char_tokenize, char_text, "m", length=10)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_scoring_fraction_must_leave_documents_for_both_pools(fraction):
    with pytest.raises(ExcerptError, match="scoring_fraction"):
        assign_pools([1, 2, 3], fraction, seed=0)
