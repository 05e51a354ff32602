"""Models and inputs the hostile-input suites share (tests/project/test_hostile_pages.py, tests/cli/test_hostile_cli.py).

Every model is built offline in a second: a tiny RoBERTa (``<mask>``), a tiny BERT whose vocabulary
holds HTML and whose predictions always rank those tokens first, a folder with only pickle weights
and a GPT-2 (no mask token).
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from conftest import TINY_VOCAB, build_tiny_bert

PAYLOAD = "<img src=x onerror=alert(1)>"
HOSTILE_TOKENS = (PAYLOAD, "<script>alert(1)</script>", "<b>bold</b>")
# What a browser sends for a lone surrogate: it cannot encode one, so U+FFFD arrives instead.
ODD_SCRIPTS = "I love 🍕, the family 👩\u200d👩\u200d👧 sat; cafe\u0301 שלום مرحبا 東京 a\x00b \ufffd [MASK]."
INVISIBLE_ONLY = ("\x01\x7f\x1b", "\u202e\u2066\u2069\u200f", "\u200b\ufeff\u2060 \u00ad")
LONG_FILLER = "the cat sat on the mat and the dog ran in the house " * 8  # > 64 positions of the tiny models


def build_tiny_roberta(folder: Path) -> Path:
    """A tiny RobertaForMaskedLM, byte-level BPE, mask ``<mask>`` (lstrip, as in roberta-base)."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["the cat sat on the mat", "paris is the capital of france", "the dog ran in the house"],
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, special=True)
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges, mask_token=mask)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    RobertaForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def build_hostile_vocab_bert(folder: Path) -> Path:
    """The tiny BERT with HTML tokens in its vocabulary, biased so that they are every mask's top guesses."""
    from safetensors.torch import load_file, save_file

    vocab = [*TINY_VOCAB, *HOSTILE_TOKENS]
    build_tiny_bert(folder, vocab=vocab)
    weights = load_file(str(folder / "model.safetensors"))
    bias = weights["cls.predictions.bias"]
    for token in HOSTILE_TOKENS:
        bias[vocab.index(token)] += 50.0  # random weights would put them anywhere; the test needs them shown
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


class Planted:
    """Unpickling this creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def build_pickle_only(source: Path, folder: Path, marker: Path) -> Path:
    """``source``'s config and tokenizer with only a pytorch_model.bin (a pickle touching ``marker``)."""
    shutil.copytree(source, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Planted(marker)))
    return folder


def build_gpt2(source: Path, folder: Path) -> Path:
    """A tiny GPT-2 (a causal LM: no mask token, no masked-LM head) with ``source``'s tokenizer files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=len(TINY_VOCAB),
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    return folder
