"""The GPU kit carries the default model's encoder and corpus to a machine without network: what
training reads back there must be the installed encoder (to float16 rounding) and the corpus itself."""

import lzma

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from mlm_core.model.default_model import base_encoder_dir
from recipes.default_model import gpu_kit


def write_corpus(folder, train: str, heldout: str):
    """A corpus folder as build_corpus.py leaves it: train.txt and heldout.txt."""
    folder.mkdir()
    (folder / "train.txt").write_text(train)
    (folder / "heldout.txt").write_text(heldout)
    return folder


def test_the_kit_holds_the_encoder_in_half_precision_and_the_corpus_unchanged(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", "The cat sat on the mat.\nIt rained all day.\n", "A held-out line.\n")
    kit = tmp_path / "kit"
    gpu_kit.build(corpus, kit)

    assert lzma.decompress((kit / "train.txt.xz").read_bytes()) == (corpus / "train.txt").read_bytes()
    assert (kit / "heldout.txt").read_text() == "A held-out line.\n"
    installed = load_file(base_encoder_dir() / "model.safetensors")
    packed = load_file(kit / "base" / "model.safetensors")
    assert packed.keys() == installed.keys()
    assert all(tensor.dtype == torch.float16 for tensor in packed.values() if tensor.is_floating_point())
    # train.py reads the kit as float32: the installed weights, rounded to float16 and back
    model = BertForMaskedLM.from_pretrained(kit / "base", use_safetensors=True, dtype=torch.float32)
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert embeddings.dtype == torch.float32
    expected = installed["embeddings.word_embeddings.weight"].to(torch.float16).float()
    assert torch.equal(embeddings.detach(), expected)


def test_a_folder_that_is_not_a_kit_is_never_removed(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", "A line.\n", "Another.\n")
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="something other than a kit"):
        gpu_kit.build(corpus, precious)
    assert (precious / "notes.txt").read_text() == "keep me"
