"""The neuron viewer, on a small materialized run with two variants of layer 0.

The run goes through the Dagster definitions with the packaged subject model and a
scripted OpenAI-compatible LLM (json simulations), so it takes about a minute and needs
no llama.cpp server. The browser tests drive Debian's Chromium with Playwright.
"""

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import UP_TO_SCORES, materialize_layers
from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore
from neuron_assets.viewer.data import ExperimentFolder as Shown
from neuron_assets.viewer.data import ViewerData, ViewerError
from neuron_assets.viewer.index_query import IndexQuery
from neuron_assets.viewer.server import render

pytestmark = pytest.mark.slow
DEFAULT, OTHER = Experiment(PACKAGED_SUBJECT_MODEL), Experiment(PACKAGED_SUBJECT_MODEL, "other")
CONFIG = {
    "ops": {
        "activation_records": {"config": {"n_neurons": 3, "n_random": 4, "batch_size": 32}},
        "scoring_excerpts": {"config": {"n_top": 2, "n_random": 2, "n_calibration_top": 1, "n_calibration_random": 1}},
        "explanations": {"config": {"n_examples": 2, "max_tokens": 30}},
        "simulations": {"config": {"mode": "json"}},
    }
}
OTHER_CONFIG = {"ops": {**CONFIG["ops"], "explanations": {"config": {"n_examples": 2, "max_tokens": 31}}}}


def answer(body):
    """Variant 'default' (max_tokens 30) explains 'the first half', 'other' (31) 'tokens with an e'; the
    simulator fires on what the explanation says."""
    question = body["messages"][-1]["content"]
    if question.startswith("Explanation: "):
        tokens = json.loads(question.split("): ", 1)[1])
        if "with an e" in question:
            return json.dumps([10 if "e" in token else 0 for token in tokens])
        return json.dumps([10] * (len(tokens) // 2) + [0] * (len(tokens) - len(tokens) // 2))
    return "tokens with an e." if body.get("max_tokens") == 31 else "the first half of the text."


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from scripted_openai import ScriptedOpenAI

    data_dir = tmp_path_factory.mktemp("viewer") / "data"
    with ScriptedOpenAI(answer) as server, dg.DagsterInstance.ephemeral() as instance:
        settings = Settings((PACKAGED_SUBJECT_MODEL,), data_dir, server.url, "x", "y", variants=("default", "other"))
        defs = build_definitions(settings)
        first = materialize_layers(defs, 0, 0, CONFIG, instance, UP_TO_SCORES, DEFAULT)
        assert first.success
        job = defs.resolve_implicit_global_asset_job_def()
        llm_stages = dg.AssetSelection.groups(*UP_TO_SCORES) & dg.AssetSelection.key_prefixes([OTHER.slug, "other"])
        run = job.execute_in_process(
            run_config=OTHER.run_config(OTHER_CONFIG),
            instance=instance,
            partition_key="layer-0",
            asset_selection=list(llm_stages.resolve(defs.resolve_asset_graph())),
        )
        assert run.success
    store = ResultStore(data_dir)
    store.refresh_views()
    return store, first


@pytest.fixture(scope="module")
def store(results):
    return results[0]


def test_two_variants_of_one_layer_are_stored_side_by_side_and_compared_in_sql(store):
    explanations = {
        variant: store.read("explanations", ["0"], [DEFAULT.slug, variant])["explanation"].unique().to_list()
        for variant in ("default", "other")
    }
    assert explanations == {"default": ["the first half of the text"], "other": ["tokens with an e"]}
    with duckdb.connect(str(store.database), read_only=True) as connection:
        compared = connection.execute(
            "SELECT variant_a, variant_b, n_paired, mean_score_a, mean_score_b, b_minus_a, difference_ci_low, "
            "difference_ci_high, verdict FROM variant_layers WHERE layer = 0 AND method = 'explanation' "
            "AND scoring_set = 'top_and_random'"
        ).fetchall()
        per_neuron = connection.execute(
            "SELECT count(*), count(top_and_random_b_minus_a) FROM variant_scores WHERE method = 'explanation'"
        ).fetchone()
        shared = connection.execute(
            "SELECT count(DISTINCT variant) FROM scores WHERE method = 'lookup_table'"
        ).fetchone()
    ((a, b, n, mean_a, mean_b, difference, low, high, verdict),) = compared
    assert (a, b) == ("default", "other") and n == per_neuron[1] >= 2
    assert difference == pytest.approx(mean_b - mean_a)
    assert low <= difference <= high and verdict in {
        "variant_a better",
        "variant_b better",
        "no clear difference",
        "too few neurons",
    }
    assert shared == (2,)  # token baselines are scored within each variant, from the one shared recording


def test_the_scores_asset_metadata_links_its_preview_to_the_viewer_and_carries_the_plots(results):
    _, run = results
    (materialization,) = run.asset_materializations_for_node(DEFAULT.op_name("scores"))
    metadata = {name: value.value for name, value in materialization.metadata.items()}
    viewer = f"http://127.0.0.1:8765/{DEFAULT.slug}/default"
    assert metadata["viewer"] == f"{viewer}/"
    pages = [record.data["viewer"] for record in metadata["top_and_random_preview"].records]
    assert pages and all(page.startswith(f"{viewer}/layer-0/neuron-") for page in pages)
    assert metadata["plots"].count("](data:image/svg+xml;base64,") >= 3


def neuron_pages(store):
    data = ViewerData(store)
    shown = Shown(DEFAULT.slug, "default")
    neurons = data.index(shown, None, IndexQuery()).rows
    return data, neurons


def test_the_index_lists_every_scored_neuron_with_its_explanation_and_scores(store):
    data, neurons = neuron_pages(store)
    html = render(data, f"/{DEFAULT.slug}/default/")
    assert len(neurons) == 3
    for row in neurons.iter_rows(named=True):
        assert f'/layer-0/neuron-{row["neuron"]}"' in html
    assert html.count(">the first half of the text</td>") == 3
    assert html.count("<svg") >= 3  # layer means, distribution, explanation vs baselines


def test_a_layer_index_lists_that_layers_neurons_and_links_every_stored_layer(store):
    html = render(ViewerData(store), f"/{DEFAULT.slug}/default/layer-0/")
    assert "variant default, layer 0</small>" in html and html.count(">the first half of the text</td>") == 3


def test_the_same_results_in_a_bucket_give_the_same_pages_views_and_demo_printout(store, bucket, tmp_path, capsys):
    """Results on object storage (NEURON_ASSETS_DATA_DIR=s3://...): the run's files copied to a
    SeaweedFS bucket, read back by the viewer, the DuckDB views and make demo's printout."""
    from neuron_assets.demo import print_results

    in_bucket = ResultStore(f"s3://{bucket}/copy", local_dir=tmp_path)
    for path in store.root.rglob("*.parquet"):
        if "llm_cache" not in path.parts:
            in_bucket.fs.put_file(str(path), f"{bucket}/copy/{path.relative_to(store.root).as_posix()}")
    assert in_bucket.refresh_views()
    pages = (f"/{DEFAULT.slug}/default/", f"/{DEFAULT.slug}/default/layer-0/", f"/{OTHER.slug}/other/")
    data, neurons = neuron_pages(store)
    pages += (f"/{DEFAULT.slug}/default/layer-0/neuron-{neurons['neuron'][0]}",)
    for page in pages:
        assert render(ViewerData(in_bucket), page) == render(ViewerData(store), page), page
    sql = "SELECT * FROM neuron_scores ORDER BY ALL"
    with store.connect() as local, in_bucket.connect() as remote:
        assert remote.sql(sql).fetchall() == local.sql(sql).fetchall()
    printed = []
    for results in (store, in_bucket):
        print_results(results, 0, 0, DEFAULT)
        printed.append(capsys.readouterr().out.split("\nNeuron viewer")[0])
    assert printed[0] == printed[1] and "Per neuron" in printed[0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nomodel/default/", "no scores stored for subject model 'nomodel'"),
        (f"/{DEFAULT.slug}/missing/", "variant 'missing'"),
        (f"/{DEFAULT.slug}/Bad-Name/", "is not a viewer page"),
        (f"/{DEFAULT.slug}/default/layer-7/neuron-0", "no neuron_stats stored for subject model"),
        (f"/{DEFAULT.slug}/default/layer-7/", "no scores stored for subject model .*, variant 'default' for layer 7"),
        (f"/{DEFAULT.slug}/default/layer-0/neuron-99999", "neuron 99999 (positive) of layer 0 was not recorded"),
    ],
)
def test_a_page_for_results_that_do_not_exist_says_what_is_missing(store, path, message):
    with pytest.raises(ViewerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        render(ViewerData(store), path)


@pytest.fixture(scope="module")
def viewer(store):
    from viewer_server import serving

    with serving(store.root) as url:
        yield url


@pytest.fixture
def screenshots(tmp_path):
    """Where screenshots go: NEURON_ASSETS_SCREENSHOTS when set (to keep them), else the test's folder."""
    folder = Path(os.environ.get("NEURON_ASSETS_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_in_a_browser_the_index_sorts_by_a_score_and_searches_explanations(store, viewer, browser, screenshots):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(f"{viewer}/{DEFAULT.slug}/default/")
    rows = page.locator("#neurons tbody tr")
    assert rows.count() == 3
    assert page.locator("svg").count() >= 3
    header = page.locator("#neurons th", has_text="lookup_table").first
    column = header.evaluate("th => th.cellIndex")
    header.locator("a").click()  # first click: highest first
    page.wait_for_url("**sort=lookup_table**")
    shown = [float(v) if v else None for v in rows.evaluate_all(f"rs => rs.map(r => r.cells[{column}].dataset.value)")]
    defined = [v for v in shown if v is not None]
    assert defined == sorted(defined, reverse=True) and shown[: len(defined)] == defined
    page.screenshot(path=str(screenshots / "index.png"), full_page=True)
    page.fill("#search", "no such explanation")
    page.press("#search", "Enter")
    page.wait_for_url("**q=no+such+explanation**")
    assert rows.count() == 0 and page.locator("#matching").inner_text() == "0"
    page.fill("#search", "first half")
    page.press("#search", "Enter")
    page.wait_for_url("**q=first+half**")
    assert rows.count() == 3


def test_in_a_browser_a_neuron_page_shows_its_explanation_and_colours_every_firing_token(
    store, viewer, browser, screenshots
):
    data, neurons = neuron_pages(store)
    neuron = neurons["neuron"][0]
    parts = data.neuron(Shown(DEFAULT.slug, "default"), 0, neuron, "positive")
    firing = sum(sum(1 for v in r["activations"] if v > 0) for r in parts["records"].iter_rows(named=True))
    firing += sum(
        sum(1 for v in r["true_activations"] if v > 0) + sum(1 for v in r["simulated"] if v is not None and v > 0)
        for r in parts["simulations"].iter_rows(named=True)
    )
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(f"{viewer}/{DEFAULT.slug}/default/layer-0/neuron-{neuron}")
    assert page.locator("h1").inner_text() == f"layer 0 neuron {neuron}"
    assert "the first half of the text" in page.locator("#explanations").inner_text()
    assert page.locator(".tok.lit").count() == firing > 0
    assert page.locator("#simulations .pair").count() == len(parts["simulations"]) == 4  # 2 top + 2 random
    page.screenshot(path=str(screenshots / "neuron.png"), full_page=True)


def test_in_a_browser_a_bad_address_shows_the_reason_and_no_stack_trace(viewer, browser):
    page = browser.new_page()
    response = page.goto(f"{viewer}/{DEFAULT.slug}/Bad-Name/layer-0/neuron-0")
    assert response.status == 404
    text = page.locator("body").inner_text()
    assert "is not a viewer page" in text and "Traceback" not in text
