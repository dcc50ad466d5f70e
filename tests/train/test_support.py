"""rpg_hf.train's shared pieces of the recipes: the distillation loss, the class-balanced subset,
the device description of run records, atomic writes, and the recipe's flags and export helpers.

Each replaced a copy in two or three recipes, so each is pinned here to what those copies did."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket

import pytest
import torch
from torch.nn import functional as F

from rpg_hf.train import files
from rpg_hf.train.datasets import balanced_subset
from rpg_hf.train.loop import distillation_loss

# --------------------------------------------------------------------------- distillation


def test_distillation_loss_is_weighted_ce_plus_scaled_kl():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, requires_grad=True)
    teacher = torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    t, w = 3.0, 0.3
    got = distillation_loss(logits, teacher, y, temperature=t, weight=w, label_smoothing=0.1)
    p_t = F.softmax(teacher / t, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(logits / t, -1))).sum(-1).mean()
    want = (1 - w) * F.cross_entropy(logits, y, label_smoothing=0.1) + w * t * t * kl
    torch.testing.assert_close(got, want)
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_distillation_loss_limits():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(4, 3, generator=g), torch.tensor([0, 1, 2, 0])
    # weight 0: the plain cross-entropy; a teacher equal to the student: no KL term
    assert torch.equal(distillation_loss(logits, torch.randn(4, 3, generator=g), y, temperature=4.0, weight=0.0),
                       F.cross_entropy(logits, y))
    same = distillation_loss(logits, logits, y, temperature=4.0, weight=1.0)
    assert abs(float(same)) < 1e-6


# --------------------------------------------------------------------------- class-balanced subset


def _reference_subset(labels, size, seed):
    """The copy sweep.py and fold_fashion_mnist.py had: per class, in label order, a seeded randperm; sorted."""
    g = torch.Generator().manual_seed(seed)
    per = size // len(torch.unique(labels))
    keep = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    return torch.sort(torch.cat([k[torch.randperm(len(k), generator=g)[:per]] for k in keep])).values


@pytest.mark.parametrize("size, seed", [(30, 0), (12, 5), (3, 2)])
def test_balanced_subset_matches_the_recipes_indices(size, seed):
    labels = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(7))
    keep = balanced_subset(labels, size, seed=seed)
    assert torch.equal(keep, _reference_subset(labels, size, seed))
    assert torch.equal(keep, balanced_subset(labels, size, seed=seed, num_classes=3))
    assert torch.equal(keep, keep.sort().values) and len(set(keep.tolist())) == len(keep)
    assert torch.bincount(labels[keep], minlength=3).tolist() == [size // 3] * 3


def test_balanced_subset_per_class_follows_num_classes():
    labels = torch.arange(40) % 4
    assert len(balanced_subset(labels, 20, num_classes=10)) == 4 * 2  # 20 // 10 per present class
    assert not torch.equal(balanced_subset(labels, 20, seed=0), balanced_subset(labels, 20, seed=1))


# --------------------------------------------------------------------------- run records


def test_device_name_of_a_cpu_run():
    name = files.device_name(torch.device("cpu"))
    assert name == files.device_name("cpu") == files.device_name()
    assert re.fullmatch(r"cpu \(.+; \d+ thread\(s\)\)", name)
    assert name == f"cpu ({files.cpu_name()}; {torch.get_num_threads()} thread(s))"


def test_cpu_name_reads_the_model_name(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Fancy CPU 9000\n")
    real = files.Path

    def path(p, *rest):
        return real(fake) if str(p) == "/proc/cpuinfo" else real(p, *rest)

    monkeypatch.setattr(files, "Path", path)
    assert files.cpu_name() == "Fancy CPU 9000"
    fake.write_text("processor\t: 0\nHardware\t: Board X\n")  # no model name (some ARM kernels)
    assert files.cpu_name() == "Board X"


def test_atomic_writes(tmp_path):
    path = files.write_json(tmp_path / "a" / "rec.json", {"b": 1, "when": tmp_path})
    assert json.loads(path.read_text()) == {"b": 1, "when": str(tmp_path)}
    assert path.read_text() == json.dumps({"b": 1, "when": str(tmp_path)}, indent=2) + "\n"
    files.write_text(tmp_path / "t.md", "x\n")
    assert (tmp_path / "t.md").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "rec.json", "t.md"]  # no temporary left


# --------------------------------------------------------------------------- the recipe's flags and outputs


def test_arguments_defaults_and_yaml(tmp_path):
    from rpg_hf.train.arguments import build_parser, in_chans, load_yaml_config, parse_args

    config = tmp_path / "c.yaml"
    config.write_text("batch-size: 7\nno-permute: true\nmodel_args: {in_chans: 1}\n")
    assert load_yaml_config(config, build_parser()) == {"batch_size": 7, "permute": False,
                                                        "model_args": {"in_chans": 1}}
    a = parse_args(["--config", str(config), "--data", "x", "--lr", "0.5"])
    assert (a.batch_size, a.permute, a.lr, a.optimizer, a.schedule) == (7, False, 0.5, "sgd", "exponential")
    assert in_chans(a) == 1 and a.mean == [0.5] and a.std == [0.5]
    vit = parse_args(["--data", "x", "--arch", "vit_b16"])
    assert (vit.optimizer, vit.schedule, vit.weight_decay, in_chans(vit)) == ("adamw", "cosine", 0.05, 3)


def test_export_names(tmp_path):
    from rpg_hf.train.export import card_entries, dataset_id

    args = argparse.Namespace(data=str(tmp_path / "imagenet"), dataset_name=None)
    assert dataset_id(args) == str(tmp_path / "imagenet")  # no such folder: the id as given
    (tmp_path / "imagenet").mkdir()
    assert dataset_id(args) == "imagenet"
    assert dataset_id(argparse.Namespace(data="ILSVRC/imagenet-1k", dataset_name="in1k")) == "in1k"
    assert card_entries({"dataset": "d", "split": "val", "top1": None}) == []
    assert len(card_entries({"dataset": "d", "split": "val", "top1": 70.0, "top5": 90.0})) >= 1


# --------------------------------------------------------------------------- claims


def test_claims_trust_another_host_and_take_over_garbage(tmp_path):
    from rpg_hf.train.claims import claim

    (tmp_path / "job-a").write_text("some-other-host 1\n")
    assert not claim(tmp_path, "job-a")  # another machine's claim: trusted
    (tmp_path / "job-b").write_text("not a claim\n")
    assert claim(tmp_path, "job-b")  # unreadable: taken over
    assert (tmp_path / "job-b").read_text().split()[:2] == [socket.gethostname(), str(os.getpid())]
