from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def perturbed(model):
    """A trained-looking model: every parameter (the rings and the free tensors) moved off its seeded
    initialisation, so a save/load round trip that ignored the file and rebuilt from the seed would fail."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.25).add_(0.01)
    if hasattr(model, "generator"):
        model.generator.invalidate_cache()
    return model


def tiny_vit(num_labels: int = 5):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=num_labels,
    )
    torch.manual_seed(0)
    return ViTForImageClassification(cfg)


@pytest.fixture
def images():
    """32 px: the tiny ViT's size; for CNNs trained with BN prefer `images64` (at 32 px a
    ResNet's last stage is 1x1 and train-mode BN over 2 samples cuts the gradient)."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def images64():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def lay_out_hub_cache(cache: Path, repo_id: str, folder: Path) -> str:
    """Write ``folder`` into ``cache`` exactly as huggingface_hub lays out a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    revision = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return revision


def break_checkpoint(path: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the ring-only folder ``path`` damaged one way: ``dof`` (config claims 1000 more
    entries), ``version`` (unknown generator), ``missing`` / ``nan`` / ``inf`` (the ring), ``free``
    (a free tensor gone), ``seed`` (config.json names another seed than the file's identity); or
    ``old``: the file as written before files carried the construction's identity."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / how
    shutil.copytree(path, dst)
    cfg = json.loads((dst / "config.json").read_text())
    tensors = load_file(dst / "model.safetensors")
    if how == "dof":
        cfg.update(dof=cfg["dof"] + 1000, ring_sizes=[cfg["dof"] + 1000])
    elif how == "version":
        cfg["generator_version"] = 99
    elif how == "missing":
        tensors.pop("backbone.rpg.rings.0")
    elif how in ("nan", "inf"):
        tensors["backbone.rpg.rings.0"][5] = float(how)
    elif how == "free":
        tensors.pop("backbone.fc.weight")
    elif how == "seed":
        cfg["seed"] += 1
    elif how == "old":
        tensors.pop("backbone.rpg.construction")
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst
