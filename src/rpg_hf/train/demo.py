"""``rpg-hf demo``: RPG vs. a vanilla network with the same number of trainable parameters, on a laptop.

Why this demo: it is the README's first command, so it must show the product's promise end to end
in a few minutes on a CPU, offline — a ResNet whose 11M weights are generated from a 45K-number
ring trains, is saved **ring-only**, reloads bit-identically through
``AutoModelForImageClassification.from_pretrained``, and beats (or matches) a plain network
that trains as many numbers, from a checkpoint a fraction of the size.

What it does, by default:

* data: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``) — or another IDX directory, a local parquet/arrow copy
  or a Hub dataset name (``--data``); a missing dataset fails with the ``apt-get`` line to fix it.
  The images stay uint8 tensors in memory (on the GPU when there is one): no DataLoader workers,
  no PIL; normalisation uses the training subset's own mean/std, augmentation is a horizontal flip.
* RPG arm: timm ``resnet18`` with ``in_chans=1`` at the native 28×28 (timm's standard stem:
  stride-2 7×7 conv and max-pool, so the stages run at 7/4/2/1 px — the cheapest way to get a
  real ResNet-18 on CPU; a CIFAR-style stride-1 stem would cost 16× the compute), wrapped in
  :class:`rpg_hf.RPGForImageClassification` with a 45K ring, so saving and loading go through
  the real transformers path.
* vanilla arm: the same timm ResNet family narrowed to the RPG model's *trainable* parameter count
  (ring + free parameters): stage widths ``(w/8, w/4, w/2, w)`` (ResNet-18 is ``w=512``) with
  ``w`` chosen so the counts match as closely as possible (``--vanilla-width`` to set it).
* both arms: the same SGD recipe (momentum 0.9, Nesterov, cosine with warm-up), the same batches
  in the same order, a 20,000-image training subset for one epoch (``--train-samples 0
  --epochs 10`` for the real thing), evaluation on 2,000 test images (``--test-samples 0`` for
  all 10,000).
* then: ``save_pretrained`` of the RPG model (ring-only), reload with
  ``AutoModelForImageClassification.from_pretrained``, check the reloaded logits are identical,
  save the vanilla model with timm's ``save_for_hf``, and print a table: accuracy, DoF, trainable
  parameters, compression and checkpoint file size of each.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rpg_hf.train.data import FASHION_MNIST_DIR

__all__ = ["add_arguments", "build_parser", "main", "run"]

INSTALL_HINT = (
    "apt-get install -y dataset-fashion-mnist   (Debian/Ubuntu package; installs the IDX files into "
    f"{FASHION_MNIST_DIR}), or pass --data with another IDX directory or a Hub dataset name"
)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's flags (shared by ``rpg-hf demo`` and ``python -m rpg_hf.train.demo``)."""
    parser.add_argument("--data", default=FASHION_MNIST_DIR,
                        help="IDX directory, .parquet/.arrow file or folder, or Hub dataset name")
    parser.add_argument("--train-split", default="train", help="training split")
    parser.add_argument("--test-split", default="test", help="evaluation split")
    parser.add_argument("--train-samples", type=int, default=20_000,
                        help="random training subset (0: all 60,000)")
    parser.add_argument("--test-samples", type=int, default=2_000, help="random test subset (0: all 10,000)")
    parser.add_argument("--arch", default="resnet18", help="timm ResNet-family architecture of both arms")
    parser.add_argument("--dof", type=int, default=45_000, help="RPG degrees of freedom (ring size)")
    parser.add_argument("--vanilla-width", type=int, default=None,
                        help="last-stage channels w of the vanilla net, stages (w/8, w/4, w/2, w) (default: match the "
                             "RPG model's trainable parameters)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of each arm")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, Nesterov momentum 0.9)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up as a fraction of the steps")
    parser.add_argument("--no-augment", action="store_true", help="no horizontal flips")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ring, the init, the subset and the order")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--output-dir", default="rpg-demo", help="where the two checkpoints are written")
    parser.add_argument("--skip-vanilla", action="store_true", help="train the RPG arm only")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpg-hf demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return add_arguments(parser)


# --------------------------------------------------------------------------- data


class _Split:
    """uint8 images (N, C, H, W) and int64 labels on a device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, names: list[str]):
        self.images, self.labels, self.names = images, labels, names

    def __len__(self) -> int:
        return int(self.labels.numel())


def _subset(n: int, keep: int, seed: int) -> torch.Tensor | None:
    if not keep or keep >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def load_split(source: str, split: str, keep: int, seed: int, device: torch.device) -> _Split:
    """One split as tensors; a missing dataset raises SystemExit with the install command."""
    from rpg_hf.train.data import load_image_dataset, to_tensors
    from rpg_hf.train.datasets import class_names

    try:
        ds = load_image_dataset(source, split)
    except FileNotFoundError as err:
        hint = "" if "apt-get install" in str(err) else f"\nInstall it with:\n    {INSTALL_HINT}"
        raise SystemExit(f"rpg-hf demo: {err}{hint}") from err
    except ConnectionError as err:  # a Hub name with no network and no cache
        raise SystemExit(f"rpg-hf demo: cannot load {source!r} ({err}).\nFor the offline default:\n    "
                         f"{INSTALL_HINT}") from err
    index = _subset(len(ds), keep, seed)
    if index is not None:
        ds = ds.select(index.tolist())
    images, labels = to_tensors(ds)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return _Split(images.contiguous().to(device), labels.to(device), class_names(ds))


def _normalizer(train: _Split) -> tuple[list[float], list[float], Callable[[torch.Tensor], torch.Tensor]]:
    x = train.images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def normalize(batch: torch.Tensor) -> torch.Tensor:
        return (batch.float() / 255.0 - m) / s

    return mean.tolist(), std.tolist(), normalize


def _batches(split: _Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(split), batch_size):
        yield split.images[i : i + batch_size], split.labels[i : i + batch_size]


# --------------------------------------------------------------------------- models


def _build(method: str, args: argparse.Namespace, train: _Split, mean: list[float], std: list[float],
           model_args: dict[str, Any]) -> torch.nn.Module:
    from rpg_hf.train.models import build_model

    torch.manual_seed(args.seed)  # the free parameters' init: the same for every run
    return build_model(method, args.arch, num_labels=len(train.names), id2label=dict(enumerate(train.names)),
                       dof=args.dof, seed=args.seed, model_args=model_args, image_size=train.images.shape[-1],
                       crop_pct=1.0, mean=mean, std=std)


# --------------------------------------------------------------------------- training


def train_model(model: torch.nn.Module, train: _Split, normalize: Callable, args: argparse.Namespace,
                desc: str) -> float:
    """SGD (Nesterov momentum 0.9, cosine with warm-up) over seeded batches with :func:`rpg_hf.train.loop.fit`;
    returns the training seconds."""
    from rpg_hf.train.loop import fit
    from rpg_hf.train.optim import build_optimizer, build_scheduler

    spe = max(1, len(train) // args.batch_size)
    steps = spe * args.epochs
    optimizer = build_optimizer(model, "sgd", lr=args.lr, weight_decay=args.weight_decay, momentum=0.9, nesterov=True)
    scheduler = build_scheduler(optimizer, schedule="cosine", total_steps=steps,
                                warmup_steps=round(args.warmup * steps), steps_per_epoch=spe)
    order = torch.Generator().manual_seed(args.seed)
    flips = torch.Generator().manual_seed(args.seed + 1)
    device = train.images.device

    def batches(epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(train), generator=order).to(device)
        for i in range(skip, spe):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x = normalize(train.images[idx])
            if not args.no_augment:
                flip = (torch.rand(len(idx), generator=flips) < 0.5).to(device).view(-1, 1, 1, 1)
                x = torch.where(flip, x.flip(-1), x)
            yield x, train.labels[idx]

    state = fit(model, optimizer, batches, total_steps=steps, steps_per_epoch=spe, scheduler=scheduler,
                progress=not args.no_progress, desc=desc)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return state.train_seconds


def _evaluate(model: torch.nn.Module, test: _Split, normalize: Callable, args: argparse.Namespace,
              desc: str) -> dict[str, float]:
    from rpg_hf.train.evaluate import evaluate

    return evaluate(model, list(_batches(test, 512)), transform=normalize, progress=not args.no_progress, desc=desc)


@torch.no_grad()
def _first_logits(model: torch.nn.Module, test: _Split, normalize: Callable) -> torch.Tensor:
    from rpg_hf.train.models import logits_of

    model.eval()
    return logits_of(model(normalize(test.images[:256]))).float().cpu()


def _dir_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def _size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------- the two arms


def run_rpg(args: argparse.Namespace, train: _Split, test: _Split, normalize: Callable, mean: list[float],
            std: list[float], out: Path) -> dict[str, Any]:
    """Train, save ring-only, reload with ``from_pretrained``, check identical outputs."""
    from transformers import AutoModelForImageClassification

    from rpg_hf.train.models import model_summary

    in_chans = train.images.shape[1]
    model = _build("rpg", args, train, mean, std, {"in_chans": in_chans}).to(train.images.device)
    summary = model_summary(model)
    seconds = train_model(model, train, normalize, args, f"RPG {args.arch} (DoF {args.dof:,})")
    metrics = _evaluate(model, test, normalize, args, "eval RPG")
    folder = out / f"rpg-{args.arch}-dof{args.dof}"
    model.save_pretrained(folder)
    reloaded = AutoModelForImageClassification.from_pretrained(folder).to(train.images.device)
    same_logits = torch.equal(_first_logits(model, test, normalize), _first_logits(reloaded, test, normalize))
    reloaded_metrics = _evaluate(reloaded, test, normalize, args, "eval reloaded")
    if not same_logits or reloaded_metrics["top1"] != metrics["top1"]:
        raise RuntimeError(f"the reloaded ring-only checkpoint in {folder} does not reproduce the trained model "
                           f"(top-1 {reloaded_metrics['top1']:.2f}% vs {metrics['top1']:.2f}%)")
    _card_results(folder, args, metrics, len(test))
    return {**summary, "name": f"RPG {args.arch}", "top1": metrics["top1"], "top5": metrics["top5"],
            "reloaded_top1": reloaded_metrics["top1"], "identical_after_reload": same_logits,
            "train_seconds": seconds, "checkpoint_bytes": _dir_bytes(folder), "path": str(folder)}


def _dataset_id(source: str) -> str:
    if os.path.abspath(source) == FASHION_MNIST_DIR:
        return "fashion_mnist"
    path = Path(source)
    return path.resolve().name if path.exists() else source


def _card_results(folder: Path, args: argparse.Namespace, metrics: dict[str, float], n_test: int) -> None:
    """Put the test accuracy into the saved model card's model-index (rpg_hf.hf.cards)."""
    from rpg_hf.hf.cards import results_from_json, update_card_results

    record = {"dataset": _dataset_id(args.data), "split": args.test_split, "top1": metrics["top1"],
              "top5": metrics["top5"], "config": f"random {n_test}-image subset" if args.test_samples else None}
    update_card_results(folder, results_from_json(record))


def run_vanilla(args: argparse.Namespace, train: _Split, test: _Split, normalize: Callable, mean: list[float],
                std: list[float], out: Path, target_params: int) -> dict[str, Any]:
    """The same family narrowed to ``target_params`` parameters, same recipe; saved with timm."""
    from timm.models import save_for_hf

    from rpg_hf.train.models import match_vanilla_width, model_summary, narrowed_channels, narrowed_model_args

    in_chans = train.images.shape[1]
    if args.vanilla_width:
        width = args.vanilla_width
    else:
        width, _ = match_vanilla_width(args.arch, target_params, len(train.names), in_chans)
    model = _build("vanilla", args, train, mean, std, narrowed_model_args(width, in_chans)).to(train.images.device)
    summary = model_summary(model)
    name = f"vanilla {args.arch} {'/'.join(map(str, narrowed_channels(width)))}"
    seconds = train_model(model, train, normalize, args, name)
    metrics = _evaluate(model, test, normalize, args, "eval vanilla")
    folder = out / f"vanilla-{args.arch}-w{width}"
    timm_log = logging.getLogger("timm")
    level = timm_log.level
    timm_log.setLevel(logging.ERROR)  # "pretrained mean does not match 1 channels": there is no pretrained cfg
    try:
        save_for_hf(model, folder, model_config={"label_names": train.names},
                    model_args=narrowed_model_args(width, in_chans), safe_serialization=True)
    finally:
        timm_log.setLevel(level)
    return {**summary, "name": name, "width": width, "top1": metrics["top1"],
            "top5": metrics["top5"], "train_seconds": seconds, "checkpoint_bytes": _dir_bytes(folder),
            "path": str(folder)}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table: method, accuracy, DoF, trainable parameters, compression, file size, time."""
    head = f"{'method':<30} {'top-1':>7} {'DoF':>11} {'trainable':>11} {'compression':>11} {'checkpoint':>11} {'train':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<30.30} {r['top1']:>6.2f}% {r['dof']:>11,} {r['trainable_params']:>11,} "
            f"{r['compression']:>10.1f}x {_size(r['checkpoint_bytes']):>11} {r['train_seconds']:>7.0f}s"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry points


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers between our own."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo for parsed ``args``; prints the table and returns both arms' results."""
    with _quiet_transformers():
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    if args.train_samples < 0 or args.test_samples < 0 or args.epochs < 1 or args.batch_size < 1:
        raise SystemExit("rpg-hf demo: --train-samples/--test-samples must be >= 0, --epochs/--batch-size >= 1")
    start = time.perf_counter()
    device = _device(args.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"rpg-hf demo: {args.data} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    train = load_split(args.data, args.train_split, args.train_samples, args.seed, device)
    test = load_split(args.data, args.test_split, args.test_samples, args.seed + 1, device)
    if train.names != test.names:
        raise SystemExit(f"{args.data}: the {args.train_split} and {args.test_split} splits have different classes")
    mean, std, normalize = _normalizer(train)
    print(f"data: {len(train):,} training / {len(test):,} test images of {tuple(train.images.shape[1:])}, "
          f"{len(train.names)} classes; {args.epochs} epoch(s), batch {args.batch_size}")
    rows = [run_rpg(args, train, test, normalize, mean, std, out)]
    if not args.skip_vanilla:
        rows.append(run_vanilla(args, train, test, normalize, mean, std, out, rows[0]["trainable_params"]))
    rpg = rows[0]
    print()
    print(format_table(rows))
    print()
    plain_bytes = 4 * rpg["original_params"]
    print(f"RPG: {rpg['generated_params']:,} generated weights from a {rpg['dof']:,}-entry ring; the plain "
          f"{args.arch} would store {rpg['original_params']:,} parameters (~{_size(plain_bytes)} in float32), the "
          f"ring-only checkpoint is {_size(rpg['checkpoint_bytes'])} ({plain_bytes / rpg['checkpoint_bytes']:,.0f}x "
          "smaller).")
    print(f"reloaded with AutoModelForImageClassification.from_pretrained: identical logits, top-1 "
          f"{rpg['reloaded_top1']:.2f}%  ->  {rpg['path']}")
    seconds = time.perf_counter() - start
    print(f"done in {seconds:.0f}s")
    return {"rpg": rpg, "vanilla": rows[1] if len(rows) > 1 else None, "device": str(device), "seconds": seconds,
            "train_images": len(train), "test_images": len(test)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m rpg_hf.train.demo [flags]``."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
