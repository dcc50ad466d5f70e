#!/usr/bin/env python
"""Evaluate an ImageNet-1k classifier on ObjectNet (113 overlapping classes), optionally on the
matching ImageNet-val subset, and record the result in JSON and in the model card.

Why a recipe of its own: ObjectNet numbers are only comparable when the protocol is the published
one (2 px border crop, logits max-projected onto the 113 classes, mappings read from the dataset's
own ``mappings/`` folder), and that is easy to get subtly wrong in an ad-hoc notebook.  The
protocol lives in ``rpg_hf.train.objectnet``; this script only loads the model, builds the eval
transform from the model's own preprocessing config and handles devices / processes.

Runs with plain ``python`` or ``accelerate launch`` (data is sharded across processes and the
projected logits are gathered with ``gather_for_metrics``)::

    accelerate launch recipes/eval_objectnet.py --model ./my-rpg-model \\
        --objectnet-root /data/objectnet-1.0 --output results.json --model-card

``--model`` takes a local folder or Hub id loaded with transformers'
``AutoModelForImageClassification`` (after ``import rpg_hf`` so our model type is registered), or
a timm spec: ``timm:<name>`` (pretrained timm weights), ``hf-hub:<repo>`` or ``local-dir:<folder>``.
A local folder saved by timm (``config.json`` with ``architecture``) falls back to timm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

DEFAULT_IMAGE_SIZE = 224
DEFAULT_CROP_PCT = 0.875
TIMM_PREFIXES = ("timm:", "hf-hub:", "local-dir:")
OBJECTNET_DATASET_NAME = "ObjectNet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="ObjectNet top-1/top-5 (113 ImageNet-overlap classes) of an ImageNet-1k classifier.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True,
                   help="local folder or Hub id (transformers), or timm:<name> / hf-hub:<repo> / local-dir:<folder>")
    p.add_argument("--objectnet-root", required=True,
                   help="ObjectNet folder holding images/<folder>/*.png and mappings/*.json (objectnet-1.0)")
    p.add_argument("--imagenet-val", default=None,
                   help="optional ImageNet val image folder (<wnid>/*.JPEG) for the same-113-classes comparison")
    p.add_argument("--batch-size", type=int, default=64, help="per-process batch size")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    p.add_argument("--image-size", type=int, default=None, help="center-crop size (default: from the model config)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="resize shorter side to image_size/crop_pct before cropping (default: from the model config)")
    p.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), default=None,
                   help="resize interpolation (default: from the model config, else bilinear)")
    p.add_argument("--border", type=int, default=2, help="pixels cropped from every side of ObjectNet images")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images (smoke runs)")
    p.add_argument("--output", default="results.json", help="where to write the JSON results")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="add 95%% bootstrap confidence intervals of top-1/top-5 from N resamples (needs scipy; "
                        "rpg_hf.evaluation.bootstrap_accuracy_interval)")
    p.add_argument("--model-card", action="store_true",
                   help="write the ObjectNet results into <model folder>/README.md (local folders only)")
    args = p.parse_args(argv)
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        p.error("--crop-pct must be in (0, 1]")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


@dataclass
class LoadedModel:
    model: Any  # torch.nn.Module
    kind: str  # "transformers" or "timm"
    image_size: int | None
    crop_pct: float | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str | None
    local_dir: Path | None


def _import_rpg_hf() -> None:
    """Imports rpg_hf (registers our model type with transformers' Auto classes when available)."""
    try:
        import rpg_hf  # noqa: F401
    except ImportError:
        src = Path(__file__).resolve().parents[1] / "src"
        if (src / "rpg_hf").is_dir() and str(src) not in sys.path:
            sys.path.insert(0, str(src))
        try:
            import rpg_hf  # noqa: F401
        except Exception as e:  # registration is optional: plain transformers / timm models still work
            warnings.warn(f"could not import rpg_hf ({e}); RPG model types are not registered", stacklevel=2)
    except Exception as e:
        warnings.warn(f"importing rpg_hf failed ({e}); RPG model types are not registered", stacklevel=2)


def _is_timm_folder(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return "architecture" in data and "model_type" not in data


def _resample_name(resample: Any) -> str | None:
    if resample is None:
        return None
    try:
        from PIL import Image

        value = int(resample)
        return {int(Image.Resampling.BILINEAR): "bilinear", int(Image.Resampling.BICUBIC): "bicubic",
                int(Image.Resampling.NEAREST): "nearest"}.get(value)
    except (TypeError, ValueError):
        name = str(resample).lower()
        return name if name in ("bilinear", "bicubic", "nearest") else None


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    vals = tuple(float(v) for v in values)
    return vals if len(vals) == 3 else default


def load_timm(spec: str) -> LoadedModel:
    import timm
    from timm.data import resolve_data_config

    name = spec[len("timm:"):] if spec.startswith("timm:") else spec
    model = timm.create_model(name, pretrained=True)
    cfg = resolve_data_config({}, model=model)
    local = Path(name[len("local-dir:"):]) if name.startswith("local-dir:") else None
    return LoadedModel(
        model=model, kind="timm", image_size=int(cfg["input_size"][-1]), crop_pct=cfg.get("crop_pct"),
        mean=_triple(cfg.get("mean"), IMAGENET_MEAN), std=_triple(cfg.get("std"), IMAGENET_STD),
        interpolation=cfg.get("interpolation"), local_dir=local,
    )


def load_transformers(spec: str) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(spec)
    image_size = crop_pct = interpolation = None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    try:
        proc = AutoImageProcessor.from_pretrained(spec)
    except Exception as e:  # no preprocessor_config.json: fall back to the model config / defaults
        warnings.warn(f"no image processor for {spec} ({e}); using ImageNet mean/std", stacklevel=2)
        proc = None
    if proc is not None:
        mean = _triple(getattr(proc, "image_mean", None), IMAGENET_MEAN)
        std = _triple(getattr(proc, "image_std", None), IMAGENET_STD)
        interpolation = _resample_name(getattr(proc, "resample", None))
        size = getattr(proc, "size", None) or {}
        crop = getattr(proc, "crop_size", None) or {}
        size, crop = dict(size), dict(crop)
        crop_side = crop.get("height") or crop.get("shortest_edge")
        resize_side = size.get("shortest_edge") or size.get("height")
        image_size = crop_side or resize_side
        crop_pct = getattr(proc, "crop_pct", None)
        if crop_pct is None:
            if not getattr(proc, "do_center_crop", False):
                crop_pct = 1.0  # the processor resizes straight to the input size: crop nothing extra
            elif crop_side and resize_side:
                crop_pct = min(1.0, crop_side / resize_side)
    if image_size is None:
        image_size = getattr(model.config, "image_size", None)
    local = Path(spec) if Path(spec).is_dir() else None
    return LoadedModel(model=model, kind="transformers", image_size=image_size, crop_pct=crop_pct, mean=mean,
                       std=std, interpolation=interpolation, local_dir=local)


def load_model(spec: str) -> LoadedModel:
    if spec.startswith(TIMM_PREFIXES):
        return load_timm(spec)
    _import_rpg_hf()
    path = Path(spec)
    if path.is_dir() and _is_timm_folder(path):
        return load_timm("local-dir:" + str(path))
    try:
        return load_transformers(spec)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(
            f"could not load {spec!r} with transformers' AutoModelForImageClassification: {e}\n"
            "For timm models pass timm:<name>, hf-hub:<repo> or local-dir:<folder>."
        ) from e


def build_transform(image_size: int, crop_pct: float, mean: Any, std: Any, interpolation: str) -> Any:
    from torchvision import transforms as T

    modes = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
             "nearest": T.InterpolationMode.NEAREST}
    resize = math.floor(image_size / crop_pct)
    return T.Compose([
        T.Resize(resize, interpolation=modes[interpolation]),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])


def update_model_card(folder: str | os.PathLike[str], results: dict[str, Any], model_name: str | None = None) -> Path:
    """Adds (or replaces) the ObjectNet top-1/top-5 entries in ``<folder>/README.md``'s model-index."""
    from rpg_hf.hf.cards import EvalEntry, update_card_results

    common = dict(dataset_name=OBJECTNET_DATASET_NAME, dataset_type="objectnet", split="test",
                  metric_type="accuracy", config=f"imagenet-overlap-{results['classes']}")
    update_card_results(folder, [
        EvalEntry(metric_name="Top-1 Accuracy", value=round(float(results["top1"]), 3), **common),
        EvalEntry(metric_name="Top-5 Accuracy", value=round(float(results["top5"]), 3), **common),
    ], model_name=model_name)
    return Path(folder) / "README.md"


def _make_loader(dataset: Any, args: argparse.Namespace) -> Any:
    import torch
    from torch.utils.data import DataLoader, Subset

    if args.max_images is not None:
        dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                      pin_memory=torch.cuda.is_available(), drop_last=False, persistent_workers=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    import torch
    from accelerate import Accelerator

    _import_rpg_hf()
    from rpg_hf.train.objectnet import (
        ObjectNetDataset,
        evaluate_imagenet_subset,
        evaluate_objectnet,
        imagenet_val_subset_mask,
        load_objectnet_mappings,
    )

    accelerator = Accelerator()
    mapping = load_objectnet_mappings(args.objectnet_root)
    loaded = load_model(args.model)
    image_size = args.image_size or loaded.image_size or DEFAULT_IMAGE_SIZE
    crop_pct = args.crop_pct or loaded.crop_pct or DEFAULT_CROP_PCT
    interpolation = args.interpolation or loaded.interpolation or "bilinear"
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic" if "cubic" in interpolation else "bilinear"
    transform = build_transform(image_size, crop_pct, loaded.mean, loaded.std, interpolation)

    model = accelerator.prepare_model(loaded.model.eval(), evaluation_mode=True)
    if loaded.kind == "transformers":
        def model_fn(x: torch.Tensor) -> torch.Tensor:
            return model(pixel_values=x).logits
    else:
        def model_fn(x: torch.Tensor) -> torch.Tensor:
            return model(x)

    dataset = ObjectNetDataset(args.objectnet_root, transform=transform, border=args.border, mapping=mapping)
    loader = accelerator.prepare_data_loader(_make_loader(dataset, args))
    accelerator.print(f"ObjectNet: {len(dataset)} images of {mapping.num_classes} classes "
                      f"({len(dataset.skipped_folders)} non-overlapping folders skipped)")
    res = evaluate_objectnet(model_fn, loader, mapping, accelerator=accelerator, progress=True)
    results: dict[str, Any] = {
        "model": args.model,
        "dataset": OBJECTNET_DATASET_NAME,
        "n_images": res["n_images"],
        "top1": res["top1"],
        "top5": res["top5"],
        "top1_correct": res["top1_correct"],
        "top5_correct": res["top5_correct"],
        "classes": res["classes"],
        "border": args.border,
        "image_size": image_size,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "num_processes": accelerator.num_processes,
    }

    if args.bootstrap > 0:  # the images are independent draws: resample them (from the counts, equivalently)
        from rpg_hf.evaluation import bootstrap_accuracy_interval

        for k in (1, 5):
            ci = bootstrap_accuracy_interval(res[f"top{k}_correct"], res["n_images"], n_resamples=args.bootstrap,
                                             random_state=0)
            results[f"top{k}_ci95"] = [100.0 * v for v in ci["confidence_interval"]]
        results["bootstrap_resamples"] = args.bootstrap

    if args.imagenet_val:
        from torch.utils.data import Subset
        from torchvision.datasets import ImageFolder

        val = ImageFolder(args.imagenet_val, transform=transform)
        if len(val.classes) != mapping.num_imagenet_classes:
            raise SystemExit(f"{args.imagenet_val} has {len(val.classes)} class folders, expected "
                             f"{mapping.num_imagenet_classes} (one per WordNet id)")
        keep = imagenet_val_subset_mask(mapping)
        subset = Subset(val, [i for i, t in enumerate(val.targets) if keep[t]])
        val_loader = accelerator.prepare_data_loader(_make_loader(subset, args))
        accelerator.print(f"ImageNet-val subset: {len(subset)} images")
        vres = evaluate_imagenet_subset(model_fn, val_loader, mapping, accelerator=accelerator, progress=True)
        results["imagenet_val_subset"] = {
            "dataset": "ImageNet-1k val (ObjectNet-overlap classes)",
            "n_images": vres["n_images"], "top1": vres["top1"], "top5": vres["top5"],
            "classes": vres["classes"],
        }

    if accelerator.is_main_process:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"ObjectNet top-1 {results['top1']:.2f}%  top-5 {results['top5']:.2f}%  "
              f"({results['n_images']} images, {results['classes']} classes) -> {out}")
        if "top1_ci95" in results:
            print("95% bootstrap intervals: top-1 [{:.2f}, {:.2f}]%  top-5 [{:.2f}, {:.2f}]%".format(
                *results["top1_ci95"], *results["top5_ci95"]))
        if args.model_card:
            folder = loaded.local_dir
            if folder is None or not (folder / "README.md").is_file():
                print("--model-card: model is not a local folder with a README.md; card not updated")
            else:
                print(f"updated model card {update_model_card(folder, results)}")
    accelerator.wait_for_everyone()
    return results


if __name__ == "__main__":
    main()
