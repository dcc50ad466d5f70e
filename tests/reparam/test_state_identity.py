"""Every state dict says which construction it needs (``rpg.construction``), and loading checks it.

Plain state dicts (torch, safetensors, Accelerate's save_state) carry the identity and are refused by
a model built another way, with the field and the value to build with; a state dict written before
they carried it (the committed fixture) still loads into a model built the way it was; ring-only
checkpoint files leave it out (config.json says the same) and load as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import rpg_hf

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state_dict_v1"


def _model(**kw):
    torch.manual_seed(0)
    return timm.create_model("rpg.test_resnet", num_classes=3, **{"dof": 2000, "seed": 3, **kw})


def _trained(**kw):
    model = _model(**kw)
    with torch.no_grad():
        model.rpg.rings[0].mul_(1.5).add_(0.01)
    return model


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


def test_ring_only_files_leave_it_out_and_still_load(tmp_path):
    cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=3000, num_labels=3, image_size=32)
    model = rpg_hf.RPGForImageClassification(cfg)
    with torch.no_grad():
        model.generator.rings[0].mul_(1.5).add_(0.01)
    model.save_pretrained(tmp_path)
    assert not [k for k in safetensors.torch.load_file(tmp_path / "model.safetensors") if "construction" in k]
    loaded, info = rpg_hf.RPGForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert torch.equal(loaded.generator.rings[0], model.generator.rings[0])  # kept, not re-drawn from the seed
    assert torch.equal(loaded.generator.construction, model.generator.construction)  # recomputed


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
