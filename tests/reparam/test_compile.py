"""``torch.compile(model, fullgraph=True)`` on RPG models: one graph per grad mode, no graph break
inside the generator, no recompilation per generated layer, gradients equal to eager.

The registry-wide sweep uses the ``aot_eager`` backend (Dynamo capture + AOT autograd through the
custom op, no code generation) so it stays fast on two cores; one inductor test compiles for real.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch._dynamo.utils import counters

import rpg_hf  # noqa: F401  (registers the rpg_* entrypoints)

TINY = {  # small enough for a CPU test, same code paths as the full models
    "rpg_resnet18": {}, "rpg_resnet34": {}, "rpg_resnet50": {}, "rpg_resnet101": {},
    "rpg_convnext_tiny": {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
    "rpg_efficientnet_b0": {},
    "rpg_vit_small_patch16_224": {"img_size": 32, "depth": 2},
    "rpg_vit_base_patch16_224": {"img_size": 32, "depth": 2},
}
DEFAULT_RUN = ("rpg_resnet18", "rpg_vit_small_patch16_224")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=3, dof=2000, **TINY[name])


def _loss(model, x):
    return torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 2]))


def _check(name: str, backend: str, grad_tol: float = 1e-5) -> None:
    model = _model(name)
    assert {n for n in timm.list_models("rpg_*")} == set(TINY)  # the sweep covers the whole registry
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.train()
    _loss(model, x).backward()
    eager_grad = model.rpg.rings[0].grad.clone()
    model.zero_grad()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for _ in range(2):  # two train steps: the second must reuse the first graph
        model.zero_grad()
        _loss(compiled, x).backward()
    compiled_grad = model.rpg.rings[0].grad.clone()
    compiled.eval()
    with torch.no_grad():
        out = compiled(x)
        compiled(x)
        eager_out = model(x)

    assert not counters["graph_break"], dict(counters["graph_break"])
    # one graph for training, one for no_grad eval (the grad-mode guard): at most one recompile
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    # relative to the gradient's norm: a ring entry sums ~T/N weight gradients, so a few of them
    # cancel to near zero and an elementwise rtol would judge reduction-order noise.  aot_eager runs
    # the same kernels as eager (float32 summation order apart): 1e-5; inductor generates its own
    # convolution-backward and reduction code: 1e-3
    assert (compiled_grad - eager_grad).norm() <= grad_tol * eager_grad.norm()
    torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", DEFAULT_RUN)
def test_fullgraph_aot_eager(name):
    _check(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(TINY) - set(DEFAULT_RUN)))
def test_fullgraph_aot_eager_whole_registry(name):
    _check(name, "aot_eager")


@pytest.mark.slow
def test_fullgraph_inductor_resnet18():
    _check("rpg_resnet18", "inductor", grad_tol=1e-3)


def test_generator_is_not_a_frame_of_its_own():
    """Tracing the model captures the generated weights inside its graph (no per-layer frames)."""
    model = _model("rpg_resnet18")
    torch._dynamo.reset()
    counters.clear()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    ops = [n.target for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"]
    n_generated = len(model.rpg.layers)
    assert sum(1 for t in ops if "rpg_hf" in str(t)) == n_generated
