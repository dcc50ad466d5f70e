"""The one evaluation: top-k accuracy and mean cross-entropy over batches, with no network.

``evaluate.load("accuracy")`` would download a script from the Hub; here the counts come from
:class:`rpg_hf.train.metrics.TopKAccuracy` over logits gathered with Accelerate's
``gather_for_metrics`` (which drops the padding duplicates of a sharded loader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rpg_hf.train.models import logits_of


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, *, accelerator: Any = None, device: torch.device | str | None = None,
             ks: Sequence[int] = (1, 5), progress: bool = False, desc: str = "eval",
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Top-k accuracy (percent) and mean cross-entropy of ``model`` over ``loader``; no network needed.

    With an ``accelerator`` the loader is a prepared (sharded) one and logits/labels are gathered
    with ``gather_for_metrics``, so every process returns the same numbers over the whole set;
    without one, batches are moved to ``device``.  ``transform`` is applied to each input batch
    (the demo normalizes uint8 tensors there).
    """
    from tqdm.auto import tqdm

    from rpg_hf.train.metrics import TopKAccuracy

    was_training = model.training
    model.eval()
    metric = TopKAccuracy(ks)
    loss_sum, count = 0.0, 0
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        if accelerator is None and device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        logits = logits_of(model(x)).float()
        if accelerator is not None:
            logits, y = accelerator.gather_for_metrics((logits, y))
        metric.update(logits.cpu(), y.cpu())
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        count += int(y.numel())
    model.train(was_training)
    out: dict[str, float] = dict(metric.compute())
    out["loss"] = loss_sum / count if count else float("nan")
    out["n"] = count
    return out
