"""A tiny GPT-2 with hand-set weights whose chosen layer-0 neurons fire on chosen tokens and nowhere else.

2 layers, width 16, MLP width 8, the packaged SmolLM2 tokenizer, built offline. Position
embeddings and every attention block's output projection (weight and bias) are zero, so
attention writes nothing and the residual stream that layer 0's MLP reads is ``LN(wte[token])``:
a function of the token only.

Each chosen neuron k is made to fire on its words from what LayerNorm does. Every embedding is
``sum_k s_k * alpha * u_k + r``: the ``u_k`` orthonormal with zero mean (one per chosen neuron),
``s_k`` +1 for neuron k's words and -1 for every other token, ``r`` a random vector orthogonal
to every ``u_k`` and to the all-ones vector, of norm ``rho``. Each embedding then has mean 0 and
the same norm, so ``ln_2`` (gain 1, bias 0) divides every one by the same
``sigma = sqrt((K alpha^2 + rho^2) / d + eps)`` and its component along ``u_k`` is
``s_k * alpha / sigma``. Neuron k's input weights are ``c * u_k`` with ``c = FIRING * sigma / alpha``
and bias 0, so its pre-activation is exactly ``+-FIRING``: GELU(10) = 10 on its words, GELU(-10)
= 0 (-0.0 in float32) elsewhere. The other neurons keep their random weights; layer 1 is never
recorded.
"""

from pathlib import Path

import torch

N_INNER, WIDTH = 8, 16
FIRING = 10.0
ALPHA, RHO = 1.0, 3.0


def build_handset_gpt2(folder: Path, tokenizer, firing: dict[int, list[int]]) -> Path:
    """Save the hand-set GPT-2 in ``folder`` (a Hugging Face folder: its path is the subject
    model's name): neuron ``n`` of layer 0 fires FIRING on the token ids ``firing[n]``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if len(firing) > WIDTH // 2:
        raise ValueError(f"at most {WIDTH // 2} neurons can have orthogonal zero-mean directions here")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,  # 64-token excerpts plus the document start token
        n_embd=WIDTH,
        n_layer=2,
        n_head=2,
        n_inner=N_INNER,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    body = model.transformer
    with torch.no_grad():
        body.wpe.weight.zero_()
        for block in body.h:
            block.attn.c_proj.weight.zero_()
            block.attn.c_proj.bias.zero_()
        directions = []
        for k in range(len(firing)):  # disjoint pairs of coordinates: orthogonal, each with zero mean
            u = torch.zeros(WIDTH)
            u[2 * k], u[2 * k + 1] = 1.0, -1.0
            directions.append(u / u.norm())
        ones = torch.ones(WIDTH) / WIDTH**0.5
        r = torch.randn(len(tokenizer), WIDTH)
        for v in (ones, *directions):
            r -= (r @ v)[:, None] * v
        r *= RHO / r.norm(dim=1, keepdim=True)
        embedding = r
        for u, ids in zip(directions, firing.values(), strict=True):
            sign = -torch.ones(len(tokenizer))
            sign[ids] = 1.0
            embedding = embedding + ALPHA * sign[:, None] * u
        body.wte.weight.copy_(embedding)
        norm = body.h[0].ln_2
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        sigma = ((len(firing) * ALPHA**2 + RHO**2) / WIDTH + norm.eps) ** 0.5
        mlp = body.h[0].mlp.c_fc  # Conv1D: weight is [n_embd, n_inner]
        for u, neuron in zip(directions, firing, strict=True):
            mlp.weight[:, neuron] = FIRING * sigma / ALPHA * u
            mlp.bias[neuron] = 0.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
