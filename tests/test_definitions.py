import json
import os
import subprocess
import sys

import pytest

HEAVY = ["torch", "transformers", "transformer_lens", "openai", "duckdb", "llama_cpp"]


SMOL = "smollm2_135m_instruct_gguf"


def load_in_fresh_process(tmp_path, **env_settings):
    code = (
        "import json, sys\n"
        "import dagster as dg\n"
        "from neuron_assets.defs.definitions import defs\n"
        "graph = defs.resolve_asset_graph()\n"
        "keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())\n"
        "parts = {k.to_user_string(): sorted(defs.resolve_assets_def(k).partitions_def.get_partition_keys(), key=len)\n"
        "         for k in defs.resolve_all_asset_keys() if k.path[-1] == 'scores'}\n"
        "descriptions = {k.to_user_string(): graph.get(k).description for k in defs.resolve_all_asset_keys()}\n"
        "columns = {k.to_user_string(): [c.description for c in "
        "graph.get(k).metadata['dagster/column_schema'].columns]\n"
        "           for k in defs.resolve_all_asset_keys()}\n"
        f"print(json.dumps({{'keys': keys, 'partitions': parts, 'descriptions': descriptions, 'columns': columns, "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = {**os.environ, "NEURON_ASSETS_DATA_DIR": str(tmp_path / "data"), **env_settings}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


STAGES = [
    "documents",
    "excerpts",
    "activation_records",
    "neuron_stats",
    "token_lookup",
    "scoring_excerpts",
    "token_predictions",
]
LLM_STAGES = [
    "explanations",
    "simulations",
    "scores",
    "method_comparisons",
    "ablation_scores",
    "classifier_scores",
    "direction_rounds",
    "direction_summaries",
    "revision_sentences",
    "revisions",
    "revision_scores",
    "revision_comparisons",
]


def test_loading_definitions_imports_no_heavy_library_and_opens_no_database(tmp_path):
    loaded = load_in_fresh_process(tmp_path)
    assert loaded["heavy"] == []
    assert not (tmp_path / "data").exists()


def test_asset_graph_has_every_stage(tmp_path):
    keys = load_in_fresh_process(tmp_path)["keys"]
    assert keys == sorted(
        [f"{SMOL}/{t}" for t in STAGES]
        + [f"{SMOL}/default/{t}" for t in LLM_STAGES]
        + ["puzzle_scores", "puzzle_explanations"]
    )


def test_layer_partitions_follow_the_subject_models_layer_count_and_say_they_are_layers(tmp_path):
    partitions = load_in_fresh_process(tmp_path)["partitions"]
    assert partitions == {f"{SMOL}/default/scores": [f"layer-{layer}" for layer in range(30)]}  # SmolLM2-135M: 30


def test_two_subject_models_and_two_variants_get_their_own_assets_and_layer_partitions(tmp_path):
    tiny = tmp_path / "tiny_gpt2"
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_embd": 8}))
    loaded = load_in_fresh_process(
        tmp_path,
        NEURON_ASSETS_SUBJECT_MODEL=f"smollm2-135m-instruct-gguf, {tiny}",
        NEURON_ASSETS_VARIANTS="default,other",
    )
    for model in (SMOL, "tiny_gpt2"):
        assert {f"{model}/{t}" for t in STAGES} <= set(loaded["keys"])
        for variant in ("default", "other"):
            assert {f"{model}/{variant}/{t}" for t in LLM_STAGES} <= set(loaded["keys"])
    assert loaded["partitions"]["tiny_gpt2/other/scores"] == ["layer-0", "layer-1"]
    assert len(loaded["partitions"][f"{SMOL}/other/scores"]) == 30


@pytest.mark.parametrize("name", ["Other", "a-b", "a/b", "1st", "a b", ""])
def test_a_variant_name_that_cannot_be_a_folder_is_refused_naming_it(name):
    from neuron_assets.settings import Settings
    from neuron_assets.storage.layout import ExperimentNameError

    with pytest.raises((ExperimentNameError, ValueError), match="variant"):
        Settings(("m",), None, None, None, None, variants=(name,))


def test_a_partition_key_that_is_not_a_layer_is_an_error_naming_it():
    from neuron_assets.defs.partitions import layer_key, layer_of

    assert layer_of(layer_key(17)) == 17
    for bad in ("17", "layer-", "layer-x", "layer_3"):
        with pytest.raises(ValueError, match=f"partition key '{bad}' is not a layer partition"):
            layer_of(bad)


def test_every_asset_has_its_own_description_including_the_multi_assets_outputs(tmp_path):
    descriptions = load_in_fresh_process(tmp_path)["descriptions"]
    assert all(descriptions.values()), descriptions
    assert len(set(descriptions.values())) == len(descriptions)


def test_every_asset_definition_carries_its_columns_with_descriptions_for_the_ui(tmp_path):
    columns = load_in_fresh_process(tmp_path)["columns"]
    assert len(columns) == len(STAGES) + len(LLM_STAGES) + 2
    assert all(descriptions and all(descriptions) for descriptions in columns.values()), columns


def test_the_ui_column_table_shows_every_columns_description():
    from neuron_assets.defs.common import column_schema
    from neuron_assets.storage.schemas import TABLES

    for table in TABLES:
        columns = column_schema(table).columns
        assert columns and all(column.description for column in columns), table


def test_workspace_points_the_ui_at_the_definitions_module():
    with open(os.path.join(os.path.dirname(__file__), "..", "workspace.yaml"), encoding="utf-8") as handle:
        assert "neuron_assets.defs.definitions" in handle.read()


def test_the_llm_stages_fan_out_per_n_layers_when_asked_while_recording_stays_one_run(monkeypatch, tmp_path):
    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.settings import Settings

    monkeypatch.setenv("NEURON_ASSETS_LLM_LAYERS_PER_RUN", "4")
    monkeypatch.setenv("NEURON_ASSETS_DATA_DIR", str(tmp_path))
    defs = build_definitions(Settings.from_environment())
    policies = {
        k.path[-1]: defs.resolve_assets_def(k).backfill_policy
        for k in defs.resolve_all_asset_keys()
        if k.path[-1] in ("activation_records", "token_predictions", "explanations", "scores")
    }
    assert policies["activation_records"].max_partitions_per_run is None  # one forward pass for all layers
    assert policies["token_predictions"].max_partitions_per_run is None
    assert policies["explanations"].max_partitions_per_run == policies["scores"].max_partitions_per_run == 4


def test_recording_fans_out_per_n_layers_when_asked_so_each_pass_holds_that_many_layers(monkeypatch, tmp_path):
    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.settings import Settings

    monkeypatch.setenv("NEURON_ASSETS_RECORDING_LAYERS_PER_RUN", "2")
    monkeypatch.setenv("NEURON_ASSETS_DATA_DIR", str(tmp_path))
    defs = build_definitions(Settings.from_environment())
    policies = {
        k.path[-1]: defs.resolve_assets_def(k).backfill_policy
        for k in defs.resolve_all_asset_keys()
        if k.path[-1] in ("activation_records", "neuron_stats", "explanations")
    }
    assert policies["activation_records"].max_partitions_per_run == 2
    assert policies["neuron_stats"].max_partitions_per_run == 2  # the same multi-asset, the same runs
    assert policies["explanations"].max_partitions_per_run is None


def test_the_subject_models_device_comes_from_the_environment_and_defaults_to_auto(monkeypatch, tmp_path):
    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.settings import Settings

    monkeypatch.setenv("NEURON_ASSETS_DATA_DIR", str(tmp_path))
    assert build_definitions(Settings.from_environment()).resources["subject_model"].device == "auto"
    monkeypatch.setenv("NEURON_ASSETS_DEVICE", "cpu")
    assert build_definitions(Settings.from_environment()).resources["subject_model"].device == "cpu"


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_layers_per_run_that_is_not_a_positive_number_is_refused_naming_the_setting(monkeypatch, value):
    from neuron_assets.settings import Settings

    monkeypatch.setenv("NEURON_ASSETS_LLM_LAYERS_PER_RUN", value)
    with pytest.raises(ValueError, match="NEURON_ASSETS_LLM_LAYERS_PER_RUN must be a whole number"):
        Settings.from_environment()


def test_the_projects_dagster_instance_runs_more_than_one_run_at_a_time():
    import dagster as dg

    home = os.path.join(os.path.dirname(__file__), "..", "dagster_home")
    with dg.DagsterInstance.from_config(home) as instance:
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs >= 2


def test_a_run_config_block_naming_one_llm_field_keeps_the_configured_server_and_models(tmp_path):
    """Dagster replaces the whole configuration of a resource that run config names: the
    settings are the fields' defaults, so a pasted ``max_concurrency`` keeps the server."""
    import dagster as dg

    from neuron_assets.defs.definitions import build_definitions
    from neuron_assets.defs.resources import LLMResource, SubjectModelResource
    from neuron_assets.recording.subject_model import PACKAGED_SUBJECT_MODEL
    from neuron_assets.settings import Settings

    settings = Settings(
        subject_models=(PACKAGED_SUBJECT_MODEL,),
        data_dir=tmp_path,
        llm_base_url="http://gpu1:8000/v1,http://gpu2:8000/v1",
        explainer_model="big-explainer",
        simulator_model="big-simulator",
        device="cpu",
    )
    seen = {}

    @dg.asset
    def probe(llm: LLMResource, subject_model: SubjectModelResource) -> None:
        seen.update(llm.model_dump(exclude={"results"}), device=subject_model.device)

    resources = build_definitions(settings).resources
    job = dg.Definitions(assets=[probe], resources=resources).resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(run_config={"resources": {"llm": {"config": {"max_concurrency": 8}}}}).success
    assert seen["max_concurrency"] == 8
    assert (seen["base_url"], seen["base_urls"]) == ("http://gpu1:8000/v1", ["http://gpu2:8000/v1"])
    assert (seen["explainer_model"], seen["simulator_model"], seen["device"]) == (
        "big-explainer",
        "big-simulator",
        "cpu",
    )


def test_the_json_replies_schema_form_is_the_local_servers_unless_a_server_is_named(tmp_path):
    """The local llama-cpp-python server takes ``json_object`` with a schema; a named server is
    asked with the prompt alone unless the form it takes is set (OpenAI refuses an array root)."""
    from neuron_assets.defs.resources import LLMResource, ResultStoreResource

    results = ResultStoreResource(data_dir=str(tmp_path))
    assert LLMResource(results=results).reply_schema_format() == "json_object"
    assert LLMResource(results=results, base_url="http://gpu1:8000/v1").reply_schema_format() == "none"
    named = LLMResource(results=results, base_url="http://gpu1:8000/v1", json_schema_format="json_schema")
    assert named.reply_schema_format() == "json_schema"
    with pytest.raises(ValueError, match=r"json_schema_format 'xml' is not one of"):
        LLMResource(results=results, json_schema_format="xml").reply_schema_format()
