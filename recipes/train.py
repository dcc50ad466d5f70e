#!/usr/bin/env python
"""Train an RPG image classifier (or its vanilla baseline) on ImageNet-style data with Accelerate.

Why this script: the paper's ImageNet numbers come from long multi-GPU runs that get pre-empted,
so the recipe has to (1) resume *exactly* — same ring as an uninterrupted run — from
``Accelerator.save_state`` checkpoints, (2) give the same result on 1, 8 or 64 processes for the
same global batch, (3) need no network for its metrics, and (4) end with what the project
ships: a ring-only ``save_pretrained`` folder whose model card carries the evaluation result.
The reusable pieces (data order, seeded augmentation, model builder, schedules, top-k eval) live
in :mod:`rpg_hf.train`; this file is the command line and the loop.

Run (one GPU, eight GPUs, several nodes — see recipes/README.md and recipes/configs/)::

    accelerate launch --config_file recipes/configs/multi_gpu_8.yaml recipes/train.py \\
        --config recipes/configs/resnet18_45k.yaml --data /data/imagenet --output-dir runs/r18-45k

Every flag can be set in the ``--config`` YAML under its own name (``batch-size`` or
``batch_size``); flags given on the command line win over the YAML.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

SCOPES = ("global", "stage", "block")


# --------------------------------------------------------------------------- command line


def _json_value(text: Any) -> Any:
    """A JSON object given inline, as a path to a .json/.yaml file, or already parsed (from YAML)."""
    if text is None or isinstance(text, dict):
        return text
    path = Path(str(text))
    if path.suffix.lower() in (".json", ".yaml", ".yml") and path.is_file():
        import yaml

        return yaml.safe_load(path.read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not a JSON object or a .json/.yaml file: {text!r} ({err})") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train an RPG (ring-generated) or vanilla image classifier with Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file whose keys are flag names (command-line flags win)")

    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="imagefolder directory (train/ + val/ with class subfolders), a .parquet/.arrow file or "
                        "folder, a save_to_disk folder, an IDX folder, or a Hub dataset id (e.g. ILSVRC/imagenet-1k)")
    g.add_argument("--train-split", default="train", help="training split name")
    g.add_argument("--val-split", default="validation",
                   help="evaluation split ('val' is accepted for imagefolder trees); 'none' disables evaluation")
    g.add_argument("--dataset-name", default=None,
                   help="dataset id recorded in results.json and the model card (default: Hub id or folder name)")
    g.add_argument("--cache-dir", default=None, help="datasets cache directory")
    g.add_argument("--max-train-samples", type=int, default=None, help="use a seeded random subset (smoke runs)")
    g.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on a seeded random subset")
    g.add_argument("--image-size", type=int, default=224, help="training crop / evaluation crop size")
    g.add_argument("--crop-pct", type=float, default=0.875, help="evaluation: resize to image_size/crop_pct, crop")
    g.add_argument("--interpolation", default="bilinear", choices=("bilinear", "bicubic"), help="resize filter")
    g.add_argument("--mean", type=float, nargs="+", default=None, help="normalization mean (default: ImageNet)")
    g.add_argument("--std", type=float, nargs="+", default=None, help="normalization std (default: ImageNet)")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), help="random-resized-crop area range")
    g.add_argument("--color-jitter", type=float, default=0.0, help="colour jitter strength (timm)")
    g.add_argument("--auto-augment", default=None, help="timm RandAugment/AutoAugment policy, e.g. rand-m9-mstd0.5-inc1")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--num-workers", type=int, default=8, help="DataLoader worker processes per process")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="rpg", choices=("rpg", "vanilla"),
                   help="RPG (weights generated from a ring) or the plain baseline of the same architecture")
    g.add_argument("--arch", default="resnet18",
                   help="timm architecture (resnet18, resnet34, ...) or a transformers ViT preset (vit_b16, vit_s16, "
                        "vit_ti16, vit_l16)")
    g.add_argument("--dof", type=int, default=45_000, help="degrees of freedom: ring size (RPG only)")
    g.add_argument("--seed", type=int, default=0, help="seed of the ring construction, the init and the data order")
    g.add_argument("--scope", default="global", choices=SCOPES, help="one global ring or local rings per stage/block")
    g.add_argument("--no-permute", action="store_true", help="ablation: no per-layer permutation")
    g.add_argument("--no-sign-flip", action="store_true", help="ablation: no per-layer sign flip")
    g.add_argument("--model-args", type=_json_value, default=None,
                   help='JSON of extra timm.create_model kwargs, e.g. \'{"drop_path_rate": 0.1}\'')
    g.add_argument("--vit-config", type=_json_value, default=None,
                   help="JSON (inline or file) of transformers ViTConfig fields; selects the ViT backbone and "
                        "overrides the preset named by --arch")
    g.add_argument("--sync-bn", action="store_true", help="synchronize BatchNorm statistics across processes")

    g = p.add_argument_group("start from trained weights (rpg_hf.compress.fold)")
    g.add_argument("--init-from", default=None,
                   help="RPG: fold these trained weights into the ring (least squares) before training; vanilla: "
                        "load them. A timm or transformers ViT folder, an RPG checkpoint (refolded), a weights file "
                        "of --arch/--model-args, or a pretrained timm model name")
    g.add_argument("--fold-weighting", default="uniform", choices=("uniform", "relative"),
                   help="--init-from's least-squares objective: the plain reconstruction error, or every layer's "
                        "relative error counted equally (rpg_hf.compress.fold.fit_rings)")
    g.add_argument("--distill-from", default=None,
                   help="add knowledge distillation from this network (same forms as --init-from; e.g. the "
                        "unfolded network): KL on logits at --distill-temperature; off by default")
    g.add_argument("--distill-temperature", type=float, default=4.0, help="distillation softmax temperature T")
    g.add_argument("--distill-weight", type=float, default=0.5,
                   help="loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)")

    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=90, help="training epochs")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps in total (overrides --epochs)")
    g.add_argument("--batch-size", type=int, default=64, help="per-process batch size")
    g.add_argument("--eval-batch-size", type=int, default=None, help="per-process eval batch size (default: batch size)")
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--optimizer", default=None, choices=("sgd", "adamw"), help="default: adamw for ViT, else sgd")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: base-lr x global batch / lr-base-batch)")
    g.add_argument("--base-lr", type=float, default=None, help="lr per lr-base-batch images (default: 0.1 sgd, 5e-4 adamw)")
    g.add_argument("--lr-base-batch", type=int, default=None, help="batch size base-lr refers to (256 sgd, 512 adamw)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="default: 1e-4 sgd, 0.05 adamw")
    g.add_argument("--wd-skip-1d", action="store_true",
                   help="no weight decay on norms and biases (the ring is always decayed)")
    g.add_argument("--schedule", default=None, choices=("cosine", "step", "exponential", "constant"),
                   help="default: exponential (the reference RPG code) for sgd, cosine for adamw")
    g.add_argument("--decay-epochs", type=float, default=None,
                   help="step: decay every N epochs (default 30); exponential: x decay-rate per N epochs (default 45)")
    g.add_argument("--decay-rate", type=float, default=0.1, help="decay factor of the step/exponential schedules")
    g.add_argument("--min-lr-ratio", type=float, default=0.0, help="cosine: final lr as a fraction of the peak")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up length in epochs")
    g.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up length in steps (overrides epochs)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--mixed-precision", default=None, choices=("no", "fp16", "bf16"),
                   help="default: what `accelerate launch` / the accelerate config says")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")

    g = p.add_argument_group("run")
    g.add_argument("--output-dir", default="runs/rpg", help="checkpoints/, logs/, model/, results.json go here")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="save_state every N optimizer steps (0: at the end of every epoch; -1: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=3, help="keep the newest N checkpoints (0: all)")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the latest checkpoint under output-dir/checkpoints, or from the one given")
    g.add_argument("--stop-after-steps", type=int, default=None,
                   help="checkpoint and exit after this many optimizer steps (time-limited jobs; resume later)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N optimizer steps (0: at the end of every epoch; -1: only at the end)")
    g.add_argument("--log-every", type=int, default=50, help="log the training loss every N optimizer steps")
    g.add_argument("--log-with", default="tensorboard",
                   help="Accelerate trackers, comma separated (tensorboard, wandb, ...), or 'none'")
    g.add_argument("--project-name", default="rpg_hf", help="tracker project / run name")
    g.add_argument("--model-id", default=None, help="model name used in the model card (default: output folder name)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def load_yaml_config(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The YAML's settings as argparse defaults; keys are flag names with '-' or '_'."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"--config {path}: expected a mapping of flag names to values")
    dests = {a.dest for a in parser._actions}
    out, unknown = {}, []
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        (out.__setitem__(dest, value) if dest in dests and dest != "config" else unknown.append(key))
    if unknown:
        raise SystemExit(f"--config {path}: unknown setting(s) {unknown}; keys are train.py flag names")
    return out


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on other settings (optimizer family, schedule)."""
    from rpg_hf.train.datasets import IMAGENET_MEAN, IMAGENET_STD
    from rpg_hf.train.models import is_vit

    args.model_args = _json_value(args.model_args)
    args.vit_config = _json_value(args.vit_config)
    vit = is_vit(args.arch, args.vit_config)
    args.optimizer = args.optimizer or ("adamw" if vit else "sgd")
    adamw = args.optimizer == "adamw"
    if args.base_lr is None:
        args.base_lr = 5e-4 if adamw else 0.1
    if args.lr_base_batch is None:
        args.lr_base_batch = 512 if adamw else 256
    if args.weight_decay is None:
        args.weight_decay = 0.05 if adamw else 1e-4
    args.schedule = args.schedule or ("cosine" if adamw else "exponential")
    if args.decay_epochs is None:
        args.decay_epochs = 30.0 if args.schedule == "step" else 45.0
    if args.val_split and args.val_split.lower() == "none":
        args.val_split = None
    args.scale = tuple(args.scale)
    chans = _in_chans(args)
    if args.mean is None:
        args.mean = list(IMAGENET_MEAN) if chans == 3 else [0.5] * chans
    if args.std is None:
        args.std = list(IMAGENET_STD) if chans == 3 else [0.5] * chans
    if len(args.mean) != chans or len(args.std) != chans:
        raise SystemExit(f"--mean/--std need {chans} value(s) for {chans}-channel input")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, parser))
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required (or set `data:` in the --config YAML)")
    for name in ("batch_size", "grad_accum", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return resolve_defaults(args)


# --------------------------------------------------------------------------- setup


def _dataset_id(args: argparse.Namespace) -> str:
    if args.dataset_name:
        return args.dataset_name
    path = Path(os.path.expanduser(str(args.data)))
    return path.resolve().name if path.exists() else str(args.data)


def _in_chans(args: argparse.Namespace) -> int:
    if args.vit_config or args.model_args is None:
        return int((args.vit_config or {}).get("num_channels", 3))
    return int(args.model_args.get("in_chans", 3))


def make_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    out = Path(args.output_dir)
    trackers = [t.strip() for t in str(args.log_with or "none").split(",") if t.strip() and t.strip() != "none"]
    extra: dict[str, Any] = {"dynamo_backend": "inductor"} if args.compile else {}
    return Accelerator(
        gradient_accumulation_steps=args.grad_accum, mixed_precision=args.mixed_precision,
        log_with=trackers or None, project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False, **extra,
    )


def load_data(args: argparse.Namespace, accelerator) -> tuple[Any, Any, list[str]]:
    """Train / eval ``datasets.Dataset`` and the class names (each node's main process fills its cache first)."""
    from rpg_hf.train.datasets import class_names, load_split

    def subset(ds, n):
        return ds.shuffle(seed=args.seed, keep_in_memory=True).select(range(n)) if n and 0 < n < len(ds) else ds

    with accelerator.local_main_process_first():
        train_ds = subset(load_split(args.data, args.train_split, cache_dir=args.cache_dir), args.max_train_samples)
        val_ds = None
        if args.val_split:
            val_ds = subset(load_split(args.data, args.val_split, cache_dir=args.cache_dir), args.max_eval_samples)
    names = class_names(train_ds)
    if val_ds is not None and class_names(val_ds) != names:
        raise SystemExit(f"{args.data}: the {args.val_split} split's classes differ from the {args.train_split} "
                         "split's (imagefolder: both need the same class folders)")
    return train_ds, val_ds, names


def make_loaders(args: argparse.Namespace, accelerator, train_ds, val_ds):
    from rpg_hf.train.datasets import ImageClassificationDataset, build_transform, make_loader

    mean, std = tuple(args.mean), tuple(args.std)
    mode = "L" if _in_chans(args) == 1 else "RGB"
    train_tf = build_transform(args.image_size, train=True, mean=mean, std=std, interpolation=args.interpolation,
                               hflip=args.hflip, scale=args.scale, color_jitter=args.color_jitter,
                               auto_augment=args.auto_augment, re_prob=args.reprob)
    eval_tf = build_transform(args.image_size, train=False, mean=mean, std=std, interpolation=args.interpolation,
                              crop_pct=args.crop_pct)
    pin = accelerator.device.type == "cuda"
    train_set = ImageClassificationDataset(train_ds, train_tf, image_mode=mode, seed=args.seed)
    train_loader = make_loader(train_set, args.batch_size, train=True, seed=args.seed, num_workers=args.num_workers,
                               pin_memory=pin)
    val_loader = None
    if val_ds is not None:
        val_set = ImageClassificationDataset(val_ds, eval_tf, image_mode=mode, seed=args.seed)
        val_loader = make_loader(val_set, args.eval_batch_size or args.batch_size, train=False, seed=args.seed,
                                 num_workers=args.num_workers, pin_memory=pin)
    return train_set, train_loader, val_loader


def steps_per_epoch(num_samples: int, args: argparse.Namespace, num_processes: int) -> int:
    """Optimizer steps per epoch: full per-process batches (drop_last), sharded, then accumulated."""
    batches = (num_samples // args.batch_size) // num_processes
    if batches < 1:
        raise SystemExit(f"{num_samples} training images do not fill one batch of {args.batch_size} per process "
                         f"on {num_processes} process(es)")
    return math.ceil(batches / args.grad_accum)


# --------------------------------------------------------------------------- checkpoints and outputs


def save_checkpoint(accelerator, args: argparse.Namespace, state, extra: dict[str, Any]) -> Path:
    """``save_state`` into ``checkpoints/step_<n>``; ``train_state.json`` (written last) marks it complete."""
    from rpg_hf.train.files import CHECKPOINT_PREFIX, prune_checkpoints, write_json

    root = Path(args.output_dir) / "checkpoints"
    path = root / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(path / "train_state.json", {**state.state_dict(), **extra})
        prune_checkpoints(root, args.keep_checkpoints)
    accelerator.wait_for_everyone()
    return path


def resume_checkpoint(accelerator, args: argparse.Namespace) -> tuple[Path | None, dict[str, Any]]:
    from rpg_hf.train.files import latest_checkpoint

    if args.resume == "latest":
        path = latest_checkpoint(Path(args.output_dir) / "checkpoints")
        if path is None:
            accelerator.print(f"--resume: no checkpoint under {args.output_dir}/checkpoints; starting from scratch")
            return None, {}
    else:
        path = Path(args.resume)
        if not (path / "train_state.json").is_file():
            raise SystemExit(f"--resume {path}: not a completed checkpoint folder (no train_state.json)")
    accelerator.load_state(str(path))
    accelerator.print(f"resumed from {path}")
    return path, json.loads((path / "train_state.json").read_text())


def _card_entries(results: dict[str, Any]) -> list:
    from rpg_hf.hf.cards import results_from_json

    record = {k: results[k] for k in ("dataset", "split", "top1", "top5") if results.get(k) is not None}
    return results_from_json(record) if "top1" in record else []


def _recipe_command() -> str:
    return "accelerate launch recipes/train.py " + shlex.join(sys.argv[1:])


def _image_processor(config):
    from transformers import BitImageProcessor

    size = config.image_size
    return BitImageProcessor(
        do_resize=True, size={"shortest_edge": int(round(size / config.crop_pct))}, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_normalize=True, image_mean=config.mean, image_std=config.std,
        do_convert_rgb=len(config.mean) == 3,
    )


def save_rpg(model, directory: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Ring-only ``save_pretrained`` and a card (rpg_hf.hf.cards) holding the evaluation results."""
    from rpg_hf.hf.cards import write_model_card

    model.save_pretrained(directory, model_card=False)
    write_model_card(model, directory, _card_entries(results), keep_existing_results=False,
                     model_id=args.model_id or Path(args.output_dir).resolve().name, datasets=[results["dataset"]],
                     recipe="recipes/train.py", recipe_config=args.config, recipe_command=_recipe_command())


def save_vanilla(model, directory: Path, args: argparse.Namespace, results: dict[str, Any], config) -> None:
    """The baseline in its native format (a timm folder, or a transformers ViT folder) plus a card.

    A timm folder (``config.json`` with ``architecture``) loads with ``timm.create_model("local-dir:...")``
    and in recipes/eval_objectnet.py; its ``pretrained_cfg`` is set to the training preprocessing.
    """
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import PreTrainedModel

    from rpg_hf.hf.cards import results_section

    names = [config.id2label[i] for i in range(config.num_labels)]
    if isinstance(model, PreTrainedModel):
        model.save_pretrained(directory)
        _image_processor(config).save_pretrained(directory)
        library = "transformers"
    else:
        from timm.models import save_for_hf

        chans = _in_chans(args)
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                                "input_size": (chans, args.image_size, args.image_size), "crop_pct": args.crop_pct,
                                "mean": tuple(config.mean), "std": tuple(config.std),
                                "interpolation": args.interpolation, "num_classes": config.num_labels}
        save_for_hf(model, directory, model_config={"label_names": names}, model_args=config.model_args or None,
                    safe_serialization=True)
        library = "timm"
    entries = _card_entries(results)
    name = args.model_id or Path(args.output_dir).resolve().name
    data = ModelCardData(library_name=library, license="apache-2.0", tags=["image-classification", "rpg-baseline"],
                         datasets=[results["dataset"]], model_name=name, metrics=["accuracy"] if entries else None,
                         eval_results=[e.to_eval_result() for e in entries] or None)
    # the results table is the card template's, so eval_objectnet.py's update re-renders it in place
    text = (f"---\n{data.to_yaml()}\n---\n\n# {name}\n\nVanilla `{args.arch}` ({results['trainable_params']:,} "
            "parameters): the baseline of an RPG run, trained by rpg_hf's `recipes/train.py` with the same recipe.\n\n"
            f"{results_section(entries)}\n\n```bash\n{_recipe_command()}\n```\n")
    ModelCard(text).save(directory / "README.md")


# --------------------------------------------------------------------------- training


def _hparams(args: argparse.Namespace) -> dict[str, Any]:
    """Tracker-safe hyper-parameters (TensorBoard accepts scalars and strings only)."""
    out = {}
    for key, value in vars(args).items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
    return out


class _Run:
    """The state of one training run: the pieces ``train`` wires together."""

    def __init__(self, args: argparse.Namespace):
        import torch
        from accelerate.utils import set_seed
        from torch import nn

        from rpg_hf.train.loop import TrainState
        from rpg_hf.train.models import build_model
        from rpg_hf.train.optim import build_optimizer, build_scheduler, scaled_lr

        self.args = args
        self.accelerator = acc = make_accelerator(args)
        set_seed(args.seed)
        train_ds, val_ds, self.names = load_data(args, acc)
        self.dataset_id = _dataset_id(args)
        self.model = build_model(
            args.model, args.arch, num_labels=len(self.names), id2label=dict(enumerate(self.names)), dof=args.dof,
            seed=args.seed, scope=args.scope, model_args=args.model_args, vit_config=args.vit_config,
            image_size=args.image_size, crop_pct=args.crop_pct, mean=args.mean, std=args.std,
            permute=not args.no_permute, sign_flip=not args.no_sign_flip,
        )
        self.config = getattr(self.model, "config", None)
        self.fold_report = self._init_from() if args.init_from else None
        self.teacher = self._teacher() if args.distill_from else None
        self.train_set, train_loader, val_loader = make_loaders(args, acc, train_ds, val_ds)
        if self.config is None or not hasattr(self.config, "dof"):  # vanilla: keep the RPGConfig it was built from
            self.config = self._config_of_vanilla()
        if args.sync_bn and acc.num_processes > 1:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.global_batch = args.batch_size * acc.num_processes * args.grad_accum
        self.lr = args.lr if args.lr is not None else scaled_lr(args.base_lr, self.global_batch, args.lr_base_batch)
        self.spe = steps_per_epoch(len(self.train_set), args, acc.num_processes)
        self.total_steps = args.max_steps or args.epochs * self.spe
        warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_epochs * self.spe)
        optimizer = build_optimizer(self.model, args.optimizer, lr=self.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, nesterov=args.nesterov, skip_1d=args.wd_skip_1d)
        scheduler = build_scheduler(optimizer, schedule=args.schedule, total_steps=self.total_steps,
                                    warmup_steps=warmup, steps_per_epoch=self.spe, decay_epochs=args.decay_epochs,
                                    decay_rate=args.decay_rate, min_lr_ratio=args.min_lr_ratio)
        self.sampler = train_loader.sampler
        (self.model, self.optimizer, self.train_loader, self.scheduler) = acc.prepare(
            self.model, optimizer, train_loader, scheduler)
        self.val_loader = acc.prepare(val_loader) if val_loader is not None else None
        if math.ceil(len(self.train_loader) / args.grad_accum) != self.spe:
            raise RuntimeError(f"steps per epoch: expected {self.spe}, the prepared loader gives "
                               f"{math.ceil(len(self.train_loader) / args.grad_accum)}")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.state = TrainState()
        self.train_seconds = 0.0
        self.evals: list[dict[str, Any]] = []
        self.out = Path(args.output_dir)
        self.device = acc.device
        self.torch = torch

    def _source(self, path: str):
        """A trained network named by --init-from / --distill-from (rpg_hf.compress.fold.load_source)."""
        from rpg_hf.compress.fold import load_source

        a = self.args
        is_file = Path(path).is_file()
        return load_source(path, arch=a.arch if is_file else None, model_args=a.model_args if is_file else None,
                           num_labels=len(self.names) if is_file else None)

    def _init_from(self):
        """Fold (RPG) or load (vanilla) the --init-from weights into the model before training."""
        from rpg_hf.compress.fold import fold_into, plain_network

        source = self._source(self.args.init_from)
        if self.args.model == "vanilla":
            try:
                self.model.load_state_dict(plain_network(source).state_dict(), strict=True)
            except RuntimeError as err:
                raise SystemExit(f"--init-from {self.args.init_from}: architecture mismatch: {err}") from err
            self.accelerator.print(f"initialised the vanilla model from {self.args.init_from}")
            return None
        try:
            report = fold_into(self.model, source, weighting=self.args.fold_weighting)
        except ValueError as err:
            raise SystemExit(f"--init-from {self.args.init_from}: {err}") from err
        self.accelerator.print(f"folded {self.args.init_from} into the ring (dof={report.dof:,}): relative error "
                               f"{report.rel_error:.4f}, energy kept {100 * report.energy_kept:.2f}%")
        return report

    def _teacher(self):
        from rpg_hf.compress.fold import plain_network

        teacher = plain_network(self._source(self.args.distill_from)).to(self.accelerator.device).eval()
        teacher.requires_grad_(False)
        self.accelerator.print(f"distilling from {self.args.distill_from} (T={self.args.distill_temperature}, "
                               f"weight {self.args.distill_weight})")
        return teacher

    def _loss(self, x, y):
        """Cross-entropy, plus the distillation term when --distill-from is given."""
        from rpg_hf.train.models import logits_of

        logits = logits_of(self.model(x)).float()
        loss = self.criterion(logits, y)
        if self.teacher is None:
            return loss
        F, a = self.torch.nn.functional, self.args
        with self.torch.no_grad(), self.accelerator.autocast():
            target = logits_of(self.teacher(x)).float()
        t = a.distill_temperature
        kd = F.kl_div(F.log_softmax(logits / t, -1), F.log_softmax(target / t, -1), log_target=True,
                      reduction="batchmean") * (t * t)
        return (1.0 - a.distill_weight) * loss + a.distill_weight * kd

    def _config_of_vanilla(self):
        from rpg_hf import RPGConfig
        from rpg_hf.train.models import vit_config_for

        a = self.args
        id2label = dict(enumerate(self.names))
        vit = vit_config_for(a.arch, a.image_size, a.vit_config)
        return RPGConfig(backbone="vit" if vit else "timm", architecture=a.arch, vit_config=vit,
                         model_args=a.model_args or None, num_labels=len(self.names), id2label=id2label,
                         label2id={v: k for k, v in id2label.items()}, dof=1, image_size=a.image_size,
                         crop_pct=a.crop_pct, image_mean=a.mean, image_std=a.std)

    # ------------------------------------------------------------------ events
    def log(self, values: dict[str, Any]) -> None:
        self.accelerator.log(values, step=self.state.step)
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, **values}) + "\n")

    def evaluate(self) -> dict[str, Any]:
        from rpg_hf.train.evaluate import evaluate

        res = evaluate(self.model, self.val_loader, accelerator=self.accelerator, desc="eval",
                       progress=self.accelerator.is_main_process and not self.args.no_progress)
        entry = {"step": self.state.step, "epoch": self.state.step / self.spe, **res}
        self.evals.append(entry)
        self.log({"val/top1": res["top1"], "val/top5": res["top5"], "val/loss": res["loss"]})
        self.accelerator.print(f"step {self.state.step}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
                               f"loss {res['loss']:.4f}  ({res['n']} images)")
        return entry

    def checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.args, self.state,
                               {"train_seconds": self.train_seconds, "evals": self.evals,
                                "global_batch_size": self.global_batch, "steps_per_epoch": self.spe})

    def _due(self, every: int) -> bool:
        step = self.state.step
        return (every > 0 and step % every == 0) or (every == 0 and step % self.spe == 0)

    # ------------------------------------------------------------------ loop
    def resume(self) -> None:
        if not self.args.resume:
            return
        path, saved = resume_checkpoint(self.accelerator, self.args)
        if path is not None:
            then = (saved.get("global_batch_size"), saved.get("steps_per_epoch"))
            if then != (self.global_batch, self.spe) and None not in then:
                self.accelerator.print(f"warning: {path} was written with global batch {then[0]} and {then[1]} steps/epoch, "
                                       f"this run has {self.global_batch} and {self.spe}: the step count carries over, "
                                       "but the data order and schedule no longer match the interrupted run")
            self.state.load_state_dict(saved)
            self.train_seconds = float(saved.get("train_seconds", 0.0))
            self.evals = list(saved.get("evals", []))

    def run_epoch_part(self, progress) -> bool:
        """Train from the current step to the end of its epoch (or a stop point); True when stopping."""
        a, acc, st = self.args, self.accelerator, self.state
        epoch, done = divmod(st.step, self.spe)
        self.sampler.use_epoch(epoch)
        self.train_set.use_epoch(epoch)
        loader = acc.skip_first_batches(self.train_loader, done * a.grad_accum) if done else self.train_loader
        running, micro = self.torch.zeros((), device=self.device), 0
        tick = time.perf_counter()
        for x, y in loader:
            with acc.accumulate(self.model):
                loss = self._loss(x, y)
                acc.backward(loss)
                if acc.sync_gradients and a.clip_grad:
                    acc.clip_grad_norm_(self.model.parameters(), a.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            running += loss.detach()
            micro += 1
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            st.step += 1
            st.samples += self.global_batch
            progress.update(1)
            if st.step % a.log_every == 0 or st.step == 1:
                loss_avg = acc.reduce(running / micro, "mean").item()
                lr = self.scheduler.get_last_lr()[0]
                self.log({"train/loss": loss_avg, "train/lr": lr, "train/epoch": st.step / self.spe})
                progress.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.3g}")
                running, micro = self.torch.zeros((), device=self.device), 0
            now = time.perf_counter()
            self.train_seconds += now - tick
            tick = now
            finished = st.step >= self.total_steps
            stop = a.stop_after_steps is not None and st.step >= a.stop_after_steps and not finished
            if self.val_loader is not None and a.eval_every >= 0 and self._due(a.eval_every) and not finished:
                self.evaluate()
            if (self._due(a.checkpoint_every) and not finished) or stop:
                self.checkpoint()
            if finished or stop:
                return stop
            tick = time.perf_counter()
        return False

    def finish(self) -> dict[str, Any]:
        from rpg_hf.train.files import write_json
        from rpg_hf.train.models import model_summary

        acc, a = self.accelerator, self.args
        final = self.evaluate() if self.val_loader is not None else {}
        self.checkpoint()
        model = acc.unwrap_model(self.model, keep_fp32_wrapper=False, keep_torch_compile=False)
        summary = model_summary(model)
        results = {
            "arch": a.arch, "method": a.model, **summary, "dataset": self.dataset_id, "split": a.val_split,
            "top1": final.get("top1"), "top5": final.get("top5"), "val_loss": final.get("loss"),
            "val_images": final.get("n"), "epochs": self.total_steps / self.spe, "steps": self.state.step,
            "steps_per_epoch": self.spe, "global_batch_size": self.global_batch, "lr": self.lr,
            "optimizer": a.optimizer, "schedule": a.schedule, "seed": a.seed, "scope": a.scope,
            "image_size": a.image_size, "train_seconds": round(self.train_seconds, 3), "device": str(self.device),
            "device_name": self._device_name(), "world_size": acc.num_processes,
            "mixed_precision": acc.mixed_precision, "evals": self.evals, "model_dir": str(self.out / "model"),
        }
        if a.init_from:
            results["init_from"] = a.init_from
            if self.fold_report is not None:
                results["fold"] = self.fold_report.totals()
        if a.distill_from:
            results.update(distill_from=a.distill_from, distill_temperature=a.distill_temperature,
                           distill_weight=a.distill_weight)
        if acc.is_main_process:
            model_dir = self.out / "model"
            if a.model == "rpg":
                save_rpg(model, model_dir, a, results)
            else:
                save_vanilla(model, model_dir, a, results, self.config)
            results["checkpoint_bytes"] = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
            write_json(self.out / "results.json", results)
            print(f"saved {a.model} model to {model_dir} and results to {self.out / 'results.json'}")
        acc.wait_for_everyone()
        return results

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return self.torch.cuda.get_device_name(self.device)
        return self.device.type

    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        acc, a = self.accelerator, self.args
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume()
        acc.init_trackers(a.project_name, config=_hparams(a))
        acc.print(f"{a.model} {a.arch}: {len(self.train_set)} training images, {len(self.names)} classes, "
                  f"{acc.num_processes} process(es), global batch {self.global_batch}, lr {self.lr:.4g}, "
                  f"{self.spe} steps/epoch, {self.total_steps} steps")
        progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                        disable=not acc.is_main_process or a.no_progress)
        self.model.train()
        stopped = False
        while self.state.step < self.total_steps and not stopped:
            stopped = self.run_epoch_part(progress)
        progress.close()
        if stopped:
            acc.print(f"stopped after step {self.state.step} (--stop-after-steps); resume with --resume")
            acc.end_training()
            return {"stopped_at": self.state.step, "output_dir": str(self.out)}
        results = self.finish()
        acc.end_training()
        return results


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the recipe for parsed ``args``; returns the results dict (as written to results.json)."""
    return _Run(args).train()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
