"""Explaining one text: what the model predicts at the masks, and why.

* ``exploration``: ``explore()``, the explorer's whole pipeline in one call (text → mask → predictions);
* ``predict``: top-k guesses at masked positions, joint filling, pseudo-log-likelihood;
* ``attention``: attention maps and their aggregates (head mean, rollout, from-the-mask, overview);
* ``attribution``: which context tokens drove a prediction (captum: Integrated Gradients, saliency, ...);
* ``whatif``: take something away (context tokens, attention heads, weights) and see what changes;
* ``compare``: the same text under two settings side by side, and one-word sentence variants.
* ``concepts``: the masking formulas in numbers: X⊙M and α, W⊙M on one weight matrix, a_ij = 0 both ways.

Each returns dataclasses and numpy arrays; figures are built in ``mlm_core.views``.
"""
