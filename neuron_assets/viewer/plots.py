"""Plots of scores as self-contained SVG: no plotting library, no assets from a CDN.

Each plot takes polars frames shaped like the stored tables and returns SVG text, which
the viewer inlines and the ``scores`` asset attaches to its materialization metadata.
"""

from __future__ import annotations

import base64
from html import escape

import polars as pl

WIDTH, HEIGHT = 420, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 40
SETS = {"top_and_random": "#1f5fa8", "random_only": "#c0602a"}


class _Axes:
    """Maps data to pixels inside the plot margins and draws the frame, ticks and labels."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        self.x0, self.x1 = x_range if x_range[1] > x_range[0] else (x_range[0] - 1, x_range[0] + 1)
        self.y0, self.y1 = y_range

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - (value - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    def frame(self, title: str, x_label: str, y_label: str, x_ticks: list[float], y_ticks: list[float]) -> list[str]:
        parts = [
            f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
            f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#444"/>',
            f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11">{escape(x_label)}</text>',
            f'<text x="12" y="{HEIGHT / 2}" text-anchor="middle" font-size="11" '
            f'transform="rotate(-90 12 {HEIGHT / 2})">{escape(y_label)}</text>',
        ]
        for t in x_ticks:
            parts.append(
                f'<text x="{self.x(t):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle" font-size="10">'
                f"{_fmt(t)}</text>"
            )
        for t in y_ticks:
            parts.append(
                f'<line x1="{LEFT}" y1="{self.y(t):.1f}" x2="{WIDTH - RIGHT}" y2="{self.y(t):.1f}" stroke="#e4e4e4"/>'
            )
            parts.append(
                f'<text x="{LEFT - 4}" y="{self.y(t) + 3:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>'
            )
        return parts


def _fmt(value: float) -> str:
    return f"{value:g}"


def _svg(parts: list[str], label: str) -> str:
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(label)}" font-family="sans-serif">\n'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>\n{body}\n</svg>'
    )


def _legend(items: dict[str, str]) -> list[str]:
    parts = []
    for i, (name, colour) in enumerate(items.items()):
        x = LEFT + 8 + i * 130
        parts.append(f'<rect x="{x}" y="{TOP - 2}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{TOP + 7}" font-size="10">{escape(name)}</text>')
    return parts


def layer_means(comparisons: pl.DataFrame, method: str = "explanation") -> str:
    """Mean score by layer for one method, top-and-random and random-only, with their 95%
    bootstrap intervals (rows shaped like ``method_comparisons``), as the study plots them."""
    rows = comparisons.filter(pl.col("method") == method).sort("layer")
    layers = rows["layer"].unique().sort().to_list()
    axes = _Axes((min(layers, default=0) - 0.5, max(layers, default=0) + 0.5), (-1.0, 1.0))
    parts = axes.frame(f"Mean {method} score by layer", "layer", "correlation score", layers, [-1, -0.5, 0, 0.5, 1])
    parts += _legend(SETS)
    for offset, (scoring_set, colour) in zip((-0.08, 0.08), SETS.items()):
        points = rows.filter(pl.col("scoring_set") == scoring_set)
        line = [(axes.x(r["layer"] + offset), axes.y(r["mean_score"])) for r in points.iter_rows(named=True)]
        if len(line) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        for r in points.iter_rows(named=True):
            x = axes.x(r["layer"] + offset)
            if r["mean_ci_low"] is not None:
                parts.append(
                    f'<line class="interval" x1="{x:.1f}" y1="{axes.y(r["mean_ci_low"]):.1f}" x2="{x:.1f}" '
                    f'y2="{axes.y(r["mean_ci_high"]):.1f}" stroke="{colour}"/>'
                )
            parts.append(
                f'<circle class="mean" cx="{x:.1f}" cy="{axes.y(r["mean_score"]):.1f}" r="3.5" fill="{colour}">'
                f"<title>layer {r['layer']}, {scoring_set}: {r['mean_score']:.3f} "
                f"over {r['n_neurons']} neurons</title></circle>"
            )
    return _svg(parts, f"mean {method} score by layer")


def score_distributions(scores: pl.DataFrame, method: str = "explanation", scoring_set: str = "top_and_random") -> str:
    """Every neuron's score (samples averaged) per layer, as a strip of points."""
    per_neuron = (
        scores.filter(
            (pl.col("method") == method) & (pl.col("scoring_set") == scoring_set) & pl.col("correlation").is_not_null()
        )
        .group_by("layer", "neuron", "polarity")
        .agg(pl.col("correlation").mean())
        .sort("layer", "polarity", "neuron")
    )
    layers = per_neuron["layer"].unique().sort().to_list()
    axes = _Axes((min(layers, default=0) - 0.5, max(layers, default=0) + 0.5), (-1.0, 1.0))
    parts = axes.frame(
        f"{method} scores per layer ({scoring_set.replace('_', '-')})",
        "layer",
        "correlation score",
        layers,
        [-1, -0.5, 0, 0.5, 1],
    )
    for i, r in enumerate(per_neuron.iter_rows(named=True)):
        jitter = ((i * 7919) % 13 - 6) / 40  # deterministic spread so equal scores stay visible
        parts.append(
            f'<circle class="neuron" cx="{axes.x(r["layer"] + jitter):.1f}" '
            f'cy="{axes.y(r["correlation"]):.1f}" r="2.5" '
            f'fill="#1f5fa8" fill-opacity="0.6"><title>layer {r["layer"]} neuron {r["neuron"]} ({r["polarity"]}): '
            f"{r['correlation']:.3f}</title></circle>"
        )
    return _svg(parts, f"{method} score distribution per layer")


def explanation_vs(scores: pl.DataFrame, baseline: str, scoring_set: str = "top_and_random") -> str:
    """Per neuron, the explanation's score against ``baseline``'s; points above the diagonal: the explanation won."""
    per_neuron = (
        scores.filter((pl.col("scoring_set") == scoring_set) & pl.col("method").is_in(["explanation", baseline]))
        .group_by("layer", "neuron", "polarity", "method")
        .agg(pl.col("correlation").mean())
        .pivot(on="method", index=["layer", "neuron", "polarity"], values="correlation")
    )
    if baseline not in per_neuron.columns or "explanation" not in per_neuron.columns:
        per_neuron = pl.DataFrame(
            schema={
                "layer": pl.Int64,
                "neuron": pl.Int64,
                "polarity": pl.String,
                "explanation": pl.Float64,
                baseline: pl.Float64,
            }
        )
    pairs = per_neuron.drop_nulls(["explanation", baseline]).sort("layer", "neuron")
    axes = _Axes((-1.0, 1.0), (-1.0, 1.0))
    ticks = [-1, -0.5, 0, 0.5, 1]
    parts = axes.frame(f"explanation vs {baseline}", f"{baseline} score", "explanation score", ticks, ticks)
    parts.append(
        f'<line x1="{axes.x(-1)}" y1="{axes.y(-1)}" x2="{axes.x(1)}" y2="{axes.y(1)}" '
        'stroke="#999" stroke-dasharray="4 3"/>'
    )
    for r in pairs.iter_rows(named=True):
        parts.append(
            f'<circle class="pair" cx="{axes.x(r[baseline]):.1f}" cy="{axes.y(r["explanation"]):.1f}" '
            'r="3" fill="#2e7d32" '
            f'fill-opacity="0.7"><title>layer {r["layer"]} neuron {r["neuron"]}: explanation {r["explanation"]:.3f}, '
            f"{baseline} {r[baseline]:.3f}</title></circle>"
        )
    return _svg(parts, f"explanation vs {baseline}")


def as_markdown_image(svg: str, title: str) -> str:
    """The SVG as a Markdown image with a data URI, which the Dagster UI shows in metadata."""
    return f"![{title}](data:image/svg+xml;base64,{base64.b64encode(svg.encode()).decode()})"


def correlation_vs_ablation(frame: pl.DataFrame) -> str:
    """Per scored method of a neuron, its correlation score against its ablation score (rows with
    ``correlation`` and ``ablation_score`` per scoring set); ablation scores below -1 are drawn at -1."""
    pairs = frame.drop_nulls(["correlation", "ablation_score"])
    axes = _Axes((-1.0, 1.0), (-1.0, 1.0))
    ticks = [-1, -0.5, 0, 0.5, 1]
    parts = axes.frame("correlation vs ablation score", "correlation score", "ablation score", ticks, ticks)
    parts.append(
        f'<line x1="{axes.x(-1)}" y1="{axes.y(-1)}" x2="{axes.x(1)}" y2="{axes.y(1)}" '
        'stroke="#999" stroke-dasharray="4 3"/>'
    )
    parts += _legend({name: colour for name, colour in SETS.items() if name in set(pairs["scoring_set"].to_list())})
    for r in pairs.iter_rows(named=True):
        y = axes.y(max(r["ablation_score"], -1.0))
        parts.append(
            f'<circle class="pair" cx="{axes.x(r["correlation"]):.1f}" cy="{y:.1f}" '
            f'r="3" fill="{SETS[r["scoring_set"]]}" fill-opacity="0.7"><title>layer {r["layer"]} neuron {r["neuron"]} '
            f"{r['method']}: correlation {r['correlation']:.3f}, ablation {r['ablation_score']:.3f}</title></circle>"
        )
    return _svg(parts, "correlation vs ablation score")


def direction_ascent(rounds: pl.DataFrame) -> str:
    """Each explainable direction's score by round (rows shaped like ``direction_rounds``): one line
    per direction and layer from its random start (round 0) to the found direction (the last round)."""
    scored = rounds.drop_nulls("correlation").sort("layer", "direction", "round")
    last = int(scored["round"].max() or 0) if len(scored) else 0
    axes = _Axes((-0.25, last + 0.25), (-1.0, 1.0))
    parts = axes.frame(
        "Explainable directions: score by round",
        "round",
        "correlation score",
        list(range(last + 1)),
        [-1, -0.5, 0, 0.5, 1],
    )
    colour = SETS["top_and_random"]
    for (layer, direction), points in scored.group_by("layer", "direction", maintain_order=True):
        line = [(axes.x(r["round"]), axes.y(r["correlation"])) for r in points.iter_rows(named=True)]
        if len(line) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-opacity="0.6"/>')
        for r, (x, y) in zip(points.iter_rows(named=True), line, strict=True):
            parts.append(
                f'<circle class="round" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>layer {layer} '
                f"direction {direction}, round {r['round']}: {r['correlation']:.3f}</title></circle>"
            )
    return _svg(parts, "explainable directions: score by round")
