"""Dataset loading: IDX files (MNIST, Fashion-MNIST) and a dispatcher over local and Hub sources."""

from __future__ import annotations

from rpg_hf.train.data.fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    idx_split_files,
    load_idx_dataset,
    load_image_dataset,
    to_tensors,
)
from rpg_hf.train.data.idx import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IdxFormatError,
    idx_magic,
    read_idx,
    write_idx,
)

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IdxFormatError",
    "idx_magic",
    "idx_split_files",
    "load_idx_dataset",
    "load_image_dataset",
    "read_idx",
    "to_tensors",
    "write_idx",
]
