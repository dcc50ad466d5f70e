"""Sharded training: FSDP2 (``rpg_hf.sharding.shard_rpg_model``) and the DeepSpeed ZeRO-3 registration.

The 2-process runs go through ``tests/sharding_worker.py`` in their own interpreter (gloo on the
CPU); the layout checks run in this process on a 1-process gloo group.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import AutoModelForImageClassification

import rpg_hf
from rpg_hf.hf.remote_code import REMOTE_CODE_FILES
from rpg_hf.sharding import (
    check_rpg_sharding,
    default_blocks,
    full_state_dict,
    generated_modules,
    register_rings_for_zero3,
    shard_rpg_model,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import sharding_worker  # noqa: E402


@pytest.fixture
def one_process_group(tmp_path):
    """A 1-process gloo group, torn down after the test (FSDP2 needs a process group even for one rank)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this interpreter")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_default_blocks_are_the_residual_blocks_and_never_hold_the_ring():
    model = sharding_worker.make_model("timm")
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(b)] for b in default_blocks(model)] == [f"backbone.layer{i}.0" for i in range(1, 5)]
    vit = sharding_worker.make_model("vit")
    names = {id(m): n for n, m in vit.named_modules()}
    assert [names[id(b)] for b in default_blocks(vit)] == [f"backbone.vit.layers.{i}" for i in range(2)]


def test_shard_rpg_model_keeps_the_ring_in_the_root_and_trains_like_one_process(one_process_group):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    x, y = sharding_worker.batch()
    reference = sharding_worker.make_model("timm")
    sharding_worker.train(reference, x, y, 2)
    model = shard_rpg_model(sharding_worker.make_model("timm"), mesh=init_device_mesh("cpu", (1,)))
    units = [n for n, m in model.named_modules() if isinstance(m, FSDPModule)]
    assert units == ["", *(f"backbone.layer{i}.0" for i in range(1, 5))]
    sharding_worker.train(model, x, y, 2)
    state, ref = full_state_dict(model), reference.state_dict()
    assert state.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.allclose(state[k].float(), v.float(), atol=1e-6, rtol=0), k


def test_a_unit_of_its_own_for_the_ring_holder_is_refused(one_process_group):
    from torch.distributed.fsdp import fully_shard

    model = sharding_worker.make_model("timm")
    fully_shard(model.generator)  # what Accelerate's auto-wrap does with _no_split_modules = ["RPGGenerator"]
    fully_shard(model)
    with pytest.raises(ValueError, match="unit of its own"):
        check_rpg_sharding(model)


def test_a_ring_split_from_its_readers_is_refused(one_process_group):
    from torch.distributed.fsdp import fully_shard

    model = sharding_worker.make_model("timm")
    fully_shard([model.backbone.layer1, model.generator])  # one unit for layer1 and the ring: layer2-4 read it too
    fully_shard(model)
    with pytest.raises(ValueError, match=r"shares an FSDP unit with \['backbone.layer1'\]"):
        check_rpg_sharding(model)
    model = sharding_worker.make_model("timm")
    fully_shard(model.backbone.layer1)  # and the root left out: the ring would be replicated, never reduced
    with pytest.raises(ValueError, match="in no FSDP unit"):
        check_rpg_sharding(model)
    model = sharding_worker.make_model("timm")
    with pytest.raises(ValueError, match="contains the ring holder"):
        shard_rpg_model(model, blocks=[model.backbone])


def test_unsharded_models_pass_the_check():
    check_rpg_sharding(sharding_worker.make_model("timm"))


def _two_process_run(tmp_path: Path, backbone: str) -> tuple[dict, Path]:
    out = tmp_path / backbone
    subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), "fsdp2", "--world", "2",
                    "--out", str(out), "--steps", "3", "--backbone", backbone], check=True, cwd=ROOT, timeout=600)
    return json.loads((out / "result.json").read_text()), out


def _check_two_process_run(result: dict, out: Path, backbone: str) -> None:
    assert result["keys_equal"]
    assert result["ring_moved"] > 1e-3  # the steps did train the ring
    assert result["ring_diff"] < 1e-6 and result["free_diff"] < 1e-6, result
    # the ring-only folder written from the sharded model loads bit-identically
    folder = out / "model"
    assert {"config.json", "model.safetensors", "README.md", *REMOTE_CODE_FILES} <= {p.name for p in folder.iterdir()}
    gathered = torch.load(out / "gathered.pt")
    loaded = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(loaded) is rpg_hf.RPGForImageClassification
    with safe_open(folder / "model.safetensors", framework="pt") as f:
        assert not any(k.endswith(".weight") and k.replace("backbone.", "", 1).rsplit(".", 1)[0] in
                       {layer["name"] for layer in loaded.config.generated_layers} for k in f.keys())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, gathered[k]), k
    plain = sharding_worker.make_model(backbone)
    plain.load_state_dict(gathered)
    x, _ = sharding_worker.batch()
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, plain.eval()(x).logits)


def test_fsdp2_two_processes_equal_one_process_and_save_ring_only(tmp_path):
    """2 gloo processes, each with half the batch: ring and free tensors after 3 SGD steps equal the
    1-process run; the folder saved from the sharded model loads bit-identically (about 15 s)."""
    result, out = _two_process_run(tmp_path, "timm")
    assert result["units"] == ["<root>", *(f"backbone.layer{i}.0" for i in range(1, 5))]
    _check_two_process_run(result, out, "timm")


@pytest.mark.slow
def test_fsdp2_two_processes_vit(tmp_path):
    result, out = _two_process_run(tmp_path, "vit")
    assert result["units"] == ["<root>", *(f"backbone.vit.layers.{i}" for i in range(2))]
    _check_two_process_run(result, out, "vit")


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3


def test_zero3_registration_makes_every_reader_gather_its_ring():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.partitioned_param_coordinator import iter_params

    model = sharding_worker.make_model("vit")
    readers = generated_modules(model)
    assert register_rings_for_zero3(model) == len(readers) > 0
    assert register_rings_for_zero3(model) == len(readers)  # idempotent: one entry per (module, ring)
    rings = model.generator.rings
    for _, module, _, ring in readers:
        gathered = list(iter_params(module))  # what ZeRO-3 fetches around the module's forward and backward
        assert sum(p is rings[ring] for p in gathered) == 1
        assert module.ds_external_parameters()  # DeepSpeed's own accessor sees it


@pytest.mark.slow
def test_zero3_two_processes_equal_one_process_and_save_ring_only(tmp_path):
    """DeepSpeed ZeRO-3 on 2 CPU processes (gloo): the ring is partitioned between steps, the steps equal the
    1-process run, and save_pretrained_sharded gathers a folder that loads bit-identically."""
    pytest.importorskip("deepspeed")
    out = tmp_path / "zero3"
    subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_worker.py"), "zero3", "--world", "2",
                    "--out", str(out), "--steps", "3"], check=True, cwd=ROOT, timeout=600)
    result = json.loads((out / "result.json").read_text())
    assert result["registered"] == len(generated_modules(sharding_worker.make_model("timm")))
    assert result["ring_numel_between_steps"] == 0  # partitioned like every ZeRO-3 parameter
    _check_two_process_run(result, out, "timm")
