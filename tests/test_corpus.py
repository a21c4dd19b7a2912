import json

import polars as pl
import pytest

from neuron_assets.sampling.corpus import CorpusError, load_documents


def test_embedded_default_is_the_lee_news_corpus():
    documents = load_documents("lee")
    assert 250 <= len(documents) <= 300
    assert documents["doc_id"].to_list() == list(range(len(documents)))
    assert documents["text"].str.len_chars().min() > 100
    assert set(documents["corpus"]) == {"lee"}


def test_folder_reads_txt_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("first document", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "second"}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    pl.DataFrame({"text": ["fourth", ""]}).write_parquet(tmp_path / "c.parquet")
    (tmp_path / "ignored.csv").write_text("not read")
    documents = load_documents(str(tmp_path))
    assert documents["text"].to_list() == ["first document", "second", "third", "fourth"]


def test_non_utf8_file_is_named_in_the_error(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1.txt is not UTF-8"):
        load_documents(str(tmp_path))


def test_empty_corpus_is_an_error(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(CorpusError, match="holds no non-empty documents"):
        load_documents(str(tmp_path))


def test_folder_without_text_files_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="has no .txt, .jsonl, .parquet files"):
        load_documents(str(tmp_path))


def test_unknown_corpus_spec_is_an_error():
    with pytest.raises(CorpusError, match="neither 'lee', 'hf:NAME' nor an existing folder"):
        load_documents("/no/such/corpus")


def test_jsonl_lines_without_text_are_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:1 has no string \"text\" field"):
        load_documents(str(tmp_path))


def test_hugging_face_path_loads_a_local_dataset_the_way_it_loads_a_hub_name(tmp_path):
    dataset = tmp_path / "my_dataset"
    dataset.mkdir()
    pl.DataFrame({"text": ["alpha text", "beta text"]}).write_parquet(dataset / "train.parquet")
    documents = load_documents(f"hf:{dataset}")
    assert documents["text"].to_list() == ["alpha text", "beta text"]
    assert documents["source"][0].startswith(f"hf:{dataset}")


def test_unloadable_hugging_face_dataset_is_a_clear_error():
    with pytest.raises(CorpusError, match="cannot load Hugging Face dataset 'no-such/dataset-xyz'"):
        load_documents("hf:no-such/dataset-xyz")
