"""BERT's inference pass as plain tensor operations, for the shared model's predictions.

Why: on a sentence of a dozen tokens, transformers' module machinery (a call per module, output
recorders, mask builders, signature checks) costs nearly as much as the matrix products. The same
arithmetic written out, on the same parameter tensors, took one prediction with attentions from
7.1 to 4.7 ms (the default model, a 12-token sentence, a 2-core Xeon; ``benchmarks/predict.py``
measures it against the pipeline).

It computes exactly what ``BertForMaskedLM`` computes in eval mode (eager attention: scaled dot
products, additive padding mask, softmax; post-LayerNorm residual blocks; the model's own
activation functions and prediction head), in the same order of operations, so logits and
attention weights agree with transformers' to float rounding (``tests/models/test_bert_pass.py``).

``applies`` says when it may stand in for the model's own forward; anything it cannot honour
falls back to transformers: another family or a subclass, training mode, gradients (the trainer,
captum), and any hook installed on the model other than transformers' own output recorders
(head gates, attention probes, embedding scalers): a hook changes or watches a module's output,
and this pass calls none of the encoder's modules.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch import nn
from torch.nn.modules import module as torch_module
from transformers import BertForMaskedLM

_RECORDER_MODULE = "transformers."  # hooks transformers installs itself to record attentions
# A loaded model's modules never change (pruning goes through ``params``, not new modules): walking
# the tree on every pass cost more than a tenth of a millisecond.
_modules: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def applies(model: nn.Module) -> bool:
    """Whether ``bert_pass`` gives this model's output (see the module's docstring)."""
    if type(model) is not BertForMaskedLM or model.training or torch.is_grad_enabled():
        return False
    config = model.config
    if config.is_decoder or config.add_cross_attention or config.chunk_size_feed_forward:
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False
    modules = _modules.get(model)
    if modules is None:
        modules = _modules[model] = tuple(model.modules())
    for module in modules:
        if not (module._forward_pre_hooks or module._forward_hooks):
            continue
        for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()):
            if not str(getattr(hook, "__module__", "")).startswith(_RECORDER_MODULE):
                return False
    return True


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _norm(x: torch.Tensor, layer: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)


def bert_pass(
    model: BertForMaskedLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chosen=None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """(logits, attentions) as ``model(input_ids=..., attention_mask=..., output_attentions=...)`` gives them.

    ``chosen`` indexes (B, T) as in ``forward.model_output``: logits (M, V) at those positions only;
    None: (B, T, V). Attentions, when asked: one (B, H, T, T) tensor per layer.
    """
    embeddings = model.bert.embeddings
    batch, length = input_ids.shape
    hidden = F.embedding(input_ids, embeddings.word_embeddings.weight) + embeddings.token_type_embeddings.weight[0]
    hidden = _norm(hidden + embeddings.position_embeddings.weight[:length], embeddings.LayerNorm)
    additive = None
    if attention_mask is not None:  # padding and excluded tokens: no query attends to them
        keep = attention_mask[:, None, None, :].bool()
        additive = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~keep, torch.finfo(hidden.dtype).min)
    attentions = []
    for layer in model.bert.encoder.layer:
        own = layer.attention.self
        split = (batch, length, -1, own.attention_head_size)  # pruned layers keep fewer heads
        query = _linear(hidden, own.query).view(split).transpose(1, 2)
        key = _linear(hidden, own.key).view(split).transpose(1, 2)
        value = _linear(hidden, own.value).view(split).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(2, 3)) * own.scaling
        if additive is not None:
            scores = scores + additive
        weights = F.softmax(scores, dim=-1)
        if output_attentions:
            attentions.append(weights)
        context = torch.matmul(weights, value).transpose(1, 2).reshape(batch, length, -1)
        hidden = _norm(_linear(context, layer.attention.output.dense) + hidden, layer.attention.output.LayerNorm)
        inner = layer.intermediate.intermediate_act_fn(_linear(hidden, layer.intermediate.dense))
        hidden = _norm(_linear(inner, layer.output.dense) + hidden, layer.output.LayerNorm)
    logits = model.cls(hidden if chosen is None else hidden[chosen])
    return logits, (tuple(attentions) if output_attentions else None)
