"""GPT-2's real tokenizer, built offline from the BPE ranks a registry package ships.

The tests never reach a model hub, but ``openai-whisper`` (installed ``--no-deps`` by
``make install``, for the tests only) carries GPT-2's byte-level BPE as
``whisper/assets/gpt2.tiktoken``: one base64 token and its rank a line, ranks 0..50255,
which are GPT-2's token ids. ``<|endoftext|>`` (id 50256) is not in the file. The merges
are recovered from the ranks: a token's merge is the pair its bytes end as when they are
BPE-merged with the lower-ranked tokens only. The ``whisper`` package itself is never
imported (its ``__init__`` imports torch and tiktoken); the file is found through the
distribution's metadata.
"""

from __future__ import annotations

import base64
import importlib.metadata
from functools import cache
from pathlib import Path

WHISPER = "openai-whisper"
RANKS_FILE = "whisper/assets/gpt2.tiktoken"
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256
VOCAB_SIZE = 50257
KNOWN_IDS = {"Hello world": [15496, 995], " the": [262], END_OF_TEXT: [END_OF_TEXT_ID]}


class MissingRanks(RuntimeError):
    """openai-whisper, which ships GPT-2's BPE ranks, is not installed."""


def ranks_path() -> Path:
    try:
        path = Path(importlib.metadata.distribution(WHISPER).locate_file(RANKS_FILE))
    except importlib.metadata.PackageNotFoundError as error:
        raise MissingRanks(
            f"{WHISPER} is not installed: it ships GPT-2's BPE ranks ({RANKS_FILE}) that the GPT-2 tests "
            "build the real tokenizer from; run `make install` (it installs it with --no-deps)"
        ) from error
    if not path.is_file():
        raise MissingRanks(f"{WHISPER} is installed but has no {RANKS_FILE} ({path}); run `make install`")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: printable Latin-1 bytes as themselves, the rest from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def recover_merge(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The pair ``token`` was merged from: its bytes BPE-merged with tokens ranked below it until two remain."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best is None or rank < best):
                best, at = rank, i
        if at is None:
            raise ValueError(f"token {token!r} (rank {limit}) cannot be built from lower-ranked tokens")
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts[0], parts[1]


@cache
def gpt2_tokenizer():
    """A ``transformers.GPT2TokenizerFast`` equal to GPT-2's: its 50,256 BPE tokens and ``<|endoftext|>`` = 50256."""
    from transformers import GPT2TokenizerFast

    ranks = read_ranks(ranks_path())
    if sorted(ranks.values()) != list(range(END_OF_TEXT_ID)):
        raise ValueError(f"{RANKS_FILE} does not hold ranks 0..{END_OF_TEXT_ID - 1}")
    byte_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab[END_OF_TEXT] = END_OF_TEXT_ID
    merges = [
        (text(left), text(right))
        for token in sorted(ranks, key=ranks.get)
        if len(token) > 1
        for left, right in [recover_merge(ranks, token)]
    ]
    tokenizer = GPT2TokenizerFast(
        vocab=vocab, merges=merges, unk_token=END_OF_TEXT, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT
    )
    for sample, ids in KNOWN_IDS.items():
        got = tokenizer(sample)["input_ids"]
        if got != ids:
            raise AssertionError(f"the rebuilt GPT-2 tokenizer gives {got} for {sample!r}, GPT-2's gives {ids}")
    return tokenizer


def save_tiny_gpt2(folder: Path, seed: int = 0, n_layers: int = 2):
    """A tiny random GPT-2 (``n_layers`` layers, width 32) with GPT-2's real tokenizer, saved as a model folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = gpt2_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=128, n_embd=32, n_layer=n_layers, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer
