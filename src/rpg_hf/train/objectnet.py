"""ObjectNet evaluation of ImageNet-1k classifiers, following the official ObjectNet code.

ObjectNet (Barbu et al., 2019) is a test-only set of 313 object classes; 113 of them overlap
ImageNet-1k.  The usual score for an ImageNet model projects its 1000 logits onto those 113 classes
(a class's score is the max over the logits of the ImageNet classes that map to it) and reports
top-1 / top-5 over the images of the 113 classes.  Everything needed for that comes from the
dataset's own ``mappings/`` folder, which we read from the dataset root rather than from a copy
in this repository, so a different ObjectNet release cannot silently disagree with our numbers:

* ``folder_to_objectnet_label.json``: ``{"alarm_clock": "Alarm clock", ...}``, image folder name
  to ObjectNet class name (313 entries).
* ``objectnet_to_imagenet_1k.json``: ``{"Alarm clock": "analog clock; digital clock", ...}``,
  ObjectNet class name to the ImageNet-1k class *names* it covers, joined by ``"; "`` (113 entries).
* ``imagenet_to_label_2012_v2``: plain text, one ImageNet class name per line; the 0-based line
  number is the "2012 id" (no file extension in the official archive; ``.txt`` is accepted too).
* ``pytorch_to_imagenet_2012_id.json``: ``{"0": 355, ...}``, the torchvision / timm output index
  (WordNet-id sorted order) as a string key to the 2012 id (line of the label file) as an int.

So a class's ImageNet indices are: split its names on ``";"``, look each name up in the label
file to get a line number, and invert ``pytorch_to_imagenet_2012_id`` to get the logit index.
Classes are numbered 0..112 in sorted folder-name order, as in the wise-ft / model-soups code.

Images live in ``<root>/images/<folder>/*.png`` and carry a thin red border; the official
template (``objectnet-template-pytorch``) crops 2 px from every side before any other transform,
and :class:`ObjectNetDataset` does the same by default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from rpg_hf.train.evaluate import TopKAccuracy

__all__ = [
    "FOLDER_TO_LABEL_FILE",
    "IMAGENET_LABELS_FILE",
    "OBJECTNET_TO_IMAGENET_FILE",
    "PYTORCH_TO_IMAGENET_FILE",
    "ObjectNetDataset",
    "ObjectNetMapping",
    "evaluate_imagenet_subset",
    "evaluate_objectnet",
    "imagenet_label_to_class",
    "imagenet_val_subset_mask",
    "load_objectnet_mappings",
    "project_logits",
]

MAPPINGS_DIR = "mappings"
IMAGES_DIR = "images"
FOLDER_TO_LABEL_FILE = "folder_to_objectnet_label.json"
OBJECTNET_TO_IMAGENET_FILE = "objectnet_to_imagenet_1k.json"
PYTORCH_TO_IMAGENET_FILE = "pytorch_to_imagenet_2012_id.json"
IMAGENET_LABELS_FILE = "imagenet_to_label_2012_v2"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ObjectNetMapping:
    """The ObjectNet classes that overlap ImageNet-1k, and how to reach them.

    ``folders[c]`` / ``class_names[c]`` name overlap class ``c``; ``imagenet_indices[c]`` are the
    ImageNet-1k logit indices (torchvision/timm order, sorted ascending) whose max is its score.
    """

    folders: tuple[str, ...]
    class_names: tuple[str, ...]
    imagenet_indices: tuple[tuple[int, ...], ...]
    num_imagenet_classes: int = 1000
    folder_to_class: dict[str, int] = field(init=False, repr=False, compare=False)
    _padded_index: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.folders)
        if not (len(self.class_names) == len(self.imagenet_indices) == n) or n == 0:
            raise ValueError("folders, class_names and imagenet_indices must be non-empty and equally long")
        if len(set(self.folders)) != n:
            raise ValueError("duplicate ObjectNet folder in the mapping")
        for name, ids in zip(self.class_names, self.imagenet_indices, strict=True):
            if not ids:
                raise ValueError(f"ObjectNet class {name!r} maps to no ImageNet class")
            bad = [i for i in ids if not 0 <= i < self.num_imagenet_classes]
            if bad:
                raise ValueError(f"ObjectNet class {name!r}: ImageNet indices {bad} out of range")
        object.__setattr__(self, "folder_to_class", {f: c for c, f in enumerate(self.folders)})
        # Pad every row with its own first index: duplicates leave the max unchanged, so no mask is needed.
        width = max(len(ids) for ids in self.imagenet_indices)
        rows = [list(ids) + [ids[0]] * (width - len(ids)) for ids in self.imagenet_indices]
        object.__setattr__(self, "_padded_index", torch.tensor(rows, dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return len(self.folders)

    def padded_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_classes, max_ids)`` long tensor of ImageNet indices, rows padded with repeats."""
        return self._padded_index if device is None else self._padded_index.to(device)


def _mapping_file(mappings: Path, name: str, alternatives: Iterable[str] = ()) -> Path:
    for candidate in (name, *alternatives):
        path = mappings / candidate
        if path.is_file():
            return path
    expected = ", ".join([FOLDER_TO_LABEL_FILE, OBJECTNET_TO_IMAGENET_FILE, PYTORCH_TO_IMAGENET_FILE,
                          IMAGENET_LABELS_FILE])
    raise FileNotFoundError(
        f"ObjectNet mapping file {name!r} not found in {mappings} "
        f"(an ObjectNet release's mappings/ folder holds: {expected})"
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}")
    return data


def load_objectnet_mappings(root: str | os.PathLike[str]) -> ObjectNetMapping:
    """Reads ``<root>/mappings/`` (see the module docstring for the formats) into an ObjectNetMapping.

    ``root`` is the dataset folder holding ``images/`` and ``mappings/`` (``objectnet-1.0`` in the
    official archive).  Raises FileNotFoundError naming a missing file and ValueError on files that
    do not fit together (unknown ImageNet name, ObjectNet class without a folder, ...).
    """
    mappings = Path(root) / MAPPINGS_DIR
    if not mappings.is_dir():
        raise FileNotFoundError(f"ObjectNet mappings folder not found: {mappings} (expected <root>/{MAPPINGS_DIR}/)")

    folder_to_label = _read_json_object(_mapping_file(mappings, FOLDER_TO_LABEL_FILE))
    objectnet_to_imagenet = _read_json_object(_mapping_file(mappings, OBJECTNET_TO_IMAGENET_FILE))
    pytorch_to_2012 = _read_json_object(_mapping_file(mappings, PYTORCH_TO_IMAGENET_FILE))
    labels_path = _mapping_file(mappings, IMAGENET_LABELS_FILE, (IMAGENET_LABELS_FILE + ".txt",))
    label_lines = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()]
    while label_lines and not label_lines[-1]:
        label_lines.pop()

    # 2012 id (line number) -> pytorch index
    num_imagenet = len(pytorch_to_2012)
    line_to_pytorch: dict[int, int] = {}
    for key, value in pytorch_to_2012.items():
        try:
            pt, line = int(key), int(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{PYTORCH_TO_IMAGENET_FILE}: entry {key!r}: {value!r} is not int -> int") from e
        if not 0 <= pt < num_imagenet:
            raise ValueError(f"{PYTORCH_TO_IMAGENET_FILE}: pytorch index {pt} outside 0..{num_imagenet - 1}")
        if not 0 <= line < len(label_lines):
            raise ValueError(
                f"{PYTORCH_TO_IMAGENET_FILE}: 2012 id {line} has no line in {labels_path.name} "
                f"({len(label_lines)} lines)"
            )
        if line in line_to_pytorch:
            raise ValueError(f"{PYTORCH_TO_IMAGENET_FILE}: 2012 id {line} is used twice")
        line_to_pytorch[line] = pt

    # ImageNet class name -> pytorch indices (a name may occur twice in ImageNet, e.g. "crane")
    name_to_pytorch: dict[str, list[int]] = {}
    for line, pt in line_to_pytorch.items():
        name_to_pytorch.setdefault(label_lines[line], []).append(pt)

    label_to_folder: dict[str, str] = {}
    for folder, label in folder_to_label.items():
        if not isinstance(label, str):
            raise ValueError(f"{FOLDER_TO_LABEL_FILE}: folder {folder!r} maps to non-string {label!r}")
        if label in label_to_folder:
            raise ValueError(f"{FOLDER_TO_LABEL_FILE}: ObjectNet label {label!r} has two folders")
        label_to_folder[label] = folder

    entries: list[tuple[str, str, tuple[int, ...]]] = []
    for objectnet_name, imagenet_names in objectnet_to_imagenet.items():
        if not isinstance(imagenet_names, str):
            raise ValueError(
                f"{OBJECTNET_TO_IMAGENET_FILE}: {objectnet_name!r} should map to a '; '-separated string "
                f"of ImageNet class names, got {imagenet_names!r}"
            )
        if objectnet_name not in label_to_folder:
            raise ValueError(
                f"ObjectNet class {objectnet_name!r} from {OBJECTNET_TO_IMAGENET_FILE} has no folder in "
                f"{FOLDER_TO_LABEL_FILE}"
            )
        ids: set[int] = set()
        for name in (n.strip() for n in imagenet_names.split(";")):
            if not name:
                continue
            found = name_to_pytorch.get(name)
            if found is None:
                raise ValueError(
                    f"ObjectNet class {objectnet_name!r}: ImageNet class name {name!r} is not a line of "
                    f"{labels_path.name}"
                )
            if len(found) > 1:
                raise ValueError(
                    f"ObjectNet class {objectnet_name!r}: ImageNet class name {name!r} is ambiguous "
                    f"(pytorch indices {sorted(found)})"
                )
            ids.add(found[0])
        entries.append((label_to_folder[objectnet_name], objectnet_name, tuple(sorted(ids))))

    entries.sort(key=lambda e: e[0])
    return ObjectNetMapping(
        folders=tuple(e[0] for e in entries),
        class_names=tuple(e[1] for e in entries),
        imagenet_indices=tuple(e[2] for e in entries),
        num_imagenet_classes=num_imagenet,
    )


def project_logits(logits: torch.Tensor, mapping: ObjectNetMapping) -> torch.Tensor:
    """``(batch, 1000)`` ImageNet logits -> ``(batch, num_classes)``: max over each class's indices."""
    if logits.ndim != 2 or logits.shape[1] != mapping.num_imagenet_classes:
        raise ValueError(
            f"expected logits of shape (batch, {mapping.num_imagenet_classes}), got {tuple(logits.shape)}"
        )
    index = mapping.padded_index(logits.device)  # (C, M)
    gathered = logits[:, index.reshape(-1)].reshape(logits.shape[0], *index.shape)
    return gathered.amax(dim=-1)


def imagenet_label_to_class(mapping: ObjectNetMapping) -> torch.Tensor:
    """Long tensor over ImageNet indices: the overlap class each maps to, or -1.

    Used to restrict ImageNet-val to the same classes for a like-for-like comparison; an ImageNet
    class claimed by two ObjectNet classes would make that ill-defined and raises ValueError.
    """
    table = torch.full((mapping.num_imagenet_classes,), -1, dtype=torch.long)
    for c, ids in enumerate(mapping.imagenet_indices):
        for i in ids:
            if table[i] >= 0:
                raise ValueError(
                    f"ImageNet index {i} maps to both {mapping.class_names[int(table[i])]!r} and "
                    f"{mapping.class_names[c]!r}"
                )
            table[i] = c
    return table


def imagenet_val_subset_mask(mapping: ObjectNetMapping) -> torch.Tensor:
    """Bool tensor over ImageNet indices: True for classes that map to an overlap class."""
    return imagenet_label_to_class(mapping) >= 0


class ObjectNetDataset(Dataset):
    """Images of the overlap classes, as ``(image, class_index)``.

    Scans ``<root>/images/<folder>/`` for image files (sorted, so every process sees the same
    order); folders that are not overlap classes are skipped.  Each image is opened with PIL,
    converted to RGB, cropped by ``border`` pixels on every side (the red frame; 2 px as in the
    official template), then passed through ``transform`` if one is given.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        border: int = 2,
        mapping: ObjectNetMapping | None = None,
    ) -> None:
        if border < 0:
            raise ValueError(f"border must be >= 0, got {border}")
        self.root = Path(root)
        self.transform = transform
        self.border = int(border)
        self.mapping = mapping if mapping is not None else load_objectnet_mappings(self.root)
        images = self.root / IMAGES_DIR
        if not images.is_dir():
            raise FileNotFoundError(f"ObjectNet images folder not found: {images} (expected <root>/{IMAGES_DIR}/)")
        self.samples: list[tuple[str, int]] = []
        self.skipped_folders: list[str] = []
        for folder in sorted(p for p in images.iterdir() if p.is_dir()):
            label = self.mapping.folder_to_class.get(folder.name)
            if label is None:
                self.skipped_folders.append(folder.name)
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                    self.samples.append((str(path), label))
        if not self.samples:
            raise ValueError(f"no images of the {self.mapping.num_classes} overlap classes under {images}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image with the border cropped, before ``transform``."""
        path = self.samples[index][0]
        with Image.open(path) as img:
            img = img.convert("RGB")
        b = self.border
        if b:
            w, h = img.size
            if w <= 2 * b or h <= 2 * b:
                raise ValueError(f"{path}: image {w}x{h} too small to crop a {b} px border")
            img = img.crop((b, b, w - b, h - b))
        return img

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load_image(index)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.samples[index][1]


def _run_projected(
    model_fn: Callable[[Any], torch.Tensor],
    loader: Iterable[Any],
    mapping: ObjectNetMapping,
    label_map: torch.Tensor | None,
    accelerator: Any | None,
    device: torch.device | str | None,
    progress: bool,
) -> dict[str, Any]:
    metric = TopKAccuracy((1, 5))
    batches: Iterable[Any] = loader
    if progress:
        from rpg_hf.train.progress import progress as progress_bar

        show = accelerator is None or accelerator.is_main_process
        batches = progress_bar(loader, desc="eval", disable=not show)
    with torch.inference_mode():
        for batch in batches:
            if isinstance(batch, Mapping):
                images, labels = batch["pixel_values"], batch["labels"]
            else:
                images, labels = batch[0], batch[1]
            if device is not None:
                images = images.to(device, non_blocking=True)
            logits = model_fn(images)
            projected = project_logits(logits.float(), mapping)
            labels = torch.as_tensor(labels).to(projected.device)
            if label_map is not None:
                labels = label_map.to(labels.device)[labels]
            if accelerator is not None:
                projected, labels = accelerator.gather_for_metrics((projected, labels))
            metric.update(projected, labels)
    acc = metric.compute()
    counts = metric.counts()
    return {
        "top1": acc["top1"],
        "top5": acc["top5"],
        "top1_correct": counts["top1_correct"],
        "top5_correct": counts["top5_correct"],
        "n_images": counts["total"],
        "classes": mapping.num_classes,
    }


def evaluate_objectnet(
    model_fn: Callable[[Any], torch.Tensor],
    loader: Iterable[Any],
    mapping: ObjectNetMapping,
    *,
    accelerator: Any | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 (percent) over the overlap classes, plus the counts behind them.

    ``model_fn`` maps a batch of images to ``(batch, 1000)`` ImageNet logits; ``loader`` yields
    ``(images, class_index)`` (e.g. a DataLoader over :class:`ObjectNetDataset`).  With an
    ``accelerate.Accelerator`` (and a loader it prepared) the projected logits are gathered with
    ``gather_for_metrics`` so every process returns the full-dataset result.  ``device`` moves
    images before ``model_fn`` (leave it None when the loader already does).  Returns
    ``{"top1", "top5", "top1_correct", "top5_correct", "n_images", "classes"}``.
    """
    return _run_projected(model_fn, loader, mapping, None, accelerator, device, progress)


def evaluate_imagenet_subset(
    model_fn: Callable[[Any], torch.Tensor],
    loader: Iterable[Any],
    mapping: ObjectNetMapping,
    *,
    accelerator: Any | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Like :func:`evaluate_objectnet` on ImageNet-val restricted to the overlap classes.

    ``loader`` yields ``(images, imagenet_index)`` with torchvision-order ImageNet labels (an
    ImageFolder over the WordNet-id folders); labels are mapped with
    :func:`imagenet_label_to_class` and images of other classes are ignored (filter the dataset
    with :func:`imagenet_val_subset_mask` beforehand to avoid computing them at all).
    """
    return _run_projected(model_fn, loader, mapping, imagenet_label_to_class(mapping), accelerator, device,
                          progress)
