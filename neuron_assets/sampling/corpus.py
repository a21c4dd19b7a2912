"""Where the text comes from: the embedded default, a local folder, or a Hugging Face dataset.

A corpus spec is one string:
- ``lee``: the Lee background corpus (about 300 news articles) that gensim ships in its
  test data; real English prose, read from the installed package, never fetched.
- a path to a folder of ``.txt`` (one document per file), ``.jsonl`` (one ``{"text": ...}``
  per line) and ``.parquet`` (a ``text`` column) files;
- ``hf:NAME`` or ``hf:NAME:SPLIT``: ``datasets.load_dataset(NAME, split=SPLIT)`` with a
  ``text`` column, for users who are online (a local dataset folder works the same way).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import polars as pl

from neuron_assets.storage.schemas import Documents, polars_schema

DEFAULT_CORPUS = "lee"
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class CorpusError(ValueError):
    """The corpus cannot be read, or holds no usable text."""


def load_documents(spec: str) -> pl.DataFrame:
    """Documents as (doc_id, corpus, source, text), empty ones dropped, ids in reading order."""
    if spec == DEFAULT_CORPUS:
        rows = _lee_documents()
    elif spec.startswith("hf:"):
        rows = _hf_documents(spec[3:])
    else:
        rows = _folder_documents(Path(spec))
    frame = pl.DataFrame(rows, schema=polars_schema(Documents, ["source", "text"]), orient="row")
    frame = frame.filter(pl.col("text").str.strip_chars() != "")
    if frame.is_empty():
        raise CorpusError(f"corpus {spec!r} holds no non-empty documents")
    return frame.with_row_index("doc_id").select(
        pl.col("doc_id").cast(pl.Int64), pl.lit(spec).alias("corpus"), "source", "text"
    )


def _lee_documents() -> list[tuple[str, str]]:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("the default corpus needs the 'gensim' package, which is not installed")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / "lee_background.cor"
    lines = _read_text(path).splitlines()
    return [(f"lee_background.cor:{i + 1}", line) for i, line in enumerate(lines)]


def _folder_documents(folder: Path) -> list[tuple[str, str]]:
    if not folder.is_dir():
        raise CorpusError(f"corpus {str(folder)!r} is neither 'lee', 'hf:NAME' nor an existing folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    if not files:
        raise CorpusError(f"folder {str(folder)!r} has no {', '.join(TEXT_SUFFIXES)} files")
    rows: list[tuple[str, str]] = []
    for path in files:
        if path.suffix == ".txt":
            rows.append((str(path), _read_text(path)))
        elif path.suffix == ".jsonl":
            for n, line in enumerate(_read_text(path).splitlines(), start=1):
                if line.strip():
                    rows.append((f"{path}:{n}", _jsonl_text(path, n, line)))
        else:
            rows.extend(_parquet_documents(path))
    return rows


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason})") from error


def _jsonl_text(path: Path, line_number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path}:{line_number} is not JSON: {error.msg}") from error
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise CorpusError(f'{path}:{line_number} has no string "text" field')
    return record["text"]


def _parquet_documents(path: Path) -> list[tuple[str, str]]:
    frame = pl.read_parquet(path, glob=False)
    if "text" not in frame.columns or frame.schema["text"] != pl.String:
        raise CorpusError(f"{path} has no string 'text' column (columns: {frame.columns})")
    return [(f"{path}:{i}", text) for i, text in enumerate(frame["text"].fill_null(""))]


def _hf_documents(name_and_split: str) -> list[tuple[str, str]]:
    name, _, split = name_and_split.partition(":")
    try:
        import datasets
    except ImportError as error:
        raise CorpusError("an 'hf:' corpus needs the 'datasets' package: pip install datasets") from error
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # datasets raises many unrelated types for "cannot load"
        raise CorpusError(f"cannot load Hugging Face dataset {name!r}: {error}") from error
    if "text" not in dataset.column_names:
        raise CorpusError(f"dataset {name!r} has no 'text' column (columns: {dataset.column_names})")
    return [(f"hf:{name}:{i}", text or "") for i, text in enumerate(dataset["text"])]
