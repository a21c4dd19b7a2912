"""The viewer's HTML: an index per subject model and variant, a page per neuron, an error page.

Pages are self-contained (inline CSS and SVG, no script): they work offline and load nothing
from elsewhere. The index sorts, searches, filters and pages on the server (``index_query``).
"""

from __future__ import annotations

from html import escape

import polars as pl

from neuron_assets.viewer import plots
from neuron_assets.viewer.data import BASELINES, ExperimentFolder
from neuron_assets.viewer.index_query import SCORE_COLUMNS, VERDICTS, IndexPage, IndexQuery

METHOD_FILTERS = list(dict.fromkeys(method for method, _ in SCORE_COLUMNS.values()))

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th[data-column] { background: #f3f3f3; }
th[data-column] a { color: inherit; text-decoration: none; display: block; }
.pager, form { font-size: 13px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.excerpt { font-family: monospace; font-size: 13px; line-height: 1.9; margin: 2px 0 10px 0; white-space: pre-wrap; }
.tok { border-radius: 2px; }
.label { display: inline-block; width: 6.5em; color: #666; font-family: sans-serif; font-size: 11px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.error { background: #fdecea; border: 1px solid #e0a39a; padding: 1em; }
nav { margin-bottom: 1em; font-size: 13px; }
"""


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def error_page(message: str) -> str:
    """What a person sees when a page cannot be shown: the reason, never a stack trace."""
    return page(
        "Not found", f'<nav><a href="/">all results</a></nav><div class="error" id="error">{escape(message)}</div>'
    )


def neuron_href(experiment: ExperimentFolder, layer: int, neuron: int, polarity: str = "positive") -> str:
    side = "" if polarity == "positive" else f"-{polarity}"
    return f"/{experiment.model}/{experiment.variant}/layer-{layer}/neuron-{neuron}{side}"


def home(experiments: list[ExperimentFolder]) -> str:
    if not experiments:
        return page(
            "neuron-assets",
            '<h1>neuron-assets</h1><p class="error" id="error">No scores stored yet: '
            "materialize the pipeline (make demo) first.</p>",
        )
    items = "".join(
        f'<li><a href="/{escape(e.model)}/{escape(e.variant)}/">{escape(e.model)} / {escape(e.variant)}</a></li>'
        for e in experiments
    )
    return page("neuron-assets", f'<h1>Results</h1><p>Subject model / variant:</p><ul id="experiments">{items}</ul>')


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _options(name: str, choices: dict[str, str], chosen: str | None, everything: str) -> str:
    options = [f'<option value="">{escape(everything)}</option>'] + [
        f'<option value="{escape(value)}"{" selected" if value == chosen else ""}>{escape(label)}</option>'
        for value, label in choices.items()
    ]
    return f'<select name="{name}" id="{name}">{"".join(options)}</select>'


def index(
    experiment: ExperimentFolder,
    found: IndexPage,
    comparisons: pl.DataFrame,
    all_layers: list[int],
    layers: list[int] | None,
    query: IndexQuery,
) -> str:
    """One page of neurons (``found``), with links that sort the whole index by any column, the
    search and filter form, the pager, and the layer plots; all stored layers, or only ``layers``."""
    columns = [*found.score_columns, "max"]
    titles = {"max": "max activation"}

    def heading(name: str) -> str:
        descending = name in SCORE_COLUMNS or name == "max"
        if query.sort == name:
            descending, arrow = not query.descending, " ▼" if query.descending else " ▲"
        else:
            arrow = ""
        href = query.url(sort=name, descending=descending, page=1)
        title = escape(titles.get(name, name))
        return f'<th data-column="{escape(name)}"><a href="{escape(href)}">{title}{arrow}</a></th>'

    header = "".join(
        [heading("layer"), heading("neuron"), "<th>polarity</th>", "<th>explanation</th>", "<th>verdict</th>"]
        + [heading(name) for name in columns]
    )
    rows = []
    for r in found.rows.iter_rows(named=True):
        text = r["explanation_text"] or ""
        cells = [
            f'<td class="num">{r["layer"]}</td>',
            f'<td class="num"><a href="{neuron_href(experiment, r["layer"], r["neuron"], r["polarity"])}">'
            f"{r['neuron']}</a></td>",
            f"<td>{r['polarity']}</td>",
            f'<td class="explanation">{escape(text)}</td>',
            f'<td class="verdict">{escape(VERDICTS[r["verdict"]])}</td>',
            *(f'<td class="num" data-value="{_number(r[c])}">{_number(r[c])}</td>' for c in columns),
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    drawn = found.plot_scores.select("layer", "neuron", "polarity").n_unique()
    figures = [plots.layer_means(comparisons), plots.score_distributions(found.plot_scores)]
    figures += [
        plots.explanation_vs(found.plot_scores, m) for m in BASELINES if m in set(found.plot_scores["method"].to_list())
    ]
    home = f"/{escape(experiment.model)}/{escape(experiment.variant)}/"
    layer_links = " ".join(
        f'<a href="{home}layer-{layer}/">{layer}</a>' if layers != [layer] else f"<b>{layer}</b>"
        for layer in all_layers
    )
    which = "all layers" if layers is None else f"layer {', '.join(map(str, layers))}"

    def pager(top: bool) -> str:  # ids on the top one only (ids are unique in a page)
        ids = (lambda name: f' id="{name}"') if top else (lambda name: "")
        previous = (
            f'<a{ids("previous")} href="{escape(query.url(page=query.page - 1))}">previous</a>'
            if query.page > 1
            else ""
        )
        following = (
            f'<a{ids("next")} href="{escape(query.url(page=query.page + 1))}">next</a>'
            if query.page < found.pages
            else ""
        )
        return (
            f'<p class="pager">{previous} <span{ids("position")}>page {query.page} of {found.pages}: '
            f"<span{ids('matching')}>{found.matching:,}</span> of {found.total:,} neuron sides</span> {following}</p>"
        )

    form = (
        f'<form id="filters" method="get"><input id="search" name="q" type="search" value="{escape(query.search)}" '
        f'placeholder="search explanations" size="40"> '
        + _options("verdict", VERDICTS, query.verdict, "any verdict")
        + " "
        + _options("method", {m: f"scored by {m}" for m in METHOD_FILTERS}, query.method, "any method")
        + " "
        + _options("polarity", {"positive": "positive side", "negative": "negative side"}, query.polarity, "both sides")
        + (f'<input type="hidden" name="sort" value="{escape(query.sort)}">' if query.sort != "layer" else "")
        + (f'<input type="hidden" name="order" value="{"desc" if query.descending else "asc"}">')
        + ' <button type="submit">show</button></form>'
    )
    body = (
        f'<nav><a href="/">all results</a> · <a href="{home}">all layers</a> · layer: {layer_links}</nav>'
        f"<h1>{escape(experiment.model)} <small>variant {escape(experiment.variant)}, {which}</small></h1>"
        f'<div class="plots">{"".join(figures)}</div>'
        f'<p class="caption">Per-neuron plots draw {drawn:,} of the {found.matching:,} matching neuron sides'
        f"{' (a fixed subset)' if drawn < found.matching else ''}.</p>"
        f"<h2>Neurons</h2><p>Scores are top-and-random correlations (samples averaged) unless marked random-only; "
        f"a column's name sorts every matching neuron by it. The verdict compares the explanation's score "
        f"with the best token baseline's and the control's on this neuron alone.</p>"
        f"{form}{pager(top=True)}"
        f'<table id="neurons"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        f"{pager(top=False)}"
    )
    return page(f"{experiment.model} / {experiment.variant}", body)


def _colour(value: float | None, scale: float) -> str:
    """Background for a token: green with opacity by value/scale; none at or below 0 or when unknown."""
    if value is None or scale <= 0 or value <= 0:
        return ""
    return f"background: rgba(46, 160, 67, {min(value / scale, 1.0):.3f});"


def tokens_html(tokens: list[str], values: list[float | None], scale: float, label: str) -> str:
    """One line of tokens, each coloured by its value; tokens with a positive value carry class ``lit``."""
    spans = []
    for token, value in zip(tokens, values):
        style = _colour(value, scale)
        shown = "" if value is None else f"{value:.3g}"
        spans.append(
            f'<span class="tok{" lit" if style else ""}" style="{style}" title="{shown}">{escape(token)}</span>'
        )
    return f'<div class="excerpt"><span class="label">{escape(label)}</span>{"".join(spans)}</div>'


def _scorers_table(scores: pl.DataFrame) -> str:
    """The other scorers' results of a neuron side (detection, fuzzing, surprisal), or nothing when none ran."""
    if scores.is_empty():
        return ""
    rows = "".join(
        f'<tr><td>{escape(r["scorer"])}</td><td>{escape(r["method"])}</td><td class="num">{r["sample"]}</td>'
        f'<td class="num">{_number(r["balanced_accuracy"])}</td><td class="num">{_number(r["auroc"])}</td>'
        f'<td class="num">{r["n_activating"]} of {r["n_examples"]}</td><td class="num">{r["n_unanswered"]}</td>'
        f"<td>{escape(r['scorer_model'])}</td></tr>"
        for r in scores.sort("scorer", "method", "sample").iter_rows(named=True)
    )
    return (
        '<h2>Other scorers</h2><table id="scorers"><thead><tr><th>scorer</th><th>method</th><th>sample</th>'
        "<th>balanced accuracy</th><th>AUROC</th><th>activating examples</th><th>unanswered</th><th>scorer model</th>"
        f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def neuron_page(
    experiment: ExperimentFolder, layer: int, neuron: int, polarity: str, parts: dict[str, pl.DataFrame]
) -> str:
    stats = parts["stats"].row(0, named=True)
    scale = max(stats["max"], 1e-9)
    title = f"layer {layer} neuron {neuron}" + ("" if polarity == "positive" else f" ({polarity})")
    sides = "".join(
        f' <a href="{neuron_href(experiment, layer, neuron, other)}">{escape(other)} side</a>'
        for other in parts["other_sides"]["polarity"].to_list()
    )
    stat_rows = "".join(
        f'<tr><th>{name}</th><td class="num">{stats[name]:.4g}</td></tr>'
        for name in ("max", "min", "mean", "variance", "frac_firing", "n_tokens")
    )
    scores = parts["scores"].group_by("sample", "method", "scoring_set").agg(pl.col("correlation").first())
    explanation_rows = []
    for e in parts["explanations"].sort("method", "sample").iter_rows(named=True):
        by_set = {
            r["scoring_set"]: r["correlation"]
            for r in scores.filter((pl.col("method") == e["method"]) & (pl.col("sample") == e["sample"])).iter_rows(
                named=True
            )
        }
        explanation_rows.append(
            f'<tr class="explanation"><td>{escape(e["method"])}</td><td class="num">{e["sample"]}</td>'
            f'<td>{escape(e["explanation"])}</td><td class="num">{_number(by_set.get("top_and_random"))}</td>'
            f'<td class="num">{_number(by_set.get("random_only"))}</td><td>{escape(e["explainer_model"])}</td></tr>'
        )
    baseline_rows = "".join(
        f'<tr><td>{escape(r["method"])}</td><td class="num">{_number(r["correlation"])}</td></tr>'
        for r in scores.filter(
            (pl.col("scoring_set") == "top_and_random")
            & ~pl.col("method").is_in(parts["explanations"]["method"].unique().to_list())
        )
        .sort("method")
        .iter_rows(named=True)
    )
    simulated = []
    for s in parts["simulations"].sort("excerpt_kind", "excerpt_id", descending=[True, False]).iter_rows(named=True):
        simulated.append(
            f'<div class="pair" data-excerpt="{s["excerpt_id"]}">'
            f"<b>{escape(s['excerpt_kind'])} excerpt {s['excerpt_id']}</b>"
            + tokens_html(s["tokens"], s["true_activations"], scale, "true")
            + tokens_html(s["tokens"], s["simulated"], 10.0, "simulated")
            + "</div>"
        )
    sections = []
    records = parts["records"]
    for kind, heading in (
        ("top", "Top-activating excerpts"),
        ("random", "Random excerpts"),
        ("quantile", "Quantile-bin excerpts"),
    ):
        chosen = records.filter(pl.col("kind") == kind).sort("pool", "quantile_bin", "rank", nulls_last=True)
        if chosen.is_empty():
            continue
        lines = [
            tokens_html(r["tokens"], r["activations"], scale, f"{r['pool'][:5]} {r['quantile_bin'] or r['rank']}")
            for r in chosen.iter_rows(named=True)
        ]
        sections.append(f'<h2>{heading}</h2><div class="records" data-kind="{kind}">{"".join(lines)}</div>')
    body = (
        f'<nav><a href="/">all results</a> · <a href="/{escape(experiment.model)}/{escape(experiment.variant)}/">'
        f"{escape(experiment.model)} / {escape(experiment.variant)}</a>{sides}</nav>"
        f"<h1>{escape(title)}</h1>"
        f'<h2>Explanations</h2><table id="explanations"><thead><tr><th>method</th><th>sample</th><th>explanation</th>'
        f"<th>top-and-random</th><th>random-only</th><th>explainer</th></tr></thead><tbody>{''.join(explanation_rows)}</tbody></table>"
        + (
            f'<h2>Baselines and control</h2><table id="baselines"><tbody>{baseline_rows}</tbody></table>'
            if baseline_rows
            else ""
        )
        + _scorers_table(parts["classifier_scores"])
        + f'<h2>Neuron statistics</h2><table id="stats">{stat_rows}</table>'
        f"<h2>Scoring excerpts: true activation and the explanation's simulation</h2>"
        f"<p>True activations are coloured on the neuron's maximum ({stats['max']:.3g}), simulations on 0-10.</p>"
        f'<div id="simulations">{"".join(simulated) or "<p>No simulation of the explanation stored.</p>"}</div>'
        + "".join(sections)
    )
    return page(title, body)
