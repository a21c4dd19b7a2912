"""Every family a researcher brings records the quantity the study means, through one loading path.

Tiny random models of each architecture are built here, offline, with the packaged
SmolLM2 tokenizer (a byte-level BPE like GPT-2's), saved to a folder and loaded as a hub
name would be. The recorded ``hook_post`` must equal what feeds the MLP's output
projection in a plain transformers forward: GELU(W_in x) for GPT-2 and Pythia,
act(gate x) * (up x) for Llama/Qwen2 and Gemma.
"""

import pytest
import torch

from neuron_assets.recording.subject_model import (
    default_cache_dir,
    load_subject_model,
    materialize_packaged_model,
)

pytestmark = pytest.mark.slow


def gpt2(vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return model, [block.mlp.c_proj for block in model.transformer.h]


def pythia(vocab):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = GPTNeoXForCausalLM(config)
    return model, [layer.mlp.dense_4h_to_h for layer in model.gpt_neox.layers]


def gated(family, vocab, **extra):
    """A gated-MLP family (Llama, Qwen2, Gemma): ``family`` is the prefix of its transformers classes."""
    import transformers

    config = getattr(transformers, f"{family}Config")(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=48,
        max_position_embeddings=64,
        **extra,
    )
    model = getattr(transformers, f"{family}ForCausalLM")(config)
    return model, [layer.mlp.down_proj for layer in model.model.layers]


def llama(vocab):
    return gated("Llama", vocab)


def qwen2(vocab):
    return gated("Qwen2", vocab)


def gemma(vocab):
    return gated("Gemma", vocab, head_dim=16)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize_packaged_model(default_cache_dir()))


@pytest.mark.parametrize("family", [gpt2, pythia, llama, qwen2, gemma], ids=lambda f: f.__name__)
def test_recorded_activations_are_what_feeds_the_mlp_output_projection(family, tokenizer, tmp_path):
    torch.manual_seed(0)
    model, output_projections = family(len(tokenizer))
    model.eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    tokens = torch.tensor([tokenizer("The cat sat on the mat, and then it left.")["input_ids"]])

    reference = {}
    handles = [
        projection.register_forward_pre_hook(lambda _m, args, layer=layer: reference.__setitem__(layer, args[0]))
        for layer, projection in enumerate(output_projections)
    ]
    with torch.inference_mode():
        model(input_ids=tokens, use_cache=False)
    for handle in handles:
        handle.remove()

    subject = load_subject_model(str(tmp_path), device="cpu")
    recorded = {}
    subject.run_with_mlp_hooks(
        tokens, {0: lambda a: recorded.__setitem__(0, a), 1: lambda a: recorded.__setitem__(1, a)}, 2
    )
    subject.bare_forward(tokens)  # the benchmark's reference pass reaches the body too
    for layer in (0, 1):
        difference = (recorded[layer].double() - reference[layer].double()).abs().max().item()
        print(f"{family.__name__} layer {layer}: largest |recorded - reference| = {difference:.3g}")
        assert difference < 1e-5
