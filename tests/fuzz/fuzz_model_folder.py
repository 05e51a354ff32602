"""Fuzz model loading: config.json's text or the safetensors header of the tiny BERT comes from the input.

    python tests/fuzz/fuzz_model_folder.py -max_total_time=300 -timeout=30 /tmp/model-work tests/fuzz/seeds/model_folder

Input layout: byte 0 picks the file and how the rest changes it (byte 0 modulo 4):

0. the rest is config.json's text;
1. the rest is the start of model.safetensors (the 8-byte header length and the header), followed by the
   tiny model's tensor bytes as saved;
2. the rest chooses edits of the tiny model's config (a key, and a value from ``CONFIG_VALUES``);
3. the rest chooses edits of the tiny model's safetensors header (a tensor's dtype, shape or offsets, a
   tensor dropped, metadata) and the header length written before it.

Byte edits (0, 1) find what breaks the readers; edits of the parsed files (2, 3) get past them into what
transformers builds from a valid config or header that lies. The other files are the tiny BERT's of
tests/conftest.py (seed 0), so the seeds (``seeds/model_folder``: the tiny model's own config and header)
load.

Loading (``load_fresh``, no shared cache) must give a model whose tokenizer fits its vocabulary, or a
``MaskLabError`` with a one-line message, within ``CASE_SECONDS``; never another exception. Run as a
script, the operator's limits are narrowed (8 layers, 2% of the free memory) unless set already, so that
no input builds a model bigger than libFuzzer's memory limit.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import fuzz_support

CASE_SECONDS = 20  # refusals take milliseconds and a load of the tiny model well under a second
CONFIG, HEADER = "config", "header"
CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "pad_token_id", "model_type", "dtype", "torch_dtype",
    "hidden_act", "layer_norm_eps", "tie_word_embeddings", "architectures", "is_decoder", "n_layers",
    "position_embedding_type", "auto_map", "text_config", "block_sizes", "attn_implementation",
)
CONFIG_VALUES = (
    0, 1, -1, 2, 3, 8, 9, 38, 39, 40, 64, 97, 1000, 10**6, 10**9, 2**31, 2**63, 10**30, 0.5, 2.0, 1e308,
    float("inf"), float("nan"), True, False, None, "", "2", "bert", "roberta", "distilbert", "gpt2", "albert",
    "gelu", "relu", "no-such-activation", "float16", "bfloat16", "float64", "int8", "absolute", "relative_key",
    "eager", "flash_attention_2", [], [2], [2, 2], [10**5], ["BertForMaskedLM"], ["BertModel"], {},
    {"num_hidden_layers": 10**5}, {"AutoModel": "x.Y"}, "<img src=x onerror=alert(1)>",
)
HEADER_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F4", "F6_E2M3", "C64", "F128", "", 32, [], {})
HEADER_NUMBERS = (0, 1, 2, 3, 4, 32, 39, 64, 1248, 10**6, 2**31, 2**63, 2**64, -1, 0.5, None, "1")

_folders: dict[str, Path] = {}
_tensor_bytes: list[bytes] = []


def folders() -> dict[str, Path]:
    """One working copy of the tiny model per mutated file (built once, offline, in about a second)."""
    if not _folders:
        import atexit
        import shutil
        import tempfile

        from conftest import build_tiny_bert  # tests/ is on sys.path (fuzz_support)

        root = Path(tempfile.mkdtemp(prefix="masklab-fuzz-model-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        original = build_tiny_bert(root / "original", seed=0)
        raw = (original / "model.safetensors").read_bytes()
        _tensor_bytes.append(raw[8 + struct.unpack("<Q", raw[:8])[0]:])
        for kind in (CONFIG, HEADER):
            _folders[kind] = Path(shutil.copytree(original, root / kind))
    return _folders


class Choices:
    """The input's bytes read as a sequence of choices (zeros once they run out)."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def byte(self) -> int:
        self.at += 1
        return self.data[self.at - 1] if self.at <= len(self.data) else 0

    def pick(self, values):
        return values[self.byte() % len(values)]


def edited_config(choices: Choices) -> bytes:
    """The tiny model's config with one to eight keys set to chosen values."""
    config = json.loads((_original() / "config.json").read_text())
    for _ in range(choices.byte() % 8 + 1):
        key, value = choices.pick(CONFIG_KEYS), choices.pick(CONFIG_VALUES)
        config[key] = value
    return json.dumps(config).encode()  # NaN and Infinity as json.dumps writes them (json.loads reads them)


def edited_header(choices: Choices) -> bytes:
    """The tiny model's header with one to eight edits, and a chosen length before it."""
    raw = (_original() / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    for _ in range(choices.byte() % 8 + 1):
        tensor = choices.pick(sorted(header))
        action = choices.byte() % 6
        if action == 0:
            header.pop(tensor)
        elif tensor == "__metadata__":
            header[tensor] = choices.pick(({}, {"format": 1}, [], "pt", {"format": "pt"}))
        elif action == 1:
            header[tensor]["dtype"] = choices.pick(HEADER_DTYPES)
        elif action in (2, 3):
            shape = header[tensor]["shape"]
            if shape and action == 2:
                shape[choices.byte() % len(shape)] = choices.pick(HEADER_NUMBERS)
            else:
                shape.append(choices.pick(HEADER_NUMBERS))
        else:
            header[tensor]["data_offsets"][action - 4] = choices.pick(HEADER_NUMBERS)
    encoded = json.dumps(header).encode()
    length = choices.pick((len(encoded), len(encoded), len(encoded) + 1, len(encoded) - 1, 0, 2**63))
    return struct.pack("<Q", length % 2**64) + encoded


def parse(data: bytes) -> tuple[str, bytes]:
    """(which file, the start of its new content) from one fuzz input."""
    mode = data[0] % 4 if data else 0
    if mode == 2:
        return CONFIG, edited_config(Choices(data[1:]))
    if mode == 3:
        return HEADER, edited_header(Choices(data[1:]))
    return (HEADER if mode == 1 else CONFIG), data[1:]


def write_case(data: bytes) -> Path:
    """The folder holding this input's file (the other mutated file is left as it was: only one is read
    differently from the original)."""
    kind, body = parse(data)
    folder = folders()[kind]
    if kind == CONFIG:
        (folder / "config.json").write_bytes(body)
    else:
        (folder / "model.safetensors").write_bytes(body + _tensor_bytes[0])
    return folder


def _original() -> Path:
    return folders()[CONFIG].parent / "original"


def check(data: bytes) -> None:
    from mlm_core.errors import MaskLabError
    from mlm_core.model.loading import load_fresh

    folder = write_case(data)
    start = time.perf_counter()
    try:
        loaded = load_fresh(str(folder), device="cpu")
    except MaskLabError as exc:
        message = str(exc)
        # The CLI prints it as one "error:" line and the pages in one st.error box.
        assert message.strip() and "\n" not in message and "\r" not in message, message
        assert "unexpected" not in message, message
    else:
        rows = loaded.vocab_size
        assert loaded.mask_token_id < rows and len(loaded.tokenizer) <= rows, (loaded.mask_token_id, rows)
        loaded.describe()  # what the sidebar shows of every loaded model
    elapsed = time.perf_counter() - start
    assert elapsed < CASE_SECONDS, f"{elapsed:.1f} s for one folder"


if __name__ == "__main__":
    # Small bounds keep every run fast and within libFuzzer's memory limit: a mutated config may describe
    # a model of any size, and only what the limits allow is built.
    os.environ.setdefault("MASKLAB_MAX_MODEL_LAYERS", "8")
    os.environ.setdefault("MASKLAB_MODEL_MEMORY_FRACTION", "0.02")

    def prepare() -> None:
        import transformers  # noqa: F401 - heavy import before instrumentation

        folders()

    fuzz_support.main(check, ["mlm_core.model.inspection", "mlm_core.model.loading"], prepare=prepare)
    sys.exit(0)
