"""Which context tokens drove the prediction at a masked position (captum), as numpy arrays.

The explained number is the probability of one target token at one masked position
(default: the model's first choice). Methods:

* ``ig``: Layer Integrated Gradients on the word embeddings (Sundararajan et al. 2017).
  The baseline replaces every context token by ``baseline`` ([PAD] by default) and keeps
  the special tokens and the masks, so those get 0. Completeness: the scores sum to
  p(input) - p(baseline) up to the reported convergence ``delta``; more steps shrink it.
* ``saliency``: the gradient's L2 norm per token (one backward pass; always >= 0).
* ``input_x_gradient``: embedding · gradient per token (one backward pass; signed).

Cost is bounded: at most ``MAX_STEPS`` steps, evaluated in batches of at most
``TOKEN_BUDGET`` tokens. Captum adds hooks to the shared model, so every call holds
``loaded.lock`` and checks that the model has as many hooks afterwards as before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlm_core.errors import InputError, NothingToMaskError
from mlm_core.explain.attention import check_fits
from mlm_core.explain.whatif import HOOK_DICTS, count_hooks
from mlm_core.model.loading import LoadedModel
from mlm_core.text.tokens import tokenizer_lock

METHODS = ("ig", "saliency", "input_x_gradient")
METHOD_LABELS = {"ig": "Integrated Gradients", "saliency": "Saliency", "input_x_gradient": "Input × gradient"}
BASELINES = ("pad", "mask", "unk")
DEFAULT_STEPS = 32
MAX_STEPS = 256  # beyond this the delta rarely improves and a CPU call takes many seconds
TOKEN_BUDGET = 4096  # tokens per forward pass when IG evaluates its steps in batches


@dataclass(frozen=True)
class Attribution:
    """Per-token scores (T,) for one masked position and one target token."""

    tokens: tuple[str, ...]
    scores: np.ndarray  # (T,) float64
    position: int
    target_id: int
    target_token: str
    target_prob: float  # p(target | input)
    method: str
    baseline: str | None = None  # ig only
    baseline_prob: float | None = None  # p(target | baseline), ig only
    steps: int | None = None
    internal_batch_size: int | None = None
    delta: float | None = None  # ig convergence delta: sum(scores) - (p(input) - p(baseline))
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "tokens": list(self.tokens),
            "scores": [float(s) for s in self.scores],
            "position": self.position,
            "target": self.target_token,
            "target_id": self.target_id,
            "target_prob": self.target_prob,
            "method": self.method,
            "baseline": self.baseline,
            "baseline_prob": self.baseline_prob,
            "steps": self.steps,
            "internal_batch_size": self.internal_batch_size,
            "delta": self.delta,
            "seconds": self.seconds,
        }


def target_id_for(loaded: LoadedModel, target: str | int) -> int:
    """The vocabulary id of a typed target: an exact vocabulary entry ('paris', '##s', 'ĠParis'),
    else the text's single word piece (with or without a leading space, for BPE models).
    """
    tokenizer = loaded.tokenizer
    if isinstance(target, int):
        if not 0 <= target < loaded.vocab_size:
            raise InputError(f"Token id {target} is outside the vocabulary (0..{loaded.vocab_size - 1}).")
        return target
    text = target.strip()
    if not text:
        raise InputError("Type the token to explain, or leave it empty for the model's first choice.")
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    pieces = None
    for candidate in (text, " " + text):
        with tokenizer_lock(tokenizer):  # an unlocked encode races tokenize() in other sessions
            ids = tokenizer(candidate, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return int(ids[0])
        pieces = pieces or tokenizer.convert_ids_to_tokens(ids)
    raise InputError(
        f"'{text}' is not one token for this model (it splits into {' '.join(pieces or [])}); a mask "
        "predicts one word piece: type one of the pieces."
    )


def _baseline_id(loaded: LoadedModel, baseline: str) -> int:
    if baseline not in BASELINES:
        raise InputError(f"baseline must be one of {', '.join(BASELINES)}; got {baseline!r}.")
    tokenizer = loaded.tokenizer
    token_id = {"pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id, "unk": tokenizer.unk_token_id}[
        baseline
    ]
    if token_id is None:
        raise InputError(f"This model has no {baseline} token; choose another baseline.")
    return int(token_id)


def _check(loaded: LoadedModel, ids: Sequence[int], position: int | None, method: str, steps: int) -> int:
    check_fits(loaded, len(ids), "Attribution")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    if not 1 <= steps <= MAX_STEPS:
        raise InputError(f"steps must be between 1 and {MAX_STEPS}; got {steps}.")
    if position is None:
        masks = [i for i, t in enumerate(ids) if t == loaded.mask_token_id]
        if not masks:
            raise NothingToMaskError(
                f"No masked position to explain: type {loaded.mask_token} in the text or choose a position."
            )
        position = masks[0]
    if not 0 < position < len(ids) - 1:
        raise InputError(f"Position {position} is outside the text (0 and {len(ids) - 1} are special tokens).")
    return int(position)


def _remove_foreign_hooks(model: torch.nn.Module, before: dict[int, dict[str, set]]) -> None:
    """Drop hooks a failed captum call left behind (transformers' own recorders are kept)."""
    for module in model.modules():
        known = before.get(id(module), {})
        for name in HOOK_DICTS:
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k in hooks if k not in known.get(name, set())]:
                if not getattr(hooks[key], "__module__", "").startswith("transformers"):
                    del hooks[key]


@contextlib.contextmanager
def _logits_at(model: torch.nn.Module, position: int):
    """Apply the vocabulary projection at ``position`` only: logits become (B, 1, V).

    The projection to a 30k vocabulary at every position costs as much as the encoder's
    backward pass; attribution needs one row of it.
    """
    projection = model.get_output_embeddings()
    if projection is None:  # no separate projection module: logits stay (B, T, V)
        yield
        return
    handle = projection.register_forward_pre_hook(lambda _m, args: (args[0][:, position : position + 1], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _hook_snapshot(model: torch.nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {n: set(getattr(m, n, {})) for n in HOOK_DICTS} for m in model.modules()}


def attribute(
    loaded: LoadedModel,
    ids: Sequence[int],
    position: int | None = None,
    target: str | int | None = None,
    method: str = "ig",
    steps: int = DEFAULT_STEPS,
    baseline: str = "pad",
    internal_batch_size: int | None = None,
    attention_exclude: Sequence[bool] | None = None,
) -> Attribution:
    """Per-token attribution of p(target at ``position``) (see the module docstring).

    ``position`` defaults to the first mask; ``target`` (a typed token or an id) to the
    model's first choice there; ``attention_exclude`` keeps tokens out of the context as the
    exploration did. Example:
    ``attribute(m, tokenize(m.tokenizer, "Paris is the capital of [MASK].").ids, steps=32)``.
    """
    ids = [int(i) for i in ids]
    position = _check(loaded, ids, position, method, steps)
    if method == "ig":
        _baseline_id(loaded, baseline)  # refuse a bad baseline before taking the lock
    target_id = None if target is None else target_id_for(loaded, target)
    if internal_batch_size is not None and internal_batch_size < 1:
        raise InputError(f"internal_batch_size must be at least 1; got {internal_batch_size}.")
    if attention_exclude is not None and len(attention_exclude) != len(ids):
        raise InputError("The exclusion list must have one entry per token.")
    model = loaded.model
    started = time.perf_counter()
    with loaded.lock:  # captum's hooks live on the shared module
        hooks_before = count_hooks(model)
        snapshot = _hook_snapshot(model)
        try:
            with _logits_at(model, position):
                result = _attribute(
                    loaded, ids, position, target_id, method, steps, baseline, internal_batch_size, attention_exclude
                )
        finally:
            if count_hooks(model) != hooks_before:
                _remove_foreign_hooks(model, snapshot)
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


def _attribute(
    loaded: LoadedModel,
    ids: list[int],
    position: int,
    target_id: int | None,
    method: str,
    steps: int,
    baseline: str,
    internal_batch_size: int | None,
    attention_exclude: Sequence[bool] | None,
) -> Attribution:
    """``attribute`` under the lock, with logits computed at ``position`` only (B, 1, V)."""
    from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

    model, device = loaded.model, loaded.device
    special = set(loaded.special_ids)
    input_ids = torch.tensor([ids], device=device)
    context = torch.ones_like(input_ids)  # (1, T) attention mask: 0 = excluded from the context
    if attention_exclude is not None:
        context[0, torch.tensor([bool(e) for e in attention_exclude], device=device)] = 0

    def run(**inputs) -> torch.Tensor:
        batch = next(iter(inputs.values())).shape[0]
        logits = model(**inputs, attention_mask=context.expand(batch, -1)).logits  # (B, 1, V) or (B, T, V)
        return logits[:, 0 if logits.shape[1] == 1 else position].float()  # (B, V)

    with torch.inference_mode():
        probs = torch.softmax(run(input_ids=input_ids)[0], -1)  # (V,)
    if target_id is None:
        ranked = probs.clone()
        ranked[sorted(special)] = -1.0  # same rule as the predictions: never a special token
        target_id = int(ranked.argmax())

    def prob_from_ids(batch_ids: torch.Tensor) -> torch.Tensor:
        return torch.softmax(run(input_ids=batch_ids), -1)[:, target_id]  # (B,)

    def prob_from_embeds(embeds: torch.Tensor) -> torch.Tensor:
        return torch.softmax(run(inputs_embeds=embeds), -1)[:, target_id]  # (B,)

    extra: dict = {}
    with torch.enable_grad():
        if method == "ig":
            base_token = _baseline_id(loaded, baseline)
            keep = [t in special or i == position for i, t in enumerate(ids)]  # specials and masks stay
            base_ids = torch.tensor([[t if k else base_token for t, k in zip(ids, keep)]], device=device)
            batch = internal_batch_size or max(1, min(steps, TOKEN_BUDGET // len(ids)))
            lig = LayerIntegratedGradients(prob_from_ids, model.get_input_embeddings())
            raw, delta = lig.attribute(
                input_ids, baselines=base_ids, n_steps=steps, internal_batch_size=batch,
                return_convergence_delta=True,
            )  # raw: (1, T, D)
            scores = raw[0].sum(-1)  # (T,)
            with torch.inference_mode():
                base_prob = float(prob_from_ids(base_ids)[0])
            extra = dict(baseline=baseline, baseline_prob=base_prob, steps=steps, internal_batch_size=batch,
                         delta=float(delta.reshape(-1)[0]))
        else:
            embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)  # (1, T, D)
            if method == "saliency":
                scores = Saliency(prob_from_embeds).attribute(embeds, abs=False)[0].norm(dim=-1)
            else:
                scores = InputXGradient(prob_from_embeds).attribute(embeds)[0].sum(-1)
    return Attribution(
        tokens=tuple(loaded.tokenizer.convert_ids_to_tokens(ids)),
        scores=scores.detach().double().cpu().numpy(),
        position=position,
        target_id=target_id,
        target_token=loaded.tokenizer.convert_ids_to_tokens(target_id),
        target_prob=float(probs[target_id]),
        method=method,
        **extra,
    )
