#!/usr/bin/env python
"""Train an RPG image classifier (or its vanilla baseline) on ImageNet-style data with Accelerate.

Why this script: the paper's ImageNet numbers come from long multi-GPU runs that get pre-empted,
so the recipe has to (1) resume *exactly* — same ring as an uninterrupted run — from Accelerate's
own checkpoints, (2) give the same result on 1, 8 or 64 processes for the same global batch,
(3) need no network for its metrics, and (4) end with what the project ships: a ring-only
``save_pretrained`` folder whose model card carries the evaluation result.  The data order, seeded
augmentation, model builder, schedules, the training loop (``rpg_hf.train.loop.fit``), the
evaluation, the flags (:mod:`rpg_hf.train.arguments`) and the model folder with its card
(:mod:`rpg_hf.train.export`) live in :mod:`rpg_hf.train`; this file is the run: the accelerator and
its checkpoints, the loaders, the loss, what happens after each optimizer step, and results.json.

    accelerate launch --config_file recipes/configs/multi_gpu_8.yaml recipes/train.py \\
        --config recipes/configs/resnet18_45k.yaml --data /data/imagenet --output-dir runs/r18-45k

With ``--config_file recipes/configs/fsdp2_8.yaml`` (FSDP2) the model is sharded by
``rpg_hf.sharding.shard_rpg_model`` before the optimizer is built, and with
``recipes/configs/ds_zero3.yaml`` (DeepSpeed ZeRO-3) its rings are registered with
``register_rings_for_zero3``; the final folder is gathered on the main process.

The flags are the fields of the dataclasses in :mod:`rpg_hf.train.arguments`
(``transformers.HfArgumentParser``) and the ring options of ``rpg_hf.RPGSpec``
(``rpg_hf.spec.add_spec_arguments``).  Each can be set in the ``--config`` YAML under its flag
name (``batch-size`` or ``batch_size``; ``no-permute: true``); the command line wins over the YAML.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.nn import functional as F

from rpg_hf.sharding import register_rings_for_zero3, shard_rpg_model, sharding_mode, unsharded_copy
from rpg_hf.spec import spec_kwargs
from rpg_hf.train import datasets as data
from rpg_hf.train.arguments import in_chans, parse_args
from rpg_hf.train.evaluate import evaluate
from rpg_hf.train.export import dataset_id, save_model
from rpg_hf.train.files import write_json
from rpg_hf.train.loop import TrainState, distillation_loss, fit
from rpg_hf.train.models import build_model, logits_of, model_summary
from rpg_hf.train.optim import build_optimizer, build_scheduler, scaled_lr

CHECKPOINTS = "checkpoints"  # Accelerate's automatic naming: OUT/checkpoints/checkpoint_<i>
RUN_STATE = "custom_checkpoint_0.pkl"  # the registered run state: the last file save_state writes


# --------------------------------------------------------------------------- setup


def checkpoint_dirs(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Accelerate's ``checkpoints/checkpoint_<i>`` folders under ``output_dir``, complete or not, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    return sorted((int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else ())
                  if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and p.is_dir())


def make_accelerator(args: argparse.Namespace):
    """An Accelerator whose ``save_state()`` writes the next free ``checkpoint_<i>`` and keeps the newest
    ``--keep-checkpoints``."""
    out, found = Path(args.output_dir), checkpoint_dirs(args.output_dir)
    project = ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs"),
                                   automatic_checkpoint_naming=True, iteration=found[-1][0] + 1 if found else 0,
                                   total_limit=args.keep_checkpoints if args.keep_checkpoints > 0 else None)
    trackers = [t.strip() for t in str(args.log_with or "none").split(",") if t.strip() not in ("", "none")]
    return Accelerator(gradient_accumulation_steps=args.grad_accum, mixed_precision=args.mixed_precision,
                       log_with=trackers or None, project_config=project, step_scheduler_with_optimizer=False,
                       **({"dynamo_backend": "inductor"} if args.compile else {}))


def make_loaders(args: argparse.Namespace, accelerator):
    """Class names, the training set and loader, and the evaluation loader (or None); each node's
    main process fills the datasets cache first."""

    def split(name, n):
        ds = data.load_split(args.data, name, cache_dir=args.cache_dir)
        return ds.shuffle(seed=args.seed, keep_in_memory=True).select(range(n)) if n and 0 < n < len(ds) else ds

    with accelerator.local_main_process_first():
        train_ds = split(args.train_split, args.max_train_samples)
        val_ds = split(args.val_split, args.max_eval_samples) if args.val_split else None
    names = data.class_names(train_ds)
    if val_ds is not None and data.class_names(val_ds) != names:
        raise SystemExit(f"{args.data}: the {args.val_split} split's classes differ from the {args.train_split} "
                         "split's (imagefolder: both need the same class folders)")
    common = dict(mean=tuple(args.mean), std=tuple(args.std), interpolation=args.interpolation)
    mode, pin = "L" if in_chans(args) == 1 else "RGB", accelerator.device.type == "cuda"
    train_tf = data.build_transform(args.image_size, train=True, hflip=args.hflip, scale=args.scale, **common,
                                    color_jitter=args.color_jitter, auto_augment=args.auto_augment,
                                    re_prob=args.reprob)
    loader = dict(seed=args.seed, num_workers=args.num_workers, pin_memory=pin)
    train_set = data.ImageClassificationDataset(train_ds, train_tf, image_mode=mode, seed=args.seed)
    train_loader = data.make_loader(train_set, args.batch_size, train=True, **loader)
    val_loader = None
    if val_ds is not None:
        eval_tf = data.build_transform(args.image_size, train=False, crop_pct=args.crop_pct, **common)
        val_set = data.ImageClassificationDataset(val_ds, eval_tf, image_mode=mode, seed=args.seed)
        val_loader = data.make_loader(val_set, args.eval_batch_size or args.batch_size, train=False, **loader)
    return names, train_set, train_loader, val_loader


def steps_per_epoch(num_samples: int, args: argparse.Namespace, num_processes: int) -> int:
    """Optimizer steps per epoch: full per-process batches (drop_last), sharded, then accumulated."""
    batches = (num_samples // args.batch_size) // num_processes
    if batches < 1:
        raise SystemExit(f"{num_samples} training images do not fill one batch of {args.batch_size} per process "
                         f"on {num_processes} process(es)")
    return math.ceil(batches / args.grad_accum)


# --------------------------------------------------------------------------- training


class _Run:
    """One training run: set up in ``__init__``, trained by :meth:`train` through ``rpg_hf.train.loop.fit``.

    It is also the recipe's part of every checkpoint (``register_for_checkpointing``; Accelerate
    writes it last, as ``custom_checkpoint_0.pkl``): the loop's ``TrainState``, the evaluations so
    far, and the global batch and steps per epoch the checkpoint was written with.
    """

    def __init__(self, args: argparse.Namespace):
        a, acc = args, make_accelerator(args)
        self.args, self.accelerator = a, acc
        set_seed(a.seed)
        self.names, self.train_set, train_loader, val_loader = make_loaders(a, acc)
        self.model = build_model(a.model, a.arch, num_labels=len(self.names), id2label=dict(enumerate(self.names)),
                                 model_args=a.model_args, vit_config=a.vit_config, image_size=a.image_size,
                                 crop_pct=a.crop_pct, mean=a.mean, std=a.std, **spec_kwargs(a))
        self.fold_report = self._init_from() if a.init_from else None
        self.teacher = self._teacher() if a.distill_from else None
        if a.sync_bn and acc.num_processes > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.sharded = sharding_mode(acc)  # FSDP2 / ZeRO-3: the ring's rule (rpg_hf.sharding), before the optimizer
        if self.sharded and a.model != "rpg":
            raise ValueError(f"{self.sharded} in this recipe is for RPG models; train the vanilla baseline with DDP")
        if self.sharded == "fsdp2":
            shard_rpg_model(self.model)  # Accelerate keeps a model that is already sharded as it is
        elif self.sharded == "zero3":
            register_rings_for_zero3(self.model)
        self.global_batch = a.batch_size * acc.num_processes * a.grad_accum
        self.lr = a.lr if a.lr is not None else scaled_lr(a.base_lr, self.global_batch, a.lr_base_batch)
        self.spe = steps_per_epoch(len(self.train_set), a, acc.num_processes)
        self.total_steps = a.max_steps or a.epochs * self.spe
        optimizer = build_optimizer(self.model, a.optimizer, lr=self.lr, weight_decay=a.weight_decay,
                                    momentum=a.momentum, nesterov=a.nesterov, skip_1d=a.wd_skip_1d)
        scheduler = build_scheduler(optimizer, schedule=a.schedule, total_steps=self.total_steps,
                                    warmup_steps=a.warmup_steps if a.warmup_steps is not None else
                                    round(a.warmup_epochs * self.spe), steps_per_epoch=self.spe,
                                    decay_epochs=a.decay_epochs, decay_rate=a.decay_rate, min_lr_ratio=a.min_lr_ratio)
        self.sampler = train_loader.sampler
        self.model, self.optimizer, self.train_loader, self.scheduler = acc.prepare(
            self.model, optimizer, train_loader, scheduler)
        self.val_loader = acc.prepare(val_loader) if val_loader is not None else None
        if (n := math.ceil(len(self.train_loader) / a.grad_accum)) != self.spe:
            raise RuntimeError(f"steps per epoch: expected {self.spe}, the prepared loader gives {n}")
        self.state, self.evals, self.out = TrainState(), [], Path(a.output_dir)
        self.running, self.micro = torch.zeros((), device=acc.device), 0  # the loss since the last log
        acc.register_for_checkpointing(self)

    def _source(self, path: str):
        """A trained network named by --init-from / --distill-from (rpg_hf.compress.fold.load_source)."""
        from rpg_hf.compress.fold import load_source

        a, is_file = self.args, Path(path).is_file()
        return load_source(path, arch=a.arch if is_file else None, model_args=a.model_args if is_file else None,
                           num_labels=len(self.names) if is_file else None)

    def _init_from(self):
        """Fold (RPG) or load (vanilla) the --init-from weights into the model before training."""
        from rpg_hf.compress.fold import fold_into, plain_network

        a, source = self.args, self._source(self.args.init_from)
        if a.model == "vanilla":
            try:
                self.model.load_state_dict(plain_network(source).state_dict(), strict=True)
            except RuntimeError as err:
                raise SystemExit(f"--init-from {a.init_from}: architecture mismatch: {err}") from err
            self.accelerator.print(f"initialised the vanilla model from {a.init_from}")
            return None
        try:
            report = fold_into(self.model, source, weighting=a.fold_weighting)
        except ValueError as err:
            raise SystemExit(f"--init-from {a.init_from}: {err}") from err
        self.accelerator.print(f"folded {a.init_from} into the ring (dof={report.dof:,}): relative error "
                               f"{report.rel_error:.4f}, energy kept {100 * report.energy_kept:.2f}%")
        return report

    def _teacher(self):
        from rpg_hf.compress.fold import plain_network

        a = self.args
        self.accelerator.print(f"distilling from {a.distill_from} (T={a.distill_temperature}, w={a.distill_weight})")
        return plain_network(self._source(a.distill_from)).to(self.accelerator.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------ what fit calls
    def batches(self, epoch: int, skip: int):
        """Epoch ``epoch`` from optimizer step ``skip`` on; order and augmentation depend only on (seed,
        epoch, index), so a resumed epoch sees the batches the interrupted one would have."""
        self.sampler.use_epoch(epoch)
        self.train_set.use_epoch(epoch)
        if skip:
            return self.accelerator.skip_first_batches(self.train_loader, skip * self.args.grad_accum)
        return self.train_loader

    def loss(self, model, x, y):
        """Cross-entropy with label smoothing, plus the distillation term when --distill-from is given."""
        a = self.args
        logits = logits_of(model(x)).float()
        if self.teacher is None:
            loss = F.cross_entropy(logits, y, label_smoothing=a.label_smoothing)
        else:
            with torch.no_grad(), self.accelerator.autocast():
                target = logits_of(self.teacher(x)).float()
            loss = distillation_loss(logits, target, y, temperature=a.distill_temperature, weight=a.distill_weight,
                                     label_smoothing=a.label_smoothing)
        self.running, self.micro = self.running + loss.detach(), self.micro + 1
        return loss

    def on_step(self, state, loss) -> bool:
        """After each optimizer step: log, evaluate, checkpoint; True stops the run (--stop-after-steps)."""
        a, step = self.args, state.step
        if step % a.log_every == 0 or step == 1:
            self.log({"train/loss": self.accelerator.reduce(self.running / self.micro, "mean").item(),
                      "train/lr": self.scheduler.get_last_lr()[0], "train/epoch": step / self.spe})
            self.running, self.micro = self.running.new_zeros(()), 0
        finished = step >= self.total_steps
        stop = a.stop_after_steps is not None and step >= a.stop_after_steps and not finished
        if self.val_loader is not None and a.eval_every >= 0 and self._due(a.eval_every) and not finished:
            self.evaluate()
        if (self._due(a.checkpoint_every) and not finished) or stop:
            self.checkpoint()
        return stop

    def _due(self, every: int) -> bool:
        return (every > 0 and self.state.step % every == 0) or (every == 0 and self.state.step % self.spe == 0)

    # ------------------------------------------------------------------ events
    def log(self, values: dict[str, Any]) -> None:
        self.accelerator.log(values, step=self.state.step)
        if self.accelerator.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.state.step, **values}) + "\n")

    def evaluate(self) -> dict[str, Any]:
        res = evaluate(self.model, self.val_loader, accelerator=self.accelerator, desc="eval",
                       progress=self.accelerator.is_main_process and not self.args.no_progress)
        self.evals.append({"step": self.state.step, "epoch": self.state.step / self.spe, **res})
        self.log({"val/top1": res["top1"], "val/top5": res["top5"], "val/loss": res["loss"]})
        self.accelerator.print(f"step {self.state.step}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
                               f"loss {res['loss']:.4f}  ({res['n']} images)")
        return res

    def checkpoint(self) -> None:
        self.accelerator.save_state()  # the next checkpoint_<i>; the oldest beyond --keep-checkpoints go
        self.accelerator.wait_for_everyone()

    def state_dict(self) -> dict[str, Any]:
        return {**self.state.state_dict(), "evals": self.evals, "global_batch_size": self.global_batch,
                "steps_per_epoch": self.spe}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.state.load_state_dict(saved)
        self.evals = list(saved.get("evals", []))
        if (then := (saved.get("global_batch_size"), saved.get("steps_per_epoch"))) != (self.global_batch, self.spe):
            self.accelerator.print(f"warning: the checkpoint was written with global batch {then[0]} and {then[1]} "
                                   f"steps/epoch, this run has {self.global_batch} and {self.spe}: the step count "
                                   "carries over, but the data order and schedule no longer match the interrupted run")

    def resume(self) -> None:
        """--resume: load the newest complete checkpoint (or the one given); none yet: start from scratch.
        Incomplete folders (a save_state cut short) are deleted: they would take a --keep-checkpoints slot."""
        complete = [p for _, p in checkpoint_dirs(self.out) if (p / RUN_STATE).is_file()]
        path = Path(self.args.resume) if self.args.resume != "latest" else (complete[-1] if complete else None)
        if path is not None and not (path / RUN_STATE).is_file():
            raise SystemExit(f"--resume {path}: not a complete checkpoint folder (no {RUN_STATE})")
        if self.accelerator.is_main_process:
            for _, p in checkpoint_dirs(self.out):
                if p not in complete:
                    shutil.rmtree(p, ignore_errors=True)
        if path is None:
            self.accelerator.print(f"--resume: no checkpoint in {self.out / CHECKPOINTS}; starting from scratch")
            return
        self.accelerator.load_state(str(path))
        self.accelerator.print(f"resumed from {path} at step {self.state.step}")

    # ------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        acc, a = self.accelerator, self.args
        self.out.mkdir(parents=True, exist_ok=True)
        if a.resume:
            self.resume()
        acc.init_trackers(a.project_name, config={k: v if isinstance(v, (int, float, str, bool)) else json.dumps(
            v, default=str) for k, v in vars(a).items()})  # TensorBoard takes scalars and strings only
        acc.print(f"{a.model} {a.arch}: {len(self.train_set)} training images, {len(self.names)} classes, "
                  f"{acc.num_processes} process(es), global batch {self.global_batch}, lr {self.lr:.4g}, "
                  f"{self.spe} steps/epoch, {self.total_steps} steps")
        fit(self.model, self.optimizer, self.batches, total_steps=self.total_steps, steps_per_epoch=self.spe,
            scheduler=self.scheduler, loss_fn=self.loss, accelerator=acc, clip_grad=a.clip_grad, state=self.state,
            on_step=self.on_step, samples_per_step=self.global_batch, progress=not a.no_progress)
        if self.state.step < self.total_steps:
            acc.print(f"stopped after step {self.state.step} (--stop-after-steps); resume with --resume")
            results = {"stopped_at": self.state.step, "output_dir": str(self.out)}
        else:
            results = self.finish()
        acc.end_training()
        return results

    def finish(self) -> dict[str, Any]:
        """The final evaluation and checkpoint, then the model folder and results.json."""
        acc, a, device = self.accelerator, self.args, self.accelerator.device
        final = self.evaluate() if self.val_loader is not None else {}
        self.checkpoint()
        model = acc.unwrap_model(self.model, keep_fp32_wrapper=False, keep_torch_compile=False)
        if self.sharded:  # every process takes part in the gather; the main one gets the whole model
            model = unsharded_copy(model)
        results = {
            "arch": a.arch, "method": a.model, **(model_summary(model) if model is not None else {}), "dataset": dataset_id(a), "split": a.val_split,
            "top1": final.get("top1"), "top5": final.get("top5"), "val_loss": final.get("loss"),
            "val_images": final.get("n"), "epochs": self.total_steps / self.spe, "steps": self.state.step,
            "steps_per_epoch": self.spe, "global_batch_size": self.global_batch, "lr": self.lr,
            "optimizer": a.optimizer, "schedule": a.schedule, "seed": a.seed, "scope": a.scope,
            "image_size": a.image_size, "train_seconds": round(self.state.train_seconds, 3), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            "world_size": acc.num_processes, "mixed_precision": acc.mixed_precision, "evals": self.evals,
            "model_dir": str(self.out / "model"),
        }
        if a.init_from:
            results["init_from"] = a.init_from
            if self.fold_report is not None:
                results["fold"] = self.fold_report.totals()
        if a.distill_from:
            results.update(distill_from=a.distill_from, distill_temperature=a.distill_temperature,
                           distill_weight=a.distill_weight)
        if acc.is_main_process:
            save_model(model, self.out / "model", a, self.names, results)
            results["checkpoint_bytes"] = sum(p.stat().st_size for p in (self.out / "model").glob("*.safetensors"))
            write_json(self.out / "results.json", results)
            print(f"saved {a.model} model to {self.out / 'model'} and results to {self.out / 'results.json'}")
        acc.wait_for_everyone()
        return results


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the recipe for parsed ``args``; returns the results dict (as written to results.json)."""
    return _Run(args).train()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
