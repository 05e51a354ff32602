"""Shared fixtures: a tiny BERT built offline from a fixture vocabulary, and the real default model.

The tiny model (2 layers, 2 heads, 32 wide, a 40-token vocabulary) is written to disk in
safetensors like any Hugging Face model, so the loader's real code path is exercised.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_WORDS = (
    "the a is of and to in it was cat dog sat on mat ran paris france capital "  # noqa: SIM905 (readable)
    "city big small red blue house tree ##s ##ed he she".split()
)
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'", *TINY_WORDS]


def build_tiny_bert(folder, seed: int = 0, vocab: list[str] | None = None):
    """Write a randomly initialised tiny BertForMaskedLM and its tokenizer to ``folder``."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    vocab = vocab or TINY_VOCAB
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def temporary_folders_are_model_sources(tmp_path_factory):
    """The pages load the tests' tiny models from their temporary folders, which a server offers only
    when its operator lists them. The tests' operator lists the folder above this run's base temporary
    folder: every test folder is then at least two levels down, so the model picker (which lists an
    offered folder's direct model subfolders) stays as a plain server's and the tests type their models
    under Other. Set, not defaulted, so a developer's own MASKLAB_MODEL_SOURCES cannot change what the
    tests see; tests of refusal narrow it with monkeypatch and ``reload_policy()``. The browser tests'
    servers inherit the variable."""
    from mlm_core.policy import server_policy

    os.environ["MASKLAB_MODEL_SOURCES"] = str(tmp_path_factory.getbasetemp().parent)
    server_policy.cache_clear()  # read again on first use (an invalid setting then fails only its own test)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: bit-identical sums, and no spinning threads on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from mlm_core.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def default_tokenizer():
    from transformers import AutoTokenizer

    from mlm_core.model.default_model import base_encoder_dir

    return AutoTokenizer.from_pretrained(base_encoder_dir())


@pytest.fixture(scope="session")
def default_loaded():
    from mlm_core.model.loading import load_model

    return load_model(None, device="cpu")


@pytest.fixture
def clean_streamlit_caches():
    """Streamlit's caches emptied before and after a page test: AppTest runs share one process."""
    from support.apptest import clear_streamlit_caches

    clear_streamlit_caches()
    yield
    clear_streamlit_caches()
