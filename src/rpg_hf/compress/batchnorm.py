"""After folding: re-estimating BatchNorm running statistics from a few unlabeled batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (no gradient, no update).

    Folding changes the generated weights, so the source's running statistics no longer describe
    the activations; a few forward passes in train mode with cumulative averaging fix them.
    Returns the number of batches used.  The model's train/eval mode is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return n
