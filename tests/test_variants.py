"""Variants a user can write down: the variants file, its settings as the assets' defaults, the
settings every LLM-stage row records, and the views that show them per variant.

The run is one small graph of the LLM stages (explanations, simulations, scores) over
hand-made recordings of two neurons, with a scripted OpenAI-compatible server: no subject
model is loaded (its layer count comes from metadata) and no LLM is run.
"""

import json
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore
from neuron_assets.variants import (
    LLM_FIELDS,
    STAGE_FIELDS,
    VariantSettings,
    VariantsFileError,
    combine,
    read_variants_file,
    record_settings,
)

EXAMPLE = Path(__file__).parent.parent / "docs" / "variants.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "variants.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_the_example_file_names_each_variant_with_its_llm_and_stage_settings():
    default, gpt4o, llama = read_variants_file(EXAMPLE)
    assert (default.name, default.llm, default.stages, default.keys) == ("default", {}, {}, [])
    assert gpt4o.llm == {
        "base_url": "https://api.openai.com/v1",
        "base_urls": [],
        "explainer_model": "gpt-4o",
        "simulator_model": "gpt-4o-mini",
        "max_concurrency": 8,
    }
    assert gpt4o.stages == {
        "explanations": {"n_samples": 3, "temperature": 1.0},
        "simulations": {"mode": "chat_logprobs"},
    }
    assert type(gpt4o.stages["explanations"]["temperature"]) is float
    assert (llama.llm["base_url"], llama.llm["base_urls"]) == ("http://gpu1:8000/v1", ["http://gpu2:8000/v1"])
    assert llama.stages["explanations"]["methods"][-1] == "next_token_explanation"
    assert gpt4o.source == str(EXAMPLE)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[variants.a]\ntemprature = 1.0\n",
            r"variant 'a': unknown key 'temprature'; known keys: \[.*'explainer_model'",
        ),
        (
            "[variants.a.explanations]\ntemprature = 1.0\n",
            r"variant 'a': unknown key 'explanations.temprature'; known keys of explanations: \[.*'temperature'",
        ),
        (
            "[variants.a.explanations]\nn_samples = '3'\n",
            r"key 'explanations.n_samples' must be an integer, not a string",
        ),
        (
            "[variants.a.explanations]\nn_samples = true\n",
            r"'explanations.n_samples' must be an integer, not a boolean",
        ),
        ("[variants.a.explanations]\nn_samples = 2.5\n", r"'explanations.n_samples' must be an integer, not a number"),
        ("[variants.a.explanations]\nmethods = 'explanation'\n", r"'explanations.methods' must be a list of strings"),
        ("[variants.a]\nbase_url = 8000\n", r"key 'base_url' must be a string or a list of strings, not an integer"),
        ("[variants.a]\nbase_url = []\n", r"variant 'a': key 'base_url' lists no server"),
        ("[variants.a]\nexplanations = 3\n", r"variant 'a': 'explanations' must be a table"),
        ("[variants.a.simulations]\nmode = 'fast'\n", r"key 'simulations.mode': \['fast'\] not among \['auto', "),
        ("[variants.a]\njson_schema_format = 'grammar'\n", r"key 'json_schema_format': \['grammar'\] not among \["),
        ("[variants.a.simulations]\nmethods = ['explanation', 'guess']\n", r"\['guess'\] not among"),
        ("[variants.a.explanations]\nmethods = ['control']\n", r"'explanations.methods': \['control'\] not among"),
        ("[variants.a]\n[variants.b]\n[variants.a]\n", r"variant 'a' is named twice \(lines 1 and 3\)"),
        ('[variants.a]\n[variants."a"]\n', r"variant 'a' is named twice \(lines 1 and 2\)"),
        ("[variants.GPT4o]\n", r"variant name 'GPT4o' cannot be part of a file name"),
        ("[variants]\na = 3\n", r"variant 'a' must be a table \(\[variants.a\]\), not an integer"),
        ("[variant.a]\n", r"unknown top-level key\(s\) \['variant'\]"),
        ("[variants.a\n", r"is not valid TOML"),
    ],
)
def test_a_bad_variants_file_is_refused_naming_the_file_the_variant_and_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(VariantsFileError, match=message) as error:
        read_variants_file(path)
    assert str(path) in str(error.value)


def test_a_missing_variants_file_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(VariantsFileError, match=r"missing.toml \(NEURON_ASSETS_VARIANTS_FILE\) cannot be read"):
        read_variants_file(tmp_path / "missing.toml")


def test_the_file_and_the_list_of_names_together_give_each_name_one_meaning(tmp_path):
    file = (VariantSettings("big", {"explainer_model": "x"}), VariantSettings("plain"))
    assert combine(None, file, "f.toml") == (("big", "plain"), file)  # no list: the file's variants
    assert combine(("default", "plain"), file, "f.toml")[0] == ("default", "plain", "big")  # plain: no settings
    with pytest.raises(VariantsFileError, match=r"f.toml: variant 'big' is also listed in NEURON_ASSETS_VARIANTS, .*"):
        combine(("big",), file, "f.toml")
    with pytest.raises(VariantsFileError, match="f.toml defines no variant"):
        combine(None, (), "f.toml")


def test_settings_read_the_variants_file_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURON_ASSETS_VARIANTS", raising=False)
    monkeypatch.setenv("NEURON_ASSETS_VARIANTS_FILE", str(EXAMPLE))
    settings = Settings.from_environment()
    assert settings.variants == ("default", "gpt4o", "llama8b")
    assert settings.settings_of("gpt4o").llm["explainer_model"] == "gpt-4o"
    assert settings.settings_of("default") == VariantSettings("default", source=str(EXAMPLE))
    monkeypatch.setenv("NEURON_ASSETS_VARIANTS", "default,other")
    assert Settings.from_environment().variants == ("default", "other", "gpt4o", "llama8b")
    assert Settings.from_environment().settings_of("other") == VariantSettings("other")
    monkeypatch.setenv("NEURON_ASSETS_VARIANTS", "gpt4o")
    with pytest.raises(VariantsFileError, match="variant 'gpt4o' is also listed in NEURON_ASSETS_VARIANTS"):
        Settings.from_environment()
    monkeypatch.delenv("NEURON_ASSETS_VARIANTS_FILE")
    assert Settings.from_environment().variants == ("gpt4o",)  # a list of names, as before
    assert Settings.from_environment().variant_settings == ()


def test_the_files_keys_are_the_llm_resources_and_the_stage_configs_fields():
    from neuron_assets.defs import classifiers, explanation, revision, simulation
    from neuron_assets.defs.resources import LLMResource

    configs = {
        "classifier_scores": classifiers.ClassifierScoreConfig,
        "explanations": explanation.ExplanationConfig,
        "simulations": simulation.SimulationConfig,
        "revision_sentences": revision.RevisionSentenceConfig,
        "revisions": revision.RevisionConfig,
        "revision_scores": revision.RevisionScoreConfig,
    }
    assert set(configs) == set(STAGE_FIELDS)
    for stage, config in configs.items():
        assert {k: f.annotation for k, f in config.model_fields.items()} == STAGE_FIELDS[stage], stage
    assert set(LLM_FIELDS) <= set(LLMResource.model_fields) - {"results", "base_urls"}


def definitions_with(tmp_path, text, **env):
    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL

    defined = read_variants_file(write(tmp_path, text))
    return build_definitions(
        Settings(
            (PACKAGED_SUBJECT_MODEL,),
            tmp_path / "data",
            env.get("url"),
            "scripted",
            "scripted",
            variants=tuple(v.name for v in defined),
            variant_settings=defined,
        ),
        cache=False,
    )


SLUG = "smollm2_135m_instruct_gguf"
FILE = """
    [variants.small.explanations]
    n_examples = 2
    [variants.small.simulations]
    mode = "json"

    [variants.big]
    explainer_model = "big-explainer"
    max_concurrency = 2
    [variants.big.explanations]
    n_examples = 2
    max_tokens = 31
    [variants.big.simulations]
    mode = "json"
"""


def test_a_variants_settings_are_its_assets_defaults_and_its_own_llm_resources(tmp_path):
    defs = definitions_with(tmp_path, FILE, url="http://gpu:8000/v1")
    job = defs.resolve_implicit_global_asset_job_def()
    schema = job.run_config_schema.config_type.fields

    def op_defaults(variant, table):
        fields = schema["ops"].config_type.fields[f"{SLUG}__{variant}__{table}"].config_type.fields
        return {k: f.default_value for k, f in fields["config"].config_type.fields.items() if f.default_provided}

    assert op_defaults("big", "explanations") == {
        "n_examples": 2,
        "max_tokens": 31,
        "lookup_tokens": 20,
        "lookup_min_count": 2,
        "n_samples": 1,
        "temperature": 1.0,
        "seed": 0,
    }
    assert op_defaults("small", "explanations")["max_tokens"] == 60
    assert op_defaults("big", "simulations")["mode"] == op_defaults("small", "simulations")["mode"] == "json"
    requirements = {
        k.to_user_string(): defs.resolve_assets_def(k).required_resource_keys for k in defs.resolve_all_asset_keys()
    }
    assert "llm__big" in requirements[f"{SLUG}/big/simulations"] and "llm" not in requirements[f"{SLUG}/big/revisions"]
    assert "llm" in requirements[f"{SLUG}/small/explanations"]  # small sets no LLM field: the shared one
    big, shared = defs.resources["llm__big"], defs.resources["llm"]
    assert (big.base_url, big.explainer_model, big.simulator_model, big.max_concurrency) == (
        "http://gpu:8000/v1",  # what the variant does not set is the environment's
        "big-explainer",
        "scripted",
        2,
    )
    assert (shared.explainer_model, shared.max_concurrency) == ("scripted", 1)
    assert type(big).model_fields["base_urls"].description == "more servers beside base_url, serving the same models"


def test_a_stages_settings_sit_on_top_of_those_of_the_rows_it_was_made_from():
    explanations = pl.DataFrame({"layer": [0, 0, 1], "run_settings": ['{"explanations":{"t":1}}'] * 2 + [None]})
    explanations = explanations.with_columns(overridden_settings=pl.lit(["explanations.t"]))
    simulations = record_settings(
        pl.DataFrame({"layer": [0, 1, 1]}), "simulations", {"mode": "json"}, ["llm.simulator_model"], explanations
    )
    assert simulations.rows() == [
        (0, '{"explanations":{"t":1},"simulations":{"mode":"json"}}', ["explanations.t", "llm.simulator_model"]),
        (1, '{"explanations":null,"simulations":{"mode":"json"}}', ["llm.simulator_model"]),  # older: not recorded
        (1, '{"explanations":null,"simulations":{"mode":"json"}}', ["llm.simulator_model"]),
    ]
    scores = record_settings(
        pl.DataFrame({"layer": [0, 0], "method": ["explanation", "lookup_table"]}),
        "scores",
        None,
        upstream=simulations,
        rows=pl.col("method") != "lookup_table",
    )
    assert scores["run_settings"].to_list() == [simulations["run_settings"][0], None]
    assert scores["overridden_settings"].to_list() == [["explanations.t", "llm.simulator_model"], None]
    mixed = explanations.with_columns(run_settings=pl.Series(["a", "b", None]))
    with pytest.raises(ValueError, match="layer 0 of explanations holds rows of 2 different settings"):
        record_settings(pl.DataFrame({"layer": [0]}), "simulations", {}, [], mixed)


def test_partitions_stored_before_settings_were_recorded_read_with_null_settings(tmp_path):
    from test_storage import scores

    store = ResultStore(tmp_path)
    store.path("scores", "3").parent.mkdir(parents=True)
    scores(3, 2).write_parquet(store.path("scores", "3"))  # no run_settings, no overridden_settings
    read = store.read("scores", ["3"])
    assert read["run_settings"].to_list() == [None, None] and read["overridden_settings"].dtype == pl.List(pl.String)
    store.refresh_views()
    with duckdb.connect(str(store.database), read_only=True) as connection:
        assert connection.execute("SELECT count(*), count(run_settings) FROM scores").fetchone() == (2, 0)


# The scripted run: two neurons of layers 0 and 1, recorded by hand.
TOKENS = [["a", "b", "c", "d"], ["b", "c", "d", "a"], ["c", "d", "a", "b"], ["d", "a", "b", "c"]] * 2


def activations(neuron: int, excerpt: int) -> list[float]:
    return [float((i + excerpt + neuron) % 3) for i in range(4)]


def store_recordings(store: ResultStore, subject_model: str, layers: tuple[int, ...]) -> None:
    """What every variant of the subject model shares, for ``layers``: excerpts (four per pool),
    activation records, the token lookup, scoring excerpts and token predictions."""
    side = {"run_id": "recording", "subject_model": subject_model, "polarity": "positive"}
    store.write(
        "excerpts",
        pl.DataFrame(
            {
                "excerpt_id": range(8),
                "corpus": ["t"] * 8,
                "subject_model": [subject_model] * 8,
                "doc_id": range(8),
                "pool": ["explanation"] * 4 + ["scoring"] * 4,
                "position": [0] * 8,
                "token_ids": [[ord(t) for t in tokens] for tokens in TOKENS],
                "tokens": TOKENS,
            }
        ),
        None,
        [SLUG],
    )
    kinds = ["top", "random", "calibration_top", "calibration_random"]
    for layer in layers:
        neurons = [dict(side, partition=f"layer-{layer}", layer=layer, neuron=n) for n in (0, 1)]
        records = [
            dict(
                n,
                corpus="t",
                pool="explanation",
                kind="top",
                quantile_bin=None,
                rank=e,
                excerpt_id=e,
                document_start_token=None,
                max_activation=max(activations(n["neuron"], e)),
                activations=activations(n["neuron"], e),
            )  # fmt: skip
            for n in neurons
            for e in range(3)
        ]
        lookup = [
            dict(n, token_id=ord(t), token=t, count=3, mean_activation=float(i))
            for n in neurons
            for i, t in enumerate("abcd")
        ]
        scoring = [
            dict(n, excerpt_id=e, excerpt_kind=kinds[e - 4], activations=activations(n["neuron"], e))
            for n in neurons
            for e in range(4, 8)
        ]
        predictions = [
            dict(s, method=m, predicted=s["activations"][::-1], true_activations=s["activations"])
            for s in scoring
            for m in ("lookup_table", "weight_based")
        ]
        for table, rows in (
            ("activation_records", records),
            ("token_lookup", lookup),
            ("scoring_excerpts", scoring),
            ("token_predictions", [{k: v for k, v in p.items() if k != "activations"} for p in predictions]),
        ):
            nullable = {c: pl.String for c in ("quantile_bin", "document_start_token") if c in rows[0]}
            store.write(table, pl.DataFrame(rows, schema_overrides=nullable), str(layer), [SLUG])


class Script:
    """Explains every neuron as "tokens a"; simulates 10 on the first token of each excerpt. Keeps the models asked."""

    def __init__(self) -> None:
        self.models: list[str] = []

    def __call__(self, body: dict) -> str:
        question = body["messages"][-1]["content"]
        if question.startswith("Explanation: "):
            tokens = json.loads(question.split("\n", 1)[1].split("): ", 1)[1])
            return json.dumps([10] + [0] * (len(tokens) - 1))
        self.models.append(body["model"])
        return "tokens a."


def query(store: ResultStore, sql: str) -> list[tuple]:
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_rows_record_their_runs_settings_and_an_override_shows_as_a_second_configuration(tmp_path):
    from scripted_openai import ScriptedOpenAI

    from neuron_assets.defs.experiments import Experiment
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL

    store = ResultStore(tmp_path / "data")
    store_recordings(store, PACKAGED_SUBJECT_MODEL, (0, 1))
    script = Script()
    with ScriptedOpenAI(script) as server, dg.instance_for_test() as instance:
        defs = definitions_with(tmp_path, FILE, url=server.url)
        job = defs.resolve_implicit_global_asset_job_def()

        def run(variant: str, layer: int, config: dict | None = None) -> None:
            experiment = Experiment(PACKAGED_SUBJECT_MODEL, variant)
            keys = [experiment.key(t) for t in ("explanations", "simulations", "scores")]
            result = job.execute_in_process(
                run_config=experiment.run_config(config or {}),
                instance=instance,
                partition_key=f"layer-{layer}",
                asset_selection=keys,
            )
            assert result.success
            store.refresh_views()

        run("small", 0)
        run("big", 0)
        assert set(script.models) == {"scripted", "big-explainer"}  # each variant's explainer, from the file
        before = query(
            store, "SELECT DISTINCT mixed_settings, verdict FROM variant_layers WHERE method = 'explanation'"
        )
        run("big", 1, {"ops": {"explanations": {"config": {"temperature": 0.5}}}})  # a run that overrides the file

    recorded = {
        (variant, layer): (json.loads(settings), overridden)
        for variant, layer, settings, overridden in query(
            store,
            "SELECT DISTINCT variant, layer, run_settings, overridden_settings FROM scores WHERE method = 'control'",
        )
    }
    small, big, overridden = recorded["small", 0], recorded["big", 0], recorded["big", 1]
    assert small[0]["explanations"] == {
        "backend": server.url,
        "explainer_model": "scripted",
        "methods": ["explanation", "lookup_explanation"],
        "n_examples": 2,
        "lookup_tokens": 20,
        "lookup_min_count": 2,
        "n_samples": 1,
        "temperature": 1.0,
        "max_tokens": 60,
        "seed": 0,
    }
    assert small[0]["simulations"] == {
        "backend": server.url,
        "simulator_model": "scripted",
        "prompt_logprobs_shift": None,
        "json_schema_format": "none",  # a base_url's default: the prompt alone asks for the JSON array
        "methods": ["explanation", "lookup_explanation", "control"],
        "control_seed": 0,
        "mode": "json",
    }
    assert (big[0]["explanations"]["explainer_model"], big[0]["explanations"]["max_tokens"]) == ("big-explainer", 31)
    assert small[1] == big[1] == []
    assert overridden[0]["explanations"]["temperature"] == 0.5 and overridden[1] == ["explanations.temperature"]
    assert query(store, "SELECT DISTINCT temperature FROM explanations WHERE variant = 'big' AND layer = 1") == [(0.5,)]
    assert query(store, "SELECT count(*) FROM scores WHERE method = 'lookup_table' AND run_settings IS NOT NULL") == [
        (0,)
    ]  # token baselines ran with no LLM stage's settings

    assert before == [(False, "too few neurons")]  # one configuration each: compared as usual
    shown = query(
        store,
        "SELECT variant, stage, layers, n_neurons, n_settings, mixed_settings, overridden_settings "
        "FROM variant_settings ORDER BY variant, stage, layers",
    )
    assert shown == [
        ("big", "explanations", [0], 2, 2, True, []),
        ("big", "explanations", [1], 2, 2, True, ["explanations.temperature"]),
        ("big", "scores", [0], 2, 2, True, []),
        ("big", "scores", [1], 2, 2, True, ["explanations.temperature"]),
        ("big", "simulations", [0], 2, 2, True, []),
        ("big", "simulations", [1], 2, 2, True, ["explanations.temperature"]),
        ("small", "explanations", [0], 2, 1, False, []),
        ("small", "scores", [0], 2, 1, False, []),
        ("small", "simulations", [0], 2, 1, False, []),
    ]
    compared = query(
        store,
        "SELECT DISTINCT variant_a, variant_b, mixed_settings, verdict, settings_a = settings_b FROM variant_layers "
        "WHERE method = 'explanation'",
    )
    assert compared == [("big", "small", True, "mixed settings", False)]
    per_neuron = query(store, "SELECT DISTINCT mixed_settings FROM variant_scores WHERE method = 'explanation'")
    assert per_neuron == [(True,)]


def test_a_variant_with_rows_of_unknown_settings_beside_recorded_ones_is_compared_as_mixed(tmp_path):
    """Rows written before settings were recorded may have run with any configuration: beside
    recorded ones they make the variant's settings mixed."""
    from test_storage import explanations, scores

    store = ResultStore(tmp_path)
    for variant, layer, settings in (("a", 3, None), ("a", 4, '{"x":1}'), ("b", 3, '{"x":2}'), ("b", 4, '{"x":2}')):
        rows = pl.concat([scores(layer, 2, variant=variant, scoring_set=s) for s in ("top_and_random", "random_only")])
        rows = rows.with_columns(
            run_settings=pl.lit(settings, pl.String), overridden_settings=pl.lit([], pl.List(pl.String))
        )
        store.write("scores", rows, str(layer), ["m", variant])
        store.write(
            "explanations",
            explanations(layer, 2, variant).with_columns(
                run_settings=pl.lit(settings, pl.String), overridden_settings=pl.lit([], pl.List(pl.String))
            ),
            str(layer),
            ["m", variant],
        )
    store.refresh_views()
    assert query(store, "SELECT DISTINCT layer, mixed_settings, verdict FROM variant_layers ORDER BY layer") == [
        (3, True, "mixed settings"),
        (4, True, "mixed settings"),
    ]
    assert query(store, "SELECT DISTINCT layer, settings_a, settings_b FROM variant_scores ORDER BY layer") == [
        (3, None, '{"x":2}'),
        (4, '{"x":1}', '{"x":2}'),
    ]
