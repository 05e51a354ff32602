"""Linear weights stored column-major, for the shared inference copy of a model on the CPU.

Why: ``nn.Linear`` computes ``x @ W.T`` with ``W`` (out, in). Stored row-major, as torch loads it,
``W.T`` reaches the matrix library as a transposed operand, which it reads poorly when ``x`` has a
few rows, as a sentence or a single mask does. Stored column-major (``W.T`` contiguous), the same
product streams the weight once. On one core of this project's 2-core AMD EPYC machine: the
vocabulary projection at one mask 4.8 → 1.7 ms, one prediction with attentions 17.5 → 13.3 ms
(``benchmarks/predict.py``). The parameters stay the same objects with their data laid out anew,
so an output matrix tied to the input embeddings stays tied (a lookup in a column-major embedding
costs nothing measurable); the server holds about 45 MB more for the default model (measured).
Results agree with torch's layout to float rounding (probabilities within 1e-6).

Only ``load_model``'s shared copy is laid out this way: it serves inference only. A model loaded
for training (``load_fresh``) keeps torch's layout, which optimizers and ``save_pretrained`` expect.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def column_major_linears(model: nn.Module) -> int:
    """Lay out the weight of every ``nn.Linear`` in ``model`` column-major, in place; returns how many moved.

    The other parameters and buffers are copied into memory of their own as well: loading leaves them
    views of buffers shared with the weights (the checkpoint's), which would otherwise stay alive beside
    the new copies (+130 MB resident for the default model instead of +44 MB).
    """
    moved = 0
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if isinstance(module, nn.Linear) and name == "weight":
                    if not parameter.t().is_contiguous():
                        parameter.data = parameter.data.t().contiguous().t()  # .data: the same Parameter, still tied
                        moved += 1
                elif parameter.is_contiguous():  # not the weight of a tied Linear, already moved
                    parameter.data = parameter.data.clone()
            for name, buffer in module.named_buffers(recurse=False):
                module._buffers[name] = buffer.clone()
    return moved


def as_it_comes(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with torch's own (row-major) layout: the model as transformers runs it,
    for the benchmarks' baselines (the same weights, none of this module's help)."""
    stock = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in stock.parameters():
            parameter.data = parameter.data.contiguous()
    return stock
