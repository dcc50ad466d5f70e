"""transformers / timm / huggingface_hub integration: offline, CPU, real resolution code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import timm
import torch
from conftest import lay_out_hub_cache, perturbed
from huggingface_hub import constants
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    pipeline,
)

import rpg_hf
from rpg_hf.hf.checkpoint import CheckpointError
from rpg_hf.hf.remote_code import REMOTE_CODE_FILES
from rpg_hf.hf.remote_code import configuration_rpg as remote_cfg
from rpg_hf.hf.remote_code import modeling_rpg as remote

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def _cfg(arch="resnet18", dof=5000, **kw):
    return rpg_hf.RPGConfig(backbone="timm", architecture=arch, dof=dof, num_labels=3, seed=0, image_size=64,
                            id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kw)


def _vit_cfg(dof=3000):
    vc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8)
    return rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny-test", vit_config=vc, dof=dof, num_labels=3,
                            image_size=32, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})


@pytest.fixture(scope="module")
def saved_resnet(tmp_path_factory):
    model = perturbed(rpg_hf.RPGForImageClassification(_cfg())).eval()
    path = tmp_path_factory.mktemp("ckpt") / "resnet18-rpg-5k"
    model.save_pretrained(path)
    return model, path


def _x(size=64, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def test_round_trip_is_bit_identical_and_file_is_ring_only(saved_resnet):
    model, path = saved_resnet
    assert sorted(os.listdir(path)) == sorted(["README.md", "config.json", "model.safetensors",
                                               "preprocessor_config.json", *REMOTE_CODE_FILES])
    loaded = AutoModelForImageClassification.from_pretrained(path).eval()
    assert type(loaded) is rpg_hf.RPGForImageClassification
    assert torch.equal(_logits(model, _x()), _logits(loaded, _x()))
    generated = {f"backbone.{layer['name']}.weight" for layer in model.config.generated_layers}
    with safe_open(path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys)
    assert keys == set(model.state_dict())  # the construction's identity (backbone.rpg.construction) included
    assert not keys & generated and "backbone.rpg.rings.0" in keys
    table = rpg_hf.dof_table(model.backbone)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert nbytes == 4 * (table.dof + table.free_params) + buffers
    assert nbytes < 4 * table.original_params / 50  # resnet18 at 5K DoF: a tiny fraction of the plain model


def test_config_records_layer_order_and_generator(saved_resnet):
    _, path = saved_resnet
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "rpg" and cfg["generator_version"] == rpg_hf.GENERATOR_VERSION
    assert cfg["dof"] == 5000 and cfg["ring_sizes"] == [5000] and cfg["seed"] == 0
    assert cfg["generated_layers"][0] == {"name": "layer1.0.conv1", "shape": [64, 64, 3, 3], "ring": 0,
                                         "multiplier": pytest.approx(2.828427, rel=1e-6)}
    # timm reads architecture / model_args / pretrained_cfg (tests/timm_models/test_timm_hub.py); model_type keeps
    # transformers off timm_wrapper, image_processor_type keeps AutoImageProcessor on preprocessor_config.json
    assert cfg["architecture"] == "rpg.resnet18" and cfg["pretrained_cfg"]["num_classes"] == 3
    assert cfg["image_processor_type"] == "BitImageProcessor"
    assert isinstance(AutoConfig.from_pretrained(path), rpg_hf.RPGConfig)




def test_offline_hub_repo_id_auto_model_and_pipeline(tmp_path, monkeypatch):
    model = perturbed(rpg_hf.RPGForImageClassification(_cfg("resnet34", 45_000))).eval()
    folder = tmp_path / "folder"
    model.save_pretrained(folder)
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/resnet34-rpg-45k", folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert constants.HF_HUB_OFFLINE
    loaded = AutoModelForImageClassification.from_pretrained("org/resnet34-rpg-45k").eval()
    assert torch.equal(_logits(model, _x()), _logits(loaded, _x()))
    assert loaded.num_dof() == 45_000
    processor = AutoImageProcessor.from_pretrained("org/resnet34-rpg-45k")
    assert processor.crop_size == {"height": 64, "width": 64}
    clf = pipeline("image-classification", model="org/resnet34-rpg-45k")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8))
    out = clf(image)
    assert {o["label"] for o in out} == set(LABELS.values())
    assert sum(o["score"] for o in out) == pytest.approx(1.0, abs=1e-4)


def test_push_to_hub_uploads_ring_only_folder_and_card(saved_resnet, tmp_path):
    model, path = saved_resnet
    captured = {}

    def create_commit(self, repo_id, operations, **kw):
        captured["repo_id"], captured["kw"] = repo_id, kw
        captured["files"] = {op.path_in_repo: os.path.getsize(op.path_or_fileobj) for op in operations}
        captured["card"] = Path(next(op.path_or_fileobj for op in operations if op.path_in_repo == "README.md")).read_text()
        return mock.MagicMock(commit_url="https://hub/commit/1")

    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, \
            mock.patch("huggingface_hub.HfApi.create_branch") as create_branch, \
            mock.patch("huggingface_hub.HfApi.create_commit", create_commit):
        create_repo.return_value = mock.MagicMock(repo_id="org/resnet18-rpg-5k")
        model.push_to_hub("org/resnet18-rpg-5k", private=True, revision="v1", commit_message="ring only")
    create_repo.assert_called_once()
    assert create_repo.call_args.kwargs["private"] is True
    assert create_branch.call_args.kwargs["branch"] == "v1"
    assert captured["kw"]["revision"] == "v1" and captured["kw"]["commit_message"] == "ring only"
    assert set(captured["files"]) == {"config.json", "model.safetensors", "preprocessor_config.json", "README.md",
                                      *REMOTE_CODE_FILES}
    for name in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert captured["files"][name] == (path / name).stat().st_size
    card = captured["card"]
    assert "5,000" in card or "5000" in card
    assert "Recurrent Parameter Generators" in card and "org/resnet18-rpg-5k" in card
    with pytest.raises(TypeError):
        model.push_to_hub("org/x", "positional message")  # keyword-only like transformers 5


def test_trainer_with_default_optimizer_regenerates_every_step(tmp_path):
    """Trainer's default optimizer (fused AdamW) writes the ring without bumping its version."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from rpg_hf.core.reference import generate_layer

    model = rpg_hf.RPGForImageClassification(_cfg("test_resnet", 2000))
    gen, name = model.generator, model.generator.layers[0].name
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            with torch.no_grad():
                weight = model.backbone.get_submodule(name).weight.clone()
            assert torch.equal(weight, generate_layer(gen.rings[0].detach(), gen.slots[0][0]))
            seen.append(weight)

    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % 3} for i in range(4)]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4,
                             learning_rate=0.01, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, logging_steps=1, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[Watch()])
    assert trainer.args.optim == "adamw_torch_fused"
    trainer.train()
    assert len(seen) == 8
    assert all(not torch.equal(a, b) for a, b in zip(seen, seen[1:], strict=False))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0], losses


def _tiny(num_labels: int, remote_code: bool = False):
    torch.manual_seed(0)
    model = rpg_hf.RPGForImageClassification(rpg_hf.RPGConfig(
        backbone="timm", architecture="test_resnet", dof=2000, num_labels=num_labels, image_size=32))
    if remote_code:  # the trust_remote_code class, from the same (recorded) config
        model = remote.RPGForImageClassification(remote_cfg.RPGConfig.from_dict(model.config.to_dict()))
    return model.eval()


@pytest.mark.parametrize("remote_code", [False, True], ids=["package", "remote_code"])
def test_loss_is_transformers_image_classification_loss(remote_code):
    """``config.problem_type`` picks the loss as in every transformers image classifier (and is
    inferred from the labels when unset); -100 labels are ignored; Trainer's num_items_in_batch
    (gradient accumulation) divides the summed loss."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    F = torch.nn.functional
    x = _x(32, 4)
    single = _tiny(3, remote_code)
    assert single.loss_function is LOSS_MAPPING["ForImageClassification"]
    labels = torch.tensor([0, 2, -100, 1])
    out = single(x, labels=labels)
    assert single.config.problem_type == "single_label_classification"
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    loss, logits = single(x, labels=labels, return_dict=False)
    assert torch.equal(loss, out.loss) and torch.equal(logits, out.logits)
    summed = single(x, labels=labels, num_items_in_batch=6).loss
    assert torch.allclose(summed, F.cross_entropy(out.logits, labels, reduction="sum") / 6)

    multi = _tiny(3, remote_code)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = multi(x, labels=targets)  # float labels over several classes: multi-label
    assert multi.config.problem_type == "multi_label_classification"
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))

    regression = _tiny(1, remote_code)
    values = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(x, labels=values)
    assert regression.config.problem_type == "regression"
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), values))

    chosen = _tiny(3, remote_code)
    chosen.config.problem_type = "regression"  # an explicit problem_type wins over the labels' dtype
    out = chosen(x, labels=targets)
    assert torch.allclose(out.loss, F.mse_loss(out.logits, targets))


def test_vit_backbone_round_trip_processor_and_export(tmp_path):
    model = perturbed(rpg_hf.RPGForImageClassification(_vit_cfg())).eval()
    assert any(layer["name"].endswith("q_proj") for layer in model.config.generated_layers)
    model.save_pretrained(tmp_path / "vit")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vit").eval()
    x = _x(32)
    assert torch.equal(_logits(model, x), _logits(loaded, x))
    plain = loaded.expand()
    assert type(plain) is ViTForImageClassification and plain.config.id2label == LABELS
    rpg_hf.save_expanded(loaded, tmp_path / "vit-plain")
    reloaded = ViTForImageClassification.from_pretrained(tmp_path / "vit-plain").eval()
    assert torch.equal(_logits(model, x), _logits(reloaded, x))
    assert AutoImageProcessor.from_pretrained(tmp_path / "vit-plain").crop_size["height"] == 32


def test_timm_export_loads_with_local_dir(saved_resnet, tmp_path):
    model, _ = saved_resnet
    rpg_hf.save_expanded(model, tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").exists()
    assert not (tmp_path / "plain" / "pytorch_model.bin").exists()
    plain = timm.create_model(f"local-dir:{tmp_path / 'plain'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(plain(_x()), _logits(model, _x()))
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["label_names"] == list(LABELS.values())


def test_timm_entrypoints():
    names = timm.list_models("rpg_*")
    assert {"rpg_resnet18", "rpg_resnet34", "rpg_resnet50"} <= set(names)
    m = timm.create_model("rpg_resnet18", dof=3000, seed=2, num_classes=5)
    assert m.rpg.spec.dof == 3000 and m.rpg.spec.seed == 2 and m.fc.out_features == 5
    assert sum(p.numel() for p in m.rpg.parameters()) == 3000
    with pytest.raises(ValueError, match="no pretrained timm weights"):
        timm.create_model("rpg_resnet18", pretrained=True)


# bf16 logits of the resnet18 below vs its float32 logits, as a fraction of max |logit| (measured ~0.01)
BF16_LOGIT_TOL = 0.05


def test_dtype_and_device_map(saved_resnet):
    model, path = saved_resnet
    bf16 = AutoModelForImageClassification.from_pretrained(path, dtype=torch.bfloat16).eval()
    assert bf16.generator.rings[0].dtype == torch.bfloat16
    w16, w32 = bf16.backbone.layer1[0].conv1.weight, model.backbone.layer1[0].conv1.weight
    assert w16.dtype == torch.bfloat16
    # generated from the bf16 ring: two bf16 roundings (ring, product) of the float32 weight at most
    assert bool(((w16.float() - w32).abs() <= (2**-7 + 2**-15) * w32.abs()).all())
    x = _x()
    out16 = _logits(bf16, x.bfloat16())
    assert out16.dtype == torch.bfloat16
    # bit-identical to the same float32 model cast to bf16, and to its bf16 expansion
    cast = rpg_hf.RPGForImageClassification(model.config).eval()
    cast.load_state_dict(model.state_dict())
    assert torch.equal(out16, _logits(cast.to(torch.bfloat16), x.bfloat16()))
    with torch.no_grad():
        assert torch.equal(out16, bf16.expand().eval()(x.bfloat16()))
    # and within bf16 precision of the float32 logits
    out32 = _logits(model, x)
    assert (out16.float() - out32).abs().max() <= BF16_LOGIT_TOL * out32.abs().max()
    cpu = AutoModelForImageClassification.from_pretrained(path, device_map="cpu").eval()
    assert torch.equal(_logits(model, _x()), _logits(cpu, _x()))


# ------------------------------------------------------------------ errors that name the problem


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_unknown_generator_version(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    _edit_config(path, generator_version=99)
    with pytest.raises(ValueError, match="unknown RPG generator_version 99"):
        AutoModelForImageClassification.from_pretrained(path)


def test_dof_disagrees_with_ring(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    _edit_config(path, dof=6000, ring_sizes=[6000])
    with pytest.raises(CheckpointError, match="has 5000 entries, but the config says dof=6000"):
        AutoModelForImageClassification.from_pretrained(path)


def _rewrite_weights(path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_ring(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    _rewrite_weights(path, lambda t: t.pop("backbone.rpg.rings.0"))
    with pytest.raises(CheckpointError, match="has no ring tensor 'backbone.rpg.rings.0'"):
        AutoModelForImageClassification.from_pretrained(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_ring(saved_resnet, tmp_path, value):
    path = _copy(saved_resnet[1], tmp_path)
    _rewrite_weights(path, lambda t: t["backbone.rpg.rings.0"].__setitem__(7, value))
    with pytest.raises(CheckpointError, match="holds 1 NaN/Inf value"):
        AutoModelForImageClassification.from_pretrained(path)


def test_missing_free_tensor_is_an_architecture_mismatch(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    _rewrite_weights(path, lambda t: t.pop("backbone.fc.weight"))
    with pytest.raises(CheckpointError, match="does not match the architecture.*backbone.fc.weight"):
        AutoModelForImageClassification.from_pretrained(path)


def test_recorded_layers_that_do_not_fit_the_architecture(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    _edit_config(path, architecture="resnet34")
    with pytest.raises(ValueError, match="architecture mismatch"):
        AutoModelForImageClassification.from_pretrained(path)


def test_unknown_timm_architecture():
    with pytest.raises(ValueError, match="unknown timm architecture 'resnet_nope'"):
        rpg_hf.RPGForImageClassification(_cfg("resnet_nope"))


def test_truncated_weights(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        AutoModelForImageClassification.from_pretrained(path)


def test_non_safetensors_weights_are_never_unpickled(saved_resnet, tmp_path):
    path = _copy(saved_resnet[1], tmp_path)
    torch.save({"x": torch.zeros(3)}, path / "model.safetensors")  # a pickle under the safetensors name
    with mock.patch("pickle.load", side_effect=AssertionError("unpickled")), \
            mock.patch("torch.load", side_effect=AssertionError("torch.load called")):
        with pytest.raises(CheckpointError, match="not a safetensors file"):
            AutoModelForImageClassification.from_pretrained(path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        AutoModelForImageClassification.from_pretrained(path)
    with pytest.raises(ValueError, match="safetensors only"):
        AutoModelForImageClassification.from_pretrained(path, use_safetensors=False)


def test_int8_ring_checkpoint(saved_resnet, tmp_path):
    model, path = saved_resnet
    ring32 = (path / "model.safetensors").stat().st_size
    model.config.ring_dtype = "int8"
    try:
        model.save_pretrained(tmp_path / "int8")
    finally:
        model.config.ring_dtype = "float32"
    with safe_open(tmp_path / "int8" / "model.safetensors", framework="pt") as f:
        ring = f.get_tensor("backbone.rpg.rings.0")
        assert ring.dtype == torch.int8 and ring.numel() == 5000
    # the ring's 20 KB shrink to 5 KB; the free tensors (stem, BN, head) stay float32
    assert ring32 - (tmp_path / "int8" / "model.safetensors").stat().st_size >= 3 * 5000 - 300  # header: 2 keys more
    a = AutoModelForImageClassification.from_pretrained(tmp_path / "int8").eval()
    b = AutoModelForImageClassification.from_pretrained(tmp_path / "int8").eval()
    assert a.config.ring_dtype == "int8"
    assert torch.equal(a.generator.rings[0], b.generator.rings[0])  # same dequantized ring every load
    assert torch.equal(_logits(a, _x()), _logits(b, _x()))
    err = (a.generator.rings[0] - model.generator.rings[0]).abs().max()
    assert 0 < err <= model.generator.rings[0].abs().max() / 127 / 2 + 1e-7


def test_cifar_resnets_are_registered_model_options():
    m = timm.create_model("cifar_resnet18", in_chans=1, num_classes=10, channels=(8, 16, 32, 64))
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert "cifar_resnet34" in timm.list_models("cifar_*")
