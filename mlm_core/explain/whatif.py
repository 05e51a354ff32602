"""What-ifs: take something away from the model and see how the prediction at the mask changes.

* attention exclusion: remove tokens from the context (a_ij = 0 for excluded j), picked by
  hand or by a rule (all stopwords, all punctuation, ...);
* head masking: switch attention heads off (``model.forward.heads_gated``: transformers 5 has
  no ``head_mask``, so forward hooks multiply each head's output by its gate, as it did);
* weight masking: magnitude pruning of the encoder's linear weights at a chosen sparsity,
  per weight matrix or with one global threshold.

The shared cached model is never modified: hooks live only inside ``with loaded.lock``
and are removed in ``finally``; pruned weights are passed to ``torch.func.functional_call``
so the module's own parameters are never touched.

Every what-if compares two single-pass ("independent") predictions of the same input, one
before and one after; the reference token is the original one where the user masked a
known word, else the model's first choice before the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.attention import check_fits
from mlm_core.explain.predict import MAX_TOP_K, PositionPrediction, position_prediction
from mlm_core.model.families import layer_modules
from mlm_core.model.forward import exclusion_mask, head_gates, run
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import CATEGORIES, Tokens

PRUNE_SCOPES = ("layer", "global")  # layer: each weight matrix at its own threshold (torch prune's l1_unstructured)
MAX_SPARSITY = 0.99
IMPORTANCE_BATCH = 16  # copies of the sentence per forward pass when scanning heads one by one
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class WhatIf:
    """One masked position before and after a change."""

    position: int
    before: PositionPrediction
    after: PositionPrediction
    reference_id: int  # the token whose probability is followed
    reference_token: str
    reference_before: float
    reference_after: float

    @property
    def change(self) -> float:
        """Probability of the reference token after minus before (negative = it lost)."""
        return self.reference_after - self.reference_before

    def as_dict(self) -> dict:
        return {
            "position": self.position,
            "reference_token": self.reference_token,
            "reference_before": self.reference_before,
            "reference_after": self.reference_after,
            "change": self.change,
            "top_before": [{"token": c.token, "prob": c.prob} for c in self.before.top],
            "top_after": [{"token": c.token, "prob": c.prob} for c in self.after.top],
        }


@dataclass(frozen=True)
class PruneReport:
    sparsity: float  # asked for
    scope: str
    layers: tuple[int, ...]
    pruned: int  # weights set to zero
    total: int  # weights eligible
    whatifs: tuple[WhatIf, ...]

    @property
    def achieved(self) -> float:
        return self.pruned / self.total if self.total else 0.0


# --------------------------------------------------------------------------- hooks


def count_hooks(model: nn.Module) -> int:
    """Every forward/backward (pre-)hook on every submodule: compare before and after a call."""
    return sum(len(getattr(m, name, {})) for m in model.modules() for name in HOOK_DICTS)


def parse_heads(loaded: LoadedModel, heads: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validated (layer, head) pairs, 0-based."""
    result = sorted({(int(layer), int(head)) for layer, head in heads})
    if result:
        loaded.require_attention("Switching attention heads off")
    bad = [(la, h) for la, h in result if not (0 <= la < loaded.num_layers and 0 <= h < loaded.num_heads)]
    if bad:
        raise InputError(
            f"Heads {bad} do not exist: this model has layers 0..{loaded.num_layers - 1} and heads "
            f"0..{loaded.num_heads - 1}."
        )
    return result


# --------------------------------------------------------------------------- forward passes


def _logits(
    loaded: LoadedModel,
    batch: torch.Tensor,
    positions: Sequence[int],
    exclude: Sequence[bool] | None = None,
    gates: torch.Tensor | None = None,
    params: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits (B, P, V) at ``positions`` of a batch (B, T) of equal-length inputs under the given changes."""
    rows, columns = batch.shape[0], len(positions)
    chosen = (torch.arange(rows, device=batch.device).repeat_interleave(columns),
              torch.tensor(list(positions), dtype=torch.long, device=batch.device).repeat(rows))
    logits, _ = run(loaded, batch, exclusion_mask(batch, exclude), chosen, gates=gates, params=params)
    return logits.view(rows, columns, -1)


def _check_exclude(ids: Sequence[int], attention_exclude: Sequence[bool] | None) -> list[bool] | None:
    if attention_exclude is None:
        return None
    if len(attention_exclude) != len(ids):
        raise InputError("The exclusion list must have one entry per token.")
    return [bool(e) for e in attention_exclude] if any(attention_exclude) else None


def _check_positions(loaded: LoadedModel, ids: Sequence[int], positions: Sequence[int]) -> list[int]:
    check_fits(loaded, len(ids), "This what-if")
    positions = sorted({int(p) for p in positions})
    if not positions:
        raise NothingToMaskError(f"No masked position: type {loaded.mask_token} or click a token to mask it.")
    bad = [p for p in positions if not 0 < p < len(ids) - 1]
    if bad:
        raise InputError(f"Positions {bad} are outside the text (special tokens cannot be masked).")
    return positions


def _compare(
    loaded: LoadedModel,
    before_logits: torch.Tensor,
    after_logits: torch.Tensor,
    positions: Sequence[int],  # row k of the logits (P, V) is positions[k]
    originals: dict[int, int] | None,
    top_k: int,
) -> tuple[WhatIf, ...]:
    if not 1 <= top_k <= MAX_TOP_K:
        raise InputError(f"top-k must be between 1 and {MAX_TOP_K}; got {top_k}.")
    originals = originals or {}
    results = []
    for row, p in enumerate(positions):
        before = position_prediction(loaded, before_logits[row], p, top_k, originals.get(p))
        reference = originals.get(p, before.top[0].token_id)
        if p not in originals:  # follow the first guess: its probability and rank, as for an original
            before = position_prediction(loaded, before_logits[row], p, top_k, reference)
        after = position_prediction(loaded, after_logits[row], p, top_k, reference)
        results.append(
            WhatIf(
                position=p,
                before=before,
                after=after,
                reference_id=int(reference),
                reference_token=before.original_token,
                reference_before=before.original_prob,
                reference_after=after.original_prob,
            )
        )
    return tuple(results)


def _before_after(loaded, ids, positions, originals, top_k, base_exclude=None, **change) -> tuple[WhatIf, ...]:
    """Logits without and with ``change``; both keep the exploration's own exclusion ``base_exclude``."""
    batch = torch.tensor([list(ids)], device=loaded.device)
    before = _logits(loaded, batch, positions, exclude=base_exclude)[0]
    after = _logits(loaded, batch, positions, **{"exclude": base_exclude, **change})[0]
    return _compare(loaded, before, after, positions, originals, top_k)


# --------------------------------------------------------------------------- attention exclusion


def exclusion(
    tokens: Tokens, positions: Iterable[int] = (), rules: Iterable[str] = (), keep: Iterable[int] = ()
) -> list[bool]:
    """Which positions to remove from the context: the given ones plus every token whose
    category is in ``rules`` (stopword, punctuation, number, content). Special tokens and the
    positions in ``keep`` (the masks) are never excluded.

    Example: ``exclusion(tokens, rules=["stopword"], keep=[5])`` hides 'the', 'of', ... but not position 5.
    """
    rules = set(rules)
    unknown = rules - set(CATEGORIES)
    if unknown:
        raise InputError(f"Unknown rule(s) {sorted(unknown)}; choose from {', '.join(CATEGORIES)}.")
    chosen, keep = {int(p) for p in positions}, {int(p) for p in keep}
    bad = [p for p in chosen if not 0 <= p < len(tokens)]
    if bad:
        raise InputError(f"Positions {bad} are outside the text.")
    return [
        not tokens.special[i] and i not in keep and (i in chosen or tokens.categories[i] in rules)
        for i in range(len(tokens))
    ]


def exclude_tokens(
    loaded: LoadedModel,
    ids: Sequence[int],
    positions: Sequence[int],
    exclude: Sequence[bool],
    originals: dict[int, int] | None = None,
    top_k: int = 5,
    attention_exclude: Sequence[bool] | None = None,
) -> tuple[WhatIf, ...]:
    """Predictions at ``positions`` with and without the ``exclude``d tokens in the context.

    ``attention_exclude`` is what is already excluded before the what-if (e.g. by a strategy).
    """
    positions = _check_positions(loaded, ids, positions)
    base = _check_exclude(ids, attention_exclude)
    if len(exclude) != len(ids):
        raise InputError("The exclusion list must have one entry per token.")
    if not any(exclude):
        raise InputError("Nothing is excluded: pick tokens or a rule (all stopwords, all punctuation).")
    combined = [bool(e) or bool(b) for e, b in zip(exclude, base or [False] * len(ids))]
    return _before_after(loaded, ids, positions, originals, top_k, base, exclude=combined)


# --------------------------------------------------------------------------- head masking


def mask_heads(
    loaded: LoadedModel,
    ids: Sequence[int],
    positions: Sequence[int],
    heads_off: Iterable[tuple[int, int]],
    originals: dict[int, int] | None = None,
    top_k: int = 5,
    attention_exclude: Sequence[bool] | None = None,
) -> tuple[WhatIf, ...]:
    """Predictions at ``positions`` with the (layer, head) pairs in ``heads_off`` switched off."""
    positions = _check_positions(loaded, ids, positions)
    base = _check_exclude(ids, attention_exclude)
    gates = head_gates(loaded, parse_heads(loaded, heads_off))
    return _before_after(loaded, ids, positions, originals, top_k, base, gates=gates)


def head_importance(
    loaded: LoadedModel,
    ids: Sequence[int],
    position: int,
    reference_id: int | None = None,
    attention_exclude: Sequence[bool] | None = None,
) -> tuple[np.ndarray, float, int]:
    """Drop in the reference token's probability when each single head is switched off.

    Returns (drops (L, H), probability with every head on, reference id); a positive drop
    means the head helped. The reference defaults to the model's first choice. The L×H
    variants run as batches of ``IMPORTANCE_BATCH`` copies, one head off in each copy.
    """
    loaded.require_attention("Head importance")
    _check_positions(loaded, ids, [position])
    exclude = _check_exclude(ids, attention_exclude)
    n_layers, n_heads = loaded.num_layers, loaded.num_heads
    single = torch.tensor([list(ids)], device=loaded.device)
    base = torch.softmax(_logits(loaded, single, [position], exclude)[0, 0], -1)
    if reference_id is None:
        reference_id = int(base.argmax())
    if not 0 <= reference_id < base.shape[0]:
        raise InputError(f"Token id {reference_id} is outside the vocabulary.")
    p_base = float(base[reference_id])
    drops = np.zeros(n_layers * n_heads, dtype=np.float32)
    for start in range(0, n_layers * n_heads, IMPORTANCE_BATCH):
        chunk = range(start, min(start + IMPORTANCE_BATCH, n_layers * n_heads))
        gates = torch.ones(len(chunk), n_layers * n_heads)
        gates[torch.arange(len(chunk)), torch.tensor(list(chunk))] = 0.0
        batch = torch.tensor([list(ids)] * len(chunk), device=loaded.device)
        logits = _logits(loaded, batch, [position], exclude, gates=gates.view(len(chunk), n_layers, n_heads))
        probs = torch.softmax(logits[:, 0], -1)[:, reference_id]  # (B,)
        drops[start : start + len(chunk)] = p_base - probs.cpu().numpy()
    return drops.reshape(n_layers, n_heads), p_base, int(reference_id)


# --------------------------------------------------------------------------- weight masking


def prunable_weights(loaded: LoadedModel, layers: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
    """The linear weights of the chosen encoder layers (all when None), by parameter name."""
    blocks = layer_modules(loaded.model, "hidden_states")
    if not blocks:
        raise InputError(f"Cannot find the encoder layers of {loaded.model.config.model_type} for pruning.")
    chosen = range(len(blocks)) if layers is None else sorted({int(la) for la in layers})
    bad = [la for la in chosen if not 0 <= la < len(blocks)]
    if bad or not chosen:
        raise InputError(f"Choose layers between 0 and {len(blocks) - 1} to prune; got {list(chosen)}.")
    names = {id(m): n for n, m in loaded.model.named_modules()}
    weights = {}
    for layer in chosen:
        prefix = names[id(blocks[layer])]
        for sub, module in blocks[layer].named_modules():
            if isinstance(module, nn.Linear):
                weights[f"{prefix}.{sub}.weight"] = module.weight
    return weights


def pruned_weights(
    weights: dict[str, torch.Tensor], sparsity: float, scope: str = "layer"
) -> tuple[dict[str, torch.Tensor], int, int]:
    """New tensors with the smallest-magnitude weights set to zero (inputs untouched).

    ``scope="layer"``: each matrix loses its own smallest ``sparsity`` fraction;
    ``"global"``: one threshold over all matrices together. Returns (tensors, pruned, total).
    """
    if scope not in PRUNE_SCOPES:
        raise InputError(f"scope must be one of {', '.join(PRUNE_SCOPES)}; got {scope!r}.")
    if not 0.0 <= sparsity <= MAX_SPARSITY:
        raise InputError(f"Sparsity must be between 0 and {MAX_SPARSITY}; got {sparsity}.")
    total = sum(w.numel() for w in weights.values())
    with torch.no_grad():
        if scope == "global":
            k = int(round(sparsity * total))
            flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
            threshold = torch.kthvalue(flat, k).values if k > 0 else None
            del flat
        result, pruned = {}, 0
        for name, weight in weights.items():
            magnitude = weight.detach().abs()
            if scope == "layer":
                k = int(round(sparsity * weight.numel()))
                threshold = torch.kthvalue(magnitude.flatten().float(), k).values if k > 0 else None
            keep = torch.ones_like(magnitude, dtype=torch.bool) if threshold is None else magnitude > threshold
            pruned += int((~keep).sum())
            result[name] = weight.detach() * keep
    return result, pruned, total


def prune(
    loaded: LoadedModel,
    ids: Sequence[int],
    positions: Sequence[int],
    sparsity: float,
    scope: str = "layer",
    layers: Iterable[int] | None = None,
    originals: dict[int, int] | None = None,
    top_k: int = 5,
    attention_exclude: Sequence[bool] | None = None,
) -> PruneReport:
    """Predictions at ``positions`` before and after magnitude pruning of the encoder's linear weights.

    Example: ``prune(m, ids, [4], 0.5, "global")`` zeroes the smaller half of all weights.
    """
    positions = _check_positions(loaded, ids, positions)
    base = _check_exclude(ids, attention_exclude)
    weights = prunable_weights(loaded, layers)
    chosen = tuple(sorted({int(la) for la in layers})) if layers is not None else tuple(range(loaded.num_layers))
    with loaded.lock:  # the weights read here are the ones the forward pass replaces
        params, pruned, total = pruned_weights(weights, sparsity, scope)
        whatifs = _before_after(loaded, ids, positions, originals, top_k, base, params=params)
    return PruneReport(sparsity, scope, chosen, pruned, total, whatifs)
