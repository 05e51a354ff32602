"""Parameter masking W⊙M: which weights of a matrix a binary mask keeps (magnitude or random).

The Explore/Teach view of W⊙M and the trainer's fixed parameter masks draw their masks here, so
what a user sees on one matrix is what training with that mask does to every matrix.
"""

from __future__ import annotations

import torch

from mlm_core.errors import InputError

PARAM_MASK_KINDS = ("magnitude", "random")  # magnitude: drop the smallest |w|; random: drop a seeded draw
MAX_PARAM_SPARSITY = 0.99  # at 1.0 nothing is left to train or to predict with


def parameter_mask(weight: torch.Tensor, sparsity: float, kind: str = "magnitude", seed: int = 0) -> torch.Tensor:
    """Bool mask M shaped like ``weight``: False on exactly round(sparsity · numel) weights, True elsewhere.

    ``magnitude`` removes the smallest-magnitude weights (ties broken by position, so the count is
    exact); ``random`` removes a uniformly drawn set, the same for the same ``seed``. ``weight`` is
    only read. Example: ``parameter_mask(torch.tensor([[3., -1.], [0.5, 2.]]), 0.5)`` keeps 3 and 2.
    """
    if kind not in PARAM_MASK_KINDS:
        raise InputError(f"The parameter mask must be one of {', '.join(PARAM_MASK_KINDS)}; got {kind!r}.")
    if isinstance(sparsity, bool) or not 0.0 <= float(sparsity) <= MAX_PARAM_SPARSITY:
        raise InputError(f"The share of weights masked must be between 0 and {MAX_PARAM_SPARSITY}; got {sparsity!r}.")
    count = weight.numel()
    removed = int(round(float(sparsity) * count))
    keep = torch.ones(count, dtype=torch.bool, device=weight.device)
    if removed:
        if kind == "magnitude":
            order = torch.argsort(weight.detach().abs().flatten().float(), stable=True)
        else:
            order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed))).to(weight.device)
        keep[order[:removed]] = False
    return keep.view(weight.shape)
