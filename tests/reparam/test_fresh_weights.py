"""Generated weights are never stale: after every way a ring can be written, each generated
``module.weight`` equals a fresh pure-PyTorch expansion of the current ring, bit for bit.

Each test fills the eval cache first (a ``no_grad`` forward), then writes the ring, then checks
both read paths: the cached one (``no_grad``) and the training one (autograd on).
"""

from __future__ import annotations

import copy
import inspect
import os
import socket

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rpg_hf
from rpg_hf.core.reference import generate_layer

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", num_classes=3)
    return rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=3000, seed=seed))


def _reference(model) -> list[torch.Tensor]:
    """Each generated layer from the current ring by the pure-PyTorch reference (no cache, no kernels)."""
    gen = model.rpg
    return [generate_layer(gen.rings[r].detach(), gen.slots[r][i]) for r, i in gen.slot_of]


def _read(model) -> list[torch.Tensor]:
    return [model.get_submodule(layer.name).weight.detach().clone() for layer in model.rpg.layers]


def _fill_cache(model) -> list[torch.Tensor]:
    with torch.no_grad():
        model.eval()(X)
        return _read(model)


def assert_fresh(model) -> None:
    ref = _reference(model)
    with torch.no_grad():
        cached = _read(model)
    with torch.enable_grad():
        trained = _read(model)
    for layer, r, c, t in zip(model.rpg.layers, ref, cached, trained, strict=True):
        assert torch.equal(c, r), f"{layer.name}: cached weight is stale"
        assert torch.equal(t, r), f"{layer.name}: training weight is stale"
    with torch.no_grad():  # and the forward pass uses them: equal to the plain model built from them
        assert torch.equal(model.eval()(X), rpg_hf.expand(model).eval()(X))


def _changed(before: list[torch.Tensor], model) -> bool:
    return all(not torch.equal(b, a) for b, a in zip(before, _read(model), strict=True))


def _step(model, opt) -> None:
    model.train()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(X), torch.tensor([0, 2]))
    loss.backward()
    opt.step()


# --------------------------------------------------------------------------- optimizers


def _optimizer_variants():
    """Every torch.optim class with each of its implementation switches torch accepts on CPU."""
    not_applicable = {
        "LBFGS": "needs a closure; a separate test below",
        "SparseAdam": "sparse gradients only",
        "Muon": "2-D parameters only (the ring is 1-D)",
    }
    out = []
    for name in sorted(n for n in dir(torch.optim) if n[0].isupper()):
        cls = getattr(torch.optim, name)
        if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            continue
        if name in not_applicable:
            continue
        params = inspect.signature(cls).parameters
        variants = [{}]
        variants += [{"foreach": v} for v in (False, True) if "foreach" in params]
        variants += [{"fused": True}] if "fused" in params else []
        variants += [{"capturable": True}] if "capturable" in params else []
        out += [pytest.param(cls, v, id=f"{name}-{'-'.join(f'{k}={x}' for k, x in v.items()) or 'default'}")
                for v in variants]
    return out


@pytest.mark.parametrize(("cls", "kwargs"), _optimizer_variants())
def test_every_optimizer_step_regenerates(cls, kwargs):
    lr = {"Adadelta": 1.0}.get(cls.__name__, 0.05)
    try:  # does torch run this variant on CPU at all?  Asked of a plain nn.Linear, never of the RPG model
        probe = torch.nn.Linear(4, 2)
        probe_opt = cls(probe.parameters(), lr=lr, **kwargs)
        probe(torch.randn(3, 4)).square().sum().backward()
        probe_opt.step()
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        pytest.skip(f"torch refuses {cls.__name__}({kwargs}) on CPU: {err}")
    model = _model()
    opt = cls(model.parameters(), lr=lr, **kwargs)  # whatever the RPG model does from here on is tested
    for _ in range(2):
        before = _fill_cache(model)
        _step(model, opt)
        assert _changed(before, model), "the step did not reach the generated weights"
        assert_fresh(model)


def test_lbfgs_closure_steps_regenerate():
    model = _model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model.train()(X), torch.tensor([0, 2]))
        loss.backward()
        return loss

    before = _fill_cache(model)
    opt.step(closure)
    assert _changed(before, model)
    assert_fresh(model)


def test_fused_adamw_does_not_bump_version_and_still_regenerates():
    """The bug this file exists for: fused kernels write the ring without bumping `_version`."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    before = _fill_cache(model)
    version = model.rpg.rings[0]._version
    _step(model, opt)
    assert model.rpg.rings[0]._version == version  # torch's behaviour that broke the version-keyed cache
    assert _changed(before, model)
    assert_fresh(model)


# --------------------------------------------------------------------------- direct writes


def test_ring_data_assignment():
    model = _model()
    _fill_cache(model)
    model.rpg.rings[0].data = torch.randn(3000, generator=torch.Generator().manual_seed(5))
    assert_fresh(model)


def test_ring_copy_under_no_grad_and_sign_of_zero():
    model = _model()
    _fill_cache(model)
    with torch.no_grad():
        model.rpg.rings[0].copy_(torch.linspace(-1, 1, 3000))
    assert_fresh(model)
    _fill_cache(model)
    with torch.no_grad():  # 0.0 -> -0.0 compares equal as floats; the generated bits still change
        ring = model.rpg.rings[0]
        ring.zero_()
    _fill_cache(model)
    with torch.no_grad():
        ring.neg_()
    assert_fresh(model)
    assert torch.signbit(model.get_submodule(model.rpg.layers[0].name).weight).any()


def test_load_state_dict_of_another_run():
    """The same construction (seed, version, layout), another ring: what a resumed checkpoint is.
    (A state dict of another seed is refused: tests/reparam/test_state_identity.py.)"""
    model, other = _model(0), _model(0)
    with torch.no_grad():
        other.rpg.rings[0].mul_(-1.5).add_(0.01)
    before = _fill_cache(model)
    model.load_state_dict(other.state_dict())
    assert _changed(before, model)
    assert_fresh(model)


def test_dtype_moves():
    """``.double()`` and back (a device move goes through the same ``_apply``; CUDA: benchmarks/gpu_check.sh)."""
    model = _model()
    _fill_cache(model)
    for to, dtype in ((torch.nn.Module.double, torch.float64), (torch.nn.Module.float, torch.float32)):
        to(model)
        assert model.get_submodule(model.rpg.layers[0].name).weight.dtype == dtype
        ref = _reference(model)
        with torch.no_grad():
            assert all(torch.equal(w, r) for w, r in zip(_read(model), ref, strict=True))


def test_timm_model_ema_v3_updates():
    from timm.utils import ModelEmaV3

    model = _model()
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        before = _fill_cache(ema.module)
        _step(model, opt)
        ema.update(model)
        assert _changed(before, ema.module)
        assert_fresh(ema.module)
    assert not torch.equal(ema.module.rpg.rings[0], model.rpg.rings[0])


def test_int8_dequantise_writes_the_ring():
    from rpg_hf.compress.quantization import dequantize_ring, quantize_model_rings

    model = _model()
    before = _fill_cache(model)
    original = model.rpg.rings[0].detach().clone()
    quantized = quantize_model_rings(model)
    with torch.no_grad():
        model.rpg.rings[0].copy_(dequantize_ring(quantized[0]))
    assert not torch.equal(model.rpg.rings[0], original)  # int8 is lossy: the ring did change
    assert _changed(before, model)
    assert_fresh(model)


def test_ring_pruning_mask():
    from rpg_hf.compress.pruning import prune_ring

    model = _model()
    _fill_cache(model)
    mask = prune_ring(model, 0.5)
    assert mask.num_pruned == 1500
    assert_fresh(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    _step(model, opt)
    assert_fresh(model)
    assert (model.rpg.rings[0].detach() == 0).sum() >= 1500


def test_compiled_training_steps():
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    for _ in range(2):
        before = _fill_cache(model)
        compiled.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(compiled(X), torch.tensor([0, 2])).backward()
        opt.step()
        assert _changed(before, model)
        assert_fresh(model)
        with torch.no_grad():
            assert torch.equal(compiled.eval()(X), model.eval()(X))


def test_deepcopy_is_independent():
    model = _model()
    _fill_cache(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        model.rpg.rings[0].mul_(2)
    assert_fresh(model)
    assert_fresh(twin)
    assert not torch.equal(_read(model)[0], _read(twin)[0])


# --------------------------------------------------------------------------- DDP broadcast


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _model(seed=rank)  # rank 1 starts from another ring: DDP's broadcast must reach it
        _fill_cache(model)
        torch.nn.parallel.DistributedDataParallel(model)
        fresh = all(torch.equal(w, r) for w, r in zip(_read(model), _reference(model), strict=True))
        torch.save({"fresh": fresh, "ring": model.rpg.rings[0].detach().clone()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_broadcast_at_wrap_time(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path / "r")), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"r.{i}") for i in (0, 1))
    assert torch.equal(r0["ring"], r1["ring"])  # the broadcast happened
    assert r0["fresh"] and r1["fresh"]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_entry_written_in_a_ring_longer_than_the_layers(where):
    """Reads compare only their layer's window of a large ring: a write anywhere is still seen."""
    torch.manual_seed(0)
    model = rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=3), rpg_hf.RPGSpec(dof=60_000))
    gen = model.rpg
    assert any(s.numel < gen.ring_sizes[0] for s in gen.slots[0])  # windows shorter than the ring
    _fill_cache(model)
    k = {"first": 0, "middle": gen.ring_sizes[0] // 2, "last": gen.ring_sizes[0] - 1}[where]
    with torch.no_grad():
        gen.rings[0][k] += 1.0
    assert_fresh(model)
