"""Every state dict says which construction it needs (``rpg.construction``), and loading checks it.

Plain state dicts (torch, safetensors, timm's checkpoints and EMAs, Accelerate's save_state) and the
ring-only files of ``save_pretrained`` / Trainer carry the identity; a model built another way refuses
them with the field and the value to build with.  A state dict written before they carried it (the
committed fixture, or a ring-only file of that time) still loads into a model built the way it was —
through transformers without re-drawing the loaded ring — in the package and the trust_remote_code
classes alike.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from conftest import break_checkpoint, perturbed
from transformers import AutoModelForImageClassification, ViTConfig

import rpg_hf
from rpg_hf.hf.remote_code import modeling_rpg as remote

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state_dict_v1"
# rpg.test_resnet, 3 classes, dof=2000, seed=3, generator version 2: the identity's format and fingerprint
# are part of every state dict written; a change here makes all of them unreadable
GOLDEN = [1, 2, 0, 3, 1, 1, 210997456652302, 1, 2000]


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("rpg.test_resnet", num_classes=3, **{"dof": 2000, "seed": 3, **kw})


def _trained(**kw):
    model = _model(**kw)
    with torch.no_grad():
        model.rpg.rings[0].mul_(1.5).add_(0.01)
    return model


def _cfg(backbone="timm", **kw):
    if backbone == "vit":
        vit = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8)
        return rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny-test", vit_config=vit, dof=3000, num_labels=3,
                                image_size=32, **kw)
    return rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=3000, num_labels=3, image_size=32, **kw)


def test_the_identity_is_pinned():
    model = _model()
    assert model.rpg.construction.tolist() == GOLDEN
    assert model.state_dict()["rpg.construction"].tolist() == GOLDEN


@pytest.mark.parametrize("field,value,message", [
    ("seed", 4, r"built with seed=3; this model was built with seed=4.*Build the model with seed=3"),
    ("generator_version", 1, r"built with generator_version=2; this model was built with generator_version=1"
                             r".*RPGSpec\(\.\.\., generator_version=2\)"),
    ("permute", False, r"built with permute=True"),
    ("dof", 2500, r"rings have sizes \[2000\], this model's \[2500\]"),
    ("exclude", ("layer1",), r"generated layers differ"),
])
def test_a_state_dict_of_another_construction_is_refused(field, value, message):
    state = _trained().state_dict()
    assert "rpg.construction" in state
    other = _model(**{field: value})
    for strict in (True, False):
        with pytest.raises(ValueError, match=message):
            other.load_state_dict(state, strict=strict)


def test_the_same_construction_loads_through_torch_and_safetensors(tmp_path):
    src = _trained()
    dst = _model()
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.rpg.rings[0], src.rpg.rings[0])
    safetensors.torch.save_model(src, tmp_path / "m.safetensors")
    again = _model()
    safetensors.torch.load_model(again, tmp_path / "m.safetensors")
    assert torch.equal(again.rpg.rings[0], src.rpg.rings[0])
    with pytest.raises(ValueError, match="seed=3"):
        safetensors.torch.load_model(_model(seed=9), tmp_path / "m.safetensors")


def test_timm_checkpoints_and_averaged_copies_carry_it(tmp_path):
    """timm's CheckpointSaver / load_checkpoint / resume_checkpoint, with each of timm's EMAs and SWA's
    AveragedModel: ModelEma and ModelEmaV2 blend every state-dict tensor in floating point (integers
    included), AveragedModel(use_buffers=True) every buffer; the saved identity must survive them."""
    from timm.models import load_checkpoint, resume_checkpoint
    from timm.utils import CheckpointSaver, ModelEma, ModelEmaV2, ModelEmaV3
    from torch.optim.swa_utils import AveragedModel

    model = _trained()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for cls in (ModelEma, ModelEmaV2, ModelEmaV3):
        ema = cls(model, decay=0.9)
        with torch.no_grad():
            model.rpg.rings[0].add_(0.01)
        for _ in range(2):
            ema.update(model)
        out = tmp_path / cls.__name__
        out.mkdir()
        CheckpointSaver(model, optimizer, model_ema=ema, checkpoint_dir=str(out)).save_checkpoint(epoch=0, metric=1.0)
        path = str(out / "checkpoint-0.pth.tar")
        averaged = getattr(ema, "module", None) or ema.ema
        for use_ema, want in ((True, averaged), (False, model)):
            fresh = _model()
            load_checkpoint(fresh, path, use_ema=use_ema)
            assert torch.equal(fresh.rpg.rings[0], want.rpg.rings[0]), (cls.__name__, use_ema)
        assert resume_checkpoint(_model(), path, torch.optim.SGD(_model().parameters(), lr=0.1)) == 1
        with pytest.raises(ValueError, match="built with seed=3; this model was built with seed=4"):
            load_checkpoint(_model(seed=4), path, use_ema=True)
    swa = AveragedModel(model, use_buffers=True)
    for _ in range(2):
        swa.update_parameters(model)
    _model().load_state_dict(swa.module.state_dict())


def test_a_state_dict_written_before_identities_loads_into_the_model_built_the_way_it_was():
    """tests/fixtures/state_dict_v1: a state dict (no rpg.construction) saved by rpg_hf before this change."""
    meta = json.loads((FIXTURE / "expected.json").read_text())
    state = safetensors.torch.load_file(FIXTURE / "test_resnet_dof2000_seed3.safetensors")
    assert "rpg.construction" not in state
    build = {k: v for k, v in meta["build"].items() if k not in ("model", "num_classes")}
    model = timm.create_model(meta["build"]["model"], num_classes=meta["build"]["num_classes"], **build)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    weights = model.rpg.generate_all()
    digest = hashlib.sha256(b"".join(w.contiguous().numpy().astype("<f4").tobytes() for w in weights)).hexdigest()
    assert digest == meta["generated_weights_sha256"]  # bit for bit: the construction of that day
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # logits to float32 rounding (another CPU's convolutions may round differently)
        torch.testing.assert_close(model.eval()(x), torch.tensor(meta["logits"]), rtol=1e-5, atol=1e-6)


def test_ring_only_files_carry_it_and_files_without_it_keep_their_ring(tmp_path):
    """transformers calls ``_init_weights`` on every module with a key missing from the file, and ours
    re-draws the ring from the seed: a file of before (no identity) must still get its own ring, in the
    package's classes, the trust_remote_code classes and timm alike."""
    model = perturbed(rpg_hf.RPGForImageClassification(_cfg(seed=3)))
    model.save_pretrained(tmp_path / "new")
    stored = safetensors.torch.load_file(tmp_path / "new" / "model.safetensors")["backbone.rpg.construction"]
    assert torch.equal(stored, model.generator.construction)
    old = break_checkpoint(tmp_path / "new", tmp_path, "old")
    assert "backbone.rpg.construction" not in safetensors.torch.load_file(old / "model.safetensors")
    for path in (tmp_path / "new", old):
        for cls in (rpg_hf.RPGForImageClassification, remote.RPGForImageClassification):
            loaded, info = cls.from_pretrained(path, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], (path.name, cls)
            assert torch.equal(loaded.generator.rings[0], model.generator.rings[0]), (path.name, cls)  # not re-drawn
            assert torch.equal(loaded.generator.construction, model.generator.construction)  # recomputed
        via_timm = timm.create_model(f"local-dir:{path}", pretrained=True)
        assert torch.equal(via_timm.rpg.rings[0], model.generator.rings[0])
    half = AutoModelForImageClassification.from_pretrained(tmp_path / "new", dtype=torch.bfloat16)
    assert half.generator.rings[0].dtype == torch.bfloat16
    assert torch.equal(half.generator.construction, model.generator.construction)  # an integer: never cast


def test_a_trainer_resume_into_another_construction_is_refused(tmp_path):
    """Trainer resumes by loading ``checkpoint-N/model.safetensors`` into the model it is given, without
    its config.json: the file's identity is what tells a model built with another seed."""
    from transformers import Trainer, TrainingArguments

    def args(steps):
        return TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                                 save_strategy="steps", save_steps=1, report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True)

    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 3} for i in range(2)]
    Trainer(model=rpg_hf.RPGForImageClassification(_cfg(seed=3)), args=args(1), train_dataset=data).train()
    other = Trainer(model=rpg_hf.RPGForImageClassification(_cfg(seed=4)), args=args(2), train_dataset=data)
    with pytest.raises(ValueError, match="built with seed=3; this model was built with seed=4"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


@pytest.mark.parametrize("backbone", ["timm", "vit"])
def test_package_and_remote_models_read_each_others_state_dicts(backbone):
    """The trust_remote_code ring module carries the same identity (identity.py is shipped verbatim)."""
    package = perturbed(rpg_hf.RPGForImageClassification(_cfg(backbone, seed=3)))
    theirs = remote.RPGForImageClassification(package.config)
    assert torch.equal(theirs.generator.construction, package.generator.construction)
    theirs.load_state_dict(package.state_dict())  # strict: the identity is a key of both
    assert torch.equal(theirs.generator.rings[0], package.generator.rings[0])
    back = rpg_hf.RPGForImageClassification(_cfg(backbone, seed=3))
    back.load_state_dict(perturbed(theirs).state_dict())
    assert torch.equal(back.generator.rings[0], theirs.generator.rings[0])
    other = remote.RPGForImageClassification(rpg_hf.RPGForImageClassification(_cfg(backbone, seed=4)).config)
    with pytest.raises(ValueError, match="built with seed=3; this model was built with seed=4"):
        other.load_state_dict(package.state_dict())


def test_accelerate_save_state_carries_and_checks_it(tmp_path):
    from accelerate import Accelerator

    saver = Accelerator(cpu=True)
    model = saver.prepare(_trained())
    saver.save_state(tmp_path / "state")
    loader = Accelerator(cpu=True)
    fresh = loader.prepare(_model())
    loader.load_state(tmp_path / "state")
    assert torch.equal(fresh.rpg.rings[0], model.rpg.rings[0])
    wrong = Accelerator(cpu=True)
    wrong.prepare(_model(seed=11))
    with pytest.raises(ValueError, match="seed=3"):
        wrong.load_state(tmp_path / "state")
