"""Fashion-MNIST (and any MNIST-style IDX directory) as a ``datasets.Dataset``, plus a source dispatcher.

Why not ``load_dataset("fashion_mnist")``: the demo and the sweep must run offline on machines
that have the Debian package ``dataset-fashion-mnist`` (IDX files under
:data:`FASHION_MNIST_DIR`), and re-encoding 60k images as PNG just to decode them again wastes
seconds. Here the IDX arrays go straight into Arrow as an ``Array2D(uint8)`` column, which takes
a fraction of a second and converts back to tensors without copying pixel by pixel.

Class names: ``class_names=None`` gives the ten Fashion-MNIST names when the directory looks like
Fashion-MNIST (``root`` left at its default, or the directory's name contains "fashion", as
``/usr/share/datasets/fashion-mnist`` or a copy named ``fashion-mnist`` does); any other IDX
directory (MNIST, KMNIST, a synthetic one) gets generic names ``"0"``, ``"1"``, ... covering at
least ten classes and every label present. The names never depend on the split alone being
loaded when there are ten classes or fewer, so train and test share one ``ClassLabel``. Pass
``class_names`` to be explicit.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.features.features import Array2DExtensionType
from datasets.table import InMemoryTable

from rpg_hf.train.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "idx_split_files",
    "load_idx_dataset",
    "load_image_dataset",
    "to_tensors",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Official order from zalandoresearch/fashion-mnist: label k is FASHION_MNIST_LABELS[k].
FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_INSTALL_HINT = (
    "Install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (Debian package; files land in "
    f"{FASHION_MNIST_DIR}), or pass another directory holding MNIST-style IDX files "
    "(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-...)."
)

# Public split name -> file prefix. "t10k" is accepted too since that is what the files say.
_IDX_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
# Both spellings seen in the wild (LeCun's site uses the first, some mirrors the second).
_IDX_STEMS = {
    "images": ("images-idx3-ubyte", "images.idx3-ubyte"),
    "labels": ("labels-idx1-ubyte", "labels.idx1-ubyte"),
}

_IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation"}


def idx_split_files(root: str | os.PathLike[str], split: str = "train") -> tuple[Path, Path]:
    """Return ``(images_path, labels_path)`` for ``split`` in ``root``; plain files win over ``.gz``.

    Raises ``FileNotFoundError`` with install instructions when the directory or a file is missing.
    """
    if split not in _IDX_SPLITS:
        raise ValueError(f"unknown split {split!r} for an IDX directory; use 'train' or 'test'")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IDX dataset directory not found: {root}. {_INSTALL_HINT}")
    prefix = _IDX_SPLITS[split]
    found = []
    for kind, stems in _IDX_STEMS.items():
        names = [f"{prefix}-{stem}{ext}" for ext in ("", ".gz") for stem in stems]
        path = next((root / n for n in names if (root / n).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"no {split} {kind} file in {root} (looked for {prefix}-{stems[0]}[.gz]). {_INSTALL_HINT}"
            )
        found.append(path)
    return found[0], found[1]


def _looks_like_fashion_mnist(root: str | os.PathLike[str] | None) -> bool:
    return root is None or "fashion" in Path(os.path.abspath(root)).name.lower()


def _array2d_column(images: np.ndarray) -> pa.ChunkedArray:
    """Wrap an (N, H, W) array as an Arrow ``Array2D`` column without going through Python objects.

    ``Array2D`` storage is ``list<list<value>>`` with int32 offsets, so rows are split into chunks
    of fewer than 2**31 values each; Fashion-MNIST (47M bytes) is a single chunk.
    """
    n, h, w = images.shape
    ext_type = Array2DExtensionType((h, w), str(images.dtype))
    rows_per_chunk = max(1, (2**31 - 1) // max(1, h * w))
    chunks = []
    for start in range(0, max(n, 1), rows_per_chunk):
        block = np.ascontiguousarray(images[start : start + rows_per_chunk])
        m = len(block)
        values = pa.array(block.reshape(-1))
        inner = pa.ListArray.from_arrays(pa.array(np.arange(m * h + 1, dtype=np.int32) * w), values)
        outer = pa.ListArray.from_arrays(pa.array(np.arange(m + 1, dtype=np.int32) * h), inner)
        chunks.append(pa.ExtensionArray.from_storage(ext_type, outer))
    return pa.chunked_array(chunks, type=ext_type)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def load_idx_dataset(
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    class_names: Sequence[str] | None = None,
) -> datasets.Dataset:
    """Load one split of an MNIST-style IDX directory (Fashion-MNIST by default) as a ``Dataset``.

    Columns: ``image`` (``Array2D((H, W), "uint8")``) and ``label`` (``ClassLabel``). ``split`` is
    ``"train"`` or ``"test"`` (files ``train-*`` / ``t10k-*``). See the module docstring for how
    ``class_names=None`` is resolved. Raises ``FileNotFoundError`` (with install instructions) when
    files are missing, ``IdxFormatError`` for malformed files and ``ValueError`` when images and
    labels disagree in count or a label is out of range.
    """
    directory = Path(FASHION_MNIST_DIR if root is None else root)
    images_path, labels_path = idx_split_files(directory, split)
    images = read_idx(images_path, expect_magic=IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, expect_magic=IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(
            f"{directory}: {images_path.name} holds {len(images)} images but {labels_path.name} "
            f"holds {len(labels)} labels"
        )
    max_label = int(labels.max()) if len(labels) else -1

    if class_names is None:
        if _looks_like_fashion_mnist(root):
            names = list(FASHION_MNIST_LABELS)
        else:
            names = [str(k) for k in range(max(10, max_label + 1))]
    else:
        if isinstance(class_names, str):
            raise TypeError("class_names must be a sequence of names, not a single string")
        names = [str(n) for n in class_names]
    if max_label >= len(names):
        raise ValueError(
            f"{labels_path}: label {max_label} is out of range for {len(names)} class names "
            f"({names[:3]}...); pass class_names covering every label"
        )

    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=tuple(images.shape[1:]), dtype="uint8"),
            "label": datasets.ClassLabel(names=names),
        }
    )
    table = InMemoryTable(
        pa.table({"image": _array2d_column(images), "label": pa.array(labels.astype(np.int64))})
    )
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (images_path, labels_path)]
    info = datasets.DatasetInfo(description=f"MNIST-style IDX dataset from {directory}", features=features)
    return datasets.Dataset(
        table, info=info, split=datasets.NamedSplit(split), fingerprint=_fingerprint(stats, names)
    )


def _has_idx_files(directory: Path) -> bool:
    return any(_IDX_NAME.search(p.name) for p in directory.iterdir() if p.is_file())


def _first_data_suffix(directory: Path) -> str | None:
    """Suffix of the first table or image file under ``directory`` (sorted walk, stops early)."""
    wanted = _IMAGE_SUFFIXES | set(_TABLE_SUFFIXES)
    for _dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        suffixes = {Path(f).suffix.lower() for f in filenames} & wanted
        # Tables first: a parquet folder that also holds a preview PNG is still a parquet dataset.
        for s in (*_TABLE_SUFFIXES, *sorted(suffixes - set(_TABLE_SUFFIXES))):
            if s in suffixes:
                return s
    return None


def _looks_like_local_path(source: str) -> bool:
    """True when ``source`` cannot be a Hub id ("name" or "owner/name")."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or Path(source).suffix.lower() in {*_TABLE_SUFFIXES, ".gz"}
    )


def load_image_dataset(
    source: str | os.PathLike[str],
    split: str = "train",
    *,
    class_names: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> datasets.Dataset:
    """Load ``split`` of an image classification dataset from wherever ``source`` points.

    Dispatch, in order:

    * a directory written by ``save_to_disk`` -> ``datasets.load_from_disk``;
    * a directory with IDX files -> :func:`load_idx_dataset` (``class_names`` applies here only);
    * a ``.parquet``/``.arrow`` file -> that file is the requested split (a single file has no splits);
    * a directory of ``.parquet``/``.arrow`` files -> datasets' parquet/arrow builder, splits
      inferred from file names (``train-*.parquet``, ``test/``...);
    * a directory of images (class subfolders, or ``train/`` + ``val/`` with class subfolders)
      -> ``load_dataset("imagefolder", data_dir=...)``; ``"val"`` is accepted for ``"validation"``;
    * anything else that could be a Hub id -> ``load_dataset(source, split=split)`` (needs network
      or the HF cache). A path that does not exist raises ``FileNotFoundError`` instead.

    ``cache_dir`` goes to ``load_dataset`` (tests point it at a temporary directory).
    """
    path = Path(os.path.expanduser(os.fspath(source)))
    hf_split = _SPLIT_ALIASES.get(split, split)

    if path.is_file():
        builder = _TABLE_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: don't know how to load this file; expected .parquet or .arrow")
        return datasets.load_dataset(
            builder, data_files={hf_split: str(path)}, split=hf_split, cache_dir=_str(cache_dir)
        )

    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))[hf_split]
        if (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        if _has_idx_files(path):
            return load_idx_dataset(path, split, class_names=class_names)
        suffix = _first_data_suffix(path)
        if suffix is None:
            raise ValueError(
                f"{path}: no IDX, .parquet, .arrow or image files found; cannot tell what dataset this is"
            )
        builder = _TABLE_SUFFIXES.get(suffix, "imagefolder")
        return datasets.load_dataset(builder, data_dir=str(path), split=hf_split, cache_dir=_str(cache_dir))

    if _looks_like_local_path(os.fspath(source)):
        raise FileNotFoundError(
            f"dataset source not found: {path} (no such file or directory, and not a Hub id). {_INSTALL_HINT}"
        )
    return datasets.load_dataset(os.fspath(source), split=hf_split, cache_dir=_str(cache_dir))


def _str(p: str | os.PathLike[str] | None) -> str | None:
    return None if p is None else os.fspath(p)


def _pick_column(
    ds: datasets.Dataset, wanted: str | None, kinds: tuple[type, ...], names: tuple[str, ...]
) -> str:
    """``wanted`` if given; else ``names[0]``; else the first column of a feature type in ``kinds``;
    else any other of ``names``."""
    candidates = (
        [wanted]
        if wanted is not None
        else [
            names[0],
            *(n for n, f in ds.features.items() if isinstance(f, kinds)),
            *names[1:],
        ]
    )
    for name in candidates:
        if name in ds.column_names:
            return name
    raise KeyError(
        f"none of {candidates} is a column of this dataset ({ds.column_names}); pass it explicitly"
    )


def _images_to_numpy(ds: datasets.Dataset, column: str) -> np.ndarray:
    feature = ds.features[column]
    if isinstance(feature, (datasets.Array2D, datasets.Array3D)):
        # Arrow format honours select/shuffle indices and keeps uint8 (the numpy/torch formatters
        # upcast every integer column to int64, 8x the memory). Each chunk converts zero-copy.
        col = ds.with_format("arrow", columns=[column])[:].column(column)
        if col.null_count:
            raise ValueError(f"column {column!r} has {col.null_count} missing images")
        parts = [chunk.to_numpy(zero_copy_only=False) for chunk in col.chunks]
        if not parts:
            return np.empty((0, *feature.shape), dtype=feature.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    if isinstance(feature, datasets.Image):
        # Decoded one by one: image folders are small; for big ones, convert to Array2D first.
        arrays = [np.asarray(img) for img in ds.with_format(None, columns=[column])[column]]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"images in {column!r} differ in shape ({sorted(shapes)[:3]}...); resize them first"
            )
        return np.stack(arrays) if arrays else np.empty((0, 0, 0), dtype=np.uint8)
    return np.asarray(ds.with_format("numpy", columns=[column])[:][column])


def to_tensors(
    ds: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: images as stored (``uint8`` N x H x W for IDX/grey images, N x H x W x C
    for colour ones), labels as ``int64`` of shape (N,).

    Columns default to ``image``/``label``, else the first image-like / ``ClassLabel`` column. For
    ``Array2D`` data (what :func:`load_idx_dataset` returns) this reads Arrow buffers directly: the
    full Fashion-MNIST train split converts in tens of milliseconds.
    """
    img_col = _pick_column(
        ds,
        image_column,
        (datasets.Array2D, datasets.Array3D, datasets.Image),
        ("image", "img", "pixel_values"),
    )
    lab_col = _pick_column(ds, label_column, (datasets.ClassLabel,), ("label", "labels"))
    images = _images_to_numpy(ds, img_col)
    labels_arrow = ds.with_format("arrow", columns=[lab_col])[:].column(lab_col)
    if labels_arrow.null_count:
        raise ValueError(f"column {lab_col!r} has {labels_arrow.null_count} missing labels")
    labels = np.asarray(labels_arrow.to_numpy(), dtype=np.int64)
    # Copy out of Arrow-owned (read-only) memory, once, so the tensors are ordinary writable tensors.
    images = np.require(images, requirements=["C", "W"])
    labels = np.require(labels, requirements=["C", "W"])
    return torch.from_numpy(images), torch.from_numpy(labels)
