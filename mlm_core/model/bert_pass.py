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
from collections.abc import Callable
from typing import NamedTuple

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


class _Layer(NamedTuple):
    """One encoder layer's parameters and settings, looked up once per model: reaching them through
    the module tree (``nn.Module.__getattr__``, some 240 lookups) cost about a tenth of a millisecond
    a pass. The Parameter objects themselves are kept, so data laid out anew (``model.layout``) is seen."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    head_size: int
    scaling: float
    output: nn.Linear
    output_norm: nn.LayerNorm
    intermediate: nn.Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    out: nn.Linear
    out_norm: nn.LayerNorm


def _layers(model: BertForMaskedLM) -> tuple[_Layer, ...]:
    layers = _layer_plans.get(model)
    if layers is None:
        layers = _layer_plans[model] = tuple(
            _Layer(layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                   layer.attention.self.attention_head_size, layer.attention.self.scaling,
                   layer.attention.output.dense, layer.attention.output.LayerNorm, layer.intermediate.dense,
                   layer.intermediate.intermediate_act_fn, layer.output.dense, layer.output.LayerNorm)
            for layer in model.bert.encoder.layer)
    return layers


_layer_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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

    With ``chosen``, two kinds of rows are never computed, since nothing that is returned depends on
    them (``rows_to_compute``): padding and excluded tokens that are not chosen (no query attends to
    them), unless attentions are asked for; and, in the last layer, every row but the chosen ones
    past the attention weights (its output projection and feed-forward block are two thirds of a
    layer). Rows are kept packed, (N, D), for the linear layers and laid out padded only for the
    attention products, so a batch of uneven sentences pays for its padding only there.
    """
    embeddings = model.bert.embeddings
    batch, length = input_ids.shape
    hidden = F.embedding(input_ids, embeddings.word_embeddings.weight) + embeddings.token_type_embeddings.weight[0]
    hidden = _norm(hidden + embeddings.position_embeddings.weight[:length], embeddings.LayerNorm)
    hidden = hidden.reshape(batch * length, -1)  # (B·T, D): one row per token
    additive = None
    if attention_mask is not None:  # padding and excluded tokens: no query attends to them
        keep = attention_mask[:, None, None, :].bool()
        additive = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        additive = additive.masked_fill(~keep, torch.finfo(hidden.dtype).min)
    computed, selected = rows_to_compute(input_ids, attention_mask, chosen, output_attentions)
    if computed is not None:
        hidden = hidden[computed]
    attentions = []
    layers = _layers(model)
    for number, layer in enumerate(layers):
        split = (batch, length, -1, layer.head_size)  # pruned layers keep fewer heads

        def heads(rows: torch.Tensor, split=split) -> torch.Tensor:  # (N, D) -> (B, H, T, d)
            if computed is not None:
                rows = rows.new_zeros(batch * length, rows.shape[-1]).index_copy_(0, computed, rows)
            return rows.view(split).transpose(1, 2)

        query, key, value = (heads(_linear(hidden, part)) for part in (layer.query, layer.key, layer.value))
        scores = torch.matmul(query, key.transpose(2, 3)) * layer.scaling
        if additive is not None:
            scores = scores + additive
        weights = F.softmax(scores, dim=-1)
        if output_attentions:
            attentions.append(weights)
        context = torch.matmul(weights, value).transpose(1, 2).reshape(batch * length, -1)
        if computed is not None:
            context = context[computed]
        if number == len(layers) - 1 and selected is not None:  # only the chosen rows go on to the head
            context, hidden = context[selected], hidden[selected]
        hidden = _norm(_linear(context, layer.output) + hidden, layer.output_norm)
        inner = layer.activation(_linear(hidden, layer.intermediate))
        hidden = _norm(_linear(inner, layer.out) + hidden, layer.out_norm)
    if chosen is None:
        hidden = hidden.view(batch, length, -1)
    head = model.cls.predictions  # BertLMPredictionHead: transform (dense, activation, LayerNorm), decoder
    transform = head.transform
    hidden = _norm(transform.transform_act_fn(_linear(hidden, transform.dense)), transform.LayerNorm)
    return _linear(hidden, head.decoder), (tuple(attentions) if output_attentions else None)


def rows_to_compute(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, chosen, output_attentions: bool
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(computed, selected): which of the B·T token rows to compute, and where the chosen ones are among them.

    ``computed`` (N,) flat indexes, or None for every row; ``selected`` (M,) indexes into the computed
    rows, in ``chosen``'s order (None when ``chosen`` is None). A row may be left out when no query
    attends to it and it is not chosen, and its attention weights are not asked for. Not when a
    sentence attends to none of its tokens: softmax then spreads evenly over every column, padding
    included, so every row counts.
    """
    if chosen is None:
        return None, None
    batch, length = input_ids.shape
    if isinstance(chosen, tuple | list):  # (rows, positions), in the caller's order
        rows, positions = chosen
        wanted = torch.as_tensor(rows, device=input_ids.device) * length + torch.as_tensor(positions,
                                                                                            device=input_ids.device)
    else:  # a (B, T) mask: row-major order, as ``tensor[mask]`` gives
        wanted = torch.nonzero(chosen.reshape(-1))[:, 0]
    if output_attentions or attention_mask is None or not attention_mask.any(1).all():
        return None, wanted
    needed = attention_mask.reshape(-1) != 0  # a new tensor: the caller's mask stays as it is
    needed[wanted] = True
    if bool(needed.all()):
        return None, wanted
    computed = torch.nonzero(needed)[:, 0]
    position = torch.empty(batch * length, dtype=torch.long, device=input_ids.device)
    position[computed] = torch.arange(len(computed), device=input_ids.device)
    return computed, position[wanted]
