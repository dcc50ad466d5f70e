"""The training-time autograd of generated weights: per-read nodes, one batched fold per ring."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.utils.checkpoint as cp

import rpg_hf
from rpg_hf.ops import dispatch as ops

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])


def _model(scope: str = "global"):
    torch.manual_seed(0)
    return rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=3),
                                 rpg_hf.RPGSpec(dof=3000, scope=scope)).eval()


def _ring_grads(model, forward=None) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out = forward(X) if forward else model(X)
    torch.nn.functional.cross_entropy(out, Y, reduction="sum").backward()
    return [r.grad.clone() for r in model.rpg.rings]


def test_one_batched_fold_per_ring_per_backward(monkeypatch):
    calls = []
    real = ops._backward

    def counting(backend, grads, plan, *args):
        calls.append(plan.num_layers)
        return real(backend, grads, plan, *args)

    monkeypatch.setattr(ops, "_backward", counting)
    model = _model("stage")
    _ring_grads(model)
    assert len(calls) == len(model.rpg.rings) > 1
    assert sum(calls) == len(model.rpg.layers)  # every layer folded, each once


def test_gradient_equals_the_reference_fold():
    from rpg_hf.core.reference import fold_window, window_grad

    model = _model()
    (ours,) = _ring_grads(model)
    gen = model.rpg
    weight_grads = _weight_grads(model)
    ref = torch.zeros(gen.ring_sizes[0])
    for layer, slot in zip(gen.layers, gen.slots[0], strict=True):
        fold_window(ref, window_grad(weight_grads[layer.name], slot), slot.start)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def _weight_grads(model) -> dict[str, torch.Tensor]:
    """dL/dW of every generated layer, from the plain model built from the same weights."""
    plain = rpg_hf.expand(model).eval()
    torch.nn.functional.cross_entropy(plain(X), Y, reduction="sum").backward()
    return {layer.name: plain.get_submodule(layer.name).weight.grad for layer in model.rpg.layers}


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_ring_gradient(reentrant):
    model = _model()
    (plain,) = _ring_grads(model)

    def checkpointed(x):  # the model's own stages, each recomputed in backward
        h = model.act1(model.bn1(model.conv1(x)))
        h = model.maxpool(h)
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            h = cp.checkpoint(stage, h, use_reentrant=reentrant)
        return model.forward_head(h)

    if reentrant:
        X.requires_grad_(True)  # reentrant checkpoint needs an input that requires grad
    try:
        (ckpt,) = _ring_grads(model, checkpointed)
    finally:
        X.requires_grad_(False)
    torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-6)


def test_timm_grad_checkpointing():
    model = _model()
    (plain,) = _ring_grads(model)
    model.set_grad_checkpointing(True)
    (ckpt,) = _ring_grads(model)
    torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-6)


def test_two_losses_backpropagated_separately_and_together():
    model = _model()
    (both,) = _ring_grads(model)
    model.zero_grad(set_to_none=True)
    a, b = model(X[:2]), model(X[2:])
    torch.nn.functional.cross_entropy(b, Y[2:], reduction="sum").backward()  # in reverse order
    torch.nn.functional.cross_entropy(a, Y[:2], reduction="sum").backward()
    torch.testing.assert_close(model.rpg.rings[0].grad, both, rtol=1e-5, atol=1e-6)


def test_an_aborted_backward_does_not_leak_into_the_next():
    model = _model()
    (clean,) = _ring_grads(model)

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("boom")

    model.zero_grad(set_to_none=True)
    h = model.forward_features(X)
    out = model.forward_head(Boom.apply(h) + 0 * model.forward_features(X))  # layer nodes on two paths
    with pytest.raises(RuntimeError, match="boom"):
        torch.nn.functional.cross_entropy(out, Y, reduction="sum").backward()
    (again,) = _ring_grads(model)
    torch.testing.assert_close(again, clean, rtol=1e-5, atol=1e-6)


def test_autograd_grad_on_the_ring():
    model = _model()
    (ref,) = _ring_grads(model)
    loss = torch.nn.functional.cross_entropy(model(X), Y, reduction="sum")
    (g,) = torch.autograd.grad(loss, [model.rpg.rings[0]])
    torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_cpu_output_buffers_are_reused_only_when_no_tensor_uses_them():
    model = _model().train()
    layer = model.get_submodule(model.rpg.layers[0].name)
    first = layer.weight
    ptr = first.data_ptr()
    held = first.detach().clone()
    with torch.no_grad():
        model.rpg.rings[0].mul_(-1)
    second = layer.weight  # `first` is alive: a second buffer, `first` untouched
    assert second.data_ptr() != ptr and torch.equal(first.detach(), held)
    del first, second
    assert layer.weight.data_ptr() == ptr  # nothing holds it any more: reused, no page faults


def test_two_forwards_with_a_ring_change_between_then_one_backward():
    model = _model()
    ring = model.rpg.rings[0]
    plain_a = rpg_hf.expand(model).eval()
    out_a = model(X)
    with torch.no_grad():
        ring.mul_(0.5)
    plain_b = rpg_hf.expand(model).eval()
    out_b = model(X)
    (torch.nn.functional.cross_entropy(out_a, Y, reduction="sum")
     + torch.nn.functional.cross_entropy(out_b, Y, reduction="sum")).backward()
    with torch.no_grad():  # the forwards used the weights of their own ring state
        assert torch.equal(out_a, plain_a(X)) and torch.equal(out_b, plain_b(X))
    from rpg_hf.core.reference import fold_window, window_grad

    ref = torch.zeros_like(ring)
    for plain in (plain_a, plain_b):
        torch.nn.functional.cross_entropy(plain(X), Y, reduction="sum").backward()
        for layer, slot in zip(model.rpg.layers, model.rpg.slots[0], strict=True):
            fold_window(ref, window_grad(plain.get_submodule(layer.name).weight.grad, slot), slot.start)
    torch.testing.assert_close(ring.grad, ref, rtol=1e-5, atol=1e-6)


def test_weight_gradients_live_until_the_next_forward_like_a_plain_grad():
    """On the CPU the last backward's weight gradients stay (as a plain model's ``.grad`` does) until the
    next forward reads the ring: freed mid-step, glibc would return them to the OS and fault them in
    again every step.  An eval forward that refreshes the cache lets training's buffers go."""
    model = _model().train()
    _ring_grads(model)
    hub = model.rpg._hubs[0]
    assert hub.held is not None and len(hub.held) == len(model.rpg.layers)
    assert sorted(tuple(g.shape) for g in hub.held) == sorted(s.shape for s in model.rpg.slots[0])
    model(X)  # the next forward: they go
    assert hub.held is None
    _ring_grads(model)
    with torch.no_grad():
        model.rpg.rings[0].mul_(1.01)
        model.eval()(X)  # the eval cache is filled: training's buffers and gradients are released
    assert model.rpg._hubs[0] is None
