"""The CPU kernels' opt-in index cache: off by default, bounded, and bit-identical to recomputing."""

from __future__ import annotations

import pytest
import timm
import torch

import rpg_hf
from rpg_hf.core.reference import LayerSlot, generate_layer
from rpg_hf.ops import cpu, index_cache
from rpg_hf.ops.plan import get_plan

pytestmark = pytest.mark.skipif(not cpu.available(), reason=f"C kernels unavailable: {cpu.error()}")

# ring size, shapes, (permute, sign) per layer: a tiny ring (read through a padded copy), rings a
# layer wraps several times, identity and sign-free layers, and layers that walk cycles
CASES = {
    "mixed": (97, [(5, 3, 3), (700,), (1,), (33, 7), (2, 2)],
              [(True, True), (True, True), (False, True), (True, False), (False, False)]),
    "tiny_ring": (1, [(3, 5), (7,)], None),
    "walks": (1009, [(1_000_003 // 997,), (65_537,), (4097, 3)], None),
}


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch):
    monkeypatch.delenv(index_cache.ENV, raising=False)
    monkeypatch.delenv("RPG_HF_BACKEND", raising=False)
    index_cache.set_budget_mb(None)
    index_cache.clear()
    yield
    index_cache.set_budget_mb(None)
    index_cache.clear()


def _slots(case):
    _, shapes, flags = CASES[case]
    out, start = [], 0
    for i, shape in enumerate(shapes):
        permute, sign = flags[i] if flags else (True, True)
        out.append(LayerSlot(i, shape, start, 0.37 + 0.5 * i, seed=5, permute=permute, sign_flip=sign))
        start += out[-1].numel + 11
    return out


def _bits(t):
    return t.reshape(-1).view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def test_off_by_default_and_holds_nothing():
    assert index_cache.budget_bytes() == 0
    slots = _slots("mixed")
    cpu.forward(torch.randn(97), get_plan(slots, 97))
    assert index_cache.used_bytes() == 0


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_cached_equals_recomputed_bit_for_bit(case, dtype, threads):
    ring_size = CASES[case][0]
    slots = _slots(case)
    plan = get_plan(slots, ring_size)
    gen = torch.Generator().manual_seed(3)
    ring = torch.randn(ring_size, dtype=dtype, generator=gen)
    grads = [torch.randn(s.shape, dtype=dtype, generator=gen) for s in slots]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plain_w, plain_g = cpu.forward(ring, plan), cpu.backward(grads, plan, dtype)
        index_cache.set_budget_mb(64)
        for _ in range(2):  # the first call builds the codes, the second only reads them
            cached_w, cached_g = cpu.forward(ring, plan), cpu.backward(grads, plan, dtype)
            for s, a, b in zip(slots, plain_w, cached_w, strict=True):
                assert torch.equal(_bits(a), _bits(b))
                assert torch.equal(_bits(b), _bits(generate_layer(ring, s)))
            assert torch.equal(_bits(plain_g), _bits(cached_g))  # same values, same summation order
    finally:
        torch.set_num_threads(before)
    assert index_cache.used_bytes() == 4 * sum(s.numel for s in slots)


def test_budget_is_a_bound_and_partial_caching_is_exact():
    slots = _slots("walks")
    plan = get_plan(slots, 1009)
    sizes = [4 * s.numel for s in slots]
    # room for the first and the third layer only: the second is computed on the fly
    index_cache.set_budget_mb((sizes[0] + sizes[2] + sizes[1] // 2) / 2**20)
    ring = torch.randn(1009)
    grads = [torch.randn(s.shape) for s in slots]
    cached_w, cached_g = cpu.forward(ring, plan), cpu.backward(grads, plan, torch.float32)
    assert index_cache.used_bytes() == sizes[0] + sizes[2] <= index_cache.budget_bytes()
    index_cache.set_budget_mb(0)  # below what is held: emptied, and off
    assert index_cache.used_bytes() == 0
    assert all(torch.equal(a, b) for a, b in zip(cpu.forward(ring, plan), cached_w, strict=True))
    assert torch.equal(cpu.backward(grads, plan, torch.float32), cached_g)
    assert index_cache.used_bytes() == 0


def test_layers_are_shared_between_plans():
    """The eager path asks per layer, the fold for all layers: both find the same codes."""
    slots = _slots("mixed")
    index_cache.set_budget_mb(1)
    for s in slots:
        cpu.forward(torch.randn(97), get_plan((s,), 97))
    held = index_cache.used_bytes()
    cpu.backward([torch.randn(s.shape) for s in slots], get_plan(slots, 97), torch.float32)
    assert index_cache.used_bytes() == held == 4 * sum(s.numel for s in slots)


def test_training_with_the_cache_is_bit_identical(monkeypatch):
    """Codes do not depend on the ring's values: optimizer steps and load_state_dict change nothing."""

    def train(budget_mb):
        index_cache.clear()
        index_cache.set_budget_mb(budget_mb)
        torch.manual_seed(0)
        model = rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=3), rpg_hf.RPGSpec(dof=3000))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        y = torch.tensor([0, 1, 2, 0])
        for step in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 1:  # a ring written in place from outside the optimizer
                state = model.state_dict()
                key = next(k for k in state if rpg_hf.reparam.model.is_ring_key(k))
                model.load_state_dict({**state, key: state[key] * 0.5})
        return model.state_dict(), index_cache.used_bytes()

    plain, used0 = train(0)
    cached, used = train(64)
    assert used0 == 0 and used > 0
    assert plain.keys() == cached.keys()
    assert all(torch.equal(plain[k], cached[k]) for k in plain)


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_bad_budget_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(index_cache.ENV, value)
    with pytest.raises(ValueError, match=index_cache.ENV):
        index_cache.budget_bytes()
    with pytest.raises(ValueError, match="non-negative"):
        index_cache.set_budget_mb(-2)
