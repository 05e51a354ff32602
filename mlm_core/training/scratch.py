"""Models trained from random weights, for contrast with a pre-trained one, and ``build_model``.

``SCRATCH_MODELS`` (declared with their default sizes in ``training.config``) names them where a
model id goes (``TrainConfig.model``): a small Transformer and a bidirectional LSTM or GRU
(``model.recurrent``, no attention weights). The Transformer is a ModernBERT (pre-norm, rotary
positions): on the demo corpus a post-norm BERT of the same size stayed near the unigram baseline for
600 steps (held-out top-1 0.101 vs 0.080) where the pre-norm one learned within 200 (README). Each is a ``transformers`` model class, so the run's
final folder (``save_pretrained``) loads like any model: ``predict --model``, the explorer, probes.
``build_model`` gives a fresh copy of any of them, or of a hub/folder model, never the app's shared one.

Example: ``scratch_model_config(TrainConfig(model="scratch-gru", scratch_hidden=64), 30522).hidden_size == 64``.
"""

from __future__ import annotations

import torch

from mlm_core.training.config import RECURRENT_SCRATCH_MODELS, SCRATCH_MODELS, TrainConfig

__all__ = ["SCRATCH_MODELS", "build_model", "scratch_model_config"]

FEED_FORWARD_RATIO = 4  # a scratch Transformer's feed-forward width per unit of width, as in BERT


def scratch_model_config(config: TrainConfig, vocab_size: int, special_ids: dict | None = None):
    """The transformers config of the scratch model ``config.model`` at ``config``'s (resolved) sizes.

    ``special_ids``: the tokenizer's ``pad_token_id``, ``cls_token_id``, ``sep_token_id`` (pad 0 and
    none else without it: enough to size the model)."""
    ids = {"pad_token_id": 0, "cls_token_id": None, "sep_token_id": None, **(special_ids or {})}
    if config.model in RECURRENT_SCRATCH_MODELS:
        from mlm_core.model.recurrent import RecurrentMLMConfig

        return RecurrentMLMConfig(vocab_size=vocab_size, embedding_size=config.scratch_embedding,
                                  hidden_size=config.scratch_hidden, num_hidden_layers=config.scratch_layers,
                                  cell=RECURRENT_SCRATCH_MODELS[config.model], architectures=["RecurrentForMaskedLM"],
                                  max_position_embeddings=max(512, config.seq_len), pad_token_id=ids["pad_token_id"])
    from transformers import ModernBertConfig

    return ModernBertConfig(vocab_size=vocab_size, hidden_size=config.scratch_hidden,
                            num_hidden_layers=config.scratch_layers, num_attention_heads=config.scratch_heads,
                            intermediate_size=FEED_FORWARD_RATIO * config.scratch_hidden,
                            max_position_embeddings=max(512, config.seq_len), architectures=["ModernBertForMaskedLM"],
                            global_attn_every_n_layers=1,  # every layer sees the whole block (no sliding window)
                            bos_token_id=ids["cls_token_id"], eos_token_id=ids["sep_token_id"], **ids)


def build_model(config: TrainConfig):
    """(model in train mode, tokenizer) — a fresh copy, never the app's shared one."""
    from mlm_core.model import loading as models

    if config.model in SCRATCH_MODELS:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from mlm_core.model.default_model import base_encoder_dir

        with models.serialized_loading():  # registers the recurrent model class; from_config swaps global state
            tokenizer = AutoTokenizer.from_pretrained(base_encoder_dir())
            torch.manual_seed(config.seed)
            special = {name: getattr(tokenizer, name) for name in ("pad_token_id", "cls_token_id", "sep_token_id")}
            model = AutoModelForMaskedLM.from_config(scratch_model_config(config, len(tokenizer), special),
                                                     attn_implementation="eager")
        model.train()
        return model, tokenizer
    loaded = models.load_fresh(config.model)
    return loaded.model, loaded.tokenizer
