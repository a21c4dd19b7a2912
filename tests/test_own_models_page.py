"""docs/own-models.md, run as written: its ``sh`` commands in one shell, in page order.

Two things stand in for what the page assumes: the tiny GPT-2 (2 layers, width 32, random
weights) with GPT-2's real tokenizer (``tests/gpt2_tokenizer.py``) saved in
``models/gpt2``, where the page's own ``save_pretrained`` line would put GPT-2, and a
scripted OpenAI-compatible server (``tests/scripted_openai.py``) at the vLLM block's
``NEURON_ASSETS_LLM_BASE_URL``. The shell's working directory is a temporary folder holding
``.venv`` (a link to this venv), ``dagster_home/dagster.yaml`` (a copy of the repository's)
and ``models/gpt2``, so ``$PWD`` and relative paths mean what they do in a checkout and
nothing is written into the repository. ``run.yaml`` is the page's block that follows
"Save this as ``run.yaml``".

The substitutions are few and each must find its target: the base URL's value, and
``make demo`` (which would reinstall the venv) replaced by its recipe from the Makefile.
Commands that need a hub, a GPU server or other servers are left out by an explicit list,
each asserted still on the page, and every other command of the page runs: a command added
to the page is run by this test, or fails it until it is listed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
PAGE = REPO / "docs" / "own-models.md"
PAGE_URL = "http://127.0.0.1:8000/v1"  # the vLLM block's base URL: the scripted server's goes in its place
DEMO_RECIPE = "$(PY) -W ignore -m neuron_assets.demo"  # the Makefile's demo target, after its install step
RUN_YAML_INTRO = "Save this as `run.yaml`"
NOT_RUN = {
    "export NEURON_ASSETS_SUBJECT_MODEL=gpt2": "GPT-2 by its hub name: its config is fetched when the definitions load",
    '.venv/bin/python -c "from transformers import AutoModelForCausalLM, AutoTokenizer; '
    "AutoModelForCausalLM.from_pretrained('gpt2').save_pretrained('models/gpt2'); "
    "AutoTokenizer.from_pretrained('gpt2').save_pretrained('models/gpt2')\"": (
        "downloads GPT-2 from the hub; the tiny GPT-2 with GPT-2's tokenizer is saved in models/gpt2 instead"
    ),
    "vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000": "a GPU server; the scripted server stands in",
    "export NEURON_ASSETS_LLM_BASE_URL=https://api.openai.com/v1": "OpenAI instead of vLLM",
    "export NEURON_ASSETS_EXPLAINER_MODEL=gpt-4o": "OpenAI instead of vLLM",
    "export NEURON_ASSETS_SIMULATOR_MODEL=gpt-4o": "OpenAI instead of vLLM",
    'export GGUF="$HOME/models/your-model.gguf"': "llama.cpp on a GGUF of your own instead of vLLM",
    '.venv/bin/python -m neuron_assets.llm.llama_server --model "$GGUF" --model_alias my-model --n_ctx 4096 '
    "--logits_all true --port 8080": "a llama.cpp server on your GGUF",
    "export NEURON_ASSETS_LLM_BASE_URL=http://127.0.0.1:8080/v1": "llama.cpp instead of vLLM",
    "export NEURON_ASSETS_EXPLAINER_MODEL=my-model": "llama.cpp instead of vLLM",
    "export NEURON_ASSETS_SIMULATOR_MODEL=my-model": "llama.cpp instead of vLLM",
    '.venv/bin/python -m llama_cpp.server --model "$GGUF" --model_alias my-model --n_ctx 4096 --logits_all true '
    "--port 8080": "the stock llama.cpp server on your GGUF",
}
SCORES_TABLES = (
    "Per neuron, top-and-random correlation scores",
    "Per layer, top-and-random, with 95% bootstrap intervals over neurons:",
)


def page_blocks(text: str) -> list[tuple[str, str, int]]:
    """Each fenced block as (language, body, offset of its opening fence)."""
    return [(m[1], m[2], m.start()) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def commands(script: str) -> list[str]:
    """A block's commands: one a line, a heredoc together with its body and terminator."""
    found, lines = [], script.splitlines()
    i = 0
    while i < len(lines):
        line, i = lines[i], i + 1
        if not line.strip():
            continue
        heredoc = re.search(r"<<'?(\w+)'?\s*$", line)
        if heredoc:
            end = lines.index(heredoc[1], i)
            line, i = "\n".join([line, *lines[i : end + 1]]), end + 1
        found.append(line)
    return found


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not once in {text!r}: the page changed, so must this test"
    return text.replace(old, new)


def makefile_demo_command() -> str:
    """``make demo``'s command, from the Makefile: its recipe, under the DAGSTER_HOME the Makefile exports."""
    makefile = (REPO / "Makefile").read_text()
    assert "export DAGSTER_HOME := $(CURDIR)/dagster_home" in makefile.splitlines()
    recipe = re.search(r"^demo: install\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and recipe[1] == f"\t{DEMO_RECIPE}\n", "make demo runs more than the demo: check this test"
    return 'DAGSTER_HOME="$PWD/dagster_home" ' + DEMO_RECIPE.replace("$(PY)", ".venv/bin/python")


@pytest.fixture
def workdir(tmp_path):
    """A folder standing in for the repository root: the venv linked, dagster_home, the tiny GPT-2 in models/gpt2."""
    from gpt2_tokenizer import MissingRanks, save_tiny_gpt2

    root = tmp_path / "checkout"
    (root / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    assert (root / ".venv" / "bin" / "python").exists()
    try:
        save_tiny_gpt2(root / "models" / "gpt2")
    except MissingRanks as error:
        missing = str(error)
    else:
        return root
    pytest.fail(missing, pytrace=False)


def scripted_answers():
    """The scripted LLM: explanations, json simulations (fire on tokens with an 'e'), test sentences and
    revisions; ``models`` collects, per kind of call, the model names it was asked for."""
    from neuron_assets.prompts.revision import REVISER_SYSTEM, SENTENCE_WRITER_SYSTEM
    from neuron_assets.prompts.templates import EXPLAINER_SYSTEM, JSON_SIMULATOR_SYSTEM, LOOKUP_EXPLAINER_SYSTEM

    kinds = {
        EXPLAINER_SYSTEM: "explainer",
        LOOKUP_EXPLAINER_SYSTEM: "explainer",
        SENTENCE_WRITER_SYSTEM: "explainer",
        REVISER_SYSTEM: "explainer",
        JSON_SIMULATOR_SYSTEM: "simulator",
    }
    models = defaultdict(set)

    def answer(body):
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        question = body["messages"][-1]["content"]
        kind = kinds.get(system, "other")
        models[kind].add(body["model"])
        if system == SENTENCE_WRITER_SYSTEM:
            return "\n".join(f"{i + 1}. The energetic beaver number {i} felled tree {i}." for i in range(12))
        if system == REVISER_SYSTEM:
            return "words with an e in them."
        if kind == "simulator" and question.startswith("Explanation: "):
            tokens = json.loads(question.split("): ", 1)[1])
            return json.dumps([10 if "e" in token else 0 for token in tokens])
        return "tokens with an e."

    return answer, models


def test_the_own_models_page_runs_as_written_with_a_tiny_gpt2_and_a_scripted_server(workdir):
    from scripted_openai import ScriptedOpenAI

    text = PAGE.read_text(encoding="utf-8")
    blocks = page_blocks(text)
    page_commands = [command for language, body, _ in blocks if language == "sh" for command in commands(body)]
    for command in NOT_RUN:
        assert command in page_commands, f"no longer on the page, so drop it from NOT_RUN: {command!r}"
    to_run = [command for command in page_commands if command not in NOT_RUN]
    yaml_blocks = [(body, at) for language, body, at in blocks if language == "yaml"]
    intro = text.index(RUN_YAML_INTRO)
    run_yaml = next(body for body, at in yaml_blocks if at > intro)
    assert yaml.safe_load(run_yaml)["ops"]["gpt2__activation_records"]["config"]["n_neurons"] == 20
    (workdir / "run.yaml").write_text(run_yaml, encoding="utf-8")
    exported = dict(re.findall(r"^export (\w+)=(.*)$", "\n".join(to_run), re.M))
    assert exported["NEURON_ASSETS_SUBJECT_MODEL"] == '"$PWD/models/gpt2"'
    explainer, simulator = exported["NEURON_ASSETS_EXPLAINER_MODEL"], exported["NEURON_ASSETS_SIMULATOR_MODEL"]

    answer, models = scripted_answers()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURON_ASSETS_")}
    for name in ("DAGSTER_HOME", "OPENAI_API_KEY"):  # the vLLM path needs no key
        env.pop(name, None)
    env["NEURON_ASSETS_DATA_DIR"] = str(workdir / "data")  # also the default ("data" under $PWD)
    before = sorted(p.name for p in REPO.iterdir()), sorted(p.name for p in (REPO / "dagster_home").iterdir())
    with ScriptedOpenAI(answer) as server:
        script = replace_once("\n".join(to_run) + "\n", f"_BASE_URL={PAGE_URL}\n", f"_BASE_URL={server.url}\n")
        script = replace_once(script, "\nmake demo\n", f"\n{makefile_demo_command()}\n")
        script = replace_once(script, "\nexport DAGSTER_HOME=", "\necho '>>> run script'\nexport DAGSTER_HOME=")
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
        )
    output = result.stdout + result.stderr
    print(result.stdout[-8000:])  # the demo's and the script's tables
    assert result.returncode == 0, output[-6000:]
    demo, run_script = result.stdout.split(">>> run script\n")
    for printed in (demo, run_script):
        for table in SCORES_TABLES:
            assert table in printed, printed[-3000:]
    per_neuron = run_script.split(SCORES_TABLES[0])[1].split(SCORES_TABLES[1])[0]
    rows = [line.split() for line in per_neuron.splitlines()[2:] if line.strip()]
    assert {layer: sum(int(row[0]) == layer for row in rows) for layer in (0, 1)} == {0: 20, 1: 20}
    assert models["explainer"] == {explainer} and models["simulator"] == {simulator}, dict(models)
    with duckdb.connect(str(workdir / "data" / "results.duckdb"), read_only=True) as connection:
        recorded = connection.execute("SELECT DISTINCT subject_model, document_start_token FROM activation_records")
        assert recorded.fetchall() == [(str(workdir / "models" / "gpt2"), "<|endoftext|>")]
        scored = connection.execute("SELECT DISTINCT explainer_model, simulator_model FROM neuron_scores")
        assert scored.fetchall() == [(explainer, simulator)]
    with dg.DagsterInstance.from_config(str(workdir / "dagster_home")) as instance:  # the page's DAGSTER_HOME
        runs = instance.get_runs()
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS] * 2  # make demo's, the script's
        keys = {key.to_user_string() for key in instance.get_asset_keys()}
        assert {"gpt2/excerpts", "gpt2/default/scores"} <= keys
    assert (sorted(p.name for p in REPO.iterdir()), sorted(p.name for p in (REPO / "dagster_home").iterdir())) == before
