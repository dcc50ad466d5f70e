"""The one evaluation: top-k accuracy and mean cross-entropy over batches, with no network.

``evaluate.load("accuracy")`` would download a script from the Hub; here the counts come from
torchmetrics' ``MulticlassStatScores`` (exact integer hit and sample counts, accumulated over
batches) through :class:`TopKAccuracy`, over logits gathered with Accelerate's
``gather_for_metrics`` (which drops the padding duplicates of a sharded loader).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rpg_hf.train.models import logits_of

__all__ = ["TopKAccuracy", "evaluate"]

IGNORE_INDEX = -1


class TopKAccuracy:
    """Exact top-k hit counts over batches: one torchmetrics ``MulticlassStatScores`` per ``k``.

    The micro-averaged stat scores of a top-k classifier are exact integers: ``tp`` is the number
    of samples whose label is among the ``k`` highest logits and ``support`` the number of samples
    counted.  The number of classes is read from the first batch; ``k`` above it is clamped (every
    sample then hits).  Samples with a negative label are skipped (neither hits nor counted), so a
    caller can mark samples outside the evaluated label set with ``-1``.  Labels at or above the
    number of classes raise (torchmetrics would count them as misses).

    The counts are never synchronised across processes: callers feed every process the same
    batches gathered with ``gather_for_metrics``, which a cross-process sum would count again.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        ks = tuple(dict.fromkeys(int(k) for k in ks))
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks}")
        self.ks: tuple[int, ...] = ks
        self._scores: dict[int, Any] | None = None  # k -> MulticlassStatScores, built on the first batch

    def _build(self, num_classes: int, device: torch.device) -> dict[int, Any]:
        from torchmetrics.classification import MulticlassStatScores

        if num_classes < 2:
            raise ValueError(f"top-k accuracy needs logits over at least 2 classes, got {num_classes}")
        return {k: MulticlassStatScores(num_classes, top_k=min(k, num_classes), average="micro",
                                        ignore_index=IGNORE_INDEX, validate_args=False,
                                        sync_on_compute=False).to(device)
                for k in self.ks}

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds one batch: ``(batch, num_classes)`` logits and ``(batch,)`` integer labels."""
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (batch, num_classes), got {tuple(logits.shape)}")
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        if self._scores is None:
            self._scores = self._build(logits.shape[1], logits.device)
        num_classes = next(iter(self._scores.values())).num_classes
        if logits.shape[1] != num_classes:
            raise ValueError(f"logits over {logits.shape[1]} classes after batches over {num_classes}")
        if labels.numel() and int(labels.max()) >= num_classes:
            raise ValueError(f"label {int(labels.max())} out of range for {num_classes} classes")
        if not labels.numel():  # torchmetrics cannot reshape an empty batch
            return
        labels = labels.to(logits.device).clamp(min=IGNORE_INDEX)
        for scores in self._scores.values():
            scores.update(logits, labels)

    def counts(self) -> dict[str, int]:
        """Raw counts: ``{"top1_correct": ..., "top5_correct": ..., "total": ...}``."""
        if self._scores is None:
            return {**{f"top{k}_correct": 0 for k in self.ks}, "total": 0}
        stats = {k: scores.compute().tolist() for k, scores in self._scores.items()}  # tp, fp, tn, fn, support
        return {**{f"top{k}_correct": int(stats[k][0]) for k in self.ks}, "total": int(stats[self.ks[0]][4])}

    def compute(self) -> dict[str, float]:
        """Top-k accuracies in percent (``nan`` before any sample was seen)."""
        counts = self.counts()
        total = counts["total"]
        return {f"top{k}": 100.0 * counts[f"top{k}_correct"] / total if total else float("nan") for k in self.ks}


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
    from rpg_hf.train.progress import progress as progress_bar

    was_training = model.training
    model.eval()
    metric = TopKAccuracy(ks)
    loss_sum, count = 0.0, 0
    for x, y in progress_bar(loader, desc=desc, disable=not progress, leave=False):
        if accelerator is None and device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        logits = logits_of(model(x)).float()
        if accelerator is not None:
            logits, y = accelerator.gather_for_metrics((logits, y))
        metric.update(logits, y)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        count += int(y.numel())
    model.train(was_training)
    out: dict[str, float] = dict(metric.compute())
    out["loss"] = loss_sum / count if count else float("nan")
    out["n"] = count
    return out
