"""What differs between masked-LM families, declared once.

* ``SUPPORTED_MODEL_TYPES``: the model types a folder or hub id may name (``checks.check_config``);
* ``ROBERTA_FAMILY``: models whose position ids start after the padding index, so two
  positions of ``max_position_embeddings`` are never usable (``usable_positions``);
* ``HEAD_ENTRIES``: the module that turns final hidden states (B, T, D) into logits, by
  model type (``head_entry``); the forward pass feeds it only the rows it needs;
* ``layer_modules``: the encoder's per-layer modules (attention, whole block) as transformers
  records them, for head gating and pruning;
* ``ATTENTION_OUTPUT_NAMES``: the attention module's own output projection, where a family has
  one (``attention_output_projection``);
* ``ATTENTION_FREE_TYPES``: families without attention weights (the recurrent LSTM/GRU models,
  ``model.recurrent``): ``has_attention`` is what every attention view asks first.

Example: ``usable_positions("roberta", 514) == 512``; ``head_entry(bert_for_masked_lm) is model.cls``.
"""

from __future__ import annotations

from torch import nn

RECURRENT_MODEL_TYPE = "masklab-recurrent"  # model.recurrent's bidirectional LSTM/GRU masked LM
ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")  # positions offset by padding_idx + 1
HEAD_ENTRIES = {
    "bert": "cls",
    **dict.fromkeys(ROBERTA_FAMILY, "lm_head"),
    "distilbert": "vocab_transform",  # then activation, vocab_layer_norm, vocab_projector
    "albert": "predictions",
    RECURRENT_MODEL_TYPE: "decoder",
}
# The transformers model types MaskLab loads (config.json's model_type); any other is refused before it is
# built, since its config keys (layer counts, sizes) are not the ones the load checks know.
SUPPORTED_MODEL_TYPES = ("albert", "bert", *ROBERTA_FAMILY, "distilbert", "modernbert", RECURRENT_MODEL_TYPE)
ATTENTION_FREE_TYPES = (RECURRENT_MODEL_TYPE,)
ATTENTION_OUTPUT_NAMES = ("out_lin", "dense", "o_proj", "out_proj", "Wo")  # DistilBERT out_lin, ModernBERT Wo


def model_type(model) -> str:
    """``config.model_type`` of a transformers model, or the ``model_type`` key of a dict config."""
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        return str(config.get("model_type", ""))
    return str(getattr(config, "model_type", "") or "")


def has_attention(model) -> bool:
    """Whether ``model`` computes attention weights (a recurrent model does not)."""
    return model_type(model) not in ATTENTION_FREE_TYPES


def attention_free_message(what: str, model) -> str:
    """The one message for a view of attention asked of a model without it (``what``: the view)."""
    cell = str(getattr(getattr(model, "config", None), "cell", "recurrent")).upper()
    return (f"{what}: this model is a recurrent ({cell}) masked LM, without attention weights. Its predictions, "
            "masking and the attribution (\"why\") work; choose a Transformer model for attention.")


def usable_positions(kind: str, max_position_embeddings: int) -> int:
    """Longest input (special tokens included) the position table allows for a ``kind`` model."""
    return max_position_embeddings - 2 if kind in ROBERTA_FAMILY else max_position_embeddings


def head_entry(model: nn.Module) -> nn.Module | None:
    """The module whose first argument is the final hidden states (B, T, D).

    Known families: the whole prediction head (its transform then runs only on the rows fed to
    it); any other model: its output embeddings (the vocabulary projection), or None.
    """
    name = HEAD_ENTRIES.get(model_type(model))
    module = getattr(model, name, None) if name else None
    if isinstance(module, nn.Module):
        return module
    embeddings = getattr(model, "get_output_embeddings", None)
    return embeddings() if callable(embeddings) else None


def layer_modules(model: nn.Module, key: str) -> list[nn.Module]:
    """Instances of the class transformers records ``key`` from ("attentions", "hidden_states"), in order."""
    spec = getattr(type(model), "_can_record_outputs", None) or {}
    spec = spec.get(key)
    classes = tuple(s for s in (spec if isinstance(spec, list) else [spec]) if isinstance(s, type))
    if not classes:
        return []
    return [m for m in model.modules() if isinstance(m, classes)]


def attention_output_projection(attention: nn.Module) -> nn.Linear | None:
    """The attention module's own output projection (DistilBERT, ModernBERT), None where the
    projection sits outside it (BERT, RoBERTa: its first output is the heads' concatenated context)."""
    return next(
        (c for n, c in attention.named_children() if n in ATTENTION_OUTPUT_NAMES and isinstance(c, nn.Linear)), None
    )
