"""What the training recipe ships at the end of a run: the model folder and its card.

An RPG model is saved ring-only (``save_pretrained``) with the card of :mod:`rpg_hf.hf.cards`; a
vanilla baseline in its native format — a transformers ViT folder with its image processor, or a
timm folder whose ``pretrained_cfg`` is the training preprocessing — with a card of its own.
Either card carries the run's evaluation result and the command that trained it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from rpg_hf.hf.cards import results_from_json, results_section, write_model_card
from rpg_hf.train.arguments import in_chans


def dataset_id(args: argparse.Namespace) -> str:
    """The dataset's name for results.json and the card: --dataset-name, else the folder's or the Hub id."""
    path = Path(os.path.expanduser(str(args.data)))
    return args.dataset_name or (path.resolve().name if path.exists() else str(args.data))


def card_entries(results: dict[str, Any]) -> list:
    """The card's evaluation entries from a results dict (none without a top-1)."""
    record = {k: results[k] for k in ("dataset", "split", "top1", "top5") if results.get(k) is not None}
    return results_from_json(record) if "top1" in record else []


def recipe_command() -> str:
    """The command line this run was started with, as the card shows it."""
    return "accelerate launch recipes/train.py " + shlex.join(sys.argv[1:])


def save_model(model, directory: Path, args: argparse.Namespace, names: list[str], results: dict[str, Any]) -> None:
    """RPG: a ring-only ``save_pretrained`` folder.  Vanilla: the native format — a transformers ViT
    folder, or a timm folder (``timm.create_model("local-dir:...")``, what the ObjectNet evaluation loads) whose
    ``pretrained_cfg`` is the training preprocessing.  Either way a card with the evaluation results."""
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import BitImageProcessor, PreTrainedModel

    entries, name = card_entries(results), args.model_id or Path(args.output_dir).resolve().name
    if args.model == "rpg":
        model.save_pretrained(directory, model_card=False)
        write_model_card(model, directory, entries, keep_existing_results=False, model_id=name,
                         datasets=[results["dataset"]], recipe="recipes/train.py", recipe_config=args.config,
                         recipe_command=recipe_command())
        return
    size, library = args.image_size, "timm"
    if isinstance(model, PreTrainedModel):
        model.save_pretrained(directory)
        BitImageProcessor(size={"shortest_edge": int(round(size / args.crop_pct))}, crop_size={"height": size,
                          "width": size}, image_mean=args.mean, image_std=args.std, do_resize=True,
                          do_center_crop=True, do_normalize=True, do_convert_rgb=len(args.mean) == 3,
                          ).save_pretrained(directory)
        library = "transformers"
    else:
        from timm.models import save_for_hf

        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "num_classes": len(names),
                                "input_size": (in_chans(args), size, size), "crop_pct": args.crop_pct,
                                "mean": tuple(args.mean), "std": tuple(args.std), "interpolation": args.interpolation}
        save_for_hf(model, directory, model_config={"label_names": names}, model_args=args.model_args or None,
                    safe_serialization=True)
    data = ModelCardData(library_name=library, license="apache-2.0", tags=["image-classification", "rpg-baseline"],
                         datasets=[results["dataset"]], model_name=name, metrics=["accuracy"] if entries else None,
                         eval_results=[e.to_eval_result() for e in entries] or None)
    # the results table is the card template's, so eval_objectnet.py's update re-renders it in place
    text = (f"---\n{data.to_yaml()}\n---\n\n# {name}\n\nVanilla `{args.arch}` ({results['trainable_params']:,} "
            "parameters): the baseline of an RPG run, trained by rpg_hf's `recipes/train.py` with the same recipe.\n\n"
            f"{results_section(entries)}\n\n```bash\n{recipe_command()}\n```\n")
    ModelCard(text).save(directory / "README.md")
