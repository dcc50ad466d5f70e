"""Optimizers and learning-rate schedules of the recipes.

:func:`build_scheduler` returns a ``LambdaLR`` whose lambda is evaluated at the optimizer-step
count (warm-up, then cosine / step / exponential with the decays expressed in epochs), so it is
independent of the number of processes; the loop steps it once per optimizer step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rpg_hf.reparam.model import is_ring_key

SCHEDULES = ("cosine", "step", "exponential", "constant")
OPTIMIZERS = ("sgd", "adamw")

def scaled_lr(base_lr: float, global_batch_size: int, base_batch_size: int = 256) -> float:
    """The linear scaling rule: ``base_lr`` per ``base_batch_size`` images (0.1 per 256 for ResNets)."""
    return base_lr * global_batch_size / base_batch_size


def param_groups(model: nn.Module, weight_decay: float, skip_1d: bool = False) -> list[dict[str, Any]]:
    """Parameter groups; with ``skip_1d`` norms and biases get no weight decay (the ring still does).

    The paper decays everything (``skip_1d=False``, the default); DeiT-style ViT training skips
    1-D tensors — but the ring is 1-D and *is* the weights, so it always stays in the decayed group.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if skip_1d and p.ndim <= 1 and not is_ring_key(name) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, name: str = "sgd", *, lr: float, weight_decay: float = 1e-4,
                    momentum: float = 0.9, nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, skip_1d: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's ResNet recipe) or AdamW (ViT)."""
    groups = param_groups(model, weight_decay, skip_1d)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def lr_factor(step: int, *, schedule: str, total_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1,
              decay_epochs: float = 45.0, decay_rate: float = 0.1, min_lr_ratio: float = 0.0,
              warmup_start_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warm-up from ``warmup_start_ratio`` over ``warmup_steps``, then:

    * ``exponential``: ``decay_rate ** (epoch / decay_epochs)`` with the epoch counted in whole
      epochs — the reference RPG code's ``lr * 0.1 ** (epoch / 45)``, updated at each epoch;
    * ``step``: ``decay_rate ** floor(epoch / decay_epochs)`` (the PyTorch ImageNet example: ×0.1
      every 30 epochs);
    * ``cosine``: half a cosine from 1 to ``min_lr_ratio`` between the end of warm-up and ``total_steps``;
    * ``constant``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start_ratio + (1.0 - warmup_start_ratio) * (step + 1) / warmup_steps
    epoch = step / max(1, steps_per_epoch)
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return decay_rate ** math.floor(epoch / decay_epochs + 1e-9)
    if schedule == "exponential":
        return decay_rate ** (math.floor(epoch + 1e-9) / decay_epochs)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, **kwargs: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_factor` (keyword arguments as there); step it once per optimizer step."""
    lr_factor(0, **kwargs)  # validate now, not at the first step

    def fn(step: int) -> float:
        return lr_factor(step, **kwargs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
