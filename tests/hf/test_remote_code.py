"""trust_remote_code loading: the files every checkpoint carries, checked against the package.

* the files import nothing but torch / transformers / safetensors (timm only inside a try), and
  never rpg_hf — checked on the source and with transformers' own import scanner; they import each
  other relatively, so transformers' dynamic-module loader fetches every one of them;
* the pinned construction and the plain-PyTorch generation they carry are the package's own
  ``rpg_hf.core`` modules, shipped verbatim (so ``tests/core`` checks them: golden vectors, spec),
  and the int8 codec is the package's; the remote classes expand like the package, weight for weight;
* a subprocess in which ``import rpg_hf`` raises loads timm and ViT checkpoints with
  ``trust_remote_code=True`` and gets the package's logits bit for bit (and the same errors),
  re-saves a folder that loads again, and still loads a folder of the old two-file layout;
* where rpg_hf is imported, ``trust_remote_code=True`` still yields the package's classes.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import break_checkpoint
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForImageClassification, ViTConfig
from transformers.dynamic_module_utils import get_imports, get_relative_import_files, get_relative_imports

import rpg_hf
import rpg_hf.hf.remote_code as remote_code
from rpg_hf.core import construction as package_construction
from rpg_hf.core import reference as package_reference
from rpg_hf.hf.checkpoint import CheckpointError
from rpg_hf.hf.remote_code import REMOTE_CODE_FILES, remote_code_sources
from rpg_hf.hf.remote_code import configuration_rpg as remote_cfg
from rpg_hf.hf.remote_code import modeling_rpg as remote
from rpg_hf.hf.remote_code import rpg_backbone as remote_backbone
from rpg_hf.hf.remote_code import rpg_checkpoint as remote_ckpt
from rpg_hf.reparam import identity as package_identity

LABELS = {0: "cat", 1: "dog", 2: "bird"}
ROOT = Path(__file__).resolve().parents[2]
SOURCES = remote_code_sources()  # file name in a checkpoint -> the package file it is copied from
REMOTE_CODE_DIR = Path(remote_code.__file__).resolve().parent
SHIPPED_CORE = {"construction.py": package_construction, "reference.py": package_reference,
                "identity.py": package_identity}


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
    """Ring-only folders written by the package: timm (global ring), ViT, timm with stage rings + int8
    (generator version 2, the default), and timm built with generator version 1."""
    root = tmp_path_factory.mktemp("remote")
    out = {}
    for name, cfg in [("timm", _timm_cfg()), ("vit", _vit_cfg()),
                      ("int8", _timm_cfg(dof=3000, scope="stage", ring_dtype="int8", ring_block_size=256)),
                      ("timm-v1", _timm_cfg(generator_version=1))]:
        model = rpg_hf.RPGForImageClassification(cfg).eval()
        with torch.no_grad():  # a trained-looking ring: not the seeded init a fresh load would redraw
            for ring in model.generator.rings:
                ring.mul_(1.5).add_(0.01)
        model.save_pretrained(root / name)
        loaded = AutoModelForImageClassification.from_pretrained(root / name).eval()
        out[name] = (root / name, loaded)
    return out


# ------------------------------------------------------------------ the files themselves


SIBLINGS = {name.removesuffix(".py") for name in REMOTE_CODE_FILES}


@pytest.mark.parametrize("name", REMOTE_CODE_FILES)
def test_remote_files_never_import_rpg_hf(name):
    path = SOURCES[name]
    tree = ast.parse(path.read_text())
    relative = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(not a.name.split(".")[0] == "rpg_hf" for a in node.names), ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports: only sibling files, as `from .name import ...` (what transformers scans)
                assert node.level == 1 and node.module in SIBLINGS, ast.dump(node)
                relative.add(node.module)
            else:
                assert node.module.split(".")[0] != "rpg_hf", ast.dump(node)
    assert "rpg_hf" not in {n.split(".")[0] for n in get_imports(str(path))}
    # what transformers demands be installed: timm only inside a try (ViT checkpoints don't need it)
    third_party = set(get_imports(str(path))) - set(sys.stdlib_module_names)
    assert third_party <= {"torch", "transformers", "safetensors"}, third_party
    assert set(get_relative_imports(str(path))) == relative  # transformers sees every relative import
    assert len(path.read_text().splitlines()) <= 400


def test_the_remote_files_are_this_folder_and_the_shipped_core_modules():
    """write_remote_code copies every file of the folder and the three pure-torch package modules, one
    source each: inside the package their sibling names are aliases of those modules."""
    here = {name for name, path in SOURCES.items() if path.parent == REMOTE_CODE_DIR}
    assert here == {p.name for p in REMOTE_CODE_DIR.glob("*.py")} - {"__init__.py"}
    assert set(SOURCES) == set(REMOTE_CODE_FILES) == here | set(SHIPPED_CORE)
    for name, module in SHIPPED_CORE.items():
        assert SOURCES[name] == Path(module.__file__).resolve()
        assert sys.modules[f"{remote_code.__name__}.{name[:-3]}"] is module  # the alias: one module object
    assert remote_backbone.LayerSlot is package_reference.LayerSlot
    assert remote_backbone.generate_layer is package_reference.generate_layer
    assert remote_cfg.check_generator_version is package_construction.check_generator_version
    assert (remote_cfg.GENERATOR_VERSION, remote_cfg.SUPPORTED_GENERATOR_VERSIONS) == (
        package_construction.GENERATOR_VERSION, package_construction.SUPPORTED_GENERATOR_VERSIONS)


def test_saved_folder_carries_the_files_and_auto_map(folders):
    path, _ = folders["timm"]
    for name in REMOTE_CODE_FILES:
        assert (path / name).read_bytes() == SOURCES[name].read_bytes()
    # what transformers' dynamic-module loader fetches from the folder: every file for the model,
    # the config and the construction (its generator_version check) for AutoConfig alone
    fetched = {Path(f).name for f in get_relative_import_files(str(path / "modeling_rpg.py"))}
    assert fetched | {"modeling_rpg.py"} == set(REMOTE_CODE_FILES)
    assert {Path(f).name for f in get_relative_import_files(str(path / "configuration_rpg.py"))} == {"construction.py"}
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_rpg.RPGConfig",
                               "AutoModelForImageClassification": "modeling_rpg.RPGForImageClassification"}
    assert cfg["model_type"] == "rpg"


def test_the_package_builds_on_the_remote_code():
    from rpg_hf import spec

    assert (remote_cfg.SCOPES, remote_cfg.REFERENCE_FAN) == (spec.SCOPES, spec.REFERENCE_FAN)
    assert issubclass(rpg_hf.RPGConfig, remote_cfg.RPGConfig)  # one definition of the config format
    assert issubclass(rpg_hf.RPGForImageClassification, remote.RPGForImageClassification)  # one save/load/forward
    model = rpg_hf.RPGForImageClassification(_timm_cfg())
    assert type(model.image_processor()).__name__ == remote_cfg.IMAGE_PROCESSOR_TYPE


def test_remote_int8_codec_is_the_package_codec():
    from rpg_hf.compress import quantization

    assert quantization.dequantize_state_dict is remote_ckpt.dequantize_state_dict
    ring = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    for block in (None, 64, 999):
        ours = remote_ckpt.quantize_ring(ring, block)
        theirs = quantization.quantize_ring(ring, block_size=block).to_tensors("")
        assert set(ours) == set(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), (block, k)


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




@pytest.mark.parametrize("how,error,match", [
    ("dof", CheckpointError, "has 2000 entries, but the config says dof=3000"),
    ("version", ValueError, "unknown RPG generator_version 99"),
    ("missing", CheckpointError, "has no ring tensor 'backbone.rpg.rings.0'"),
    ("nan", CheckpointError, "holds 1 NaN/Inf value"),
    ("seed", CheckpointError, "does not belong to its config.json: .*built with seed=3; .* built with seed=4"),
])
def test_remote_errors_are_the_package_errors(folders, tmp_path, how, error, match):
    bad = break_checkpoint(folders["timm"][0], tmp_path, how)
    with pytest.raises(error, match=match) as theirs:
        AutoModelForImageClassification.from_pretrained(bad)
    with pytest.raises(error, match=match) as ours:
        remote.RPGForImageClassification.from_pretrained(bad)
    assert str(ours.value) == str(theirs.value)


# ------------------------------------------------------------------ a process without rpg_hf

BLOCKED = textwrap.dedent('''
    import importlib.abc, json, os, sys

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
    # transformers fetched every sibling file; a re-save without rpg_hf writes them all, and loads again
    model = AutoModelForImageClassification.from_pretrained(folders["timm"], trust_remote_code=True).eval()
    report["module_files"] = sorted(os.listdir(os.path.dirname(sys.modules[type(model).__module__].__file__)))
    model.save_pretrained(f"{out}/resaved")
    report["resaved"] = sorted(os.listdir(f"{out}/resaved"))
    again = AutoModelForImageClassification.from_pretrained(f"{out}/resaved", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.save(again(x).logits, f"{out}/resaved.pt")
    report["rpg_hf_imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "rpg_hf")
    with open(f"{out}/report.json", "w") as f:
        json.dump(report, f)
''')


OLD_LAYOUT_COMMIT = "dddca55"  # the last commit whose checkpoints carried two files only


def _merged(names: tuple[str, ...]) -> str:
    """The shipped files ``names``, one after the other in one module, their relative imports
    dropped (but the one of ``configuration_rpg``)."""
    parts = []
    for name in names:
        tree = ast.parse(SOURCES[name].read_text())
        tree.body = [node for node in tree.body if not (
            isinstance(node, ast.ImportFrom) and (node.module == "__future__" or node.level and node.module in
                                                  SIBLINGS - {"configuration_rpg"})
            or isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        parts.append(ast.unparse(tree))
    return "from __future__ import annotations\n" + "\n\n".join(parts) + "\n"


def _two_file_layout(path: Path, dst: Path) -> Path:
    """``path`` as checkpoints were saved before the remote code was split: ``configuration_rpg.py``
    and ``modeling_rpg.py`` only — the files rpg_hf wrote at :data:`OLD_LAYOUT_COMMIT` where the
    repository has that history, else today's code merged into those two files."""
    shutil.copytree(path, dst)
    for name in REMOTE_CODE_FILES:
        (dst / name).unlink()
    tensors = load_file(dst / "model.safetensors")  # and the file of that time: no construction identity
    del tensors["backbone.rpg.construction"]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    for name in ("configuration_rpg.py", "modeling_rpg.py"):
        old = subprocess.run(["git", "show", f"{OLD_LAYOUT_COMMIT}:src/rpg_hf/remote_code/{name}"], cwd=ROOT,
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if old.returncode == 0:
            (dst / name).write_text(old.stdout)
        elif name == "configuration_rpg.py":
            (dst / name).write_text(_merged(("construction.py", "configuration_rpg.py")))
        else:
            (dst / name).write_text(_merged(("construction.py", "reference.py", "identity.py", "rpg_checkpoint.py",
                                             "rpg_backbone.py", "modeling_rpg.py")))
    assert get_relative_imports(str(dst / "modeling_rpg.py")) == ["configuration_rpg"]
    assert not get_relative_imports(str(dst / "configuration_rpg.py"))
    return dst


def test_trust_remote_code_without_rpg_hf(folders, tmp_path):
    paths = {name: str(path) for name, (path, _) in folders.items()}
    for how in ("dof", "version", "nan", "seed"):
        paths[f"bad-{how}"] = str(break_checkpoint(folders["timm"][0], tmp_path, how))
    # a file written before files carried the construction's identity: its trained ring is loaded, not re-drawn
    paths["old-file"] = str(break_checkpoint(folders["timm"][0], tmp_path, "old"))
    # the old two-file code knows generator version 1 only: a version-1 checkpoint
    paths["two-files"] = str(_two_file_layout(folders["timm-v1"][0], tmp_path / "two-files"))
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
    for name in ("timm", "vit", "int8", "timm-v1"):
        assert report[name].startswith("transformers_modules.") and report[name].endswith(".modeling_rpg")
        assert torch.equal(torch.load(tmp_path / f"{name}.pt"), _logits(folders[name][1], _x())), name
    timm_logits = _logits(folders["timm"][1], _x())
    assert report["two-files"].endswith(".modeling_rpg") and report["two-files"] != report["timm"]
    v1_logits = _logits(folders["timm-v1"][1], _x())
    assert torch.equal(torch.load(tmp_path / "two-files.pt"), v1_logits)  # the old layout still loads
    assert not torch.equal(v1_logits, timm_logits)  # the two versions do build different weights
    assert set(REMOTE_CODE_FILES) <= set(report["module_files"])
    assert report["resaved"] == sorted(["config.json", "model.safetensors", "preprocessor_config.json",
                                        *REMOTE_CODE_FILES])
    assert torch.equal(torch.load(tmp_path / "resaved.pt"), timm_logits)
    assert report["bad-dof"] == ["CheckpointError", *report["bad-dof"][1:]]
    assert "has 2000 entries, but the config says dof=3000" in report["bad-dof"][1]
    assert report["bad-version"][0] == "ValueError" and "unknown RPG generator_version 99" in report["bad-version"][1]
    assert report["bad-nan"][0] == "CheckpointError" and "holds 1 NaN/Inf value" in report["bad-nan"][1]
    assert report["bad-seed"][0] == "CheckpointError" and "built with seed=3" in report["bad-seed"][1]
    assert torch.equal(torch.load(tmp_path / "old-file.pt"), timm_logits)
    assert "trust_remote_code=True" in report["no-trust"]
    assert {o["label"] for o in report["pipeline"]} == set(LABELS.values())
    # timm cannot know rpg. without rpg_hf, but it says so at the top, not with a TypeError deep inside
    assert report["timm.create_model"][0] == "RuntimeError"
    assert "Unknown model (rpg.test_resnet)" in report["timm.create_model"][1]
