"""timm loads ring-only checkpoints: ``local-dir:`` and offline ``hf-hub:`` (real Hub cache layout).

No mocks: timm reads config.json / model.safetensors itself, huggingface_hub resolves ``org/name``
from a cache laid out exactly as a download leaves it (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import break_checkpoint, lay_out_hub_cache, perturbed
from huggingface_hub import constants
from timm.data import resolve_data_config
from timm.models import PretrainedCfg, adapt_input_conv
from transformers import AutoModelForImageClassification, ViTConfig

import rpg_hf
from rpg_hf.hf.checkpoint import CheckpointError

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _cfg(arch="test_resnet", dof=2000, **kw):
    return rpg_hf.RPGConfig(backbone="timm", architecture=arch, dof=dof, num_labels=3, seed=1, image_size=32,
                            id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kw)


def _x(n=2, chans=3):
    return torch.randn(n, chans, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = rpg_hf.RPGForImageClassification(_cfg()).eval()
    with torch.no_grad():
        model.generator.rings[0].mul_(1.25)  # not the seeded init: a load must really read the ring
    path = tmp_path_factory.mktemp("timm") / "test-resnet-rpg"
    model.save_pretrained(path)
    loaded = AutoModelForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        logits = loaded(_x()).logits
    return path, loaded, logits




def test_config_json_speaks_timm_and_transformers(saved):
    path, loaded, _ = saved
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "rpg" and cfg["architecture"] == "rpg.test_resnet" and cfg["model_args"] == {}
    PretrainedCfg(**cfg["pretrained_cfg"])  # only fields timm knows
    assert cfg["pretrained_cfg"]["num_classes"] == 3 and cfg["pretrained_cfg"]["label_names"] == list(LABELS.values())
    assert loaded.config.architecture == "test_resnet"  # the prefix is timm's, the config keeps the backbone name


def test_local_dir_equals_transformers_load(saved):
    path, loaded, logits = saved
    model = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    assert type(model) is type(loaded.backbone) and rpg_hf.get_generator(model).ring_sizes == [2000]
    assert torch.equal(model.rpg.rings[0], loaded.generator.rings[0])
    with torch.no_grad():
        assert torch.equal(model(_x()), logits)
    data = resolve_data_config(model=model)
    assert data["input_size"] == (3, 32, 32) and data["crop_pct"] == pytest.approx(0.875)
    assert model.pretrained_cfg["source"] == "local-dir" and model.pretrained_cfg["label_names"] == list(LABELS.values())
    assert not model.pretrained_cfg.get("hf_hub_id")  # not the base architecture's weights


def test_offline_hf_hub_equals_transformers_load(saved, tmp_path, monkeypatch):
    path, _, logits = saved
    revision = lay_out_hub_cache(tmp_path / "hub", "org/test-resnet-rpg", path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert constants.HF_HUB_OFFLINE
    for name in ("hf-hub:org/test-resnet-rpg", f"hf-hub:org/test-resnet-rpg@{revision}"):
        model = timm.create_model(name, pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(model(_x()), logits), name
        assert model.pretrained_cfg["hf_hub_id"].startswith("org/test-resnet-rpg")
    via_transformers = AutoModelForImageClassification.from_pretrained("org/test-resnet-rpg").eval()
    with torch.no_grad():
        assert torch.equal(via_transformers(_x()).logits, logits)


def test_new_num_classes_reinitialises_the_head_like_timm(saved):
    path, loaded, _ = saved
    model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=5).eval()
    ref = timm.create_model(f"local-dir:{path}", pretrained=True).eval()
    assert model.fc.out_features == 5 and model.pretrained_cfg["num_classes"] == 5
    assert "label_names" not in model.pretrained_cfg
    with torch.no_grad():
        assert torch.equal(model.forward_features(_x()), ref.forward_features(_x()))
    torch.manual_seed(0)  # timm keeps the new head's constructor init: what a fresh model of 5 classes has
    fresh_head = timm.create_model("test_resnet", num_classes=5).fc
    torch.manual_seed(0)
    again = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=5)
    assert torch.equal(again.fc.weight, fresh_head.weight) and torch.equal(again.fc.bias, fresh_head.bias)
    features = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0).eval()
    with torch.no_grad():
        assert torch.equal(features(_x()), ref.forward_head(ref.forward_features(_x()), pre_logits=True))


def test_new_in_chans_adapts_the_free_stem_like_timm(saved):
    path, loaded, _ = saved
    model = timm.create_model(f"local-dir:{path}", pretrained=True, in_chans=1).eval()
    stem = loaded.backbone.conv1[0].weight
    assert torch.equal(model.conv1[0].weight, adapt_input_conv(1, stem.clone(), base_chans=3))
    assert model(_x(chans=1)).shape == (2, 3)


def test_pretrained_false_builds_the_checkpoint_architecture_with_a_fresh_ring(saved):
    path, loaded, _ = saved
    model = timm.create_model(f"local-dir:{path}", pretrained=False)
    fresh = rpg_hf.RPGForImageClassification(loaded.config)
    assert torch.equal(model.rpg.rings[0], fresh.generator.rings[0])
    assert not torch.equal(model.rpg.rings[0], loaded.generator.rings[0])
    assert [layer.name for layer in model.rpg.layers] == [d["name"] for d in loaded.config.generated_layers]


def test_rpg_entrypoint_with_a_located_checkpoint(saved, tmp_path):
    # the rpg_<arch> entrypoints load a checkpoint their pretrained cfg names (file= / hf_hub_id=)
    model = perturbed(rpg_hf.RPGForImageClassification(_cfg("resnet18", 5000))).eval()
    model.save_pretrained(tmp_path / "r18")
    loaded = timm.create_model("rpg_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "r18")))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(_x()), model(_x()).logits)
    with pytest.raises(ValueError, match="holds an RPG resnet18, not resnet34"):
        timm.create_model("rpg_resnet34", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "r18")))
    with pytest.raises(ValueError, match="no pretrained timm weights"):
        timm.create_model("rpg_resnet18", pretrained=True)


def test_rpg_dot_architecture_is_any_timm_backbone():
    model = timm.create_model("rpg.test_resnet", dof=300, seed=4, num_classes=2)
    assert model.rpg.spec.dof == 300 and model.rpg.spec.seed == 4 and model.fc.out_features == 2
    with pytest.raises(ValueError, match="no pretrained timm weights"):
        timm.create_model("rpg.test_resnet", pretrained=True, dof=300)


# ------------------------------------------------------------------ the same errors as from_pretrained




@pytest.mark.parametrize("how,error,match", [
    ("dof", CheckpointError, "has 2000 entries, but the config says dof=3000"),
    ("version", ValueError, "unknown RPG generator_version 99"),
    ("missing", CheckpointError, "has no ring tensor 'backbone.rpg.rings.0'"),
    ("inf", CheckpointError, "holds 1 NaN/Inf value"),
    ("free", CheckpointError, r"architecture mismatch.*fc\.weight"),
])
def test_bad_checkpoints_fail_as_in_from_pretrained(saved, tmp_path, how, error, match):
    bad = break_checkpoint(saved[0], tmp_path, how)
    with pytest.raises(error, match=match) as via_timm:
        timm.create_model(f"local-dir:{bad}", pretrained=True)
    with pytest.raises(error, match=match) as via_transformers:
        AutoModelForImageClassification.from_pretrained(bad)
    if how != "free":  # timm names the timm model's keys (fc.weight), transformers the wrapper's
        assert str(via_timm.value) == str(via_transformers.value)


def test_vit_checkpoint_and_missing_weights_through_timm(tmp_path):
    vc = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8)
    cfg = rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny", vit_config=vc, dof=1000, num_labels=3)
    rpg_hf.RPGForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="transformers vit backbone, not a timm model"):
        timm.create_model(f"local-dir:{tmp_path / 'vit'}", pretrained=True)
    (tmp_path / "vit" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        timm.create_model(f"local-dir:{tmp_path / 'vit'}", pretrained=True)


def test_dof_kwarg_cannot_change_a_checkpoint(saved):
    with pytest.raises(ValueError, match="dof=2000 is fixed by the checkpoint"):
        timm.create_model(f"local-dir:{saved[0]}", pretrained=True, dof=5000)


def test_every_spec_kwarg_is_checked_against_the_checkpoint(saved, tmp_path):
    path = saved[0]
    # the checkpoint's own values (a list for the tuple, None for the default) are accepted
    model = timm.create_model(f"local-dir:{path}", pretrained=True, seed=1, scope="global", include=None,
                              target_types=["Conv1d", "Conv2d", "Conv3d", "Linear"], exclude_head=True)
    assert rpg_hf.get_generator(model).spec.seed == 1
    for key, value in [("exclude_head", False), ("include", ["layer1"]), ("permute", False), ("linear_std", 0.1)]:
        with pytest.raises(ValueError, match=f"{key}=.* is fixed by the checkpoint"):
            timm.create_model(f"local-dir:{path}", pretrained=True, **{key: value})
    # so does the rpg_<arch> entrypoint's pretrained=True (it used to drop them silently)
    rpg_hf.RPGForImageClassification(_cfg("resnet18", dof=3000)).save_pretrained(tmp_path / "r18")
    with pytest.raises(ValueError, match="dof=3000 is fixed by the checkpoint"):
        timm.create_model("rpg_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "r18")),
                          dof=5000)
