"""The neuron index at any size: one page of neurons, filtered, searched and sorted in DuckDB.

A study-sized experiment has 307,200 neurons (GPT-2 XL), about 3.7 million score rows and as
many explanation texts, so no page reads whole tables into Python. Each request:

1. aggregates ``scores`` of the asked layers' files into one row per neuron side (a column per
   method; DuckDB reads only the columns it needs) beside ``neuron_stats``' maximum;
2. keeps the sides the filters and the search ask for (the search reads only the explanation
   texts of the asked layers), counts them, and sorts them by the asked column;
3. reads the explanation texts of the page's rows only (the page's layers' files, filtered on
   the page's neurons, so row groups of other neurons are skipped).

Verdicts are per neuron side, as ``neuron_scores`` (sql/views.sql) has them: the explanation's
top-and-random score against the best token baseline's and the control's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import polars as pl

from neuron_assets.storage.layout import prefix
from neuron_assets.storage.store import ResultStore, sql_identifier

PAGE_SIZE = 50
PLOT_POINTS = 1_000  # neurons drawn in the index's per-neuron plots, a fixed hash-chosen subset when there are more
BASELINE_METHODS = ("lookup_table", "weight_based", "lookup_explanation")
SCORE_COLUMNS = {  # column -> (method, scoring set)
    "explanation": ("explanation", "top_and_random"),
    "explanation (random-only)": ("explanation", "random_only"),
    "lookup_table": ("lookup_table", "top_and_random"),
    "weight_based": ("weight_based", "top_and_random"),
    "lookup_explanation": ("lookup_explanation", "top_and_random"),
    "next_token_explanation": ("next_token_explanation", "top_and_random"),
    "control": ("control", "top_and_random"),
}
VERDICTS = {
    "beats_both": "beats the best baseline and the control",
    "beats_best_baseline": "beats the best baseline",
    "beats_control": "beats the control",
    "beats_neither": "beats neither",
    "unscored": "no explanation score",
}
SORTS = ("layer", "neuron", *SCORE_COLUMNS, "max")


class IndexQueryError(ValueError):
    """A page parameter the index cannot take; the message names it and what it accepts."""


@dataclass(frozen=True)
class IndexQuery:
    """What one index page asks for: the filters, the search, the order and the page."""

    search: str = ""
    verdict: str | None = None
    method: str | None = None  # only neuron sides this method scored
    polarity: str | None = None
    sort: str = "layer"
    descending: bool = False
    page: int = 1

    @classmethod
    def from_parameters(cls, parameters: dict[str, list[str]]) -> IndexQuery:
        """From a URL's query parameters (``parse_qs``); an ``IndexQueryError`` names a bad one."""
        known = {"q", "verdict", "method", "polarity", "sort", "order", "page"}
        if unknown := sorted(set(parameters) - known):
            raise IndexQueryError(f"unknown index parameter {', '.join(unknown)}: use {', '.join(sorted(known))}")
        one = {name: values[-1] for name, values in parameters.items()}
        query = cls(search=one.get("q", "").strip(), sort=one.get("sort", "layer"))
        choices = {
            "verdict": VERDICTS,
            "method": [m for m, _ in SCORE_COLUMNS.values()],
            "polarity": ["positive", "negative"],
            "order": ["asc", "desc"],
        }
        for name, allowed in choices.items():
            if one.get(name) and one[name] not in allowed:
                raise IndexQueryError(f"{name} {one[name]!r} is not one of {', '.join(dict.fromkeys(allowed))}")
        if query.sort not in SORTS:
            raise IndexQueryError(f"sort {query.sort!r} is not a column: use one of {', '.join(SORTS)}")
        page = one.get("page", "1")
        if not page.isdigit() or int(page) < 1:
            raise IndexQueryError(f"page {page!r} is not a page number (1, 2, ...)")
        default_descending = query.sort in SCORE_COLUMNS or query.sort == "max"
        return replace(
            query,
            verdict=one.get("verdict") or None,
            method=one.get("method") or None,
            polarity=one.get("polarity") or None,
            descending=one["order"] == "desc" if one.get("order") else default_descending,
            page=int(page),
        )

    def url(self, **changes: Any) -> str:
        """This query with ``changes``, as a URL query string (``?...``; defaults left out)."""
        query = replace(self, **changes)
        parameters = {
            "q": query.search,
            "verdict": query.verdict,
            "method": query.method,
            "polarity": query.polarity,
            "sort": None if query.sort == "layer" else query.sort,
            "order": "desc" if query.descending else "asc",
            "page": None if query.page == 1 else query.page,
        }
        return "?" + urlencode({k: v for k, v in parameters.items() if v})


@dataclass(frozen=True)
class IndexPage:
    """One page of the index: its rows (``layer, neuron, polarity``, the score columns present,
    ``max``, ``verdict``, ``explanation_text``), how many neuron sides match, how many there are,
    and the per-neuron scores of up to ``PLOT_POINTS`` sides for the plots (long, like ``scores``)."""

    rows: pl.DataFrame
    matching: int
    total: int
    score_columns: list[str]
    plot_scores: pl.DataFrame

    @property
    def pages(self) -> int:
        return max(1, -(-self.matching // PAGE_SIZE))


def _score_columns_sql() -> str:
    return ",\n".join(
        f"any_value(score) FILTER (WHERE method = '{method}' AND scoring_set = '{scoring_set}') "
        f"AS {sql_identifier(column)}"
        for column, (method, scoring_set) in SCORE_COLUMNS.items()
    )


def _verdict_sql() -> str:
    best = f"greatest({', '.join(sql_identifier(m) for m in BASELINE_METHODS)})"
    explanation, control = sql_identifier("explanation"), sql_identifier("control")
    return (
        f"CASE WHEN {explanation} IS NULL THEN 'unscored' "
        f"WHEN coalesce({explanation} > {best}, false) AND coalesce({explanation} > {control}, false) "
        "THEN 'beats_both' "
        f"WHEN coalesce({explanation} > {best}, false) THEN 'beats_best_baseline' "
        f"WHEN coalesce({explanation} > {control}, false) THEN 'beats_control' "
        f"ELSE 'beats_neither' END"
    )


KEYS = "layer, neuron, polarity"


def neuron_sides(store: ResultStore, model: str, variant: str, layers: list[str], recorded: list[str]) -> pl.DataFrame:
    """One row per neuron side of ``layers`` (partitions with scores): a column per score (samples
    averaged), the maximum activation (from ``neuron_stats`` of the ``recorded`` ones) and the
    verdict. Every index page filters, sorts and pages this; it depends only on those files, so a
    caller may keep it while they are unchanged (``ResultStore.signature``)."""
    scores = store.scan("scores", layers, prefix(model, variant, "scores"))
    stats_of = prefix(model, variant, "neuron_stats")
    stats = (
        f"(SELECT {KEYS}, max FROM {store.scan('neuron_stats', recorded, stats_of)})"
        if recorded
        else "(SELECT NULL::BIGINT AS layer, NULL::BIGINT AS neuron, NULL::VARCHAR AS polarity, NULL::DOUBLE AS max)"
    )
    with store.query_connection() as connection:
        return connection.sql(
            f"""WITH per_method AS (
                SELECT {KEYS}, method, scoring_set, avg(correlation) AS score FROM {scores} GROUP BY ALL
            ), pivoted AS (SELECT {KEYS}, {_score_columns_sql()} FROM per_method GROUP BY ALL)
            SELECT p.*, s.max, {_verdict_sql()} AS verdict
            FROM pivoted p LEFT JOIN {stats} s USING ({KEYS})"""
        ).pl()


def query_index(
    store: ResultStore,
    model: str,
    variant: str,
    layers: list[str],
    query: IndexQuery,
    sides: pl.DataFrame,
    page_size: int = PAGE_SIZE,
) -> IndexPage:
    """The page ``query`` asks for of the experiment's neuron sides in ``layers`` (stored partitions),
    from ``sides`` (``neuron_sides`` of those layers)."""
    explanations_of = prefix(model, variant, "explanations")
    explained = [layer for layer in layers if layer in set(store.partitions("explanations", explanations_of))]
    keys = KEYS
    with store.query_connection() as connection:
        connection.register("sides", sides)
        ((total,),) = connection.execute("SELECT count(*) FROM sides").fetchall()
        (present,) = connection.execute(
            "SELECT " + ", ".join(f"count({sql_identifier(c)})" for c in SCORE_COLUMNS) + " FROM sides"
        ).fetchall()
        score_columns = [c for c, n in zip(SCORE_COLUMNS, present, strict=True) if n]
        conditions, parameters = ["true"], []
        if query.verdict:
            conditions.append("verdict = ?")
            parameters.append(query.verdict)
        if query.polarity:
            conditions.append("polarity = ?")
            parameters.append(query.polarity)
        if query.method:
            column = next(c for c, (m, s) in SCORE_COLUMNS.items() if m == query.method and s == "top_and_random")
            conditions.append(f"{sql_identifier(column)} IS NOT NULL")
        source = "sides"
        if query.search:
            if not explained:
                return IndexPage(sides.clear(), 0, total, score_columns, _as_scores(pl.DataFrame()))
            texts = store.scan("explanations", explained, explanations_of)
            source = (
                f"sides SEMI JOIN (SELECT {keys} FROM {texts} WHERE method = 'explanation' AND sample = 0 "
                f"AND contains(lower(explanation), lower(?))) USING ({keys})"
            )
            parameters.insert(0, query.search)
        where = " AND ".join(conditions)
        connection.execute(f"CREATE TEMP TABLE matching AS SELECT * FROM {source} WHERE {where}", parameters)
        ((matching,),) = connection.execute("SELECT count(*) FROM matching").fetchall()
        direction = "DESC" if query.descending else "ASC"
        order = f"{sql_identifier(query.sort)} {direction} NULLS LAST, layer, neuron, polarity DESC"
        page = connection.sql(
            f"SELECT * FROM matching ORDER BY {order} LIMIT ? OFFSET ?",
            params=[page_size, (query.page - 1) * page_size],
        ).pl()
        texts = _explanation_texts(store, connection, explanations_of, explained, page)
        unpivoted = ", ".join(sql_identifier(c) for c in score_columns) or "max"
        plot_scores = connection.sql(
            f"""SELECT {keys}, column_name, correlation FROM (
                SELECT * FROM matching ORDER BY hash(layer, neuron, polarity) LIMIT {PLOT_POINTS}
            ) UNPIVOT (correlation FOR column_name IN ({unpivoted}))"""
        ).pl()
    order_keys = page.select("layer", "neuron", "polarity").with_row_index("order")
    rows = (
        order_keys.join(page, on=["layer", "neuron", "polarity"])
        .join(texts, on=["layer", "neuron", "polarity"], how="left")
        .sort("order")
        .drop("order")
    )
    return IndexPage(rows, matching, total, score_columns, _as_scores(plot_scores))


def _explanation_texts(
    store: ResultStore, connection: Any, explanations_of: list[str], explained: list[str], page: pl.DataFrame
) -> pl.DataFrame:
    """The explanation (sample 0) of each of ``page``'s rows, read from its layers' files only."""
    empty = pl.DataFrame(
        schema={"layer": pl.Int64, "neuron": pl.Int64, "polarity": pl.String, "explanation_text": pl.String}
    )
    layers = (
        [str(layer) for layer in page["layer"].unique().sort().to_list() if str(layer) in explained]
        if len(page)
        else []
    )
    if not layers:
        return empty
    wanted = page.select("layer", "neuron", "polarity")
    connection.register("page_keys", wanted.to_arrow())
    low, high = page["neuron"].min(), page["neuron"].max()
    return connection.sql(
        f"""SELECT layer, neuron, polarity, explanation AS explanation_text
        FROM {store.scan("explanations", layers, explanations_of)}
        SEMI JOIN page_keys USING (layer, neuron, polarity)
        WHERE method = 'explanation' AND sample = 0 AND neuron BETWEEN ? AND ?""",
        params=[low, high],
    ).pl()


def _as_scores(plot_scores: pl.DataFrame) -> pl.DataFrame:
    """The plot subset in the long shape of ``scores`` that ``viewer.plots`` draws from."""
    if plot_scores.is_empty():
        return pl.DataFrame(
            schema={
                "layer": pl.Int64,
                "neuron": pl.Int64,
                "polarity": pl.String,
                "method": pl.String,
                "scoring_set": pl.String,
                "correlation": pl.Float64,
            }
        )
    columns = pl.DataFrame(
        {
            "column_name": list(SCORE_COLUMNS),
            "method": [m for m, _ in SCORE_COLUMNS.values()],
            "scoring_set": [s for _, s in SCORE_COLUMNS.values()],
        }
    )
    return plot_scores.join(columns, on="column_name").select(
        "layer", "neuron", "polarity", "method", "scoring_set", "correlation"
    )
