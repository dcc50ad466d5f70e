"""Activation (gradient) checkpointing through transformers' own switches, for both backbones.

``model.gradient_checkpointing_enable()`` / ``TrainingArguments(gradient_checkpointing=True)`` turn on
timm's ``set_grad_checkpointing`` for a timm backbone and transformers' flag on a ViT's layers; the
ring's gradient equals the one without checkpointing, and a Trainer run with it moves the ring.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Trainer, TrainingArguments, ViTConfig

import rpg_hf

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 2])


def _config(backbone: str) -> rpg_hf.RPGConfig:
    if backbone == "timm":
        return rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=3000, num_labels=3, image_size=32)
    vc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                   patch_size=8)
    return rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny-test", vit_config=vc, dof=3000, num_labels=3,
                            image_size=32)


def _fixed_norms(model):
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


@pytest.mark.parametrize("backbone", ["timm", "vit"])
def test_checkpointing_gives_the_same_ring_gradient(backbone):
    torch.manual_seed(0)
    plain = _fixed_norms(rpg_hf.RPGForImageClassification(_config(backbone)))
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    if backbone == "timm":
        assert checkpointed.backbone.grad_checkpointing
    for model in (plain, checkpointed):
        model(X, labels=Y).loss.backward()
    ours, ref = checkpointed.generator.rings[0].grad, plain.generator.rings[0].grad
    assert ref.abs().sum() > 0 and torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)
    checkpointed.activation_checkpointing_disable()
    assert not checkpointed.is_activation_checkpointing


@pytest.mark.parametrize("backbone", ["timm", "vit"])
def test_trainer_with_gradient_checkpointing_moves_the_ring(tmp_path, backbone):
    torch.manual_seed(0)
    model = rpg_hf.RPGForImageClassification(_config(backbone))
    before = model.generator.rings[0].detach().clone()
    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % 3} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                             gradient_checkpointing=True, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=data).train()
    assert model.is_activation_checkpointing
    assert not torch.equal(model.generator.rings[0].detach(), before)
