"""Models trained from random weights, for contrast with a pre-trained one, and ``build_model``.

``SCRATCH_MODELS`` names them where a model id goes (``TrainConfig.model``): a tiny BERT
(2 layers, 128 wide) and a bidirectional LSTM (no attention weights). ``build_model`` gives a
fresh copy of any of them, or of a hub/folder model, never the app's shared one.
"""

from __future__ import annotations

import torch
from torch import nn

from mlm_core.training.config import TrainConfig

SCRATCH_MODELS = {  # name → what it is, as the model pickers, ``train --help`` and the README list them
    "scratch-transformer": "a tiny BERT, 2 layers × 128 wide, from random weights",
    "scratch-lstm": "a bidirectional LSTM from random weights, no attention",
}


class LSTMForMaskedLM(nn.Module):
    """A bidirectional LSTM masked LM for contrast with Transformers (no attention weights)."""

    def __init__(self, vocab_size: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(hidden)
        self.decoder = nn.Linear(hidden, vocab_size)
        self.config = {"model_type": "lstm", "vocab_size": vocab_size, "hidden": hidden, "layers": layers}

    def hidden_states(self, input_ids, attention_mask=None):
        embedded = self.embeddings(input_ids)
        if attention_mask is not None:
            embedded = embedded * attention_mask.unsqueeze(-1)  # excluded/padding tokens carry nothing
        return self.norm(self.lstm(embedded)[0])  # (B, T, H)

    def forward(self, input_ids, attention_mask=None):
        return self.decoder(self.hidden_states(input_ids, attention_mask))


def build_model(config: TrainConfig):
    """(model in train mode, tokenizer) — a fresh copy, never the app's shared one."""
    from mlm_core.model import loading as models

    if config.model in SCRATCH_MODELS:
        from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

        from mlm_core.model.default_model import base_encoder_dir

        tokenizer = AutoTokenizer.from_pretrained(base_encoder_dir())
        torch.manual_seed(config.seed)
        if config.model == "scratch-lstm":
            return LSTMForMaskedLM(len(tokenizer)), tokenizer
        small = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=512, max_position_embeddings=max(512, config.seq_len))
        return BertForMaskedLM(small), tokenizer
    loaded = models.load_fresh(config.model)
    return loaded.model, loaded.tokenizer
