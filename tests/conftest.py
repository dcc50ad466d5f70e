from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


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
