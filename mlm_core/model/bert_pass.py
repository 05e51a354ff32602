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
from torch.utils.hooks import RemovableHandle
from transformers import BertForMaskedLM
from transformers.activations import GELUActivation

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
    # Every hook torch registers takes a number from one counter: while it stands where it stood when
    # this model was last found free of hooks, none has been added since (scanning the modules cost
    # 60 µs of every prediction). Only a clean finding is remembered: a hook removed later cannot
    # add one.
    registered = getattr(RemovableHandle, "next_id", None)
    if registered is not None and _hook_free_at.get(model) == registered:
        return True
    modules = _modules.get(model)
    if modules is None:
        modules = _modules[model] = tuple(model.modules())
    for module in modules:
        if not (module._forward_pre_hooks or module._forward_hooks):
            continue
        for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()):
            if not str(getattr(hook, "__module__", "")).startswith(_RECORDER_MODULE):
                return False
    if registered is not None:
        _hook_free_at[model] = registered
    return True


_hook_free_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the counter when found hook-free


class _Linear(NamedTuple):
    weight: torch.Tensor
    bias: torch.Tensor | None


class _Norm(NamedTuple):
    shape: tuple[int, ...]
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


class _Layer(NamedTuple):
    query: _Linear
    key: _Linear
    value: _Linear
    head_size: int
    scaling: float
    output: _Linear
    output_norm: _Norm
    intermediate: _Linear
    activation: Callable[[torch.Tensor], torch.Tensor]
    out: _Linear
    out_norm: _Norm


class _Plan(NamedTuple):
    """Every parameter and setting ``bert_pass`` reads of one model, looked up once per model.

    Why: reaching them through the module tree on every pass (``nn.Module.__getattr__``, some 240
    lookups, and the activations called as modules) cost about 0.28 ms of a 4.1 ms pass (side by side in
    one process, a 12-token sentence, the default model). The Parameter objects themselves are kept, so
    data laid out anew (``model.layout``) is seen.
    """

    word_embeddings: torch.Tensor
    token_types: torch.Tensor
    positions: torch.Tensor
    embedding_norm: _Norm
    layers: tuple[_Layer, ...]
    transform: _Linear
    transform_activation: Callable[[torch.Tensor], torch.Tensor]
    transform_norm: _Norm
    decoder: _Linear


def _plan(model: BertForMaskedLM) -> _Plan:
    plan = _plans.get(model)
    if plan is None:
        embeddings, head = model.bert.embeddings, model.cls.predictions
        plan = _plans[model] = _Plan(
            embeddings.word_embeddings.weight, embeddings.token_type_embeddings.weight,
            embeddings.position_embeddings.weight, _norm_of(embeddings.LayerNorm),
            tuple(_Layer(_linear_of(layer.attention.self.query), _linear_of(layer.attention.self.key),
                         _linear_of(layer.attention.self.value), layer.attention.self.attention_head_size,
                         layer.attention.self.scaling, _linear_of(layer.attention.output.dense),
                         _norm_of(layer.attention.output.LayerNorm), _linear_of(layer.intermediate.dense),
                         _function_of(layer.intermediate.intermediate_act_fn), _linear_of(layer.output.dense),
                         _norm_of(layer.output.LayerNorm))
                  for layer in model.bert.encoder.layer),
            _linear_of(head.transform.dense), _function_of(head.transform.transform_act_fn),
            _norm_of(head.transform.LayerNorm), _linear_of(head.decoder))
    return plan


_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _linear_of(layer: nn.Linear) -> _Linear:
    return _Linear(layer.weight, layer.bias)


def _norm_of(layer: nn.LayerNorm) -> _Norm:
    return _Norm(tuple(layer.normalized_shape), layer.weight, layer.bias, layer.eps)


def _function_of(activation: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' GELU module as the function it calls (the same numbers, without a module call)."""
    if type(activation) is GELUActivation:
        return activation.act
    return activation


def _linear(x: torch.Tensor, layer: _Linear) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _norm(x: torch.Tensor, layer: _Norm) -> torch.Tensor:
    return torch.layer_norm(x, layer.shape, layer.weight, layer.bias, layer.eps)


def bert_pass(
    model: BertForMaskedLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chosen=None,
    output_attentions: bool = False,
    head: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """(logits, attentions) as ``model(input_ids=..., attention_mask=..., output_attentions=...)`` gives them.

    ``chosen`` indexes (B, T) as in ``forward.model_output``: logits (M, V) at those positions only;
    None: (B, T, V). Attentions, when asked: one (B, H, T, T) tensor per layer. ``head=False`` stops
    before the prediction head: the final hidden states (M, D) or (B, T, D) instead of logits, for
    ``head_logits`` to finish, later and together with other passes' rows (``forward.chosen_logits``).

    With ``chosen``, two kinds of rows are never computed, since nothing that is returned depends on
    them (``rows_to_compute``): padding and excluded tokens that are not chosen (no query attends to
    them), unless attentions are asked for; and, in the last layer, every row but the chosen ones
    past the attention weights (its output projection and feed-forward block are two thirds of a
    layer). Rows are kept packed, (N, D), for the linear layers and laid out padded only for the
    attention products, so a batch of uneven sentences pays for its padding only there.
    """
    plan = _plan(model)
    batch, length = input_ids.shape
    hidden = F.embedding(input_ids, plan.word_embeddings) + plan.token_types[0]  # every token is of type 0
    hidden = _norm(hidden + plan.positions[:length], plan.embedding_norm).reshape(batch * length, -1)  # (B·T, D)
    additive = None
    if attention_mask is not None:  # padding and excluded tokens: no query attends to them
        additive = torch.zeros((batch, 1, 1, length), dtype=hidden.dtype, device=hidden.device)
        additive.masked_fill_(attention_mask[:, None, None, :] == 0, torch.finfo(hidden.dtype).min)
    computed, selected = rows_to_compute(input_ids, attention_mask, chosen, output_attentions)
    if computed is not None:
        hidden = hidden[computed]
    attentions = []
    last = len(plan.layers) - 1
    for number, layer in enumerate(plan.layers):
        split = (batch, length, -1, layer.head_size)  # pruned layers keep fewer heads
        query, key, value = (_linear(hidden, part) for part in (layer.query, layer.key, layer.value))
        if computed is not None:  # padded out to (B·T, D) for the attention products
            query, key, value = (rows.new_zeros(batch * length, rows.shape[-1]).index_copy_(0, computed, rows)
                                 for rows in (query, key, value))
        query, key, value = (rows.view(split).transpose(1, 2) for rows in (query, key, value))  # (B, H, T, d)
        scores = torch.matmul(query, key.transpose(2, 3)) * layer.scaling
        if additive is not None:
            scores = scores + additive
        weights = scores.softmax(-1)
        if output_attentions:
            attentions.append(weights)
        context = torch.matmul(weights, value).transpose(1, 2).reshape(batch * length, -1)
        if computed is not None:
            context = context[computed]
        if number == last and selected is not None:  # only the chosen rows go on to the head
            context, hidden = context[selected], hidden[selected]
        hidden = _norm(_linear(context, layer.output) + hidden, layer.output_norm)
        inner = layer.activation(_linear(hidden, layer.intermediate))
        hidden = _norm(_linear(inner, layer.out) + hidden, layer.out_norm)
    if chosen is None:
        hidden = hidden.view(batch, length, -1)
    return (head_logits(model, hidden) if head else hidden), (tuple(attentions) if output_attentions else None)


def head_logits(model: BertForMaskedLM, hidden: torch.Tensor) -> torch.Tensor:
    """The prediction head on final hidden states (..., D): transform, then the vocabulary projection (..., V).

    Each row gets the same numbers whichever other rows are stacked with it, as long as there are two or
    more (a lone row goes through a matrix-vector kernel that rounds differently), so the rows of several
    passes may be projected at once (``tests/models/test_bert_pass.py`` checks it on the default model).
    """
    plan = _plan(model)
    hidden = _norm(plan.transform_activation(_linear(hidden, plan.transform)), plan.transform_norm)
    return _linear(hidden, plan.decoder)


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
