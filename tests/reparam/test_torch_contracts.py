"""An RPG model keeps the contracts every PyTorch module keeps, through the entry points users call.

FX tracing (torch.fx, torchvision's and timm's feature extractors), pickling in a fresh process,
held weight tensors and the CPU output buffers, TorchScript's refusal (and what works instead),
concurrent eval threads, and specs that make no sense.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import timm
import torch
from torch import nn

import rpg_hf

CNN_NAMES = [n for n in timm.list_models("rpg_*") if "vit" not in n]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _rpg(name="rpg_resnet18", dof=5000, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, dof=dof, num_classes=4, **kw)


def _frozen_bn(model):
    """Train mode with BatchNorm statistics fixed: two models see the same maths whatever the batch."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _close(ours, ref, rel=1e-5):
    """Equal to float32 summation order: the largest difference against the largest entry."""
    assert float((ours - ref).abs().max()) <= rel * float(ref.abs().max()), float((ours - ref).abs().max())


def _ring_grad(model, forward=None):
    ring = dict(model.named_parameters())["rpg.rings.0"]
    ring.grad = None
    out = (forward or model)(X)
    out = out if isinstance(out, torch.Tensor) else torch.cat([o.flatten(1) for o in out.values()], 1)
    out.square().mean().backward()
    return ring.grad.clone()


# --------------------------------------------------------------------------- FX


@pytest.mark.parametrize("name", ["rpg_resnet18", "rpg_convnext_tiny"])
def test_symbolic_trace_keeps_the_ring_and_its_gradient(name):
    model = _frozen_bn(_rpg(name))
    traced = _frozen_bn(torch.fx.symbolic_trace(model))
    params = dict(traced.named_parameters())
    assert "rpg.rings.0" in params and not any(k.startswith("_tensor_constant") for k, _ in traced.named_buffers())
    assert any(n.op == "call_function" and "expand_ring" in str(n.target) for n in traced.graph.nodes)
    torch.testing.assert_close(traced(X), model(X), rtol=1e-5, atol=1e-5)
    _close(_ring_grad(traced), _ring_grad(model))
    # training the traced module moves the generated weights: a step on its ring changes its output
    before = traced(X).detach()
    with torch.no_grad():
        params["rpg.rings.0"].add_(params["rpg.rings.0"].grad, alpha=-10.0)
    assert not torch.allclose(traced(X), before)


def test_torchvision_feature_extractor_keeps_the_ring():
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _frozen_bn(_rpg())
    extractor = _frozen_bn(create_feature_extractor(model, return_nodes={"layer3": "mid", "layer4": "out"}))
    assert "rpg.rings.0" in dict(extractor.named_parameters())

    def eager(x):  # the same blocks called by hand
        x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        x = model.layer3(model.layer2(model.layer1(x)))
        return {"mid": x, "out": model.layer4(x)}

    _close(_ring_grad(extractor), _ring_grad(model, eager))


@pytest.mark.parametrize("name", CNN_NAMES)
def test_timm_fx_feature_extractor_gives_every_parameter_a_gradient(name):
    """timm's own test_model_backward_fx, for every rpg_* CNN: traced with timm's tracer settings, one
    backward, and no parameter (the ring first of all) without its gradient."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = _rpg(name, dof=20_000).train()
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    torch.cat(tuple(fx_model(torch.randn(2, 3, 64, 64)).values())).mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert "rpg.rings.0" in dict(fx_model.named_parameters()) and not missing, missing
    assert sum(p.numel() for p in fx_model.parameters()) == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- pickling


PICKLE_SCRIPT = textwrap.dedent('''
    import sys, torch
    import rpg_hf  # noqa: F401  (a user who saved an RPG model has rpg_hf installed)
    model = torch.load(sys.argv[1], weights_only=False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save(model.eval()(x), sys.argv[2])
''')


@pytest.mark.parametrize("after_eval", [False, True])
def test_torch_save_and_pickle_round_trip_in_a_fresh_process(tmp_path, after_eval):
    model = _rpg().eval()
    with torch.no_grad():
        model.rpg.rings[0].mul_(1.3)
        if after_eval:
            model(X)  # fills the eval cache (the ring copy and its integer view)
        want = model(X)
    torch.save(model, tmp_path / "model.pt")
    again = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        assert torch.equal(again(X), want) and torch.equal(copy.deepcopy(model)(X), want)
    assert type(again.layer1[0].conv1).__name__ == "RPGConv2d" and again.layer1[0].conv1._rpg_generator is again.rpg
    script = tmp_path / "load.py"
    script.write_text(PICKLE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path / "model.pt"), str(tmp_path / "out.pt")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), want, rtol=1e-6, atol=1e-6)


HF_PICKLE_SCRIPT = textwrap.dedent('''
    import sys, torch
    import rpg_hf  # noqa: F401
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save([torch.load(f, weights_only=False).eval()(x).logits for f in sys.argv[2:]], sys.argv[1])
''')


def _hf_model(backbone: str):
    from transformers import ViTConfig

    torch.manual_seed(0)
    if backbone == "timm":
        cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=3000, num_labels=3, image_size=32)
    else:
        vc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
        cfg = rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny-test", vit_config=vc, dof=3000, num_labels=3,
                               image_size=32)
    return rpg_hf.RPGForImageClassification(cfg).eval()


def test_hf_models_pickle_after_an_eval_forward_in_a_fresh_process(tmp_path):
    """Both backbones (generated convs; generated q/k/v/MLP linears): torch.save, pickle and deepcopy after
    the eval cache is filled, with a trained-looking ring, and torch.load in a process that built nothing."""
    files, wants = [], []
    for backbone in ("timm", "vit"):
        model = _hf_model(backbone)
        with torch.no_grad():
            model.generator.rings[0].mul_(1.3)
            want = model(X).logits  # fills the eval cache
        again = pickle.loads(pickle.dumps(model))
        with torch.no_grad():
            assert torch.equal(again(X).logits, want) and torch.equal(copy.deepcopy(model)(X).logits, want)
        files.append(str(tmp_path / f"{backbone}.pt"))
        torch.save(model, files[-1])
        wants.append(want)
    script = tmp_path / "load.py"
    script.write_text(HF_PICKLE_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path / "out.pt"), *files], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1"},
                   timeout=300)
    for got, want in zip(torch.load(tmp_path / "out.pt"), wants, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- held weights and buffers


def _linear_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    return rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=3000, exclude_head=False, exclude_stem=False))


def _three_forwards_one_backward(backend, monkeypatch):
    monkeypatch.setenv("RPG_HF_BACKEND", backend)
    model = _linear_mlp()
    ring = model.rpg.rings[0]
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(3):  # F.linear saves weight.t(), a view: the weight's storage stays in use until backward
        losses.append(model(x).square().sum())
        with torch.no_grad():
            ring.mul_(1.1)
    sum(losses).backward()
    return ring.grad.clone()


def test_reused_cpu_buffers_never_overwrite_weights_in_use(monkeypatch):
    ours = _three_forwards_one_backward("auto", monkeypatch)
    ref = _three_forwards_one_backward("torch", monkeypatch)
    _close(ours, ref, rel=1e-6)


def test_a_held_detached_weight_does_not_change():
    model = _linear_mlp()
    held = model[1].weight.detach()  # model[0] is the ring holder
    data = model[1].weight.data
    before = held.clone()
    with torch.no_grad():
        model.rpg.rings[0].mul_(2.0)
    for _ in range(3):
        model[1].weight  # noqa: B018  (reads in training mode: fresh generation each time)
    assert torch.equal(held, before) and torch.equal(data, before)


# --------------------------------------------------------------------------- TorchScript, export


def test_torchscript_names_what_works():
    model = _rpg().eval()
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script\(rpg_hf\.expand\(model\)\).*torch\.export"):
        torch.jit.script(model)
    scripted = torch.jit.script(rpg_hf.expand(model))
    with torch.no_grad():
        torch.testing.assert_close(scripted(X), model(X))


def test_torch_export_traces_the_generation():
    model = _rpg().eval()
    exported = torch.export.export(model, (X,))
    assert any("expand_ring" in str(n.target) for n in exported.graph.nodes)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(X), model(X), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- threads


def test_concurrent_eval_threads_see_the_single_thread_outputs(monkeypatch):
    # one intra-op thread everywhere: convolutions then sum in one order whichever Python thread calls them
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # nothing in the model may change it back
    try:
        _concurrent_eval()
    finally:
        monkeypatch.undo()
        torch.set_num_threads(before)


def _concurrent_eval():
    model = _rpg().eval()
    xs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    with torch.no_grad():
        want = [model(x) for x in xs]
        kept = model.rpg.rings[0].clone()
        model.rpg.rings[0].mul_(1.5)  # the cache must be refreshed once, whichever thread comes first
        want2 = [model(x) for x in xs]
        model.rpg.rings[0].copy_(kept)
    got: dict[int, torch.Tensor] = {}
    errors = []

    def work(i):
        try:
            with torch.no_grad():
                got[i] = model(xs[i % 8])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    for expected in (want, None):
        if expected is None:
            with torch.no_grad():
                model.rpg.rings[0].mul_(1.5)
            expected = want2
        threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for i in range(16):
            assert torch.equal(got[i], expected[i % 8]), i


def test_threads_that_find_the_cache_stale_together_generate_once(monkeypatch):
    """After a ring change, threads that reach the stale cache at once wait for the first one's generation
    instead of each generating (and holding) a whole model's weights."""
    from rpg_hf.reparam import layer

    model = _rpg().eval()
    ring = model.rpg.rings[0]
    with torch.no_grad():
        kept = ring.clone()
        ring.mul_(1.5)
        want = model(X)  # the single-thread answer for the changed ring
        ring.copy_(kept)
        model(X)  # the cache back on the first ring
    real = layer.expand_ring

    def slow(*args, **kwargs):
        time.sleep(0.3)  # every thread reaches the stale cache while the first one generates
        return real(*args, **kwargs)

    monkeypatch.setattr(layer, "expand_ring", slow)
    with torch.no_grad():
        ring.mul_(1.5)
    before, got, start = model.rpg.generations, [], threading.Barrier(4)

    def work():
        start.wait()
        with torch.no_grad():
            got.append(model(X))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and all(torch.allclose(g, want, rtol=1e-5, atol=1e-6) for g in got)
    assert model.rpg.generations - before == 1


# --------------------------------------------------------------------------- nonsense specs


def test_dof_above_the_generated_weights_is_refused():
    with pytest.raises(ValueError, match=r"20,000,000 entries but generates only 11,157,504 weights"):
        timm.create_model("rpg_resnet18", dof=20_000_000)
    assert timm.create_model("rpg_resnet18", dof=11_157_504, num_classes=2).rpg.ring_sizes == [11_157_504]


def test_tied_weights_are_refused_with_the_names():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match=r"0\.weight is tied to 2\.weight.*exclude"):
        rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=50, exclude_head=False, exclude_stem=False))
