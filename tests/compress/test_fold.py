"""rpg_hf.compress.fold: folding trained weights into a ring (issue 17).

What is checked: fold → expand gives the weights back where the fit is exact (DoF ≥ generated
weights; weights that already are a ring expansion); the ring is the least-squares fit (the
gradient of the reconstruction error w.r.t. the ring, by autograd through the generated weights,
vanishes); timm CNNs and HF ViTs fold; the folded HF model saves ring-only and reloads bit for
bit; bad inputs raise clear errors; the CLI and the recipe flags work end to end.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from conftest import tiny_vit
from safetensors import safe_open
from torch import nn

import rpg_hf
from rpg_hf.compress.fold import (
    FoldReport,
    config_from_model,
    fit_rings,
    fold,
    fold_into,
    load_source,
    recalibrate_batchnorm,
)
from rpg_hf.ops import expand_ring
from rpg_hf.reparam import expand, get_generator, plan_layers


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every tensor (weights, norms, running stats) non-default values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=g)
                t.copy_(noise.abs() + 0.5 if "running_var" in name else t + 0.1 * noise)
    return model.eval()


def _resnet(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(timm.create_model("test_resnet", num_classes=num_classes))


def _generated(model: nn.Module, spec: rpg_hf.RPGSpec) -> int:
    layers, _ = plan_layers(model, spec)
    return sum(layer.numel for layer in layers)


def _assert_same_plain(a: nn.Module, b: nn.Module, rtol: float = 1e-6) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=1e-7, msg=k)
        else:
            assert torch.equal(sa[k], sb[k]), k


def _ls_gradient_ratio(model: nn.Module, source: nn.Module, relative: bool = False) -> float:
    """|d/dring Σ||W(ring) − W||²| relative to the same gradient at ring = 0.

    Autograd through the model's own generated weights (``module.weight`` of each generated layer).
    """
    backbone = getattr(model, "backbone", model)
    gen = get_generator(backbone)
    sd = source.state_dict()

    def grad_norm2() -> float:
        loss = sum(((backbone.get_submodule(layer.name).weight - sd[f"{layer.name}.weight"]) ** 2).sum()
                   / ((sd[f"{layer.name}.weight"] ** 2).sum() if relative else 1.0) for layer in gen.layers)
        grads = torch.autograd.grad(loss, list(gen.rings))
        return sum(float(g.double().norm() ** 2) for g in grads)

    at_fit = grad_norm2()
    saved = [r.detach().clone() for r in gen.rings]
    with torch.no_grad():
        for r in gen.rings:
            r.zero_()
    at_zero = grad_norm2()
    with torch.no_grad():
        for r, v in zip(gen.rings, saved, strict=True):
            r.copy_(v)
    return math.sqrt(at_fit / at_zero)


# --------------------------------------------------------------------------- exactness


def test_fold_then_expand_is_exact_when_dof_covers_the_weights(images64):
    source = _resnet()
    generated = _generated(source, rpg_hf.RPGSpec(dof=1))
    with pytest.raises(ValueError, match=f"{generated + 37:,} entries but generates only {generated:,} weights"):
        fold(source, rpg_hf.RPGSpec(dof=generated + 37, seed=3))  # a ring entry no weight reads: refused
    folded, report = fold(source, rpg_hf.RPGSpec(dof=generated, seed=3))
    assert report.exact and report.rel_error < 1e-6 and report.unused_ring_entries == 0
    assert all(row["rel_error"] < 1e-6 for row in report.rows)
    plain = expand(folded)
    _assert_same_plain(plain, source)
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(images64), source(images64), rtol=1e-5, atol=1e-5)
    # free tensors are copied, not refit: bit-identical
    gen_keys = {f"{layer.name}.weight" for layer in get_generator(folded).layers}
    for k, v in source.state_dict().items():
        if k not in gen_keys:
            assert torch.equal(plain.state_dict()[k], v), k


def test_exact_with_permutation_and_sign_off_at_n_equals_t():
    source = _resnet()
    t = _generated(source, rpg_hf.RPGSpec(dof=1))
    folded, report = fold(source, t, permute=False, sign_flip=False, scope="stage")
    assert report.exact and len(report.ring_sizes) > 1
    _assert_same_plain(expand(folded), source)


def test_single_layer_network_folds_exactly():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Flatten(), nn.LazyLinear(2))
    source(torch.randn(1, 3, 8, 8))
    folded, report = fold(source, 6 * 4 * 9)  # only the second conv is generated (stem and head free)
    assert [r["name"] for r in report.rows] == ["1"] and report.exact
    torch.testing.assert_close(expand(folded)[1].weight, source[1].weight, rtol=1e-6, atol=0)


def test_refolding_an_expanded_rpg_model_gives_its_ring_back():
    torch.manual_seed(0)
    rpg = rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=3), rpg_hf.RPGSpec(dof=300, seed=5))
    ring = get_generator(rpg).rings[0].detach().clone()
    folded, report = fold(expand(rpg), rpg_hf.RPGSpec(dof=300, seed=5))
    assert report.reuse > 10 and report.rel_error < 1e-6
    torch.testing.assert_close(get_generator(folded).rings[0].detach(), ring, rtol=1e-5, atol=1e-7)
    # an RPG model as the source is expanded first (refold at another DoF)
    _, report2 = fold(rpg, 150, seed=5)
    assert 0 < report2.rel_error < 1


# --------------------------------------------------------------------------- least squares


@pytest.mark.parametrize("scope", ["global", "stage"])
def test_ring_is_the_least_squares_fit(scope):
    source = _resnet()
    folded, report = fold(source, rpg_hf.RPGSpec(dof=700, seed=1, scope=scope))
    assert not report.exact and 0 < report.rel_error < 1
    assert _ls_gradient_ratio(folded, source) < 1e-5
    # and it is a minimum, not just a stationary point of the wrong function: any nudge is worse
    gen = get_generator(folded)
    targets = [source.state_dict()[f"{layer.name}.weight"] for layer in gen.layers]
    rings, _ = fit_rings(gen, targets)
    base = _error(gen, rings, targets)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        nudged = [r + 1e-3 * torch.randn(r.shape, generator=g) for r in rings]
        assert _error(gen, nudged, targets) > base
    assert math.isclose(math.sqrt(base) / math.sqrt(sum(float((t.double() ** 2).sum()) for t in targets)),
                        report.rel_error, rel_tol=1e-4)


def _error(gen, rings, targets) -> float:
    total = 0.0
    for r, ring in enumerate(rings):
        for w, s in zip(expand_ring(ring, gen.slots[r]), gen.slots[r], strict=True):
            total += float(((w.double() - targets[s.position].double()) ** 2).sum())
    return total


def test_relative_weighting_is_the_weighted_least_squares_fit():
    source = _resnet()
    plain_fit, plain = fold(source, 700, seed=1)
    rel_fit, rel = fold(source, 700, seed=1, weighting="relative")
    assert rel.weighting == "relative" and plain.weighting == "uniform"
    # it minimises the sum of squared *relative* errors, so that sum is lower than the plain fit's ...
    assert sum(r["rel_error"] ** 2 for r in rel.rows) < sum(r["rel_error"] ** 2 for r in plain.rows)
    # ... while the plain fit has the lower total error
    assert plain.rel_error < rel.rel_error
    # and its gradient vanishes: d/dring Σ_l ||W_l(ring) − W_l||² / ||W_l||², through the model's weights
    assert _ls_gradient_ratio(rel_fit, source, relative=True) < 1e-5
    assert _ls_gradient_ratio(rel_fit, source) > 1e-2  # (it is not the plain fit)
    with pytest.raises(ValueError, match="weighting"):
        fold(source, 700, weighting="bogus")
    with pytest.raises(ValueError, match="weighting"):
        fold(source, 700, weighting=[1.0, 2.0])


def test_vit_folds_and_is_least_squares(images):
    source = tiny_vit().eval()
    t = _generated(source, rpg_hf.RPGSpec(dof=1))
    folded, report = fold(source, t // 4)
    names = [r["name"] for r in report.rows]
    assert any("patch_embeddings" in n for n in names) and any("attention" in n for n in names)
    assert 0.5 < report.rel_error < 1 and _ls_gradient_ratio(folded, source) < 1e-5
    exact, report = fold(source, t)
    assert report.exact
    with torch.no_grad():
        torch.testing.assert_close(exact.eval()(pixel_values=images).logits, source(pixel_values=images).logits,
                                   rtol=1e-5, atol=1e-5)


def test_report_is_a_table_and_json():
    source = _resnet()
    _, report = fold(source, 500)
    text = str(report)
    assert "relative error" in text and "reuse T/N" in text
    assert all(r["name"] in text for r in report.rows)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["dof"] == 500 and len(d["layers"]) == len(report.rows) and d["rel_error"] == report.rel_error
    assert math.isclose(report.energy_kept, 1 - report.rel_error**2)
    assert isinstance(report, FoldReport)


# --------------------------------------------------------------------------- HF models, save / reload


@pytest.mark.parametrize("kind", ["timm", "vit"])
def test_folded_hf_model_saves_ring_only_and_reloads_bit_identically(kind, tmp_path):
    source = _resnet() if kind == "timm" else tiny_vit().eval()
    config = config_from_model(source, 400, seed=2)
    model, report = fold(source, config)
    assert isinstance(model, rpg_hf.RPGForImageClassification) and report.dof == 400
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        saved = sum(math.prod(f.get_slice(k).get_shape()) for k in keys)
    # ring + free tensors only (transformers may write ViT tensors under their legacy names)
    generated = {f"backbone.{layer.name}.weight" for layer in model.generator.layers}
    assert "backbone.rpg.rings.0" in keys and not keys & generated and len(keys) == len(model.state_dict())
    assert saved == sum(v.numel() for v in model.state_dict().values())
    assert saved < sum(p.numel() for p in source.parameters())
    loaded = rpg_hf.RPGForImageClassification.from_pretrained(tmp_path).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    for a, b in zip(loaded.generator.generate_all(), model.generator.generate_all(), strict=True):
        assert torch.equal(a, b)


def test_fold_into_an_existing_rpg_model_in_place():
    source = _resnet()
    rpg = rpg_hf.RPGForImageClassification(config_from_model(source, 800))
    before = rpg.generator.rings[0].detach().clone()
    report = fold_into(rpg, source)
    assert not torch.equal(before, rpg.generator.rings[0].detach()) and report.dof == 800
    _, same = fold(source, config_from_model(source, 800))
    assert same.rel_error == report.rel_error


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    source = _resnet()
    with pytest.raises(ValueError, match="architecture mismatch"):
        fold(source, config_from_model(_resnet(num_classes=4), 500))  # head of another size
    with pytest.raises(ValueError, match="architecture mismatch"):
        fold(tiny_vit(), config_from_model(source, 500))  # a ViT into a ResNet
    with pytest.raises(ValueError, match="architecture mismatch"):
        rpg = rpg_hf.reparameterize(timm.create_model("resnet10t", num_classes=3), rpg_hf.RPGSpec(dof=100))
        fold_into(rpg, source)
    for dof in (0, -5):
        with pytest.raises(ValueError, match="positive"):
            fold(source, dof)
        with pytest.raises(ValueError, match="positive"):
            fold(source, rpg_hf.RPGSpec(dof=dof))
    with pytest.raises(ValueError, match="nothing to fold"):
        fold(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 10)  # its only weight is the (free) head
    with pytest.raises(ValueError, match="nothing to fold"):
        fold(source, rpg_hf.RPGSpec(dof=10, include=("no_such_layer",)))
    with pytest.raises(TypeError, match="target"):
        fold(source, "big")
    with pytest.raises(TypeError, match="architecture"):
        config_from_model(nn.Sequential(nn.Conv2d(1, 1, 1)), 10)


# --------------------------------------------------------------------------- loading sources, CLI, BN


def test_load_source_from_folders_and_files(tmp_path):
    from timm.models import save_for_hf

    source = timm.create_model("test_resnet", num_classes=3, in_chans=1)
    _trained_like(source)
    save_for_hf(source, tmp_path / "timm", model_args={"in_chans": 1}, safe_serialization=True)
    loaded = load_source(str(tmp_path / "timm"))
    _assert_same_plain(loaded, source, rtol=0)
    config = config_from_model(loaded, 300)
    assert config.architecture == "test_resnet" and config.model_args["in_chans"] == 1 and config.num_labels == 3
    assert len(config.mean) == 1

    from safetensors.torch import save_file

    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    _assert_same_plain(load_source(str(tmp_path / "w.safetensors"), arch="test_resnet",
                                   model_args={"in_chans": 1}), source, rtol=0)
    with pytest.raises(ValueError, match="arch"):
        load_source(str(tmp_path / "w.safetensors"))

    vit = tiny_vit()
    vit.save_pretrained(tmp_path / "vit")
    _assert_same_plain(load_source(str(tmp_path / "vit")), vit, rtol=0)
    with pytest.raises(ValueError, match="cannot load"):
        load_source("no_such_timm_model_xyz")


def test_cli_fold_writes_a_loadable_ring_only_checkpoint(tmp_path, capsys):
    from timm.models import save_for_hf

    from rpg_hf.cli import main

    source = _resnet()
    save_for_hf(source, tmp_path / "plain", safe_serialization=True)
    main(["fold", str(tmp_path / "plain"), "--dof", "600", "-o", str(tmp_path / "folded"), "--seed", "4"])
    out = capsys.readouterr().out
    assert "relative error" in out and "saved ring-only test_resnet" in out
    model = rpg_hf.RPGForImageClassification.from_pretrained(tmp_path / "folded")
    assert model.config.dof == 600 and model.config.seed == 4
    _, report = fold(source, rpg_hf.RPGSpec(dof=600, seed=4))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = fold(source, config_from_model(source, 600, seed=4))
        assert torch.equal(model.eval()(x).logits, ref.eval()(x).logits)
    main(["fold", str(tmp_path / "plain"), "--dof", "600", "-o", str(tmp_path / "j"), "--seed", "4", "--json"])
    assert json.loads(capsys.readouterr().out)["rel_error"] == pytest.approx(report.rel_error, rel=1e-6)
    main(["fold", str(tmp_path / "plain"), "--dof", "600", "-o", str(tmp_path / "r"), "--weighting", "relative",
          "--json"])
    assert json.loads(capsys.readouterr().out)["weighting"] == "relative"
    with pytest.raises(SystemExit, match="positive"):
        main(["fold", str(tmp_path / "plain"), "--dof", "0", "-o", str(tmp_path / "z")])


def test_recalibrate_batchnorm_restores_mode_and_changes_stats():
    source = _resnet()
    folded, _ = fold(source, 400)
    folded.eval()
    bn = next(m for m in folded.modules() if isinstance(m, nn.BatchNorm2d))
    before = bn.running_mean.clone()
    g = torch.Generator().manual_seed(0)
    n = recalibrate_batchnorm(folded, (torch.randn(8, 3, 32, 32, generator=g) for _ in range(3)))
    assert n == 3 and not folded.training and not torch.equal(before, bn.running_mean)
    assert bn.momentum == 0.1


# --------------------------------------------------------------------------- recipe flags

TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64, "patch_size": 8})


def _load_train_recipe():
    import importlib

    return importlib.import_module("recipes.train")


def _run(recipe, argv):
    from accelerate.state import AcceleratorState, GradientState

    try:
        return recipe.main(argv)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_train_recipe_init_from_and_distill_from(tmp_path):
    """recipes/train.py: a vanilla run saves a ViT; an RPG run folds it (--init-from) and distills from it."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate([(220, 40, 40), (40, 200, 60), (50, 60, 230)]):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 40, (16, 16, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    recipe = _load_train_recipe()
    common = ["--data", str(tmp_path / "data"), "--val-split", "val", "--cache-dir", str(tmp_path / "cache"),
              "--arch", "vit", "--vit-config", TINY_VIT, "--image-size", "16", "--optimizer", "sgd", "--lr", "0.05",
              "--max-steps", "3", "--batch-size", "8", "--num-workers", "0", "--checkpoint-every", "-1",
              "--eval-every", "-1", "--log-with", "none", "--no-progress"]
    _run(recipe, [*common, "--model", "vanilla", "--output-dir", str(tmp_path / "teacher")])
    teacher = tmp_path / "teacher" / "model"
    res = _run(recipe, [*common, "--dof", "3000", "--init-from", str(teacher), "--fold-weighting", "relative",
                        "--distill-from", str(teacher), "--distill-weight", "0.7",
                        "--output-dir", str(tmp_path / "student")])
    assert res["init_from"] == str(teacher) and res["distill_weight"] == 0.7
    assert 0 < res["fold"]["rel_error"] < 1 and res["fold"]["dof"] == 3000 and res["fold"]["weighting"] == "relative"
    assert Path(res["model_dir"], "model.safetensors").is_file()
    # an architecture that does not match the folded weights stops with a clear message
    with pytest.raises(SystemExit, match="architecture mismatch"):
        _run(recipe, [*common, "--dof", "3000", "--init-from", str(teacher), "--vit-config",
                                TINY_VIT.replace('"hidden_size": 32', '"hidden_size": 16'),
                                "--output-dir", str(tmp_path / "bad")])


# --------------------------------------------------------------------------- the Fashion-MNIST measurement


def test_fold_measurement_script_smoke(tmp_path):
    """recipes/fold_fashion_mnist.py end to end on a sliver of Fashion-MNIST (skipped without the data)."""
    import importlib

    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
    module = importlib.import_module("recipes.fold_fashion_mnist")
    threads = torch.get_num_threads()
    try:
        module.main(["--out", str(tmp_path / "res"), "--models-dir", str(tmp_path / "models"), "--width", "2",
                     "--train-subset", "300", "--test-subset", "100", "--teacher-epochs", "1", "--finetune-epochs", "1",
                     "--fractions", "0.25", "--finetune-lrs", "0.02", "--bn-batches", "2", "--no-long-scratch"])
    finally:
        torch.set_num_threads(threads)
    runs = {p.stem for p in (tmp_path / "res" / "runs").glob("*.json")}
    assert runs == {"teacher", "fold-25pct", "finetune-lr0.02-25pct", "finetune-kd-lr0.02-25pct", "scratch-25pct",
                    "fold-relative-25pct", "finetune-relative-lr0.02-25pct"}
    table = (tmp_path / "res" / "table.md").read_text()
    assert "(a) folded + BN re-estimate" in table and "RMS of the layers' rel. errors" in table
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert 0 < summary["rows"][0]["rel_error"] < 1
    assert (tmp_path / "models" / "folded-25pct" / "model.safetensors").is_file()


def test_fold_measurement_epoch_order_is_one_generator_s_permutations():
    """The measurement trains through ``rpg_hf.train.loop.fit``, which asks for each epoch's batches on its own:
    epoch e's order is still the e-th permutation drawn from one seeded generator (the order of the stored runs)."""
    import importlib

    module = importlib.import_module("recipes.fold_fashion_mnist")
    g = torch.Generator().manual_seed(10_000 + 3)
    for epoch in range(3):
        assert torch.equal(module.epoch_order(50, epoch, seed=3), torch.randperm(50, generator=g))


def test_readme_fold_table_matches_the_generated_table():
    root = Path(__file__).parents[2]
    readme = (root / "README.md").read_text()
    shown = readme.split("<!-- fold-table:start -->")[1].split("<!-- fold-table:end -->")[0].strip()
    assert shown == (root / "results" / "fold" / "table.md").read_text().strip()
