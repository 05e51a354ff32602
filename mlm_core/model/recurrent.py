"""A recurrent masked language model (bidirectional LSTM or GRU) as a ``transformers`` model class.

``RecurrentMLMConfig`` / ``RecurrentForMaskedLM`` follow the ``PretrainedConfig`` / ``PreTrainedModel``
contract, so a trained one is saved with ``save_pretrained`` (safetensors) and loads back through
``AutoModelForMaskedLM`` like any BERT: ``register()`` adds them to transformers' auto classes in
this process (no remote code, no ``trust_remote_code``). The loader calls it before any model is
built (``loading.serialized_loading``).

The network, in one line: token embeddings (E) → N bidirectional LSTM/GRU layers (each direction
H/2 wide, so every layer's output is H) → LayerNorm → a linear head over the vocabulary. There is
no position table (recurrence orders the tokens) and no attention: ``output_attentions`` gives
``attentions=None``, and every view of attention weights says so (``families.has_attention``).
``attention_mask`` 0 at the end of a row is padding, skipped by the recurrence (packed sequences), so a
sentence scores the same alone or padded in a batch; a 0 inside a row keeps that token out of the
context (an exclusion what-if): it enters the recurrence as a zero vector.

``convert_legacy_lstm`` turns the plain-module LSTM earlier MaskLab runs saved (``lstm.safetensors``
+ ``lstm_config.json``) into this class's folder: the same network, renamed tensors.

Example::

    config = RecurrentMLMConfig(vocab_size=30522, cell="gru", hidden_size=256, num_hidden_layers=2)
    RecurrentForMaskedLM(config)(input_ids=ids).logits  # (B, T, V)
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput

from mlm_core.model.families import RECURRENT_MODEL_TYPE

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
LEGACY_CONFIG = "lstm_config.json"  # what earlier runs saved beside lstm.safetensors
LEGACY_WEIGHTS = "lstm.safetensors"
# Inputs longer than this are cut into windows by the explorer, as for a Transformer: recurrence has no
# position table, but one pass over a very long text is slow and its memory grows with the length.
RECURRENT_MAX_POSITIONS = 512


def _whole(value, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be a whole number of at least {least}, not {json.dumps(value)[:40]}")
    return value


class RecurrentMLMConfig(PretrainedConfig):
    """Settings of ``RecurrentForMaskedLM``; checked here, so a config.json with odd values is refused.

    ``hidden_size`` is each layer's output width, both directions together (so it is even);
    ``embedding_size`` the token vectors' width; ``cell`` "lstm" or "gru". ``num_attention_heads``
    is 0: there is no attention (code that sizes head grids reads it).
    """

    model_type = RECURRENT_MODEL_TYPE

    def __init__(self, vocab_size: int = 30522, embedding_size: int = 256, hidden_size: int = 256,
                 num_hidden_layers: int = 2, cell: str = "lstm", dropout: float = 0.1,
                 layer_norm_eps: float = 1e-5, initializer_range: float = 0.02,
                 max_position_embeddings: int = RECURRENT_MAX_POSITIONS, pad_token_id: int | None = 0, **kwargs):
        kwargs.setdefault("tie_word_embeddings", False)  # widths E and H may differ: nothing to tie
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, not {json.dumps(cell)[:40]}")
        self.cell = cell
        self.vocab_size = _whole(vocab_size, "vocab_size", 1)
        self.embedding_size = _whole(embedding_size, "embedding_size", 1)
        self.hidden_size = _whole(hidden_size, "hidden_size", 2)
        if self.hidden_size % 2:
            raise ValueError(f"hidden_size must be even (two directions of hidden_size / 2), not {hidden_size}")
        self.num_hidden_layers = _whole(num_hidden_layers, "num_hidden_layers", 1)
        self.max_position_embeddings = _whole(max_position_embeddings, "max_position_embeddings", 8)
        if not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be at least 0 and below 1, not {json.dumps(dropout)[:40]}")
        self.dropout = float(dropout)
        self.layer_norm_eps = float(layer_norm_eps)
        self.initializer_range = float(initializer_range)
        self.num_attention_heads = 0


class RecurrentForMaskedLM(PreTrainedModel):
    """Bidirectional LSTM/GRU masked LM returning ``MaskedLMOutput`` (``attentions`` always None)."""

    config_class = RecurrentMLMConfig
    base_model_prefix = "recurrent"
    main_input_name = "input_ids"

    def __init__(self, config: RecurrentMLMConfig):
        super().__init__(config)
        cell = CELLS[config.cell]
        self.embeddings = nn.Embedding(config.vocab_size, config.embedding_size)
        self.layers = nn.ModuleList(  # one module per layer: hidden_states gives every layer's output
            cell(config.embedding_size if i == 0 else config.hidden_size, config.hidden_size // 2,
                 batch_first=True, bidirectional=True)
            for i in range(config.num_hidden_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        # torch's own recurrent initialisation, U(-1/sqrt(h), 1/sqrt(h)): transformers' default covers the
        # LSTM only (Xavier), and the same rule for both cells keeps their comparison fair.
        if isinstance(module, nn.LSTM | nn.GRU):
            bound = 1.0 / math.sqrt(module.hidden_size)
            for parameter in module.parameters():
                init.uniform_(parameter, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)  # unit-scale inputs: a recurrent cell's gates need them
        else:
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **_ignored) -> MaskedLMOutput:
        """Logits (B, T, V) from ``input_ids`` (B, T) or ``inputs_embeds`` (B, T, E).

        ``attention_mask`` (B, T): 0 keeps a token out of the context (its input is zeroed).
        ``labels`` (B, T), -100 where nothing is predicted, give the mean cross-entropy as ``loss``.
        ``output_attentions`` is accepted and gives None: there is no attention. Other keyword
        arguments a BERT takes (``token_type_ids``, ``position_ids``) are ignored.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids and inputs_embeds.")
        hidden = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        lengths = None
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
            lengths = padded_lengths(attention_mask)
        states = [hidden]
        for layer in self.layers:
            hidden = _run_layer(layer, self.dropout(hidden), lengths)  # (B, T, H)
            states.append(hidden)
        hidden = self.norm(self.dropout(hidden))
        states[-1] = hidden  # the last hidden state is what the head reads, as in BERT
        logits = self.decoder(hidden)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]).float(), labels.view(-1),
                                               ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits,
                              hidden_states=tuple(states) if output_hidden_states else None, attentions=None)


def padded_lengths(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Each row's length up to its last attended token (B,); None when no row ends in padding.

    Trailing zeros of the mask are padding: the recurrence skips them (packed sequences), so a sentence
    gives the same result alone or padded in a batch. Zeros inside a row are excluded tokens (zero inputs).
    """
    width = attention_mask.shape[-1]
    positions = torch.arange(1, width + 1, device=attention_mask.device)
    lengths = (attention_mask.ne(0) * positions).amax(-1).clamp(min=1)  # (B,)
    return None if bool((lengths == width).all()) else lengths


def _run_layer(layer: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """One recurrent layer over (B, T, in) → (B, T, H); rows shorter than T are packed, padding outputs 0."""
    if lengths is None:
        return layer(inputs)[0]
    packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    return nn.utils.rnn.pad_packed_sequence(layer(packed)[0], batch_first=True, total_length=inputs.shape[1])[0]


_registered = False
_register_lock = threading.Lock()


def register() -> None:
    """Add the recurrent model to transformers' auto classes in this process (once; no remote code)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        AutoConfig.register(RECURRENT_MODEL_TYPE, RecurrentMLMConfig, exist_ok=True)
        AutoModelForMaskedLM.register(RecurrentMLMConfig, RecurrentForMaskedLM, exist_ok=True)
        _registered = True


def convert_legacy_lstm(folder: Path, target: Path) -> Path:
    """Write ``folder``'s legacy LSTM (lstm.safetensors + lstm_config.json) to ``target`` as a normal
    model folder of this class (config.json, model.safetensors, the tokenizer files copied).

    The legacy network is this one with E = H, dropout 0 and one ``nn.LSTM`` of N layers: its tensors
    ``lstm.weight_ih_l{k}[_reverse]`` become ``layers.{k}.weight_ih_l0[_reverse]``. Raises ValueError
    when the files do not describe that network.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    settings = json.loads((Path(folder) / LEGACY_CONFIG).read_text())
    if not isinstance(settings, dict) or settings.get("model_type") != "lstm":
        raise ValueError("lstm_config.json does not describe a MaskLab LSTM")
    hidden, layers, vocab = settings.get("hidden"), settings.get("layers"), settings.get("vocab_size")
    config = RecurrentMLMConfig(vocab_size=vocab, embedding_size=hidden, hidden_size=hidden, num_hidden_layers=layers,
                                cell="lstm", dropout=0.0, architectures=["RecurrentForMaskedLM"])
    tensors = {}
    for name, tensor in load_file(str(Path(folder) / LEGACY_WEIGHTS)).items():
        if name.startswith("lstm."):
            parameter = name.removeprefix("lstm.")
            kind, _, rest = parameter.rpartition("_l")
            layer, _, suffix = rest.partition("_")
            name = f"layers.{int(layer)}.{kind}_l0" + (f"_{suffix}" if suffix else "")
        tensors[name] = tensor.contiguous()
    with torch.device("meta"):  # the names only: nothing allocated, whatever sizes the file claims
        expected = set(RecurrentForMaskedLM(config).state_dict())
    if set(tensors) != expected:
        raise ValueError("lstm.safetensors does not hold the tensors of a MaskLab LSTM")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(target)
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    for path in Path(folder).iterdir():
        if path.is_file() and path.name not in (LEGACY_CONFIG, LEGACY_WEIGHTS):
            shutil.copy2(path, target / path.name)  # the tokenizer's files
    return target
