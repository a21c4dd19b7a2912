"""Every family through the Dagster assets: recording, token baselines and revision sentences
record what feeds the MLP's output projection.

Tiny random models of GPT-2 (GPT-2's real BPE), Pythia (GPT-NeoX), Llama, Qwen2 and Gemma
(the packaged SmolLM2 tokenizer) are built offline with the builders of
``test_subject_model_families``, their weights redrawn at a scale that gives activations of
order 1 (so an absolute tolerance of 1e-5 means something), and saved to folders. One
Definitions holds the five subject models; each gets one Dagster run of layers 0-1 through
every group (recording, explanation, simulation, scoring, revision) with a scripted
OpenAI-compatible LLM and four listed neurons a layer.

What is read back, from the DuckDB views, is compared with a plain transformers forward on the
same token ids (the document start token first, as recording puts it) with a forward
pre-hook on the MLP's output projection (``c_proj``, ``dense_4h_to_h``, ``down_proj``): its
input is GELU(W_in x) for GPT-2 and Pythia, act(gate x) * (up x) for the gated families. The
stored activation records, the weight-based baseline's predictions (the layer's own pre-MLP
norm and MLP on the token's embedding alone) and the revision sentences' activations must all
match it to 1e-5; the largest difference of each is printed per family.
"""

import json
import time

import dagster as dg
import duckdb
import pytest
import torch
from test_subject_model_families import gated, gpt2, pythia

from neuron_assets.defs.definitions import build_definitions
from neuron_assets.defs.experiments import Experiment
from neuron_assets.demo import PIPELINE_GROUPS, materialize_layers
from neuron_assets.recording.subject_model import default_cache_dir, materialize_packaged_model
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.settings import Settings
from neuron_assets.storage.store import ResultStore

pytestmark = pytest.mark.slow

FAMILIES = ("gpt2", "pythia", "llama", "qwen2", "gemma")
GATED = ("llama", "qwen2", "gemma")
LAYERS = (0, 1)
NEURONS = [1, 6, 11, 16]  # every family's MLP is wider than 16
WEIGHT_SCALE = 0.15  # about 1 / sqrt(width 32): pre-activations, and so activations, of order 1
TOLERANCE = 1e-5
N_DOCUMENTS = 80  # of the Lee corpus: some 550 excerpts, a quarter of the whole corpus's
CONFIG = {
    "ops": {
        "excerpts": {"config": {"length": 32}},  # with the start token, within the 64 positions
        "activation_records": {
            "config": {"selection": "list", "neuron_indices": NEURONS, "batch_size": 64, "top_k": 4, "n_random": 6}
        },
        "scoring_excerpts": {"config": {"n_top": 2, "n_random": 2, "n_calibration_top": 1, "n_calibration_random": 1}},
        "explanations": {"config": {"n_examples": 2, "lookup_tokens": 8}},
        "simulations": {"config": {"mode": "json"}},
        "revision_sentences": {"config": {"n_sentences": 4, "n_revision": 2, "max_sentence_tokens": 32}},
        "revisions": {"config": {"n_examples": 2}},
        "revision_scores": {"config": {"mode": "json"}},
    }
}


def build(family, vocab):
    """The family's tiny model, and per layer: the output projection, the pre-MLP norm, the MLP."""
    if family == "gpt2":
        model, projections = gpt2(vocab)
        blocks = [(block.ln_2, block.mlp) for block in model.transformer.h]
    elif family == "pythia":
        model, projections = pythia(vocab)
        blocks = [(layer.post_attention_layernorm, layer.mlp) for layer in model.gpt_neox.layers]
    else:
        name = {"llama": "Llama", "qwen2": "Qwen2", "gemma": "Gemma"}[family]
        model, projections = gated(name, vocab, **({"head_dim": 16} if family == "gemma" else {}))
        blocks = [(layer.post_attention_layernorm, layer.mlp) for layer in model.model.layers]
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:  # embeddings and projections; norms and biases keep their init
                parameter.normal_(0.0, WEIGHT_SCALE)
    return model.eval(), projections, blocks


def scripted_answer(body):
    """Explanations and revisions name tokens with an 'e'; the json simulator writes 10 on them;
    the sentence writer writes four sentences."""
    from neuron_assets.prompts.revision import REVISER_SYSTEM, SENTENCE_WRITER_SYSTEM

    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    question = body["messages"][-1]["content"]
    if system == SENTENCE_WRITER_SYSTEM:
        return "\n".join(f"{i + 1}. The energetic beaver number {i} felled tree {i} near the river." for i in range(4))
    if system == REVISER_SYSTEM:
        return "words with an e in them."
    if question.startswith("Explanation: "):
        tokens = json.loads(question.split("): ", 1)[1])
        return json.dumps([10 if "e" in token else 0 for token in tokens])
    return "tokens with an e."


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Per family: (folder, model, projections, blocks, tokenizer); per family, its run's asset check
    evaluations as {check key: passed}; and the store after one run per family.

    The Dagster instance is ephemeral (in memory): a SQLite one writes each of a run's ~250 events
    to disk on its own, which took half of this fixture's time on a busy machine."""
    from gpt2_tokenizer import MissingRanks, gpt2_tokenizer
    from scripted_openai import ScriptedOpenAI
    from transformers import AutoTokenizer

    try:
        gpt2_bpe = gpt2_tokenizer()
    except MissingRanks as error:
        pytest.fail(str(error), pytrace=False)
    smollm2 = AutoTokenizer.from_pretrained(materialize_packaged_model(default_cache_dir()))
    root = tmp_path_factory.mktemp("families")
    built = {}
    for family in FAMILIES:
        tokenizer = gpt2_bpe if family == "gpt2" else smollm2
        torch.manual_seed(0)
        model, projections, blocks = build(family, len(tokenizer))
        folder = root / family
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        built[family] = (str(folder), model, projections, blocks, tokenizer)

    corpus = root / "corpus"
    corpus.mkdir()
    documents = load_documents("lee")["text"].head(N_DOCUMENTS).to_list()
    (corpus / "lee_head.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    config = {"ops": {**CONFIG["ops"], "documents": {"config": {"source": str(corpus)}}}}
    data_dir = root / "results"
    checks = {}
    with ScriptedOpenAI(scripted_answer) as server, dg.DagsterInstance.ephemeral() as instance:
        settings = Settings(
            subject_models=tuple(folder for folder, *_ in built.values()),
            data_dir=data_dir,
            llm_base_url=server.url,
            explainer_model="scripted",
            simulator_model="scripted",
            device="cpu",
        )
        defs = build_definitions(settings, cache=False)
        for family, (folder, *_) in built.items():
            started = time.perf_counter()
            result = materialize_layers(
                defs, LAYERS[0], LAYERS[-1], config, instance, PIPELINE_GROUPS, Experiment(folder)
            )
            assert result.success, family
            checks[family] = {
                c.asset_check_key.to_user_string(): c.passed for c in result.get_asset_check_evaluations()
            }
            print(f"{family}: one run of layers {LAYERS} in {time.perf_counter() - started:.1f}s")
    return built, checks, ResultStore(data_dir)


def query(store, sql, *parameters):
    with duckdb.connect(str(store.database), read_only=True) as connection:
        return connection.execute(sql, list(parameters)).fetchall()


def reference_post(model, projections, sequences):
    """Per layer, the input of the MLP's output projection over each token sequence: [positions, d_mlp] each."""
    captured = {layer: [] for layer in range(len(projections))}
    handles = [
        projection.register_forward_pre_hook(lambda _m, args, layer=layer: captured[layer].append(args[0][0].double()))
        for layer, projection in enumerate(projections)
    ]
    try:
        with torch.inference_mode():
            for ids in sequences:
                model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def start_token_id(store, folder, tokenizer):
    (start,) = query(
        store, "SELECT DISTINCT document_start_token FROM activation_records WHERE subject_model = ?", folder
    )
    return tokenizer.convert_tokens_to_ids(start[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_recorded_activations_are_what_feeds_the_mlp_output_projection(families, family):
    built, _, store = families
    folder, model, projections, _, tokenizer = built[family]
    start = start_token_id(store, folder, tokenizer)
    assert start == (50256 if family == "gpt2" else 0)  # <|endoftext|> in both vocabularies
    rows = query(
        store,
        "SELECT r.layer, r.neuron, e.token_ids, r.activations FROM activation_records r "
        "JOIN excerpts e USING (subject_model, excerpt_id) WHERE r.subject_model = ? AND r.polarity = 'positive'",
        folder,
    )
    sequences = sorted({tuple(ids) for _, _, ids, _ in rows})
    reference = reference_post(model, projections, [[start, *ids] for ids in sequences])
    index = {ids: i for i, ids in enumerate(sequences)}
    assert {(layer, neuron) for layer, neuron, *_ in rows} == {(layer, n) for layer in LAYERS for n in NEURONS}
    largest, scale = 0.0, 0.0
    for layer, neuron, ids, activations in rows:
        expected = reference[layer][index[tuple(ids)]][1:, neuron]
        recorded = torch.tensor(activations, dtype=torch.float64)
        largest = max(largest, (recorded - expected).abs().max().item())
        scale = max(scale, expected.abs().max().item())
    print(
        f"{family}: {len(rows)} records, largest |recorded - reference| = {largest:.3g} (|activation| <= {scale:.3g})"
    )
    assert scale > 0.5  # activations of order 1: the tolerance is tight
    assert largest < TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_based_predictions_are_the_layers_norm_and_mlp_on_the_embedding(families, family):
    built, _, store = families
    folder, model, projections, blocks, _ = built[family]
    rows = query(
        store,
        "SELECT p.layer, p.neuron, e.token_ids, p.predicted FROM token_predictions p "
        "JOIN excerpts e ON e.subject_model = p.subject_model AND e.excerpt_id = p.excerpt_id "
        "WHERE p.subject_model = ? AND p.method = 'weight_based' AND p.polarity = 'positive'",
        folder,
    )
    assert rows
    token_ids = sorted({t for *_, ids, _ in rows for t in ids})
    by_layer = {}
    for layer, (norm, mlp) in enumerate(blocks):
        captured = []
        handle = projections[layer].register_forward_pre_hook(lambda _m, args: captured.append(args[0][0].double()))
        try:
            with torch.inference_mode():
                mlp(norm(model.get_input_embeddings()(torch.tensor(token_ids))[None]))
        finally:
            handle.remove()
        by_layer[layer] = dict(zip(token_ids, captured[0], strict=True))
    largest = max(
        abs(value - by_layer[layer][token][neuron].item())
        for layer, neuron, ids, predicted in rows
        for token, value in zip(ids, predicted, strict=True)
    )
    print(f"{family}: weight-based, largest |predicted - reference| = {largest:.3g}")
    assert largest < TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_revision_sentences_activations_are_what_feeds_the_mlp_output_projection(families, family):
    built, _, store = families
    folder, model, projections, _, tokenizer = built[family]
    start = start_token_id(store, folder, tokenizer)
    rows = query(
        store,
        "SELECT layer, neuron, text, activations FROM revision_sentences "
        "WHERE subject_model = ? AND rejected_reason IS NULL AND polarity = 'positive'",
        folder,
    )
    assert len(rows) == len(LAYERS) * len(NEURONS) * 4
    texts = sorted({text for _, _, text, _ in rows})
    ids = dict(zip(texts, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True))
    reference = reference_post(model, projections, [[start, *ids[text]] for text in texts])
    position = {text: i for i, text in enumerate(texts)}
    largest = max(
        (torch.tensor(activations, dtype=torch.float64) - reference[layer][position[text]][1:, neuron])
        .abs()
        .max()
        .item()
        for layer, neuron, text, activations in rows
    )
    print(f"{family}: revision sentences, largest |measured - reference| = {largest:.3g}")
    assert largest < TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_every_asset_check_of_the_run_passed(families, family):
    _, checks, _ = families
    print(f"{family}: {sum(checks[family].values())} of {len(checks[family])} asset checks passed")
    assert any(key.endswith("scores:undefined_scores_carry_a_reason") for key in checks[family]), checks[family]
    assert all(checks[family].values()), [key for key, passed in checks[family].items() if not passed]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_has_scores_defined_or_with_a_reason(families, family):
    built, _, store = families
    folder = built[family][0]
    rows = query(
        store,
        "SELECT method, layer, neuron, scoring_set, correlation, undefined_reason FROM scores "
        "WHERE subject_model = ? AND polarity = 'positive'",
        folder,
    )
    scored = {(method, layer, neuron, scoring_set) for method, layer, neuron, scoring_set, *_ in rows}
    for method in ("explanation", "lookup_table", "weight_based"):
        for layer in LAYERS:
            for neuron in NEURONS:
                for scoring_set in ("top_and_random", "random_only"):
                    assert (method, layer, neuron, scoring_set) in scored, (method, layer, neuron, scoring_set)
    for method, layer, neuron, scoring_set, correlation, reason in rows:
        assert (correlation is None) != (reason is None), (method, layer, neuron, scoring_set)
        assert correlation is None or -1.0 <= correlation <= 1.0
    defined = {method for method, *_, correlation, _ in rows if correlation is not None}
    reasons = sorted({reason.split(":")[0] for *_, reason in rows if reason is not None})
    print(f"{family}: {len(rows)} scores, {sum(r[4] is None for r in rows)} undefined ({reasons})")
    assert {"explanation", "lookup_table", "weight_based"} <= defined, defined
    revised = query(
        store,
        "SELECT count(*) FROM revision_scores WHERE subject_model = ? AND revision_kind = 'revised'",
        folder,
    )
    assert revised[0][0] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_gated_families_record_both_signs_and_gelu_ones_stay_above_gelus_minimum(families, family):
    """act(gate) * up takes either sign freely; GELU's output is never below about -0.17."""
    built, _, store = families
    ((low, high),) = query(
        store,
        "SELECT min(a), max(a) FROM (SELECT unnest(activations) AS a FROM activation_records "
        "WHERE subject_model = ? AND polarity = 'positive')",
        built[family][0],
    )
    print(f"{family}: recorded activations in [{low:.3g}, {high:.3g}]")
    assert low < 0 < high
    if family in GATED:
        assert -low > 0.2 * high  # a substantial negative side, not GELU's small dip
    else:
        assert low >= -0.1701
