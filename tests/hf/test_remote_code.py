"""trust_remote_code loading: the two files every checkpoint carries, checked against the package.

* the files import nothing but torch / transformers / safetensors (timm only inside a try), and
  never rpg_hf — checked on the source and with transformers' own import scanner;
* their pinned construction equals the package's golden vectors, the spec re-implementation
  (``spec_v1``) and the package's expansion, weight for weight;
* a subprocess in which ``import rpg_hf`` raises loads timm and ViT checkpoints with
  ``trust_remote_code=True`` and gets the package's logits bit for bit (and the same errors);
* where rpg_hf is imported, ``trust_remote_code=True`` still yields the package's classes.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import spec_v1
import torch
from safetensors.torch import load_file, save_file
from test_construction import GOLDEN, RING
from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import rpg_hf
from rpg_hf.core import construction as package_generator
from rpg_hf.core.reference import LayerSlot, generate_layer, layer_indices
from rpg_hf.hf.checkpoint import CheckpointError
from rpg_hf.hf.remote_code import REMOTE_CODE_DIR, REMOTE_CODE_FILES
from rpg_hf.hf.remote_code import configuration_rpg as remote_cfg
from rpg_hf.hf.remote_code import modeling_rpg as remote

LABELS = {0: "cat", 1: "dog", 2: "bird"}
ROOT = Path(__file__).resolve().parents[2]


def _timm_cfg(dof=2000, **kw):
    return rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=dof, num_labels=3, seed=3,
                            image_size=32, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kw)


def _vit_cfg(dof=3000, **kw):
    vc = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   image_size=32, patch_size=8)
    return rpg_hf.RPGConfig(backbone="vit", architecture="vit-tiny-test", vit_config=vc, dof=dof, num_labels=3,
                            image_size=32, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}, **kw)


def _x(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Ring-only folders written by the package: timm (global ring), ViT, timm with stage rings + int8."""
    root = tmp_path_factory.mktemp("remote")
    out = {}
    for name, cfg in [("timm", _timm_cfg()), ("vit", _vit_cfg()),
                      ("int8", _timm_cfg(dof=3000, scope="stage", ring_dtype="int8", ring_block_size=256))]:
        model = rpg_hf.RPGForImageClassification(cfg).eval()
        with torch.no_grad():  # a trained-looking ring: not the seeded init a fresh load would redraw
            for ring in model.generator.rings:
                ring.mul_(1.5).add_(0.01)
        model.save_pretrained(root / name)
        loaded = AutoModelForImageClassification.from_pretrained(root / name).eval()
        out[name] = (root / name, loaded)
    return out


# ------------------------------------------------------------------ the files themselves


@pytest.mark.parametrize("name", REMOTE_CODE_FILES)
def test_remote_files_never_import_rpg_hf(name):
    path = REMOTE_CODE_DIR / name
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(not a.name.split(".")[0] == "rpg_hf" for a in node.names), ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports: only the sibling file
                assert node.module == "configuration_rpg", ast.dump(node)
            else:
                assert node.module.split(".")[0] != "rpg_hf", ast.dump(node)
    assert "rpg_hf" not in {n.split(".")[0] for n in get_imports(str(path))}
    # what transformers demands be installed: timm only inside a try (ViT checkpoints don't need it)
    third_party = set(get_imports(str(path))) - set(sys.stdlib_module_names)
    assert third_party <= {"torch", "transformers", "safetensors"}, third_party
    assert get_relative_imports(str(path)) == ([] if name == "configuration_rpg.py" else ["configuration_rpg"])


def test_saved_folder_carries_the_files_and_auto_map(folders):
    path, _ = folders["timm"]
    for name in REMOTE_CODE_FILES:
        assert (path / name).read_bytes() == (REMOTE_CODE_DIR / name).read_bytes()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_rpg.RPGConfig",
                               "AutoModelForImageClassification": "modeling_rpg.RPGForImageClassification"}
    assert cfg["model_type"] == "rpg"


def test_constants_and_versions_match_the_package():
    assert remote_cfg.GENERATOR_VERSION == package_generator.GENERATOR_VERSION
    assert remote_cfg.SUPPORTED_GENERATOR_VERSIONS == package_generator.SUPPORTED_GENERATOR_VERSIONS
    for name in ("MASK32", "MASK64", "GOLDEN64", "HASH_MUL1", "HASH_MUL2", "NUM_ROUNDS", "MAX_LAYER_SIZE"):
        assert getattr(remote, name) == getattr(package_generator, name), name
    from rpg_hf import spec

    assert (remote_cfg.SCOPES, remote_cfg.REFERENCE_FAN) == (spec.SCOPES, spec.REFERENCE_FAN)
    assert issubclass(rpg_hf.RPGConfig, remote_cfg.RPGConfig)  # one definition of the config format
    model = rpg_hf.RPGForImageClassification(_timm_cfg())
    assert type(model.image_processor()).__name__ == remote_cfg.IMAGE_PROCESSOR_TYPE


# ------------------------------------------------------------------ the pinned construction


def test_remote_construction_golden_vectors():
    assert remote.mix64(0) == 0xE220A8397B1DCDAF
    v = remote.hash32(torch.arange(4, dtype=torch.int64), 0x12345678)
    assert v.tolist() == [2838851077, 1587700696, 920116665, 593785079]
    for position, (n, start, first_idx, first_sign) in GOLDEN.items():
        slot = remote.LayerSlot(position, (n,), start, 1.0, seed=0)
        idx, neg = remote.layer_indices(slot, RING)
        assert idx[:8].tolist() == first_idx
        assert (1 - 2 * neg[:8].int()).tolist() == first_sign
        spec_idx, spec_sign = spec_v1.layer_indices(n, start, RING, seed=0, position=position)
        assert idx.tolist() == spec_idx and (1 - 2 * neg.int()).tolist() == spec_sign


@pytest.mark.parametrize("seed", [0, 7, 2**63 + 5])
def test_remote_keys_match_the_spec(seed):
    for position in (0, 1, 17, 999):
        rounds, sign = remote.layer_keys(seed, position)
        assert [*rounds, sign] == spec_v1.sub_keys(seed, position)
        keys = package_generator.LayerKeys.derive(seed, position)
        assert (rounds, sign) == (keys.rounds, keys.sign)


@pytest.mark.parametrize("permute,sign_flip", [(True, True), (False, True), (True, False), (False, False)])
def test_remote_layers_equal_the_package(permute, sign_flip):
    ring = torch.randn(997, generator=torch.Generator().manual_seed(0))
    start = 0
    for position, shape in enumerate([(64, 3, 3, 3), (128, 64, 1, 1), (10, 7), (1,), (2**20 + 17,)]):
        mult = 0.123456789 * (position + 1)
        ours = remote.LayerSlot(position, shape, start, mult, 11, permute, sign_flip)
        theirs = LayerSlot(position, shape, start, mult, 11, permute, sign_flip)
        assert ours.multiplier == theirs.multiplier
        idx, neg = remote.layer_indices(ours, ring.numel())
        ref_idx, ref_neg = layer_indices(theirs, ring.numel())
        assert torch.equal(idx, ref_idx) and torch.equal(neg, ref_neg)
        w = remote.generate_layer(ring, ours)
        assert w.shape == shape
        assert torch.equal(w.view(-1).view(torch.int32), generate_layer(ring, theirs).view(-1).view(torch.int32))
        start += ours.numel


def test_remote_int8_codec_equals_the_package():
    from rpg_hf.compress import quantization

    ring = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    for block in (None, 64, 999):
        ours = remote.quantize_ring(ring, block)
        theirs = quantization.quantize_ring(ring, block_size=block).to_tensors("")
        assert set(ours) == set(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), (block, k)
        packed = {f"r{k}": v for k, v in ours.items()}
        assert torch.equal(remote.dequantize_state_dict(packed)["r"], quantization.dequantize_state_dict(packed)["r"])


# ------------------------------------------------------------------ in process: the remote classes


@pytest.mark.parametrize("name", ["timm", "vit", "int8"])
def test_remote_classes_expand_like_the_package(folders, name):
    path, package = folders[name]
    model = remote.RPGForImageClassification.from_pretrained(path).eval()
    assert type(model).__module__ == remote.__name__
    ours = model.generator.generate_all()
    theirs = package.generator.generate_all()
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(_logits(model, _x()), _logits(package, _x()))
    plain = model.expand().eval()
    with torch.no_grad():
        out = plain(pixel_values=_x()).logits if name == "vit" else plain(_x())
    assert torch.equal(out, _logits(package, _x()))


def test_remote_model_trains_saves_and_reloads(folders, tmp_path):
    path, _ = folders["timm"]
    model = remote.RPGForImageClassification.from_pretrained(path)
    before = _logits(model.eval(), _x())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        out = model(_x(4), labels=torch.tensor([0, 1, 2, 0]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    after = _logits(model.eval(), _x())
    assert not torch.equal(before, after)  # the cache saw the in-place ring update
    twin = copy.deepcopy(model)  # EMA-style copies work: no graph is left on the modules
    assert torch.equal(_logits(twin, _x()), after)
    model.save_pretrained(tmp_path / "resaved")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *REMOTE_CODE_FILES} <= set(
        os.listdir(tmp_path / "resaved"))
    package = AutoModelForImageClassification.from_pretrained(tmp_path / "resaved").eval()
    assert type(package) is rpg_hf.RPGForImageClassification
    assert torch.equal(_logits(package, _x()), after)


def test_trust_remote_code_with_rpg_hf_imported_uses_the_package(folders):
    path, package = folders["timm"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    assert type(config) is rpg_hf.RPGConfig
    model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
    assert type(model) is rpg_hf.RPGForImageClassification
    assert torch.equal(_logits(model, _x()), _logits(package, _x()))


def _break(path: Path, tmp_path: Path, how: str) -> Path:
    import shutil

    dst = tmp_path / how
    shutil.copytree(path, dst)
    cfg = json.loads((dst / "config.json").read_text())
    tensors = load_file(dst / "model.safetensors")
    if how == "dof":
        cfg.update(dof=cfg["dof"] + 1000, ring_sizes=[cfg["dof"] + 1000])
    elif how == "version":
        cfg["generator_version"] = 99
    elif how == "missing":
        tensors.pop("backbone.rpg.rings.0")
    elif how == "nan":
        tensors["backbone.rpg.rings.0"][5] = float("nan")
    (dst / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("how,error,match", [
    ("dof", CheckpointError, "has 2000 entries, but the config says dof=3000"),
    ("version", ValueError, "unknown RPG generator_version 99"),
    ("missing", CheckpointError, "has no ring tensor 'backbone.rpg.rings.0'"),
    ("nan", CheckpointError, "holds 1 NaN/Inf value"),
])
def test_remote_errors_are_the_package_errors(folders, tmp_path, how, error, match):
    bad = _break(folders["timm"][0], tmp_path, how)
    with pytest.raises(error, match=match) as theirs:
        AutoModelForImageClassification.from_pretrained(bad)
    with pytest.raises(error, match=match) as ours:
        remote.RPGForImageClassification.from_pretrained(bad)
    assert str(ours.value) == str(theirs.value)


# ------------------------------------------------------------------ a process without rpg_hf

BLOCKED = textwrap.dedent('''
    import importlib.abc, json, sys

    class NoRpgHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "rpg_hf" or name.startswith("rpg_hf."):
                raise ImportError(f"rpg_hf is not installed here ({name})")
            return None

    sys.meta_path.insert(0, NoRpgHf())
    import numpy as np
    import timm
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    folders, out = json.loads(sys.argv[1]), sys.argv[2]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    report = {}
    for name, path in folders.items():
        if name.startswith("bad-"):
            try:
                AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)
                report[name] = "loaded"
            except Exception as err:
                report[name] = [type(err).__name__, str(err)]
            continue
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(x).logits, f"{out}/{name}.pt")
        report[name] = type(model).__module__
    try:
        AutoModelForImageClassification.from_pretrained(folders["timm"])
        report["no-trust"] = "loaded"
    except ValueError as err:
        report["no-trust"] = str(err)
    clf = pipeline("image-classification", model=folders["timm"], trust_remote_code=True)
    report["pipeline"] = clf(Image.fromarray(np.full((40, 50, 3), 128, dtype=np.uint8)))
    try:
        timm.create_model("local-dir:" + folders["timm"], pretrained=True)
        report["timm.create_model"] = "loaded"
    except Exception as err:
        report["timm.create_model"] = [type(err).__name__, str(err)]
    report["rpg_hf_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "rpg_hf")
    with open(f"{out}/report.json", "w") as f:
        json.dump(report, f)
''')


def test_trust_remote_code_without_rpg_hf(folders, tmp_path):
    paths = {name: str(path) for name, (path, _) in folders.items()}
    for how in ("dof", "version", "nan"):
        paths[f"bad-{how}"] = str(_break(folders["timm"][0], tmp_path, how))
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKED)
    # the same thread count as this process: CPU convolutions may round differently with another
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(script), json.dumps(paths), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rpg_hf_imported"] == []
    for name in ("timm", "vit", "int8"):
        assert report[name].startswith("transformers_modules.") and report[name].endswith(".modeling_rpg")
        assert torch.equal(torch.load(tmp_path / f"{name}.pt"), _logits(folders[name][1], _x())), name
    assert report["bad-dof"] == ["CheckpointError", *report["bad-dof"][1:]]
    assert "has 2000 entries, but the config says dof=3000" in report["bad-dof"][1]
    assert report["bad-version"][0] == "ValueError" and "unknown RPG generator_version 99" in report["bad-version"][1]
    assert report["bad-nan"][0] == "CheckpointError" and "holds 1 NaN/Inf value" in report["bad-nan"][1]
    assert "trust_remote_code=True" in report["no-trust"]
    assert {o["label"] for o in report["pipeline"]} == set(LABELS.values())
    # timm cannot know rpg. without rpg_hf, but it says so at the top, not with a TypeError deep inside
    assert report["timm.create_model"][0] == "RuntimeError"
    assert "Unknown model (rpg.test_resnet)" in report["timm.create_model"][1]
