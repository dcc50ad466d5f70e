"""The one training loop: the demo, the ImageNet recipe and the science sweep all train through :func:`fit`.

What differs between them is passed in, not re-implemented:

* **the data** — ``batches(epoch, skip)`` yields the ``(inputs, labels)`` micro-batches of one
  epoch, from batch ``skip`` on (a resumed run; a prepared Accelerate loader does that with
  ``skip_first_batches``, in-memory tensors by slicing);
* **the loss** — ``loss_fn(model, x, y)`` (cross-entropy on the logits by default; the recipes add
  distillation, :func:`distillation_loss`);
* **what happens after an optimizer step** — ``on_step(state, loss)`` logs, evaluates or writes a
  checkpoint and returns ``True`` to stop early (an interrupted run).

With an ``accelerator`` the loop uses its ``accumulate`` / ``backward`` / ``clip_grad_norm_``
(gradient accumulation, mixed precision, DDP); without one it is the plain PyTorch step.  The
schedule is stepped once per optimizer step, so a ``LambdaLR`` of :mod:`rpg_hf.train.optim` sees
the optimizer-step count whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rpg_hf.train.models import logits_of

Batches = Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class TrainState:
    """Progress of a run; ``state_dict`` / ``load_state_dict`` let Accelerate checkpoint it
    (``accelerator.register_for_checkpointing``)."""

    step: int = 0  # optimizer steps done; the epoch is step // steps_per_epoch
    samples: int = 0  # training images seen, all processes together
    train_seconds: float = 0.0  # wall time spent in training steps (not evaluation or checkpoints)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "samples": self.samples, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state.get("samples", 0))
        self.train_seconds = float(state.get("train_seconds", 0.0))


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of the model's logits (a timm tensor or a transformers output)."""
    return nn.functional.cross_entropy(logits_of(model(x)).float(), y)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                      temperature: float, weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Knowledge distillation: ``(1 - w) * cross-entropy + w * T^2 * KL(teacher || student)``.

    The KL divergence is between the temperature-softened distributions of ``teacher_logits`` and
    ``logits`` (batch mean); ``T^2`` keeps its gradient on the scale of the cross-entropy's.
    """
    loss = nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    t = temperature
    kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, -1), nn.functional.log_softmax(
        teacher_logits / t, -1), log_target=True, reduction="batchmean") * (t * t)
    return (1.0 - weight) * loss + weight * kd


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    *,
    total_steps: int,
    steps_per_epoch: int,
    scheduler: Any = None,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy,
    accelerator: Any = None,
    clip_grad: float | None = None,
    state: TrainState | None = None,
    on_step: Callable[[TrainState, torch.Tensor], bool | None] | None = None,
    samples_per_step: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> TrainState:
    """Train ``model`` from ``state.step`` to ``total_steps`` optimizer steps; returns the state.

    Raises :class:`FloatingPointError` on a non-finite loss (the step it happened at is in the
    message), so a diverged run never writes a checkpoint that looks trained.
    """
    from rpg_hf.train.progress import progress as progress_bar

    state = state if state is not None else TrainState()
    sync = accelerator is not None
    model.train()
    bar = progress_bar(total=total_steps, initial=state.step, desc=desc, mininterval=1.0,
                       disable=not progress or (sync and not accelerator.is_main_process))
    try:
        while state.step < total_steps:
            epoch, done = divmod(state.step, steps_per_epoch)
            tick = time.perf_counter()
            for x, y in batches(epoch, done):
                with accelerator.accumulate(model) if sync else contextlib.nullcontext():
                    loss = loss_fn(model, x, y)
                    if sync:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and clip_grad:
                            accelerator.clip_grad_norm_(model.parameters(), clip_grad)
                    else:
                        loss.backward()
                        if clip_grad:
                            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if sync and not accelerator.sync_gradients:
                    continue
                if scheduler is not None:
                    scheduler.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"{desc}: the loss became {value} at step {state.step}")
                state.step += 1
                state.samples += samples_per_step
                now = time.perf_counter()
                state.train_seconds += now - tick
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
                stop = on_step(state, loss.detach()) if on_step is not None else None
                if stop or state.step >= total_steps:
                    return state
                tick = time.perf_counter()
            if state.step != (epoch + 1) * steps_per_epoch:  # also stops an empty loader looping forever
                raise RuntimeError(f"{desc}: epoch {epoch} ended at optimizer step {state.step}, expected "
                                   f"{(epoch + 1) * steps_per_epoch} ({steps_per_epoch} steps per epoch)")
    finally:
        bar.close()
    return state
