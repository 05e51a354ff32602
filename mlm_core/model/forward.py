"""The one forward pass: the explorer, the what-ifs, the probes, the batch analysis and the
trainer all get their logits here, so one position scores the same wherever it is asked.

* ``model_output``/``masked_logits``: logits only at the chosen positions. A pre-hook on the
  family's prediction head (``families.head_entry``) hands it only the chosen rows of the final
  hidden states: the vocabulary projection is most of a small model's compute. Works with
  gradients (the trainer), pruned weights (``torch.func.functional_call``) and attentions. A BERT
  model at inference with no hook of ours installed runs as plain tensor operations instead
  (``model.bert_pass``: the same numbers without transformers' per-module overhead).
* ``run``: the shared model's pass, under ``loaded.lock`` and ``inference_mode``, with head
  gates when asked; ``forward``: one sentence, logits and attentions (L, H, T, T), batched with the
  sentences other sessions send at the same moment (``model.batching``).
* ``chosen_logits``: ``run`` over many passes, their vocabulary projections done together
  (the batch analysis).
* ``in_turn_logits``: mask each token in turn (pseudo-log-likelihood, probes, batch PLL).
* ``head_gates``/``heads_gated``: switch attention heads off. transformers 5 has no
  ``head_mask``: forward hooks multiply each head's output by its gate, as ``head_mask`` did.

Shared state: a loaded model is shared by every session. transformers records attentions with
state kept on the module, and hooks installed here are seen by any pass that runs meanwhile, so
both happen only inside ``with loaded.lock`` and every hook is removed in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mlm_core.errors import InputError
from mlm_core.model import bert_pass
from mlm_core.model.batching import Request, gatherer_for, run_requests
from mlm_core.model.families import attention_output_projection, head_entry, layer_modules
from mlm_core.model.loading import LoadedModel

IN_TURN_BATCH = 32  # copies of a sentence per forward pass when each token is masked in turn
# Logits one vocabulary projection of chosen_logits may produce: rows of consecutive passes are gathered up to
# this (274 rows of the default model's 30,522 words), which bounds the memory a batch analysis holds at once.
HEAD_LOGITS_BYTES = 32 * 2**20

# ----------------------------------------------------------------------------- logits at chosen positions


def model_output(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chosen=None,
    *,
    params: dict[str, torch.Tensor] | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """(logits, attentions) of ``model`` on ``input_ids`` (B, T); no lock, gradients as the caller has them.

    ``chosen`` indexes the first two dimensions: a (B, T) bool mask, or a pair of index tensors
    (rows, positions). Logits are then (M, V), one row per chosen position in that order (M =
    chosen.sum(), or the length of the pairs); with ``chosen=None``, (B, T, V). ``params``
    replaces parameters by name for this call only (``torch.func.functional_call``).
    Attentions, when asked: one (B, H, T, T) tensor per layer. Logits keep the model's dtype.
    """
    if params is None and bert_pass.applies(model):  # the same arithmetic without transformers' module calls
        return bert_pass.bert_pass(model, input_ids, attention_mask, chosen, output_attentions)
    head = head_entry(getattr(model, "module", model)) if chosen is not None else None  # DDP keeps it in .module
    handle = None
    if head is not None:
        handle = head.register_forward_pre_hook(lambda _m, args: (args[0][chosen], *args[1:]) if args else None)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if output_attentions:
        kwargs["output_attentions"] = True
    try:
        out = torch.func.functional_call(model, params, (), kwargs) if params else model(**kwargs)
    finally:
        if handle is not None:
            handle.remove()
    logits = getattr(out, "logits", out)  # the trainer's LSTM returns its logits
    if chosen is not None and logits.dim() == 3:  # a head that bypassed its entry module: select afterwards
        logits = logits[chosen]
    return logits, (out.attentions if output_attentions else None)


def masked_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, chosen
                  ) -> torch.Tensor:
    """(M, V) logits at the ``chosen`` positions (M = chosen.sum()); the trainer's and the batch analysis's call."""
    return model_output(model, input_ids, attention_mask, chosen)[0]


def exclusion_mask(input_ids: torch.Tensor, exclude: Sequence[bool] | None = None) -> torch.Tensor:
    """(B, T) ones, 0 at the ``exclude``d positions (T,): no position attends to them (a_ij = 0)."""
    mask = torch.ones_like(input_ids)
    if exclude is not None:
        mask[:, torch.tensor(list(exclude), dtype=torch.bool, device=input_ids.device)] = 0
    return mask


def run(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    chosen=None,
    *,
    gates: torch.Tensor | None = None,
    params: dict[str, torch.Tensor] | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """``model_output`` on the shared model: float32 logits (M, V) or (B, T, V), and attentions.

    Holds ``loaded.lock`` (attention recording and hooks are shared state) under
    ``inference_mode``; ``gates`` (B or 1, L, H) switch heads off for this pass only.
    Example: ``run(m, torch.tensor([ids]), chosen=(torch.tensor([0]), torch.tensor([3])))[0]`` is (1, V).
    """
    with loaded.lock, torch.inference_mode(), heads_gated(loaded, gates):
        logits, attentions = model_output(loaded.model, input_ids, attention_mask, chosen, params=params,
                                          output_attentions=output_attentions)
    return logits.float(), attentions


def forward(
    loaded: LoadedModel,
    ids: Sequence[int],
    attention_exclude: Sequence[bool] | None = None,
    output_attentions: bool = False,
    positions: Sequence[int] | None = None,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """One sentence. Returns logits (T, V), or (P, V) at ``positions`` in their order, and, if
    asked, attentions (L, H, T, T) as numpy.

    ``attention_exclude`` (T,) removes tokens from the context: no position attends to them.
    Sentences that other threads send at the same moment run in one padded batch with this one
    (``model.batching``); the result is this sentence's alone. A thread that already holds the
    model's lock (its own hooks installed: head gates, captum) runs its pass itself, unbatched.
    Example: ``forward(m, [101, 103, 102], positions=[1])[0].shape == (1, m.vocab_size)``.
    """
    attended = None if attention_exclude is None else tuple(0 if excluded else 1 for excluded in attention_exclude)
    request = Request(tuple(int(i) for i in ids), None if positions is None else tuple(int(p) for p in positions),
                      attended, bool(output_attentions) and loaded.has_attention)  # a recurrent model: None
    owns = getattr(loaded.lock, "_is_owned", None)  # RLock's own test of "held by this thread"
    if owns is not None and owns():
        return run_requests(loaded, [request], None)[0]
    return gatherer_for(loaded).submit(loaded, request)


# ----------------------------------------------------------------------------- many passes, one projection


def chosen_logits(
    loaded: LoadedModel,
    passes: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]],
    *,
    gates: torch.Tensor | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``run`` on each pass ``(input_ids, attention_mask, chosen)``: yields (indexes of consecutive passes,
    their float32 logits (M, V) stacked in that order). Each pass's rows are ``run``'s, bit for bit where
    the pass has two or more (the matrix library multiplies a lone row with another kernel, which rounds
    differently).

    Why not ``run`` pass by pass: the vocabulary projection reads the whole output matrix (V x D, 47 MB
    for the default model) each time, and with the few dozen masks of a batch-analysis pass reading it
    took longer than multiplying. A BERT pass without head gates (``bert_pass``) stops before the
    prediction head, and the rows of consecutive passes are projected together once their logits would
    fill ``HEAD_LOGITS_BYTES`` (benchmarks/evaluate.py's blocks of 100 sentences, 3-4 passes of some 47
    masks each: 583 -> 568 ms for 400 back to back, 155.1 -> 151.0 ms a block when the pipeline runs
    between blocks, at 128 rows a projection; 133.3 -> 130.9 ms with every block's masks in one). Other
    models, and passes with head gates, yield pass by pass.
    """
    rows_per_projection = max(2, HEAD_LOGITS_BYTES // (4 * loaded.model.config.vocab_size))
    pending: list[tuple[int, torch.Tensor]] = []

    def projected() -> tuple[list[int], torch.Tensor]:
        with loaded.lock, torch.inference_mode():
            logits = bert_pass.head_logits(loaded.model, torch.cat([hidden for _, hidden in pending]))
        indexes = [index for index, _ in pending]
        pending.clear()
        return indexes, logits.float()

    for index, (input_ids, attention_mask, chosen) in enumerate(passes):
        with loaded.lock, torch.inference_mode():  # applies() and the pass under one hold: no hook comes between
            plain = gates is None and bert_pass.applies(loaded.model)
            if plain:
                hidden, _ = bert_pass.bert_pass(loaded.model, input_ids, attention_mask, chosen, head=False)
        if plain:
            pending.append((index, hidden))
            if sum(len(rows) for _, rows in pending) >= rows_per_projection:
                yield projected()
            continue
        if pending:
            yield projected()
        yield [index], run(loaded, input_ids, attention_mask, chosen, gates=gates)[0]
    if pending:
        yield projected()


# ----------------------------------------------------------------------------- each token masked in turn


def in_turn_logits(
    loaded: LoadedModel,
    copies: Sequence[tuple[Sequence[int], int, np.ndarray | None]],
    batches: Iterable[Sequence[int]] | None = None,
    *,
    gates: torch.Tensor | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Each copy ``(ids (T,), position, attended (T,) or None)`` with its position masked alone.

    Copies of different lengths are padded; ``batches`` groups copy indexes into passes (default:
    ``IN_TURN_BATCH`` at a time, in order). Yields (copy indexes, float32 logits (P, V) at each copy's
    masked position), a pass or several at a time (``chosen_logits``). Example (pseudo-log-likelihood
    of one sentence)::

        for rows, logits in in_turn_logits(m, [(ids, p, None) for p in positions]):
            log_p = torch.log_softmax(logits, -1)  # row k: positions[rows[k]] masked
    """
    if batches is None:
        batches = (range(start, min(start + IN_TURN_BATCH, len(copies)))
                   for start in range(0, len(copies), IN_TURN_BATCH))
    batches = [list(batch) for batch in batches]
    pad = loaded.tokenizer.pad_token_id or 0

    def passes():
        for batch in batches:
            width = max(len(copies[i][0]) for i in batch)
            ids = np.full((len(batch), width), pad, dtype=np.int64)
            attended = np.zeros((len(batch), width), dtype=np.int64)
            positions = np.empty(len(batch), dtype=np.int64)
            for row, i in enumerate(batch):
                sentence, position, keep = copies[i]
                ids[row, : len(sentence)] = sentence
                attended[row, : len(sentence)] = 1 if keep is None else keep
                positions[row] = position
            ids[np.arange(len(batch)), positions] = loaded.mask_token_id
            rows = torch.arange(len(batch), device=loaded.device)
            yield (torch.from_numpy(ids).to(loaded.device), torch.from_numpy(attended).to(loaded.device),
                   (rows, torch.from_numpy(positions).to(loaded.device)))

    for indexes, logits in chosen_logits(loaded, passes(), gates=gates):
        yield [i for k in indexes for i in batches[k]], logits


# ----------------------------------------------------------------------------- head gates


def attention_modules(loaded: LoadedModel) -> list[nn.Module]:
    """One self-attention module per layer, bottom to top (refuses shared-layer models)."""
    loaded.require_attention("Switching attention heads off")
    modules = layer_modules(loaded.model, "attentions")
    if len(modules) != loaded.num_layers:
        raise InputError(
            f"Switching heads off needs one attention module per layer; {loaded.model.config.model_type} "
            f"has {len(modules)} for {loaded.num_layers} layers (shared layers are not supported)."
        )
    return modules


def head_gates(loaded: LoadedModel, off: Iterable[tuple[int, int]]) -> torch.Tensor | None:
    """Gates (1, L, H): 0 for the (layer, head) pairs in ``off``, 1 elsewhere; None when ``off`` is empty.

    ``off`` holds pairs already checked against the model (``parse_heads``).
    """
    off = list(off)
    if not off:
        return None
    gates = torch.ones(1, loaded.num_layers, loaded.num_heads)
    for layer, head in off:
        gates[0, int(layer), int(head)] = 0.0
    return gates


def _head_hook(module: nn.Module, layer: int, gates: torch.Tensor, n_heads: int):
    """Install the gate for one layer; returns the hook handle.

    Where the attention module ends in its own output projection (DistilBERT ``out_lin``,
    ModernBERT ``Wo``) the gate goes on that projection's input; otherwise (BERT, RoBERTa)
    on the module's first output, which is the heads' concatenated context (B, T, H*d).
    """

    def gate(context: torch.Tensor) -> torch.Tensor:
        shape = context.shape  # (B, T, H*d)
        g = gates[:, layer].to(context.dtype)  # (B, H)
        return (context.view(shape[0], shape[1], n_heads, -1) * g[:, None, :, None]).view(shape)

    projection = attention_output_projection(module)
    if projection is not None:
        return projection.register_forward_pre_hook(lambda _m, args: (gate(args[0]), *args[1:]))

    def after(_m, _args, output):
        if isinstance(output, tuple):
            return (gate(output[0]), *output[1:])
        return gate(output)

    return module.register_forward_hook(after)


@contextlib.contextmanager
def heads_gated(loaded: LoadedModel, gates: torch.Tensor | None):
    """Run the model with head gates (B, L, H) of 0/1 (or any weights); hooks removed on exit.

    Holds ``loaded.lock`` for the whole block, so no other session's forward pass sees the
    hooks; ``gates=None`` installs nothing. Example: ``with heads_gated(m, g): m.model(input_ids=batch_of_B)``.
    """
    if gates is not None and (gates.dim() != 3 or tuple(gates.shape[1:]) != (loaded.num_layers, loaded.num_heads)):
        raise InputError(f"Head gates must be (batch, {loaded.num_layers}, {loaded.num_heads}).")
    with loaded.lock:
        handles = []
        try:
            if gates is not None:
                for layer, module in enumerate(attention_modules(loaded)):
                    handles.append(_head_hook(module, layer, gates.to(loaded.device), loaded.num_heads))
            yield
        finally:
            for handle in handles:
                handle.remove()
