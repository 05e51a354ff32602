"""Model loading: safe formats only, one shared copy, clear refusals, eager attention."""

from __future__ import annotations

import json
import pickle
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from mlm_core.errors import ModelLoadError
from mlm_core.model.loading import load_model, pick_device


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


class PlantedPayload:
    """Unpickling this creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tiny_folder_loads(tiny_loaded):
    assert tiny_loaded.mask_token == "[MASK]"
    assert tiny_loaded.max_length == 64
    assert not tiny_loaded.model.training
    info = tiny_loaded.describe()
    assert info["layers"] == 2 and info["heads"] == 2 and info["type"] == "bert"
    assert info["parameters"] > 0


def test_one_shared_copy(tiny_model_dir):
    # Not compared with the session fixture: other tests may have evicted it from the bounded cache.
    first = load_model(str(tiny_model_dir), device="cpu")
    assert load_model(str(tiny_model_dir), device="cpu") is first
    assert load_model(f"  {tiny_model_dir}  ", device="cpu") is first


def test_concurrent_loads_give_one_object(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "shared")
    results, errors = [], []
    barrier = threading.Barrier(6)

    def load():
        barrier.wait()
        try:
            results.append(load_model(str(folder), device="cpu"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_pickle_only_folder_refused_before_unpickling(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pickle-was-executed"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(PlantedPayload(marker)))

    # The planted file really is dangerous: unpickling it elsewhere creates a marker.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(PlantedPayload(control)))
    assert control.exists()

    with pytest.raises(ModelLoadError, match="only pickle weights.*pytorch_model.bin"):
        load_model(str(folder), device="cpu")
    assert not marker.exists()


def test_folder_without_weights_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model weights"):
        load_model(str(folder), device="cpu")


def test_auto_map_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "remote-code")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForMaskedLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelLoadError, match="never runs remote code"):
        load_model(str(folder), device="cpu")


def test_folder_without_config_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "noconfig")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(folder), device="cpu")


def test_missing_folder_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not a folder"):
        load_model(str(tmp_path / "does-not-exist"), device="cpu")


def test_unknown_hub_id_offline_refused_fast():
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="Cannot find model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model", device="cpu")
    assert time.perf_counter() - start < 10


def test_tokenizer_without_mask_token_refused(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "nomask")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["mask_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no mask token"):
        load_model(str(folder), device="cpu")


def test_gpt2_refused(tiny_model_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    config = GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=39, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tiny_model_dir / name, folder / name)
    with pytest.raises(ModelLoadError, match="cannot be loaded as a masked language model"):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize("architecture", ["BertModel", "BertForSequenceClassification"])
def test_checkpoint_without_mlm_head_refused(tiny_model_dir, tmp_path, architecture):
    import transformers

    folder = tmp_path / architecture
    config = transformers.BertConfig.from_pretrained(tiny_model_dir)
    getattr(transformers, architecture)(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tiny_model_dir / name, folder / name)
    with pytest.raises(ModelLoadError, match=f"no masked-language-model head.*{architecture}"):
        load_model(str(folder), device="cpu")


def test_eager_attention_returns_weights(tiny_loaded):
    assert tiny_loaded.model.config._attn_implementation == "eager"
    ids = torch.tensor([[2, 10, 19, 4, 3]])
    with torch.inference_mode():
        out = tiny_loaded.model(input_ids=ids, output_attentions=True)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape == (1, 2, 5, 5)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(1, 2, 5))


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="no GPU"):
        pick_device("cuda")
    assert pick_device(None).type == "cpu"


@pytest.mark.parametrize(("raw", "expected"), [("", 1), ("2", 2), ("0", 1), ("-3", 1), ("many", 1)])
def test_app_threads_come_from_the_environment_or_default_to_one(monkeypatch, raw, expected):
    import torch

    from mlm_core.model.loading import use_app_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("MASKLAB_TORCH_THREADS", raw)
    try:
        assert use_app_threads() == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)
