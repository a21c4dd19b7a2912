"""Every family a researcher brings records the quantity the study means, through one loading path.

Tiny random models of each architecture are built here, offline, saved to a folder and
loaded as a hub name would be: GPT-2 with GPT-2's real tokenizer (rebuilt from the BPE
ranks openai-whisper ships, ``tests/gpt2_tokenizer.py``), the others with the packaged
SmolLM2 tokenizer (a byte-level BPE like GPT-2's). The recorded ``hook_post`` must equal
what feeds the MLP's output projection in a plain transformers forward: GELU(W_in x) for
GPT-2 and Pythia, act(gate x) * (up x) for Llama/Qwen2 and Gemma. For GPT-2, recording
puts the real ``<|endoftext|>`` (id 50256) before each excerpt.
"""

import polars as pl
import pytest
import torch
from gpt2_tokenizer import END_OF_TEXT, END_OF_TEXT_ID, KNOWN_IDS, VOCAB_SIZE, MissingRanks, gpt2_tokenizer

from neuron_assets.recording.recorder import RecordingSettings, random_sample, record, record_tables
from neuron_assets.recording.subject_model import (
    SubjectModelError,
    default_cache_dir,
    load_subject_model,
    materialize_packaged_model,
)
from neuron_assets.sampling.corpus import load_documents
from neuron_assets.sampling.excerpts import make_excerpts

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
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize_packaged_model(default_cache_dir()))


@pytest.fixture(scope="module")
def real_gpt2_tokenizer():
    """GPT-2's own tokenizer; a checkout without openai-whisper fails here, saying how to get it."""
    try:
        return gpt2_tokenizer()
    except MissingRanks as error:
        missing = str(error)
    pytest.fail(missing, pytrace=False)


@pytest.fixture
def tokenizer(request, family):
    return request.getfixturevalue("real_gpt2_tokenizer" if family is gpt2 else "smollm2_tokenizer")


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


@pytest.mark.parametrize("family", [gpt2, pythia, llama, qwen2, gemma], ids=lambda f: f.__name__)
def test_make_bench_measures_every_family(family, tokenizer, tmp_path, capsys):
    """``make bench ARGS="--model FOLDER"``: every variant of the recording bench runs and is timed."""
    from neuron_assets.benches import recording as bench

    torch.manual_seed(0)
    model, _ = family(len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    args = ["--model", str(tmp_path), "--excerpts", "16", "--length", "32", "--batch-size", "8", "--rounds", "1"]
    with torch.enable_grad():  # the bench turns gradients off for its process; restored on leaving
        bench.main(args)  # 32 tokens and the start token: within the tiny models' 64 positions
    printed = capsys.readouterr().out
    assert f"model {tmp_path}, 16 excerpts" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("bare forward", "TransformerBridge", "record"))]
    assert [row.split()[0] for row in rows] == ["bare", "TransformerBridge", "record", "record", "record"]
    assert "record layer 1 x" in printed  # the bench's early layer, clamped to the model's last
    assert all(float(row.split()[-3]) > 0 for row in rows)  # tokens per second


def test_a_model_folder_without_its_tokenizer_is_refused_at_load(tmp_path):
    model, _ = gpt2(100)
    model.save_pretrained(tmp_path)  # no tokenizer files beside the weights
    with pytest.raises(SubjectModelError, match="no usable tokenizer.*tokenizer.save_pretrained"):
        load_subject_model(str(tmp_path), device="cpu")


def test_a_tokenizer_whose_ids_the_model_cannot_embed_is_refused_at_load(smollm2_tokenizer, tmp_path):
    model, _ = gpt2(100)  # 100 embedding rows; SmolLM2's ids go to 49,151
    model.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SubjectModelError, match=r"embeds only ids 0\.\.99.*not the model's"):
        load_subject_model(str(tmp_path), device="cpu")


def test_the_gpt2_tokenizer_is_gpt2s(real_gpt2_tokenizer):
    """Known ids, and the recovered merges encode as BPE by rank does (tiktoken's rule) on real text."""
    from gpt2_tokenizer import bytes_to_unicode, ranks_path, read_ranks

    assert len(real_gpt2_tokenizer) == VOCAB_SIZE
    assert real_gpt2_tokenizer.bos_token_id == real_gpt2_tokenizer.eos_token_id == END_OF_TEXT_ID
    for text, ids in KNOWN_IDS.items():
        assert real_gpt2_tokenizer(text)["input_ids"] == ids
    ranks = read_ranks(ranks_path())
    char_byte = {c: b for b, c in bytes_to_unicode().items()}
    text = " ".join(load_documents("lee")["text"].head(20).to_list())
    pieces = real_gpt2_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    by_rank = [ranks[part] for piece, _ in pieces for part in bpe_by_rank(ranks, bytes(char_byte[c] for c in piece))]
    assert real_gpt2_tokenizer(text)["input_ids"] == by_rank


def bpe_by_rank(ranks, word: bytes) -> list[bytes]:
    parts = [bytes([b]) for b in word]
    while len(parts) > 1:
        pairs = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
        rank, at = min((pair for pair in pairs if pair[0] is not None), default=(None, None))
        if rank is None:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


def test_gpt2_records_each_excerpt_after_the_real_endoftext(real_gpt2_tokenizer, tmp_path):
    """Recording feeds ``<|endoftext|>`` (50256) and then the excerpt; the stored activations are the
    excerpt's positions of that forward pass."""
    torch.manual_seed(0)
    model, output_projections = gpt2(VOCAB_SIZE)
    model.eval()
    model.save_pretrained(tmp_path)
    real_gpt2_tokenizer.save_pretrained(tmp_path)
    subject = load_subject_model(str(tmp_path), device="cpu")
    assert subject.document_start_token() == (END_OF_TEXT_ID, END_OF_TEXT)
    assert subject.tokenize(["Hello world"]) == [KNOWN_IDS["Hello world"]]

    excerpts = make_excerpts(
        load_documents("lee").head(8), subject.tokenize, subject.token_text, subject.name, length=16
    )
    fed = []

    def run(tokens, hooks, stop_at_layer):
        fed.append(tokens.clone())
        subject.run_with_mlp_hooks(tokens, hooks, stop_at_layer)

    neurons = list(range(0, 128, 16))
    recorders = record(
        run,
        excerpts,
        {0: neurons, 1: neurons},
        random_sample(excerpts, 4, 0),
        start_token_id=subject.document_start_token_id(),
        top_k=3,
    )
    fed = torch.cat(fed)
    assert (fed[:, 0] == END_OF_TEXT_ID).all()
    assert fed[:, 1:].tolist() == excerpts["token_ids"].to_list()

    records, _, _ = record_tables(recorders, RecordingSettings())
    by_id = dict(zip(excerpts["excerpt_id"], excerpts["token_ids"]))
    top = records.filter(pl.col("kind") == "top")
    reference = {}
    handles = [
        projection.register_forward_pre_hook(lambda _m, args, layer=layer: reference.__setitem__(layer, args[0]))
        for layer, projection in enumerate(output_projections)
    ]
    forwards = {}
    try:
        for excerpt_id in top["excerpt_id"].unique():
            with torch.inference_mode():
                model(input_ids=torch.tensor([[END_OF_TEXT_ID, *by_id[excerpt_id]]]), use_cache=False)
            forwards[excerpt_id] = dict(reference)
    finally:
        for handle in handles:
            handle.remove()
    for row in top.iter_rows(named=True):
        expected = forwards[row["excerpt_id"]][row["layer"]][0, 1:, row["neuron"]].double()
        recorded = torch.tensor(row["activations"], dtype=torch.float64)
        assert torch.allclose(recorded, expected, atol=1e-5), (row["layer"], row["neuron"], row["excerpt_id"])
    assert len(top) > 0
