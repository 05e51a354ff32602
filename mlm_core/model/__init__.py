"""Masked language models: loading them safely and running them.

* ``loading``: ``load_model`` (safetensors only, no remote code, eager attention, one shared copy);
* ``inspection``: what a folder's config.json and safetensors headers claim, checked with bounds and
  against the operator's limits before anything is allocated;
* ``default_model``: the packaged offline default model (encoder plus adapter);
* ``families``: what differs between model families (position offsets, prediction head, layers);
* ``forward``: the one forward pass every analysis and the trainer use (logits at chosen
  positions, each token masked in turn, attention heads switched off).
"""
