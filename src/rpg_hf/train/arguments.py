"""The command line of the training recipe: its flags as ``transformers.HfArgumentParser``
dataclasses, the ``--config`` YAML under them, and the defaults that depend on other settings.

The flags are the fields of :class:`DataArgs`, :class:`ModelArgs`, :class:`OptimArgs` and
:class:`RunArgs` and the ring options of ``rpg_hf.RPGSpec`` (``rpg_hf.spec.add_spec_arguments``).
Each can be set in the ``--config`` YAML under its flag name (``batch-size`` or ``batch_size``;
``no-permute: true``); the command line wins over the YAML.  The recipe parses its flags here,
and ``model_cards/render.py`` reads a recipe config through the same :func:`parse_args`, so a card
describes the model the recipe would build.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import HfArgumentParser

from rpg_hf.spec import add_spec_arguments
from rpg_hf.train.datasets import IMAGENET_MEAN, IMAGENET_STD
from rpg_hf.train.models import is_vit


def _arg(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field whose metadata HfArgumentParser turns into the flag's help (and extra
    ``add_argument`` keywords); the help names a default that is not None/False."""
    if default is not None and default is not False:
        help += " (default: %(default)s)"
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, **argparse_kwargs})


@dataclass
class DataArgs:
    _argument_group_name = "data"
    data: str | None = _arg(None, "imagefolder (train/ + val/ with class folders), .parquet/.arrow file or folder, "
                            "save_to_disk folder, IDX folder, or Hub dataset id (ILSVRC/imagenet-1k)")
    train_split: str = _arg("train", "training split name")
    val_split: str = _arg("validation", "evaluation split ('val' works for imagefolder trees); 'none': no evaluation")
    dataset_name: str | None = _arg(None, "dataset id for results.json and the card (default: Hub id or folder name)")
    cache_dir: str | None = _arg(None, "datasets cache directory")
    max_train_samples: int | None = _arg(None, "use a seeded random subset (smoke runs)")
    max_eval_samples: int | None = _arg(None, "evaluate on a seeded random subset")
    image_size: int = _arg(224, "training crop / evaluation crop size")
    crop_pct: float = _arg(0.875, "evaluation: resize to image_size/crop_pct, crop")
    interpolation: Literal["bilinear", "bicubic"] = _arg("bilinear", "resize filter")
    mean: list[float] | None = _arg(None, "normalization mean (default: ImageNet)")
    std: list[float] | None = _arg(None, "normalization std (default: ImageNet)")
    hflip: float = _arg(0.5, "horizontal flip probability")
    scale: list[float] = _arg([0.08, 1.0], "random-resized-crop area range: MIN MAX")
    color_jitter: float = _arg(0.0, "colour jitter strength (timm)")
    auto_augment: str | None = _arg(None, "timm RandAugment/AutoAugment policy, e.g. rand-m9-mstd0.5-inc1")
    reprob: float = _arg(0.0, "random erasing probability")
    num_workers: int = _arg(8, "DataLoader worker processes per process")


@dataclass
class ModelArgs:
    _argument_group_name = "model (ring options: see 'ring')"
    model: Literal["rpg", "vanilla"] = _arg("rpg", "RPG (weights generated from a ring) or the plain baseline")
    arch: str = _arg("resnet18", "timm architecture, or a transformers ViT preset (vit_b16, vit_s16, vit_ti16, vit_l16)")
    # JSON text on the command line, a mapping in the YAML: parse_args decodes both
    model_args: str | None = _arg(None, 'JSON (inline or .json/.yaml file) of timm.create_model kwargs: {"in_chans": 1}')
    vit_config: str | None = _arg(None, "JSON (inline or .json/.yaml file) of ViTConfig fields: the ViT backbone, "
                                  "overriding the --arch preset")
    sync_bn: bool = _arg(False, "synchronize BatchNorm statistics across processes")
    init_from: str | None = _arg(None, "RPG: fold these trained weights into the ring before training (least "
                                 "squares, rpg_hf.compress.fold); vanilla: load them. A timm/ViT/RPG folder, a "
                                 "weights file of --arch/--model-args, or a pretrained timm name")
    fold_weighting: Literal["uniform", "relative"] = _arg("uniform", "--init-from's objective: the plain "
                                                          "reconstruction error, or each layer's relative error")
    distill_from: str | None = _arg(None, "distil from this network (forms of --init-from): KL on the logits")
    distill_temperature: float = _arg(4.0, "distillation softmax temperature T")
    distill_weight: float = _arg(0.5, "loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student)")


@dataclass
class OptimArgs:
    _argument_group_name = "optimization"
    epochs: int = _arg(90, "training epochs")
    max_steps: int | None = _arg(None, "optimizer steps in total (overrides --epochs)")
    batch_size: int = _arg(64, "per-process batch size")
    eval_batch_size: int | None = _arg(None, "per-process eval batch size (default: batch size)")
    grad_accum: int = _arg(1, "gradient accumulation steps")
    optimizer: Literal["sgd", "adamw"] | None = _arg(None, "default: adamw for ViT, else sgd")
    lr: float | None = _arg(None, "peak learning rate (default: base-lr x global batch / lr-base-batch)")
    base_lr: float | None = _arg(None, "lr per lr-base-batch images (default: 0.1 sgd, 5e-4 adamw)")
    lr_base_batch: int | None = _arg(None, "batch size base-lr refers to (256 sgd, 512 adamw)")
    momentum: float = _arg(0.9, "SGD momentum")
    nesterov: bool = _arg(False, "Nesterov momentum")
    weight_decay: float | None = _arg(None, "default: 1e-4 sgd, 0.05 adamw")
    wd_skip_1d: bool = _arg(False, "no weight decay on norms and biases (the ring is always decayed)")
    schedule: Literal["cosine", "step", "exponential", "constant"] | None = _arg(
        None, "default: exponential (the reference RPG code) for sgd, cosine for adamw")
    decay_epochs: float | None = _arg(None, "step: decay every N epochs (30); exponential: x decay-rate per N (45)")
    decay_rate: float = _arg(0.1, "decay factor of the step/exponential schedules")
    min_lr_ratio: float = _arg(0.0, "cosine: final lr as a fraction of the peak")
    warmup_epochs: float = _arg(0.0, "linear warm-up length in epochs")
    warmup_steps: int | None = _arg(None, "linear warm-up length in steps (overrides epochs)")
    label_smoothing: float = _arg(0.0, "cross-entropy label smoothing")
    clip_grad: float | None = _arg(None, "clip the gradient norm to this value")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = _arg(None, "default: the accelerate launch config's")
    compile: bool = _arg(False, "torch.compile the model (inductor)")


@dataclass
class RunArgs:
    _argument_group_name = "run"
    config: str | None = _arg(None, "YAML file whose keys are flag names (command-line flags win)")
    output_dir: str = _arg("runs/rpg", "checkpoints/, logs/, model/, results.json go here")
    checkpoint_every: int = _arg(0, "save_state every N optimizer steps (0: every epoch; -1: only at the end)")
    keep_checkpoints: int = _arg(3, "keep the newest N checkpoints (0: all)")
    resume: str | None = _arg(None, "resume from the newest complete checkpoint under output-dir/checkpoints (no "
                              "value or 'latest') or from the checkpoint folder given", nargs="?", const="latest")
    stop_after_steps: int | None = _arg(None, "checkpoint and exit after this many optimizer steps (resume later)")
    eval_every: int = _arg(0, "evaluate every N optimizer steps (0: every epoch; -1: only at the end)")
    log_every: int = _arg(50, "log the training loss every N optimizer steps")
    log_with: str = _arg("tensorboard", "Accelerate trackers, comma separated (tensorboard, wandb, ...), or 'none'")
    project_name: str = _arg("rpg_hf", "tracker project / run name")
    model_id: str | None = _arg(None, "model name used in the model card (default: output folder name)")
    no_progress: bool = _arg(False, "no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = HfArgumentParser((DataArgs, ModelArgs, OptimArgs, RunArgs), formatter_class=argparse.HelpFormatter,
                              description="Train an RPG (ring-generated) or vanilla image classifier with Accelerate.")
    add_spec_arguments(parser.add_argument_group("ring (rpg_hf.RPGSpec)"), required=(), overrides={
        "dof": {"default": 45_000}, "seed": {"help": "Seed of the ring construction, the init and the data order."}})
    return parser


def load_yaml_config(path: str | os.PathLike[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The YAML's settings as parser defaults: keys are flag names ('-' or '_'; ``no-permute: true``
    sets ``permute`` false)."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(values, dict):
        raise SystemExit(f"--config {path}: expected a mapping of flag names to values")
    dests = set(vars(parser.parse_args([]))) - {"config"}
    out, unknown = {}, []
    for key, value in values.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in dests and dest.startswith("no_") and dest[3:] in dests and isinstance(value, bool):
            dest, value = dest[3:], not value  # a switch's --no-<name>
        if dest in dests:
            out[dest] = value
        else:
            unknown.append(key)
    if unknown:
        raise SystemExit(f"--config {path}: unknown setting(s) {unknown}; keys are train.py flag names")
    return out


def _json_value(flag: str, text: Any) -> Any:
    """A JSON object given inline, as a path to a .json/.yaml file, or already parsed (from YAML)."""
    if text is None or isinstance(text, dict):
        return text
    if Path(str(text)).suffix.lower() in (".json", ".yaml", ".yml") and Path(str(text)).is_file():
        import yaml

        return yaml.safe_load(Path(str(text)).read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{flag}: not a JSON object or a .json/.yaml file: {text!r} ({err})") from err


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags (over the --config YAML), with the JSON decoded and the defaults that depend on
    other settings (optimizer family, schedule, channels) filled in."""
    parser, pre = build_parser(), argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    if config := pre.parse_known_args(argv)[0].config:
        parser.set_defaults(**load_yaml_config(config, parser))
    a = parser.parse_args(argv)
    if not a.data:
        parser.error("--data is required (or set `data:` in the --config YAML)")
    for name in ("batch_size", "grad_accum", "epochs", "log_every"):
        if getattr(a, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if len(a.scale) != 2:
        parser.error(f"--scale takes two numbers (MIN MAX), got {list(a.scale)}")
    a.scale, a.resume = tuple(a.scale), "latest" if a.resume is True else a.resume  # YAML `resume: true`
    a.model_args, a.vit_config = _json_value("--model-args", a.model_args), _json_value("--vit-config", a.vit_config)
    a.optimizer = a.optimizer or ("adamw" if is_vit(a.arch, a.vit_config) else "sgd")
    sgd = a.optimizer == "sgd"
    for name, value in dict(base_lr=0.1 if sgd else 5e-4, lr_base_batch=256 if sgd else 512,
                            weight_decay=1e-4 if sgd else 0.05, schedule="exponential" if sgd else "cosine").items():
        if getattr(a, name) is None:
            setattr(a, name, value)
    if a.decay_epochs is None:
        a.decay_epochs = 30.0 if a.schedule == "step" else 45.0
    if a.val_split and a.val_split.lower() == "none":
        a.val_split = None
    chans = in_chans(a)
    a.mean = list(a.mean or (IMAGENET_MEAN if chans == 3 else [0.5] * chans))
    a.std = list(a.std or (IMAGENET_STD if chans == 3 else [0.5] * chans))
    if len(a.mean) != chans or len(a.std) != chans:
        raise SystemExit(f"--mean/--std need {chans} value(s) for {chans}-channel input")
    return a


def in_chans(args: argparse.Namespace) -> int:
    """Input channels of the network the parsed flags describe (the ViT config's, or timm's ``in_chans``)."""
    if args.vit_config or args.model_args is None:
        return int((args.vit_config or {}).get("num_channels", 3))
    return int(args.model_args.get("in_chans", 3))
