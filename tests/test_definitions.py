import json
import os
import subprocess
import sys

HEAVY = ["torch", "transformers", "transformer_lens", "openai", "duckdb", "llama_cpp"]


def load_in_fresh_process(tmp_path):
    code = (
        "import json, sys\n"
        "from neuron_assets.defs.definitions import defs\n"
        "graph = defs.resolve_asset_graph()\n"
        "keys = sorted(k.to_user_string() for k in defs.resolve_all_asset_keys())\n"
        "parts = defs.resolve_assets_def('scores').partitions_def.get_partition_keys()\n"
        f"print(json.dumps({{'keys': keys, 'partitions': parts, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = {**os.environ, "NEURON_ASSETS_DATA_DIR": str(tmp_path / "data")}
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_definitions_imports_no_heavy_library_and_opens_no_database(tmp_path):
    loaded = load_in_fresh_process(tmp_path)
    assert loaded["heavy"] == []
    assert not (tmp_path / "data").exists()


def test_asset_graph_has_every_stage(tmp_path):
    keys = load_in_fresh_process(tmp_path)["keys"]
    assert keys == sorted(
        ["documents", "excerpts", "activation_records", "neuron_stats", "explanations", "simulations", "scores"]
    )


def test_layer_partitions_follow_the_subject_models_layer_count(tmp_path):
    partitions = load_in_fresh_process(tmp_path)["partitions"]
    assert partitions == [str(layer) for layer in range(30)]  # SmolLM2-135M has 30 layers


def test_workspace_points_the_ui_at_the_definitions_module():
    with open(os.path.join(os.path.dirname(__file__), "..", "workspace.yaml"), encoding="utf-8") as handle:
        assert "neuron_assets.defs.definitions" in handle.read()
