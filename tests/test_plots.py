"""The viewer's plots and token colouring, on frames with known numbers (no model, no browser)."""

import polars as pl

from neuron_assets.viewer import pages, plots
from neuron_assets.viewer.data import ExperimentFolder


def comparisons() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2, 2],
            "scoring_set": ["top_and_random", "random_only"] * 3,
            "method": ["explanation"] * 6,
            "n_neurons": [5, 5, 5, 5, 1, 1],
            "mean_score": [0.5, 0.2, 0.4, 0.1, 0.3, 0.0],
            "mean_ci_low": [0.4, 0.1, 0.3, 0.0, None, None],
            "mean_ci_high": [0.6, 0.3, 0.5, 0.2, None, None],
        }
    )


def test_the_layer_plot_has_a_mean_per_layer_and_scoring_set_and_an_interval_where_one_exists():
    svg = plots.layer_means(comparisons())
    assert svg.count('class="mean"') == 6
    assert svg.count('class="interval"') == 4  # layer 2 has one neuron: no interval
    assert svg.count("<polyline") == 2 and "layer 1, top_and_random: 0.400 over 5 neurons" in svg


def scores(method: str, values: list[float | None]) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "layer": [0] * n,
            "neuron": list(range(n)),
            "polarity": ["positive"] * n,
            "method": [method] * n,
            "scoring_set": ["top_and_random"] * n,
            "correlation": values,
        },
        schema_overrides={"correlation": pl.Float64},
    )


def test_explanation_against_a_baseline_plots_each_neuron_scored_by_both():
    frame = pl.concat([scores("explanation", [0.5, 0.1, None]), scores("lookup_table", [0.2, None, 0.3])])
    svg = plots.explanation_vs(frame, "lookup_table")
    assert svg.count('class="pair"') == 1 and "neuron 0: explanation 0.500, lookup_table 0.200" in svg
    assert plots.explanation_vs(scores("explanation", [0.5]), "weight_based").count('class="pair"') == 0


def test_the_distribution_plot_has_a_point_per_neuron_with_a_defined_score():
    assert plots.score_distributions(scores("explanation", [0.5, None, -0.2])).count('class="neuron"') == 2


def test_the_dagster_image_embeds_the_svg_as_a_data_uri():
    assert plots.as_markdown_image("<svg/>", "t") == "![t](data:image/svg+xml;base64,PHN2Zy8+)"


def test_only_tokens_with_a_positive_value_are_coloured_and_text_is_escaped():
    html = pages.tokens_html(["<a>", " b", " c", " d"], [1.0, 0.0, -2.0, None], 2.0, "true")
    assert html.count('class="tok lit"') == 1 and "rgba(46, 160, 67, 0.500)" in html
    assert "&lt;a&gt;" in html and "<a>" not in html


def test_an_error_page_shows_the_message_escaped_and_nothing_else_of_the_server():
    html = pages.error_page("no scores stored for subject model '<script>'")
    assert "&lt;script&gt;" in html and "<script>'" not in html and "Traceback" not in html


def test_neuron_links_name_the_side_only_when_negative():
    shown = ExperimentFolder("gpt2", "default")
    assert pages.neuron_href(shown, 3, 7) == "/gpt2/default/layer-3/neuron-7"
    assert pages.neuron_href(shown, 3, 7, "negative") == "/gpt2/default/layer-3/neuron-7-negative"
