"""Network-free top-k classification accuracy.

``evaluate.load("accuracy")`` fetches a metric script from the Hub, which our offline evaluation
jobs and tests cannot do, and top-k needs logits rather than argmax predictions anyway.  This
module is the small replacement: a pure function that counts hits in one batch and an
accumulator whose state is two integer tensors, so summing them across processes is all a
distributed caller needs.

Distributed use: either gather the logits and labels first (``accelerator.gather_for_metrics``,
which also drops the samples duplicated to pad the last batch) and feed every process the same
gathered batch, or let each process update on its own shard and sum the counts at the end::

    metric.reduce_(lambda t: accelerator.reduce(t.to(accelerator.device), "sum").cpu())

which is the same as summing ``metric.correct`` and ``metric.total`` over processes
(``torch.distributed.all_reduce`` works just as well).  The second form counts the padding
duplicates of an uneven last batch, so prefer the first when exact counts matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["TopKAccuracy", "topk_correct"]


def _check_inputs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, num_classes), got {tuple(logits.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {labels.shape[0]} labels")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if logits.shape[1] == 0:
        raise ValueError("logits have no classes")
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(labels.max())} out of range for {logits.shape[1]} classes")
    return logits, labels.to(logits.device)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``k`` larger than the number of classes is clamped (every valid sample then counts as a hit).
    Samples with a negative label are ignored (neither hits nor counted), which lets a caller mark
    samples outside the evaluated label set with ``-1``.  Ties are broken by ``torch.topk``.
    """
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {ks}")
    logits, labels = _check_inputs(logits, labels)
    valid = labels >= 0
    if not ks or not bool(valid.any()):
        return dict.fromkeys(ks, 0)
    logits, labels = logits[valid], labels[valid]
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (n, kmax), best first
    hit_rank = top.eq(labels[:, None])  # at most one True per row
    # cumulative: hit within the first j columns
    hit_upto = hit_rank.cumsum(dim=1).clamp_(max=1).sum(dim=0)  # (kmax,) hits within top-(j+1)
    return {k: int(hit_upto[min(k, kmax) - 1]) for k in ks}


class TopKAccuracy:
    """Accumulates top-k hit counts over batches.

    ``correct`` (int64, one entry per ``k`` in ``ks``) and ``total`` (int64 scalar) live on the
    CPU and are the whole state: to combine processes, sum both (see the module docstring or
    :meth:`reduce_`).  :meth:`compute` reports percentages under the keys ``"top{k}"``.
    """

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        ks = tuple(dict.fromkeys(int(k) for k in ks))
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks}")
        self.ks: tuple[int, ...] = ks
        self.correct = torch.zeros(len(ks), dtype=torch.int64)
        self.total = torch.zeros((), dtype=torch.int64)

    def reset(self) -> None:
        self.correct.zero_()
        self.total.zero_()

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Adds one batch; samples with a negative label are skipped."""
        _, flat = _check_inputs(logits, labels)
        hits = topk_correct(logits, flat, self.ks)
        self.correct += torch.tensor([hits[k] for k in self.ks], dtype=torch.int64)
        self.total += int((flat >= 0).sum())

    def reduce_(self, reduce_fn: Callable[[torch.Tensor], torch.Tensor]) -> TopKAccuracy:
        """Replaces the counts by ``reduce_fn(counts)`` (e.g. a cross-process sum); returns self."""
        state = torch.cat([self.correct, self.total.reshape(1)])
        reduced = reduce_fn(state).to("cpu", torch.int64).reshape(-1)
        if reduced.shape != state.shape:
            raise ValueError(f"reduce_fn changed the state shape {tuple(state.shape)} -> {tuple(reduced.shape)}")
        self.correct = reduced[:-1].clone()
        self.total = reduced[-1].clone()
        return self

    def counts(self) -> dict[str, int]:
        """Raw counts: ``{"top1_correct": ..., "top5_correct": ..., "total": ...}``."""
        out = {f"top{k}_correct": int(c) for k, c in zip(self.ks, self.correct.tolist(), strict=True)}
        out["total"] = int(self.total)
        return out

    def compute(self) -> dict[str, float]:
        """Top-k accuracies in percent (``nan`` before any sample was seen)."""
        total = int(self.total)
        return {
            f"top{k}": (100.0 * c / total if total else float("nan"))
            for k, c in zip(self.ks, self.correct.tolist(), strict=True)
        }
