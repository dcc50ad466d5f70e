"""Fused generation kernels (issue 6) against the pure-PyTorch reference of ``rpg_hf.core.reference``.

* CPU C kernels: forward bit for bit, backward to float32 rounding, fallback without a compiler.
* Triton kernels under ``TRITON_INTERPRET=1``: a private copy of ``rpg_hf.ops.triton_ring`` is
  loaded with the interpreter switched on only while its kernels are defined, so no other test
  module sees the interpreter.  Shapes are small: the interpreter runs numpy per program.
* Dispatch (``RPG_HF_BACKEND``) and the ``torch.compile`` path (custom op, no graph break).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import rpg_hf
from rpg_hf import ops as kernels
from rpg_hf.core.reference import LayerSlot, fold_window, generate_layer, window_grad
from rpg_hf.ops import cpu, expand_ring
from rpg_hf.ops import dispatch as ops
from rpg_hf.ops.plan import get_plan


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch):
    """These tests choose backends themselves: ignore an RPG_HF_BACKEND set for the whole run."""
    monkeypatch.delenv("RPG_HF_BACKEND", raising=False)


def _slots(shapes, seed=3, flags=None, start=0, gap=0, version=1):
    """Layers laid end to end (``gap`` leaves holes: starts need not be contiguous)."""
    out = []
    for i, shape in enumerate(shapes):
        permute, sign = flags[i] if flags else (True, True)
        s = LayerSlot(i, shape, start, 0.37 + 0.5 * i, seed=seed, permute=permute, sign_flip=sign, version=version)
        out.append(s)
        start += s.numel + gap
    return out


# a layer smaller than the ring, one wrapping it several times, non powers of two, n=1, a 1x1 grid,
# and the permutation / sign switches off
CASES = {
    "mixed": (97, [(5, 3, 3), (700,), (1,), (33, 7), (2, 2), (1, 1)],
              [(True, True), (True, True), (True, True), (False, True), (True, False), (False, False)]),
    "large_ring": (5000, [(64, 3, 3, 3), (17, 19), (300,)], None),
    "tiny_ring": (1, [(3, 5), (7,)], None),
    "walks": (1009, [(1_000_003 // 997,), (65_537,), (4097, 3)], None),  # a*b - n large: cycle walking
    # version 2's edges: fewer than one / two full blocks, a tail, 4097 blocks (cycle walking), a ring
    # shorter than a block
    "blocks": (1009, [(31,), (32,), (33,), (64, 2), (65,), (4097 * 32 + 5,), (20, 9, 3, 3)], None),
    "blocks_tiny_ring": (7, [(70,), (3, 33)], [(True, True), (True, False)]),
    "blocks_small": (211, [(31,), (33,), (64, 2), (70, 33), (5, 3, 3, 3)], None),  # for the (slow) interpreter
}
VERSIONS = pytest.mark.parametrize("version", [1, 2])


def _reference_grad(slots, grads, ring_size):
    rg = torch.zeros(ring_size, dtype=torch.float32)
    for s, g in zip(slots, grads, strict=True):
        if g is not None:
            fold_window(rg, window_grad(g, s), s.start)
    return rg


def _assert_grad_close(ours, ref):
    scale = ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(ours.double() / scale, ref.double() / scale, rtol=0, atol=2e-6)


# --------------------------------------------------------------------------- CPU C kernels

needs_cpu = pytest.mark.skipif(not cpu.available(), reason=f"C kernels unavailable: {cpu.error()}")


@needs_cpu
@VERSIONS
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_forward_bit_identical(case, dtype, version):
    ring_size, shapes, flags = CASES[case]
    slots = _slots(shapes, flags=flags, gap=13, version=version)
    ring = torch.randn(ring_size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    plan = get_plan(slots, ring_size)
    outs = cpu.forward(ring, plan)
    for s, o in zip(slots, outs, strict=True):
        ref = generate_layer(ring, s)
        assert o.shape == ref.shape and o.dtype == dtype and o.is_contiguous()
        bits = torch.int64 if dtype == torch.float64 else torch.int32
        assert torch.equal(o.view(-1).view(bits), ref.view(-1).view(bits))
    # direct output dtype (e.g. the autocast dtype) equals converting the reference
    low = cpu.forward(ring, plan, torch.bfloat16)
    assert all(torch.equal(o, generate_layer(ring, s, torch.bfloat16)) for s, o in zip(slots, low, strict=True))


@needs_cpu
@VERSIONS
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_backward_matches_reference(case, threads, version):
    ring_size, shapes, flags = CASES[case]
    slots = _slots(shapes, flags=flags, gap=5, version=version)
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(s.shape, generator=gen) for s in slots]
    grads[len(grads) // 2] = None  # a layer without gradient is skipped
    plan = get_plan(slots, ring_size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = cpu.backward(grads, plan, torch.float32)
        again = cpu.backward(grads, plan, torch.float32)
    finally:
        torch.set_num_threads(before)
    _assert_grad_close(ours, _reference_grad(slots, grads, ring_size))
    assert torch.equal(ours, again)  # deterministic for a given thread count


@needs_cpu
def test_cpu_backward_accepts_non_contiguous_and_low_precision_grads():
    slots = _slots([(8, 4, 3, 3), (10, 6)])
    plan = get_plan(slots, 211)
    g0 = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    g1 = torch.randn(6, 10).t()
    ref = _reference_grad(slots, [g0, g1], 211)
    _assert_grad_close(cpu.backward([g0, g1], plan, torch.float32), ref)
    half = cpu.backward([g0.bfloat16(), g1.bfloat16()], plan, torch.float32)
    _assert_grad_close(half, _reference_grad(slots, [g0.bfloat16(), g1.bfloat16()], 211))


def test_bfloat16_ring_goes_to_the_reference_and_matches_it():
    """No kernel takes a bf16 ring: dispatch picks the reference, whose weights and gradient it must give."""
    slots = tuple(_slots([(6, 4, 3, 3), (50,)]))
    ring = torch.randn(97, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_()
    assert kernels.select_backend(ring.detach(), get_plan(slots, 97)) == "torch"
    outs = expand_ring(ring, slots)
    for s, o in zip(slots, outs, strict=True):
        assert o.dtype == torch.bfloat16 and torch.equal(o, generate_layer(ring.detach(), s))
    grads = [torch.randn(s.shape, generator=torch.Generator().manual_seed(5)).bfloat16() for s in slots]
    torch.autograd.backward(outs, grads)
    ref = _reference_grad(slots, grads, 97).bfloat16()
    assert ring.grad.dtype == torch.bfloat16 and torch.equal(ring.grad, ref)


@needs_cpu
def test_fused_node_gradcheck_float64():
    slots = tuple(_slots([(3, 2, 2), (5,), (2, 3)]))
    ring = torch.randn(7, dtype=torch.float64, requires_grad=True)
    outs = expand_ring(ring, slots)
    assert type(outs[0].grad_fn).__name__.startswith("_LayerWeight")
    assert torch.autograd.gradcheck(lambda r: expand_ring(r, slots), (ring,))


@needs_cpu
def test_auto_backend_is_cpu_and_reference_is_forceable(monkeypatch):
    slots = _slots([(4, 3, 3, 3), (50,)])
    ring = torch.randn(61, requires_grad=True)
    plan = get_plan(slots, 61)
    assert kernels.select_backend(ring, plan) == "cpu"
    fast = expand_ring(ring, slots)
    monkeypatch.setenv("RPG_HF_BACKEND", "torch")
    assert kernels.select_backend(ring, plan) == "torch"
    ref = expand_ring(ring, slots)
    assert all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True))
    monkeypatch.setenv("RPG_HF_BACKEND", "cuda")
    with pytest.raises(ValueError, match="RPG_HF_BACKEND"):
        expand_ring(ring, slots)
    monkeypatch.setenv("RPG_HF_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton cannot run here"):
        expand_ring(ring, slots)


def test_cpu_fallback_without_compiler(monkeypatch, tmp_path):
    saved = (cpu._lib, cpu._tried, cpu._error)
    monkeypatch.setenv("RPG_HF_CPU_CC", "no-such-compiler-rpg")
    monkeypatch.setenv("RPG_HF_CACHE_DIR", str(tmp_path))
    cpu._lib, cpu._tried, cpu._error = None, False, None
    try:
        with pytest.warns(RuntimeWarning, match="pure-PyTorch path"):
            assert not cpu.available()
        slots = _slots([(6, 5)])
        ring = torch.randn(11, requires_grad=True)
        assert kernels.select_backend(ring, get_plan(slots, 11)) == "torch"
        (w,) = expand_ring(ring, slots)
        assert torch.equal(w, generate_layer(ring.detach(), slots[0]))
        w.sum().backward()
        assert ring.grad is not None
        monkeypatch.setenv("RPG_HF_BACKEND", "cpu")
        with pytest.raises(RuntimeError, match="C kernels cannot run here"):
            expand_ring(ring, slots)
    finally:
        cpu._lib, cpu._tried, cpu._error = saved


# --------------------------------------------------------------------------- Triton (interpreter)


@pytest.fixture(scope="module")
def tri():
    """``rpg_hf.ops.triton_ring`` re-imported with TRITON_INTERPRET=1 while its kernels are defined."""
    pytest.importorskip("triton")
    path = os.path.join(os.path.dirname(kernels.__file__), "triton_ring.py")
    spec = importlib.util.spec_from_file_location("rpg_hf.ops._triton_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec.loader.exec_module(module)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old
    assert module.HAVE_TRITON
    assert type(module._forward_kernel).__name__ == "InterpretedFunction"
    return module


TRITON_CASES = ["mixed", "large_ring", "tiny_ring", "blocks_tiny_ring", "blocks_small"]


@VERSIONS
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_forward_bit_identical(tri, case, version):
    ring_size, shapes, flags = CASES[case]
    slots = _slots(shapes, flags=flags, gap=13, version=version)
    ring = torch.randn(ring_size, generator=torch.Generator().manual_seed(4))
    plan = get_plan(slots, ring_size)
    outs = tri.forward(ring, plan)  # all layers in one launch
    for s, o in zip(slots, outs, strict=True):
        ref = generate_layer(ring, s)
        assert o.shape == ref.shape and torch.equal(o.view(torch.int32), ref.view(torch.int32)), s
    low = tri.forward(ring, plan, torch.bfloat16)
    for s, o in zip(slots, low, strict=True):
        assert o.dtype == torch.bfloat16 and torch.equal(o, generate_layer(ring, s, torch.bfloat16))


@VERSIONS
def test_triton_forward_cycle_walking_and_float64(tri, version):
    n = 4097 if version == 1 else 4097 * 32  # 4097 = 65*64 - 63 (weights, or blocks): many lanes walk
    slots = _slots([(n,), (2, 3)], seed=9, version=version)
    ring = torch.randn(333, dtype=torch.float64)
    plan = get_plan(slots, 333)
    for s, o in zip(slots, tri.forward(ring, plan), strict=True):
        assert torch.equal(o, generate_layer(ring, s))


@VERSIONS
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_backward_matches_reference(tri, case, version):
    ring_size, shapes, flags = CASES[case]
    slots = _slots(shapes, flags=flags, gap=5, version=version)
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(s.shape, generator=gen) for s in slots]
    grads[1] = None
    plan = get_plan(slots, ring_size)
    ours = tri.backward(grads, plan, torch.float32, torch.device("cpu"))
    _assert_grad_close(ours, _reference_grad(slots, grads, ring_size))
    low = [None if g is None else g.bfloat16() for g in grads]
    _assert_grad_close(tri.backward(low, plan, torch.float32, torch.device("cpu")),
                       _reference_grad(slots, low, ring_size))


@VERSIONS
def test_triton_backend_end_to_end(tri, monkeypatch, version):
    """The eager node on the Triton path: per-layer views of one flat launch, gradients folded back."""
    monkeypatch.setattr(ops, "triton_ring", tri)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("RPG_HF_BACKEND", "triton")
    slots = _slots([(4, 2, 3, 3), (3, 4, 1, 1), (5, 12)], seed=1, version=version)
    ring = torch.randn(50, requires_grad=True)
    x = torch.randn(2, 2, 5, 5)

    def loss(ws):
        h = torch.nn.functional.conv2d(x, ws[0]).relu()
        h = torch.nn.functional.conv2d(h, ws[1])
        return (h.flatten(1)[:, :12] @ ws[2].t()).square().sum()

    ws = expand_ring(ring, slots)
    assert type(ws[0].grad_fn).__name__.startswith("_LayerWeight")
    loss(ws).backward()
    ours = ring.grad.clone()
    ring.grad = None
    monkeypatch.setenv("RPG_HF_BACKEND", "torch")
    ref_ws = expand_ring(ring, slots)
    assert all(torch.equal(a, b) for a, b in zip(ws, ref_ws, strict=True))
    loss(ref_ws).backward()
    _assert_grad_close(ours, ring.grad)


def test_udiv_magic_is_exact():
    """The GPU kernels divide by a, b and N with a multiply-high (Granlund-Montgomery)."""
    from rpg_hf.ops.triton_ring import udiv_magic

    gen = torch.Generator().manual_seed(0)
    divisors = list(range(1, 300)) + [2**k + e for k in range(1, 31) for e in (-1, 0, 1)]
    divisors += torch.randint(1, 2**31, (300,), generator=gen).tolist()
    v = torch.cat([torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]),
                   torch.randint(0, 2**32, (500,), generator=gen)])
    for d in divisors:
        m, s1, s2 = udiv_magic(d)
        assert 0 <= m < 2**32
        vd = torch.cat([v, torch.tensor([d - 1, d, d + 1, 3 * d - 1, 3 * d]).clamp(0, 2**32 - 1)])
        t = ((vd >> 16) * m + (((vd & 0xFFFF) * m) >> 16)) >> 16  # mulhi(v, m) without int64 overflow
        assert torch.equal((t + ((vd - t) >> s1)) >> s2, vd // d), d


# --------------------------------------------------------------------------- torch.compile / custom op


def test_custom_op_registration():
    slots = _slots([(3, 2, 3, 3), (7,)], seed=2**64 + 12345)  # the keys use the seed mod 2**64
    ring = torch.randn(31, requires_grad=True)
    desc, mults, shapes = ops._describe(tuple(slots))
    outs = torch.ops.rpg_hf.expand_ring(ring, desc, mults, shapes, None)
    assert all(torch.equal(o, generate_layer(ring.detach(), s)) for o, s in zip(outs, slots, strict=True))
    torch.library.opcheck(torch.ops.rpg_hf.expand_ring.default, (ring, desc, mults, shapes, None))
    torch.library.opcheck(torch.ops.rpg_hf.expand_ring.default, (ring.detach().double(), desc, mults, shapes, None))


def test_compiled_generator_has_no_graph_break():
    slots = _slots([(8, 3, 3, 3), (8, 8, 3, 3), (4, 8)], seed=7)
    x = torch.randn(2, 3, 8, 8)

    def f(ring):
        w1, w2, w3 = expand_ring(ring, slots)
        h = torch.nn.functional.conv2d(x, w1, padding=1).relu()
        h = torch.nn.functional.conv2d(h, w2, padding=1).relu()
        return (h.mean((2, 3)) @ w3.t()).square().sum()

    ring = torch.randn(500, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    loss = compiled(ring)
    loss.backward()
    grad = ring.grad.clone()
    ring.grad = None
    ref = f(ring)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ring.grad, rtol=1e-5, atol=1e-5)


_FIRST_LOAD = r"""
import json, os, sys, warnings
import torch
from rpg_hf.ops import cpu
from rpg_hf.ops import expand_ring
from rpg_hf.core.reference import LayerSlot, generate_layer


def probe():
    fresh = not cpu._tried  # nothing loaded the library before: this call is the first load
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = cpu.available()
        ring = torch.randn(50, requires_grad=True)
        slot = LayerSlot(0, (4, 3, 3), 0, 0.5, seed=1)
        (w,) = expand_ring(ring, [slot])
        w.square().sum().backward()
        same = torch.equal(w.detach(), generate_layer(ring.detach(), slot))
    return {"fresh": fresh, "available": ok, "same": same, "grad": ring.grad is not None,
            "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}


out = {"build": probe()}  # an empty cache: compile, then load
cpu._lib, cpu._tried, cpu._error = None, False, None
out["cached"] = probe()  # the library now exists: load only
cpu._lib, cpu._tried, cpu._error = None, False, None
os.environ["RPG_HF_CPU_CC"] = "no-such-compiler-rpg"
os.environ["RPG_HF_CACHE_DIR"] = os.path.join(os.environ["RPG_HF_CACHE_DIR"], "empty")
out["no_compiler"] = probe()  # the probe does catch the fallback warning
print(json.dumps(out))
"""


@pytest.mark.skipif(cpu._compiler() is None, reason="no C compiler: the fallback test covers this machine")
def test_no_warning_when_kernels_load(tmp_path):
    """The first load in a fresh interpreter (a build into an empty cache) and a load from that cache warn nothing.

    In this process the library was loaded when the module was collected (``needs_cpu``), so only a
    new interpreter can observe the first load.  The same probe without a compiler must see exactly
    the one fallback warning — proof that it would catch a warning.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RPG_HF_CACHE_DIR": str(tmp_path)}
    env.pop("RPG_HF_BACKEND", None)
    env.pop("RPG_HF_CPU_CC", None)
    proc = subprocess.run([sys.executable, "-c", _FIRST_LOAD], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for attempt in ("build", "cached"):
        r = res[attempt]
        assert r["fresh"] and r["available"] and r["same"] and r["grad"], (attempt, r)
        assert r["warnings"] == [], (attempt, r["warnings"])
    assert len(list(tmp_path.glob("rpg_cpu_*.so"))) == 1  # built once, then served from the cache
    broken = res["no_compiler"]
    assert broken["fresh"] and not broken["available"] and broken["same"] and broken["grad"]
    assert len(broken["warnings"]) == 1 and "pure-PyTorch path" in broken["warnings"][0], broken


# --------------------------------------------------------------------------- CUDA (when a GPU is present)

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("triton")), reason="needs CUDA and triton"
)


@needs_cuda
@pytest.mark.parametrize("dof", [45_000, 2_000_000])
def test_cuda_triton_matches_reference_on_resnet18(dof):
    import timm

    import rpg_hf

    model = rpg_hf.reparameterize(timm.create_model("resnet18"), rpg_hf.RPGSpec(dof=dof)).cuda()
    ring, slots = model.rpg.rings[0], tuple(model.rpg.slots[0])
    plan = get_plan(slots, ring.numel())
    assert kernels.select_backend(ring, plan) == "triton"
    fast = ops._forward("triton", ring, plan, None)
    ref = ops._forward("torch", ring, plan, None)
    assert all(torch.equal(a, b) for a, b in zip(fast, ref, strict=True))
    low = ops._forward("triton", ring, plan, torch.bfloat16)
    assert all(torch.equal(a, b.bfloat16()) for a, b in zip(low, ref, strict=True))
    gen = torch.Generator(device="cuda").manual_seed(0)
    grads = [torch.randn(s.shape, device="cuda", generator=gen) for s in slots]
    ours = ops._backward("triton", grads, plan, torch.float32, ring.device)
    _assert_grad_close(ours.cpu(), ops._backward("torch", grads, plan, torch.float32, ring.device).cpu())
    bf = [g.bfloat16() for g in grads]
    _assert_grad_close(ops._backward("triton", bf, plan, torch.float32, ring.device).cpu(),
                       ops._backward("torch", bf, plan, torch.float32, ring.device).cpu())


@needs_cuda
def test_cuda_training_step_matches_reference(monkeypatch):
    import timm

    import rpg_hf

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    x = torch.randn(4, 3, 64, 64, device="cuda")
    y = torch.arange(4, device="cuda")
    grads, weights = {}, {}
    for backend in ("triton", "torch"):
        monkeypatch.setenv("RPG_HF_BACKEND", backend)
        torch.manual_seed(0)
        model = rpg_hf.reparameterize(timm.create_model("resnet18", num_classes=4), rpg_hf.RPGSpec(dof=45_000))
        model = model.cuda().train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads[backend] = model.rpg.rings[0].grad.float().cpu()
        weights[backend] = [w.cpu() for w in model.rpg.generate_all()]
    # same weights bit for bit; the ring gradients differ by float32 summation order only
    assert all(torch.equal(a, b) for a, b in zip(weights["triton"], weights["torch"], strict=True))
    assert ((grads["triton"] - grads["torch"]).norm() / grads["torch"].norm()).item() < 1e-4


# --------------------------------------------------------------------------- generated nn.Linear layers


def _linear_models(version: int):
    """An MLP whose every Linear is generated, and a tiny transformers ViT (q/k/v/out/MLP linears + patch conv)."""
    from conftest import tiny_vit

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.Linear(40, 24),
                              torch.nn.GELU(), torch.nn.Linear(24, 3))
    return {"mlp": rpg_hf.reparameterize(mlp, rpg_hf.RPGSpec(dof=700, exclude_head=False, exclude_stem=False,
                                                             generator_version=version)),
            "vit": rpg_hf.reparameterize(tiny_vit(3), rpg_hf.RPGSpec(dof=3000, generator_version=version))}


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("version", [1, 2])
def test_linear_layers_ring_gradient_on_every_backend(backend, version, request, monkeypatch):
    """The ring gradient through generated ``nn.Linear`` layers equals the fold of the plain model's weight
    gradients, on each backend (Triton under the interpreter), for both generator versions."""
    if backend == "cpu" and not cpu.available():
        pytest.skip(f"C kernels unavailable: {cpu.error()}")
    if backend == "triton":
        monkeypatch.setattr(ops, "triton_ring", request.getfixturevalue("tri"))
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("RPG_HF_BACKEND", backend)
    for name, model in _linear_models(version).items():
        model.eval()  # no dropout: the plain model below computes the same
        x = torch.randn(2, 3, 4, 4) if name == "mlp" else torch.randn(2, 3, 32, 32)
        out = model(x)
        (out.logits if hasattr(out, "logits") else out).square().sum().backward()
        plain = rpg_hf.expand(model).eval()
        out = plain(x)
        (out.logits if hasattr(out, "logits") else out).square().sum().backward()
        gen = model.rpg
        ref = torch.zeros(gen.ring_sizes[0])
        for layer, slot in zip(gen.layers, gen.slots[0], strict=True):
            fold_window(ref, window_grad(plain.get_submodule(layer.name).weight.grad, slot), slot.start)
        assert sum(isinstance(plain.get_submodule(layer.name), torch.nn.Linear) for layer in gen.layers) >= 3, name
        _assert_grad_close(gen.rings[0].grad, ref)
