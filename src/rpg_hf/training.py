"""Reusable pieces of the training recipes: data, transforms, models, optimizers, schedules, eval.

Why a module (and not just ``recipes/train.py``): the ImageNet recipe, the Fashion-MNIST demo and
the tests share these pieces, and the properties the recipes promise live here, where the tests
can reach them:

* **Exact resumption and process-count independence.**  The data order is a pure function of
  ``(seed, epoch)`` (:class:`EpochShuffleSampler`) and every sample's augmentation a pure function
  of ``(seed, epoch, index)`` (:class:`ImageClassificationDataset` seeds the ``random`` / NumPy /
  torch CPU generators around the transform and restores them afterwards).  So a run resumed from
  a checkpoint, or sharded over more processes, sees exactly the batches an uninterrupted single
  process sees — whatever the number of data-loader workers — and the global RNG, which dropout
  and drop-path use, is never touched by data loading.  (Neither object exposes ``set_epoch``:
  Accelerate calls that with its own iteration counter, which does not survive
  ``skip_first_batches``; the recipe sets the epoch itself through ``use_epoch``.)
* **Metrics without the network.**  ``evaluate.load("accuracy")`` downloads a script from the Hub;
  :func:`evaluate` counts top-1/top-5 with :class:`rpg_hf.metrics.TopKAccuracy` over logits
  gathered with ``accelerator.gather_for_metrics`` (which drops the padding duplicates).
* **One model builder for both arms.**  :func:`build_model` makes the RPG model
  (:class:`rpg_hf.RPGForImageClassification`) or the vanilla baseline from the same
  :class:`rpg_hf.RPGConfig` — the baseline is ``build_backbone(config)`` without the ring — so a
  side-by-side comparison differs in nothing but the re-parameterization.
* **Schedules in optimizer steps.**  :func:`build_scheduler` returns a ``LambdaLR`` whose lambda is
  evaluated at the optimizer-step count (warm-up, then cosine / step / exponential with the
  decays expressed in epochs), so it is independent of the number of processes; the recipe steps
  it once per optimizer step (``Accelerator(step_scheduler_with_optimizer=False)``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

SCHEDULES = ("cosine", "step", "exponential", "constant")
OPTIMIZERS = ("sgd", "adamw")
CHECKPOINT_PREFIX = "step_"

# transformers ViT presets (patch 16): --arch vit_b16 etc. select the transformers ViT backbone.
VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit_ti16": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768, patch_size=16),
    "vit_s16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16),
    "vit_b16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16),
    "vit_l16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    patch_size=16),
}
VIT_ALIASES = {"vit-b16": "vit_b16", "vit-b/16": "vit_b16", "vit_base_16": "vit_b16", "vit-s16": "vit_s16",
               "vit-ti16": "vit_ti16", "vit-l16": "vit_l16"}

__all__ = [
    "CHECKPOINT_PREFIX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPTIMIZERS",
    "SCHEDULES",
    "VIT_PRESETS",
    "EpochShuffleSampler",
    "ImageClassificationDataset",
    "TrainState",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "build_transform",
    "checkpoint_dirs",
    "class_names",
    "evaluate",
    "is_vit",
    "latest_checkpoint",
    "load_split",
    "logits_of",
    "lr_factor",
    "make_loader",
    "mix_seed",
    "model_summary",
    "param_groups",
    "prune_checkpoints",
    "scaled_lr",
    "seeded_rng",
    "vit_config_for",
    "write_json",
]


# --------------------------------------------------------------------------- seeding


_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 folding): distinct inputs, unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run the body with ``random``, NumPy and torch (CPU) seeded by ``seed``; restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# --------------------------------------------------------------------------- data


def load_split(source: str | os.PathLike[str], split: str, *, max_samples: int | None = None,
               cache_dir: str | os.PathLike[str] | None = None):
    """One split of an image-classification dataset (imagefolder, parquet/arrow, IDX, Hub id).

    Dispatch is :func:`rpg_hf.data.load_image_dataset`'s; ``max_samples`` keeps the first N rows
    (smoke runs, the demo's subset).
    """
    from rpg_hf.data import load_image_dataset

    ds = load_image_dataset(source, split, cache_dir=cache_dir)
    if max_samples is not None and 0 < max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds


def _label_column(ds) -> str:
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            return name
    for name in ("label", "labels"):
        if name in ds.column_names:
            return name
    raise KeyError(f"no label column in {ds.column_names}")


def _image_column(ds) -> str:
    import datasets

    for name in ("image", "img", "pixel_values"):
        if name in ds.column_names:
            return name
    for name, feature in ds.features.items():
        if isinstance(feature, (datasets.Image, datasets.Array2D, datasets.Array3D)):
            return name
    raise KeyError(f"no image column in {ds.column_names}")


def class_names(ds) -> list[str]:
    """Class names of a dataset's ``ClassLabel`` column (``"0"``, ``"1"``... for plain integers)."""
    import datasets

    feature = ds.features[_label_column(ds)]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = ds.unique(_label_column(ds))
    return [str(i) for i in range(int(max(labels)) + 1)]


def build_transform(
    image_size: int,
    *,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    crop_pct: float = 0.875,
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    color_jitter: float = 0.0,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
) -> Callable:
    """timm's ImageNet transforms (``timm.data.create_transform``).

    Train: random-resized crop (``scale``), horizontal flip, optional colour jitter, RandAugment
    (``auto_augment``, e.g. ``"rand-m9-mstd0.5-inc1"``) and random erasing (``re_prob``).  Eval:
    resize to ``image_size / crop_pct``, centre crop.  Colour jitter defaults to 0 (timm's
    default is 0.4) because the paper's ResNet recipe — the PyTorch ImageNet example — uses
    crop + flip only.  ``mean``/``std`` of length 1 give one-channel tensors.
    """
    from timm.data import create_transform

    kwargs: dict[str, Any] = dict(interpolation=interpolation, mean=tuple(mean), std=tuple(std))
    if train:
        kwargs.update(scale=tuple(scale), hflip=hflip, color_jitter=color_jitter, auto_augment=auto_augment,
                      re_prob=re_prob)
    else:
        kwargs.update(crop_pct=crop_pct)
    return create_transform(image_size, is_training=train, **kwargs)


def _to_pil(value: Any, mode: str):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert(mode) if value.mode != mode else value
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):  # undecoded datasets Image
        import io

        img = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
        return img.convert(mode)
    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # CHW
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert(mode)


class ImageClassificationDataset(Dataset):
    """A ``datasets.Dataset`` as ``(image tensor, label)`` pairs, augmented reproducibly.

    ``transform`` runs inside :func:`seeded_rng` with the seed ``mix_seed(seed, epoch, index)``,
    so sample ``index`` of epoch ``epoch`` is the same tensor in every process, worker and resumed
    run.  ``image_mode`` is the PIL mode images are converted to (``"RGB"`` or ``"L"``).
    """

    def __init__(self, ds, transform: Callable, *, image_mode: str = "RGB", seed: int = 0,
                 image_column: str | None = None, label_column: str | None = None):
        import datasets

        self.image_column = image_column or _image_column(ds)
        self.label_column = label_column or _label_column(ds)
        feature = ds.features[self.image_column]
        array_like = isinstance(feature, (datasets.Array2D, datasets.Array3D))
        self.ds = ds.with_format("numpy" if array_like else None)
        self.transform, self.image_mode, self.seed = transform, image_mode, int(seed)
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` produces."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(index)]
        image = _to_pil(row[self.image_column], self.image_mode)
        with seeded_rng(mix_seed(self.seed, self.epoch, int(index))):
            x = self.transform(image)
        return x, int(row[self.label_column])


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)`` (or the identity)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0, num_workers: int = 0,
                pin_memory: bool = False, drop_last: bool | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochShuffleSampler` (shuffled when ``train``).

    Its own ``generator`` keeps the worker base-seed draw off the global torch RNG; workers are not
    persistent, so the epoch set on the dataset before an iteration reaches them.
    """
    sampler = EpochShuffleSampler(len(dataset), seed=seed, shuffle=train)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        drop_last=train if drop_last is None else drop_last, persistent_workers=False,
        generator=torch.Generator().manual_seed(mix_seed(seed, 1)),
    )


# --------------------------------------------------------------------------- models


def is_vit(arch: str, vit_config: Mapping[str, Any] | None = None) -> bool:
    """Whether ``arch`` selects the transformers ViT backbone (a preset name or an explicit config)."""
    return vit_config is not None or VIT_ALIASES.get(arch.lower(), arch.lower()) in VIT_PRESETS


def vit_config_for(arch: str, image_size: int, overrides: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``ViTConfig`` dict for a preset (``vit_b16``...) updated by ``overrides``; None for CNNs."""
    name = VIT_ALIASES.get(arch.lower(), arch.lower())
    if name not in VIT_PRESETS and overrides is None:
        return None
    from transformers import ViTConfig

    values: dict[str, Any] = {**VIT_PRESETS.get(name, {}), "image_size": image_size, **(overrides or {})}
    return ViTConfig(**values).to_dict()


def build_model(
    method: str,
    arch: str,
    *,
    num_labels: int,
    id2label: Mapping[int, str] | None = None,
    dof: int = 45_000,
    seed: int = 0,
    scope: str = "global",
    model_args: Mapping[str, Any] | None = None,
    vit_config: Mapping[str, Any] | None = None,
    image_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **spec_fields: Any,
) -> nn.Module:
    """The RPG model (``method="rpg"``) or its vanilla baseline (``"vanilla"``) for ``arch``.

    ``arch`` is a timm architecture (``model_args`` go to ``timm.create_model``) or a ViT preset
    (``vit_b16``...; ``vit_config`` overrides its fields) for the transformers ViT backbone.
    The vanilla model is the same backbone built from the same config, without the ring: a timm
    model or a ``ViTForImageClassification``.  ``spec_fields`` are further ``RPGConfig`` fields
    (``permute``, ``sign_flip``, ``exclude``...).
    """
    from rpg_hf import RPGConfig, RPGForImageClassification
    from rpg_hf.modeling_rpg import build_backbone

    if method not in ("rpg", "vanilla"):
        raise ValueError(f"unknown method {method!r}; expected 'rpg' or 'vanilla'")
    id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_labels)}).items()}
    vit = vit_config_for(arch, image_size, vit_config)
    common = dict(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()}, dof=dof,
                  seed=seed, scope=scope, image_size=image_size, crop_pct=crop_pct,
                  image_mean=list(mean) if mean else None, image_std=list(std) if std else None, **spec_fields)
    if vit is not None:
        config = RPGConfig(backbone="vit", architecture=VIT_ALIASES.get(arch.lower(), arch), vit_config=vit, **common)
    else:
        config = RPGConfig(backbone="timm", architecture=arch, model_args=dict(model_args or {}) or None, **common)
    if method == "rpg":
        return RPGForImageClassification(config)
    return build_backbone(config)


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a timm model (a tensor) or a transformers model (an output with ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter counts: DoF / trainable / original / compression (RPG) or plain totals (vanilla)."""
    from rpg_hf.dof import dof_table
    from rpg_hf.reparam import get_generator

    backbone = getattr(model, "backbone", model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        get_generator(backbone)
    except ValueError:
        total = sum(p.numel() for p in model.parameters())
        return {"method": "vanilla", "dof": total, "trainable_params": trainable, "original_params": total,
                "compression": 1.0}
    totals = dof_table(backbone).totals()
    return {"method": "rpg", "dof": totals["dof"], "trainable_params": trainable,
            "original_params": totals["original_params"], "generated_params": totals["generated_params"],
            "free_params": totals["free_params"], "compression": totals["compression"]}


# --------------------------------------------------------------------------- optimization


def scaled_lr(base_lr: float, global_batch_size: int, base_batch_size: int = 256) -> float:
    """The linear scaling rule: ``base_lr`` per ``base_batch_size`` images (0.1 per 256 for ResNets)."""
    return base_lr * global_batch_size / base_batch_size


def _is_ring(name: str) -> bool:
    return ".rpg.rings." in f".{name}"


def param_groups(model: nn.Module, weight_decay: float, skip_1d: bool = False) -> list[dict[str, Any]]:
    """Parameter groups; with ``skip_1d`` norms and biases get no weight decay (the ring still does).

    The paper decays everything (``skip_1d=False``, the default); DeiT-style ViT training skips
    1-D tensors — but the ring is 1-D and *is* the weights, so it always stays in the decayed group.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if skip_1d and p.ndim <= 1 and not _is_ring(name) else decay).append(p)
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


# --------------------------------------------------------------------------- evaluation


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

    from rpg_hf.metrics import TopKAccuracy

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


# --------------------------------------------------------------------------- checkpoints


@dataclass
class TrainState:
    """Progress saved beside every checkpoint (``train_state.json``, written when the checkpoint is complete)."""

    step: int = 0  # optimizer steps done; the epoch is step // steps_per_epoch
    samples: int = 0  # training images seen, all processes together

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state.get("samples", 0))


def checkpoint_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """``<root>/step_<n>`` folders that hold a completed checkpoint, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name)
        if m and p.is_dir() and (p / "train_state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def prune_checkpoints(root: str | os.PathLike[str], keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all); returns the deleted."""
    import shutil

    dirs = checkpoint_dirs(root)
    doomed = dirs[:-keep] if keep > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
