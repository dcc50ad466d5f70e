"""Image-classification data for the recipes: any ``datasets`` split as reproducibly augmented tensors.

**Exact resumption and process-count independence.**  The data order is a pure function of
``(seed, epoch)`` (:class:`EpochShuffleSampler`) and every sample's augmentation a pure function
of ``(seed, epoch, index)`` (:class:`ImageClassificationDataset` seeds the ``random`` / NumPy /
torch CPU generators around the transform and restores them afterwards).  So a run resumed from
a checkpoint, or sharded over more processes, sees exactly the batches an uninterrupted single
process sees — whatever the number of data-loader workers — and the global RNG, which dropout
and drop-path use, is never touched by data loading.  (Neither object exposes ``set_epoch``:
Accelerate calls that with its own iteration counter, which does not survive
``skip_first_batches``; the recipe sets the epoch itself through ``use_epoch``.)
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch.utils.data import DataLoader, Dataset, Sampler

# ---------- seeding


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


# ---------- data


def load_split(source: str | os.PathLike[str], split: str, *, max_samples: int | None = None,
               cache_dir: str | os.PathLike[str] | None = None):
    """One split of an image-classification dataset (imagefolder, parquet/arrow, IDX, Hub id).

    Dispatch is :func:`rpg_hf.train.data.load_image_dataset`'s; ``max_samples`` keeps the first N rows
    (smoke runs, the demo's subset).
    """
    from rpg_hf.train.data import load_image_dataset

    ds = load_image_dataset(source, split, cache_dir=cache_dir)
    if max_samples is not None and 0 < max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds


def balanced_subset(labels: torch.Tensor, size: int, *, seed: int = 0, num_classes: int | None = None) -> torch.Tensor:
    """Indices of a fixed class-balanced subset of ``size`` samples, in ascending order.

    Each class (in label order) keeps ``size // num_classes`` samples (``num_classes``: default the
    number of distinct labels), drawn by a ``randperm`` of its indices from one generator seeded
    with ``seed`` — the same subset for every run of a protocol.
    """
    classes = torch.unique(labels).tolist()
    per_class = int(size) // int(num_classes or len(classes))
    g = torch.Generator().manual_seed(int(seed))
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    return torch.sort(torch.cat([k[torch.randperm(len(k), generator=g)[:per_class]] for k in members])).values


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
