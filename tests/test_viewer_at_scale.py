"""The viewer on a synthetic result set (``make study-results``, smaller here): the index pages,
sorts, searches and filters every neuron in DuckDB, and agrees with the same answers computed
from the stored tables with polars.

The set is the study's shape cut to 3 layers x 400 neurons (1,200 neuron sides, 24 pages), so
the answers span layers and pages; ``make bench-viewer`` measures the full 48 x 6,400.
"""

import polars as pl
import pytest

from neuron_assets.storage.store import ResultStore
from neuron_assets.synthetic.results import StudyShape, write_study_results
from neuron_assets.viewer.data import ExperimentFolder, ViewerData, ViewerError
from neuron_assets.viewer.index_query import PAGE_SIZE, IndexQuery
from neuron_assets.viewer.server import render

SHAPE = StudyShape(layers=3, neurons=400, token_layers=1, excerpts=4_000)
SHOWN = ExperimentFolder(SHAPE.model_folder, SHAPE.variant)
INDEX = f"/{SHOWN.model}/{SHOWN.variant}/"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("study") / "data")
    write_study_results(store, SHAPE, log=lambda _: None)
    return store


@pytest.fixture(scope="module")
def truth(store):
    """Per neuron side, from the stored tables with polars: the explanation, each method's
    top-and-random score and the verdict as ``neuron_scores`` defines it."""
    folder = [SHOWN.model, SHOWN.variant]
    layers = [str(layer) for layer in range(SHAPE.layers)]
    scores = store.read("scores", layers, folder).filter(pl.col("scoring_set") == "top_and_random")
    wide = scores.pivot(on="method", index=["layer", "neuron", "polarity"], values="correlation")
    texts = store.read("explanations", layers, folder).filter(pl.col("method") == "explanation")
    best = pl.max_horizontal("lookup_table", "weight_based", "lookup_explanation")
    beats_best = (pl.col("explanation") > best).fill_null(False)
    beats_control = (pl.col("explanation") > pl.col("control")).fill_null(False)
    texts = texts.select("layer", "neuron", "polarity", text=pl.col("explanation"))
    return wide.join(texts, on=["layer", "neuron", "polarity"]).with_columns(
        verdict=pl.when(pl.col("explanation").is_null())
        .then(pl.lit("unscored"))
        .when(beats_best & beats_control)
        .then(pl.lit("beats_both"))
        .when(beats_best)
        .then(pl.lit("beats_best_baseline"))
        .when(beats_control)
        .then(pl.lit("beats_control"))
        .otherwise(pl.lit("beats_neither"))
    )


def index(store, query=IndexQuery(), layers=None):
    return ViewerData(store).index(SHOWN, layers, query)


def test_the_index_shows_one_page_of_every_neuron_in_layer_order_and_pages_on(store, truth):
    first, second = index(store), index(store, IndexQuery(page=2))
    assert first.total == first.matching == len(truth) == 1_200 and first.pages == 24
    assert len(first.rows) == len(second.rows) == PAGE_SIZE
    assert first.rows["neuron"].to_list() == list(range(50)) and second.rows["neuron"][0] == 50
    assert first.rows["explanation_text"].null_count() == 0
    last = index(store, IndexQuery(page=24))
    assert (last.rows["layer"][-1], last.rows["neuron"][-1]) == (2, 399)


def test_sorting_by_a_score_orders_every_matching_neuron_not_only_the_page(store, truth):
    for column in ("explanation", "control", "weight_based"):
        found = index(store, IndexQuery(sort=column, descending=True, page=3))
        expected = truth.drop_nulls(column).sort(column, descending=True)[100:150][column].to_list()
        assert found.rows[column].to_list() == pytest.approx(expected)


def test_search_finds_every_explanation_containing_the_text_in_any_layer(store, truth):
    found = index(store, IndexQuery(search="Mentions Of"))
    expected = truth.filter(pl.col("text").str.contains("mentions of", literal=True))
    assert found.matching == len(expected) > PAGE_SIZE
    assert all("mentions of" in text for text in found.rows["explanation_text"])
    assert set(found.rows["layer"].to_list()) <= {0, 1, 2}
    assert index(store, IndexQuery(search="no explanation says this")).matching == 0


@pytest.mark.parametrize("verdict", ["beats_both", "beats_best_baseline", "beats_control", "beats_neither", "unscored"])
def test_the_verdict_filter_agrees_with_the_neuron_scores_definition(store, truth, verdict):
    found = index(store, IndexQuery(verdict=verdict))
    assert found.matching == truth.filter(pl.col("verdict") == verdict).height > 0
    assert set(found.rows["verdict"].to_list()) == {verdict}


def test_filters_by_layer_and_method_combine_with_the_search(store, truth):
    found = index(store, IndexQuery(search="colours", method="control", sort="explanation"), layers=[1])
    expected = truth.filter(
        (pl.col("layer") == 1) & pl.col("text").str.contains("colours") & pl.col("control").is_not_null()
    )
    assert found.matching == len(expected) and set(found.rows["layer"].to_list()) == {1}
    assert index(store, IndexQuery(polarity="negative")).matching == 0  # the set holds the positive side only


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sort=explanation_text", "sort 'explanation_text' is not a column"),
        ("page=0", "page '0' is not a page number"),
        ("verdict=great", "verdict 'great' is not one of beats_both"),
        ("order=up", "order 'up' is not one of asc, desc"),
        ("limit=5", "unknown index parameter limit"),
    ],
)
def test_a_bad_index_parameter_is_named(store, query, message):
    with pytest.raises(ViewerError, match=message):
        render(ViewerData(store), INDEX, query)


def test_a_neuron_page_of_a_study_sized_layer_reads_that_neurons_rows(store):
    data = ViewerData(store)
    parts = data.neuron(SHOWN, 0, 123, "positive")
    assert len(parts["records"]) == 60 and set(parts["records"]["neuron"].to_list()) == {123}
    assert len(parts["simulations"]) == 10 and parts["records"]["tokens"].list.len().min() == SHAPE.tokens
    assert "layer 0 neuron 123" in render(data, f"{INDEX}layer-0/neuron-123")


@pytest.fixture(scope="module")
def viewer(store):
    from viewer_server import serving

    with serving(store.root) as url:
        yield url


@pytest.mark.slow
def test_in_a_browser_the_index_pages_searches_and_leads_to_a_neuron(store, truth, viewer, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"{viewer}{INDEX}")
    rows = page.locator("#neurons tbody tr")
    assert rows.count() == PAGE_SIZE and page.locator("#matching").inner_text() == "1,200"
    page.locator("#next").click()
    page.wait_for_url("**page=2**")
    assert "page 2 of 24" in page.locator("#position").inner_text()
    assert rows.first.locator("td").nth(1).inner_text() == "50"
    page.fill("#search", "music")
    page.select_option("#verdict", "beats_control")
    page.locator("#filters button").click()
    page.wait_for_url("**q=music**")
    expected = truth.filter(pl.col("text").str.contains("music") & (pl.col("verdict") == "beats_control"))
    assert page.locator("#matching").inner_text() == f"{len(expected):,}"
    assert rows.count() == min(len(expected), PAGE_SIZE) > 0
    assert all("music" in text for text in page.locator("#neurons td.explanation").all_inner_texts())
    first = rows.first.locator("td a").first
    layer, neuron = rows.first.locator("td").nth(0).inner_text(), first.inner_text()
    first.click()
    page.wait_for_url(f"**/layer-{layer}/neuron-{neuron}")
    assert page.locator("h1").inner_text() == f"layer {layer} neuron {neuron}"
    page.close()


def test_the_index_keeps_its_aggregate_only_until_a_run_replaces_a_score_file(tmp_path):
    store = ResultStore(tmp_path / "data")
    shape = StudyShape(layers=2, neurons=40, token_layers=0, excerpts=100)
    write_study_results(store, shape, log=lambda _: None)
    data = ViewerData(store)
    best = data.index(SHOWN, None, IndexQuery(sort="explanation", descending=True)).rows
    assert (best["layer"][0], best["neuron"][0]) != (1, 7)
    folder = [SHOWN.model, SHOWN.variant]
    scores = store.read("scores", ["1"], folder)
    rescored = pl.when((pl.col("neuron") == 7) & (pl.col("method") == "explanation")).then(1.0)
    store.write("scores", scores.with_columns(correlation=rescored.otherwise("correlation")), "1", folder)
    best = data.index(SHOWN, None, IndexQuery(sort="explanation", descending=True)).rows
    assert (best["layer"][0], best["neuron"][0], best["explanation"][0]) == (1, 7, 1.0)
