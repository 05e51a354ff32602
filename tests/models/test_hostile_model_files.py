"""Model folders whose files lie or are malformed (RELIABILITY.md, "A shared server"): each is refused
before anything is allocated, with one clear message, and the command line prints one ``error:`` line
and exits 2 for it.

Every hostile folder is a copy of the tiny BERT (tests/conftest.py) spoiled one way, built here.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlm_core.cli import main
from mlm_core.errors import ModelLoadError
from mlm_core.model import inspection
from mlm_core.model.inspection import MAX_TOKENIZER_FILE_BYTES, read_weights
from mlm_core.model.loading import MAX_TOKENS_PER_PASS, load_fresh, pick_device
from mlm_core.policy import reload_policy

SENTENCE = "The cat sat on the [MASK]."
FAST_REFUSAL_SECONDS = 5  # measured well under a second; the bound leaves room for a busy machine


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def split_safetensors(path: Path) -> tuple[bytes, dict, bytes]:
    """(8-byte length, header, tensor bytes) of a safetensors file."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return raw[:8], json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_header(path: Path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


# --- config.json -------------------------------------------------------------------------------


def bad_json(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "bert", "vocab_size": 40,')


def json_array(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def deeply_nested(folder: Path) -> None:
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError


def huge_config(folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "padding": "x" * 2_000_000}))


def not_utf8(folder: Path) -> None:
    (folder / "config.json").write_bytes((folder / "config.json").read_text().encode("utf-16"))


def config_linked_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-elsewhere.json"  # a valid config, but not the folder's own
    shutil.move(folder / "config.json", outside)
    (folder / "config.json").symlink_to(outside)


def tokenizer_linked_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-tokenizer.json"
    shutil.move(folder / "tokenizer.json", outside)
    (folder / "tokenizer.json").symlink_to(outside)


def weights_linked_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-weights.safetensors"
    shutil.move(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)


def link_loop(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(folder / "tokenizer.json")


def many_layers(folder: Path) -> None:
    edit_config(folder, num_hidden_layers=100_000)


def layers_as_text(folder: Path) -> None:
    edit_config(folder, num_hidden_layers="2")


def huge_vocabulary(folder: Path) -> None:
    edit_config(folder, vocab_size=1_000_000_000)


def huge_width(folder: Path) -> None:
    edit_config(folder, hidden_size=2_000_000, intermediate_size=4_000_000, num_attention_heads=2)


def vocabulary_the_weights_do_not_hold(folder: Path) -> None:
    edit_config(folder, vocab_size=200_000)  # 6 M parameters to allocate; the weights hold 22 k values


def vocabulary_one_short(folder: Path) -> None:
    edit_config(folder, vocab_size=38)  # within the weights' size, but every vocabulary-sized tensor differs


def zero_heads(folder: Path) -> None:
    edit_config(folder, num_attention_heads=0)


def unknown_model_type(folder: Path) -> None:
    edit_config(folder, model_type="<script>x</script>")


def perceiver_of_100_000_self_attentions(folder: Path) -> None:
    """Another family, sized under a key no layer check knows: building it took minutes and 4.7 GB."""
    (folder / "config.json").write_text(json.dumps({
        "model_type": "perceiver", "num_latents": 4, "d_latents": 8, "d_model": 8, "num_blocks": 1,
        "num_self_attends_per_block": 100_000, "num_self_attention_heads": 1, "num_cross_attention_heads": 1,
        "vocab_size": 39, "max_position_embeddings": 64,
    }))


def repeat_count_under_an_unknown_key(folder: Path) -> None:
    edit_config(folder, num_self_attends_per_block=100_000)


def infinite_layer_norm_epsilon(folder: Path) -> None:
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(re.sub(r'"layer_norm_eps": [^,}]+', '"layer_norm_eps": Infinity', text))


def nan_in_a_nested_setting(folder: Path) -> None:
    text = (folder / "config.json").read_text().rstrip()
    (folder / "config.json").write_text(text[:-1] + ', "extra": {"scales": [1.0, NaN]}}')


def number_too_large_for_a_float(folder: Path) -> None:
    text = (folder / "config.json").read_text().rstrip()
    (folder / "config.json").write_text(text[:-1] + ', "initializer_range": 1e999}')


# --- safetensors -------------------------------------------------------------------------------


def header_length_past_the_end(folder: Path) -> None:
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**63) + raw[8:])


def header_length_zero(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 0) + path.read_bytes()[8:])


def too_short(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x05\x00")


def truncated_weights(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def header_not_json(folder: Path) -> None:
    path = folder / "model.safetensors"
    prefix, header, data = split_safetensors(path)
    length = struct.unpack("<Q", prefix)[0]
    path.write_bytes(prefix + b"\xff" * length + data)


def offsets_past_the_end(folder: Path) -> None:
    path = folder / "model.safetensors"
    _, header, data = split_safetensors(path)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    header[last]["shape"][0] *= 1000  # shape and offsets agree, but the bytes are not in the file
    header[last]["data_offsets"][1] = begin + (end - begin) * 1000
    write_header(path, header, data)


def shape_that_lies(folder: Path) -> None:
    path = folder / "model.safetensors"
    _, header, data = split_safetensors(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [10**9, 10**9]  # offsets unchanged: the shape no longer fits its bytes
    write_header(path, header, data)


def shape_of_a_million_dimensions(folder: Path) -> None:
    path = folder / "model.safetensors"
    _, header, data = split_safetensors(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [3] * 1_000_000  # 3 MB of header; multiplying it out would take a minute
    write_header(path, header, data)


def unknown_dtype(folder: Path) -> None:
    path = folder / "model.safetensors"
    _, header, data = split_safetensors(path)
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "F128"
    write_header(path, header, data)


def shard_index(folder: Path, shard: str) -> None:
    """The weights renamed to decoy.safetensors, and an index mapping every tensor to ``shard``."""
    _, header, _ = split_safetensors(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder / "decoy.safetensors")
    weight_map = {tensor: shard for tensor in header if tensor != "__metadata__"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def shard_index_leading_outside(folder: Path) -> None:
    outside = folder.parent / f"{folder.name}-outside"  # another model's weights, next to the folder
    outside.mkdir()
    shutil.copy(folder / "model.safetensors", outside / "model.safetensors")
    shard_index(folder, f"../{outside.name}/model.safetensors")


def shard_index_naming_a_pipe(folder: Path) -> None:
    shard_index(folder, "shard.safetensors")
    os.mkfifo(folder / "shard.safetensors")  # opening it would wait for a writer forever


# --- tokenizer ---------------------------------------------------------------------------------


def tokenizer_file_of_65_mb(folder: Path) -> None:
    with (folder / "tokenizer.json").open("r+b") as file:
        file.truncate(MAX_TOKENIZER_FILE_BYTES + 1)  # sparse: large to stat, nothing on disk


def tokenizer_file_a_pipe(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")


def no_vocabulary(folder: Path) -> None:
    """Only tokenizer_config.json: transformers builds a tokenizer of special tokens alone."""
    (folder / "vocab.txt").unlink()
    (folder / "tokenizer.json").unlink()


def mask_id_past_the_vocabulary(folder: Path) -> None:
    """A tokenizer of 59 words whose [MASK] is the last, on the 39-row model."""
    from conftest import TINY_VOCAB

    replace_tokenizer(folder, [w for w in TINY_VOCAB if w != "[MASK]"] + [f"word{i}" for i in range(20)] + ["[MASK]"])


def tokenizer_larger_than_the_vocabulary(folder: Path) -> None:
    """[MASK] where the model has it, but 20 words the model has no row for."""
    from conftest import TINY_VOCAB

    replace_tokenizer(folder, [*TINY_VOCAB, *(f"word{i}" for i in range(20))])


def replace_tokenizer(folder: Path, words: list[str]) -> None:
    from transformers import BertTokenizerFast

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True).save_pretrained(folder)


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    # case: (how the folder is spoiled, what the one-line message says)
    "config not JSON": (bad_json, "config.json .* is not valid JSON"),
    "config a JSON array": (json_array, "config.json .* is a JSON list, not an object"),
    "config nested 100,000 deep": (deeply_nested, "nested too deeply"),
    "config of 2 MB": (huge_config, "config.json .* is larger than 1,000,000 bytes"),
    "config not UTF-8": (not_utf8, "config.json .* is not UTF-8"),
    "config linked outside": (config_linked_outside, r"link \(config.json\) that leads outside"),
    "tokenizer linked outside": (tokenizer_linked_outside, r"link \(tokenizer.json\) that leads outside"),
    "weights linked outside": (weights_linked_outside, r"link \(model.safetensors\) that leads outside"),
    "link loop": (link_loop, r"link \(tokenizer.json\) that leads outside"),
    "100,000 layers": (many_layers, "declares 100,000 layers .*max_model_layers"),
    "layers as text": (layers_as_text, "num_hidden_layers as \"2\", not a whole number"),
    "vocabulary of 1e9": (huge_vocabulary, "would take .* GB of memory .*model_memory_fraction"),
    "width of 2e6": (huge_width, "would take .* GB of memory"),
    "vocabulary the weights do not hold": (vocabulary_the_weights_do_not_hold, "does not match the weights"),
    "vocabulary one short": (vocabulary_one_short, "do not have the shapes its config.json gives"),
    "zero attention heads": (zero_heads, "does not describe a model that can be built"),
    "unknown model type": (unknown_model_type, "cannot be loaded as a masked language model .*script"),
    "Perceiver of 100,000 self-attentions": (
        perceiver_of_100_000_self_attentions, r"masked language model \('perceiver'\): MaskLab loads .*bert",
    ),
    "repeat count under an unknown key": (
        repeat_count_under_an_unknown_key, r"declares 100,000 repeats \(num_self_attends_per_block\)",
    ),
    "layer_norm_eps Infinity": (infinite_layer_norm_epsilon, r"not finite \(layer_norm_eps\)"),
    "NaN in a nested setting": (nan_in_a_nested_setting, r"not finite \(scales\)"),
    "1e999": (number_too_large_for_a_float, r"not finite \(initializer_range\)"),
    "shard index leading outside": (shard_index_leading_outside, "names weights .* not a safetensors file of the model folder"),
    "shard index naming a pipe": (shard_index_naming_a_pipe, "names weights .* not a safetensors file of the model folder"),
    "header length past the end": (header_length_past_the_end, "header length does not fit the file"),
    "header length zero": (header_length_zero, "header length does not fit the file"),
    "weights of 2 bytes": (too_short, "not a safetensors file"),
    "weights truncated": (truncated_weights, "truncated"),
    "header not JSON": (header_not_json, "damaged header"),
    "offsets past the end": (offsets_past_the_end, "declares .* bytes of tensors but holds"),
    "shape that lies": (shape_that_lies, "shape does not match its bytes"),
    "shape of a million dimensions": (shape_of_a_million_dimensions, "without a valid shape"),
    "unknown dtype": (unknown_dtype, "unknown dtype"),
    "mask id past the vocabulary": (mask_id_past_the_vocabulary, "mask token id 58.* only 39 entries"),
    "tokenizer larger than the vocabulary": (tokenizer_larger_than_the_vocabulary, "has 59 tokens.* only 39"),
    "tokenizer.json of 65 MB": (tokenizer_file_of_65_mb, "tokenizer.json .* is larger than 64 MB"),
    "tokenizer.json a pipe": (tokenizer_file_a_pipe, "tokenizer.json .* is not a regular file"),
    "no vocabulary": (no_vocabulary, r"no words, only special tokens.*\(vocab.txt or tokenizer.json\) is missing"),
}


@pytest.fixture(scope="module")
def hostile_folders(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-models")
    folders = {}
    for index, (case, (spoil, _)) in enumerate(HOSTILE.items()):
        folder = copy_model(tiny_model_dir, root / f"case{index}")
        spoil(folder)
        folders[case] = folder
    return folders


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_model_file_is_refused_with_one_clear_message(hostile_folders, case):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        load_fresh(str(hostile_folders[case]), device="cpu")
    message = str(caught.value)
    assert re.search(HOSTILE[case][1], message), message
    assert "\n" not in message and "unexpected" not in message
    assert time.perf_counter() - start < FAST_REFUSAL_SECONDS


@pytest.mark.parametrize("case", list(HOSTILE))
def test_cli_prints_one_error_line_and_exits_2(hostile_folders, case, capsys):
    capsys.readouterr()
    status = main(["predict", "--model", str(hostile_folders[case]), SENTENCE])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err and "unexpected" not in err, err


def test_messages_show_only_the_callers_spelling_of_the_folder(hostile_folders):
    """Refusals name the folder as given and the file at fault, never where a link leads."""
    folder = hostile_folders["config linked outside"]
    with pytest.raises(ModelLoadError) as caught:
        load_fresh(str(folder), device="cpu")
    assert str(folder) in str(caught.value)
    assert "elsewhere" not in str(caught.value)  # the link's target is not shown


def test_link_inside_the_folder_is_followed(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "linked-inside")
    (folder / "weights").mkdir()
    shutil.move(folder / "model.safetensors", folder / "weights" / "real.safetensors")
    (folder / "model.safetensors").symlink_to(folder / "weights" / "real.safetensors")
    assert load_fresh(str(folder), device="cpu").vocab_size == 39


def test_layer_limit_comes_from_the_operators_policy(tiny_model_dir, tmp_path, monkeypatch):
    folder = copy_model(tiny_model_dir, tmp_path / "two-layers")
    monkeypatch.setenv("MASKLAB_MAX_MODEL_LAYERS", "1")
    reload_policy()
    try:
        with pytest.raises(ModelLoadError, match="declares 2 layers.*at most 1 layers"):
            load_fresh(str(folder), device="cpu")
    finally:
        monkeypatch.delenv("MASKLAB_MAX_MODEL_LAYERS")
        reload_policy()
    assert load_fresh(str(folder), device="cpu").num_layers == 2


def test_memory_limit_comes_from_the_operators_policy(tiny_model_dir, tmp_path, monkeypatch):
    import psutil

    folder = copy_model(tiny_model_dir, tmp_path / "tiny")
    # The tiny model takes 87 kB; a machine with 100 kB free allows it 50 kB by default, 100 kB at 1.0.
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 100_000})())
    with pytest.raises(ModelLoadError, match="would take 0.1 MB of memory .*50% of the memory free"):
        load_fresh(str(folder), device="cpu")
    monkeypatch.setenv("MASKLAB_MODEL_MEMORY_FRACTION", "1.0")
    reload_policy()
    try:
        assert load_fresh(str(folder), device="cpu").vocab_size == 39
    finally:
        monkeypatch.delenv("MASKLAB_MODEL_MEMORY_FRACTION")
        reload_policy()


def test_headers_give_the_stored_bytes_without_reading_the_weights(tiny_model_dir):
    import safetensors.torch

    summary = read_weights(tiny_model_dir, "tiny")
    tensors = safetensors.torch.load_file(tiny_model_dir / "model.safetensors")
    assert summary.files == 1
    assert summary.elements == sum(t.numel() for t in tensors.values())
    assert summary.tensor_bytes == sum(t.numel() * t.element_size() for t in tensors.values())


def test_refusing_a_lying_config_allocates_nothing(hostile_folders):
    """Peak memory stays where it was: the size comes from the config on the meta device."""
    with pytest.raises(ModelLoadError):  # imports and first-use caches warmed before measuring
        load_fresh(str(hostile_folders["vocabulary of 1e9"]), device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for case in ("100,000 layers", "vocabulary of 1e9", "width of 2e6"):
        with pytest.raises(ModelLoadError):
            load_fresh(str(hostile_folders[case]), device="cpu")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: kB
    assert grown_mb < 200, grown_mb  # the refused models would take 4 GB to 128 GB


@pytest.mark.parametrize(
    ("device", "message"),
    [("meta", "Unknown device 'meta'"), ("garbage", "Unknown device 'garbage'"), ("cuda:x", "Unknown device"),
     ("cpu:0:1", "Unknown device"), ("xla", "use cpu, cuda, cuda:N")],
)
def test_only_usable_devices_are_accepted(device, message, capsys):
    with pytest.raises(ModelLoadError, match=message):
        pick_device(device)
    capsys.readouterr()
    status = main(["predict", "--device", device, SENTENCE])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: Unknown device") and "\n" not in err, err


def test_usual_device_spellings_are_accepted():
    assert pick_device("cpu").type == "cpu"
    assert pick_device(" CPU ").type == "cpu"
    assert pick_device("").type in ("cpu", "cuda")


@pytest.mark.parametrize("name", ["a\x00b", "x" * 5000, "/" + "x" * 5000, "~no-such-user-here/model"])
def test_names_that_are_no_path_are_refused_with_a_message(name):
    with pytest.raises(ModelLoadError) as caught:
        load_fresh(name, device="cpu")
    assert "\n" not in str(caught.value)


def test_the_cache_knows_a_folder_by_its_resolved_path_and_other_models_by_name(tiny_model_dir, monkeypatch):
    from mlm_core.model.default_model import DEFAULT_MODEL_NAME
    from mlm_core.model.loading import model_identity

    monkeypatch.chdir(tiny_model_dir.parent)
    spellings = {str(tiny_model_dir), f"{tiny_model_dir}//", f"./{tiny_model_dir.name}/", tiny_model_dir.name}
    assert {model_identity(name) for name in spellings} == {str(tiny_model_dir.resolve())}
    assert model_identity(DEFAULT_MODEL_NAME) == DEFAULT_MODEL_NAME
    assert model_identity("run:abc") == "run:abc"  # a run is known by its reference, never by its folder
    assert model_identity("org/hub-model") == "org/hub-model"


def test_nothing_is_built_before_the_cheap_checks(hostile_folders, tiny_model_dir, monkeypatch):
    """Model type, repeat counts, finite numbers and shard indexes are refused before the meta-device build."""
    built = []
    size_from_config = inspection.size_from_config
    monkeypatch.setattr(inspection, "size_from_config", lambda *a, **k: built.append(a) or size_from_config(*a, **k))
    for case in ("Perceiver of 100,000 self-attentions", "repeat count under an unknown key", "100,000 layers",
                 "layer_norm_eps Infinity", "shard index leading outside", "tokenizer.json of 65 MB"):
        with pytest.raises(ModelLoadError):
            load_fresh(str(hostile_folders[case]), device="cpu")
    assert built == []
    load_fresh(str(tiny_model_dir), device="cpu")
    assert len(built) == 1  # the build is where these folders would have gone next


def test_shards_named_by_an_index_inside_the_folder_load(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "sharded")
    shard_index(folder, "decoy.safetensors")
    assert load_fresh(str(folder), device="cpu").vocab_size == 39


def build_tiny_modernbert(source: Path, folder: Path, positions: int) -> Path:
    """A tiny rotary ModernBertForMaskedLM claiming ``positions`` positions, with ``source``'s tokenizer."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=39, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=positions, pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2,
        eos_token_id=3,
    )
    ModernBertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(source / name, folder / name)
    return folder


def test_a_rotary_model_claiming_a_billion_positions_predicts_long_text_in_windows(tiny_model_dir, tmp_path, capsys):
    """25,000 tokens in one pass took 5 GB of attention maps; they go through windows of MAX_TOKENS_PER_PASS."""
    folder = build_tiny_modernbert(tiny_model_dir, tmp_path / "modernbert", positions=1_000_000_000)
    loaded = load_fresh(str(folder), device="cpu")
    assert loaded.max_length == MAX_TOKENS_PER_PASS
    text = "the cat sat on the mat . " * 600 + "the [MASK] sat ."  # about 3,600 tokens
    capsys.readouterr()
    status = main(["predict", "--model", str(folder), text])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"window of {MAX_TOKENS_PER_PASS} tokens" in out + err
