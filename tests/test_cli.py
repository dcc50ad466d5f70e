"""`rpg-hf` subcommands through the installed console script (subprocesses, offline)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from transformers import ViTConfig, ViTForImageClassification

import rpg_hf

RPG_HF = str(Path(sys.executable).parent / "rpg-hf")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([RPG_HF, *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"rpg-hf {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "test-resnet-rpg"
    proc = run("convert", "test_resnet", str(out), "--dof", "2000", "--num-labels", "3", "--image-size", "32")
    assert "dof=2,000" in proc.stdout
    return out


def _x(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_help_of_every_subcommand(capsys):
    assert "convert" in run("--help").stdout  # the installed console script
    from rpg_hf.cli import main

    for sub in ("convert", "info", "expand", "card", "push", "scaling", "fold", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([sub, "--help"])
        assert exit_info.value.code == 0
        assert "usage: rpg-hf " + sub in capsys.readouterr().out


def test_convert_and_info(converted):
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(os.listdir(converted))
    text = run("info", str(converted)).stdout
    assert f"generator_version={rpg_hf.GENERATOR_VERSION}" in text and "compression" in text and "model.safetensors" in text
    info = json.loads(run("info", str(converted), "--json").stdout)
    assert info["dof"] == 2000 and info["architecture"] == "test_resnet" and info["files"]["model.safetensors"] > 0
    assert rpg_hf.RPGConfig.from_pretrained(converted).spec == rpg_hf.RPGSpec(dof=2000)  # flags not given: defaults


def test_convert_reaches_every_spec_option(tmp_path, capsys):
    """The ring flags come from RPGSpec: the spec options beyond --dof/--seed/--scope reach the config."""
    from rpg_hf.cli import main

    main(["convert", "test_resnet", str(tmp_path / "c"), "--dof", "700", "--num-labels", "2", "--seed", "3",
          "--scope", "stage", "--no-permute", "--no-sign-flip", "--no-exclude-head", "--include", "layer", "fc",
          "--exclude", "downsample", "--reference-fan", "576", "--linear-std", "0.05"])
    assert "dof=700" in capsys.readouterr().out
    config = rpg_hf.RPGConfig.from_pretrained(tmp_path / "c")
    assert config.spec == rpg_hf.RPGSpec(dof=700, seed=3, scope="stage", permute=False, sign_flip=False,
                                         exclude_head=False, include=("layer", "fc"), exclude=("downsample",),
                                         reference_fan=576, linear_std=0.05)
    assert "fc" in {layer["name"] for layer in config.generated_layers}


def test_expand_timm_loads_in_timm_with_equal_outputs(converted, tmp_path):
    run("expand", str(converted), str(tmp_path / "plain"))
    plain = timm.create_model(f"local-dir:{tmp_path / 'plain'}", pretrained=True).eval()
    rpg = rpg_hf.RPGForImageClassification.from_pretrained(converted).eval()
    with torch.no_grad():
        assert torch.equal(plain(_x()), rpg(_x()).logits)
    # a timm export is a timm folder only: asking for a transformers folder is refused, not ignored
    from rpg_hf.cli import main

    with pytest.raises(SystemExit, match="a timm backbone exports as a timm folder.*TimmWrapper"):
        main(["expand", str(converted), str(tmp_path / "p2"), "--format", "transformers"])
    assert not (tmp_path / "p2").exists()


def test_timm_export_loads_as_a_transformers_folder(converted, tmp_path):
    from transformers import AutoModelForImageClassification

    rpg = rpg_hf.RPGForImageClassification.from_pretrained(converted).eval()
    rpg_hf.save_expanded(rpg, tmp_path / "plain")
    wrapped = AutoModelForImageClassification.from_pretrained(tmp_path / "plain").eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(_x()).logits, rpg(_x()).logits, rtol=0, atol=1e-6)


def test_convert_vit_and_expand_to_transformers(tmp_path):
    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8).save_pretrained(tmp_path / "vitcfg")
    run("convert", str(tmp_path / "vitcfg"), str(tmp_path / "vit-rpg"), "--dof", "1500", "--num-labels", "4",
        "--image-size", "32")
    run("expand", str(tmp_path / "vit-rpg"), str(tmp_path / "vit-plain"), "--format", "transformers")
    plain = ViTForImageClassification.from_pretrained(tmp_path / "vit-plain").eval()
    rpg = rpg_hf.RPGForImageClassification.from_pretrained(tmp_path / "vit-rpg").eval()
    with torch.no_grad():
        assert torch.equal(plain(_x()).logits, rpg(_x()).logits)
    proc = run("expand", str(tmp_path / "vit-rpg"), str(tmp_path / "x"), "--format", "timm", check=False)
    assert proc.returncode != 0 and "transformers folder" in proc.stderr


def test_card_with_results(converted, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"dataset": "fashion_mnist", "split": "test", "top1": 88.5, "top5": 99.1}))
    run("card", str(converted), "--results", str(results), "--recipe-command", "rpg-hf demo")
    card = ModelCard.load(converted / "README.md")
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values["Top-1 accuracy"] == pytest.approx(88.5) and values["Top-5 accuracy"] == pytest.approx(99.1)
    assert "rpg-hf demo" in card.text


def test_push_sends_folder_with_card(converted, tmp_path):
    """The real entry function with only huggingface_hub's network calls replaced."""
    script = tmp_path / "push.py"
    script.write_text(
        "import json, os, sys\n"
        "from unittest import mock\n"
        "from rpg_hf.cli import main\n"
        "sent = {}\n"
        "def commit(self, repo_id, operations, **kw):\n"
        "    sent.update({op.path_in_repo: os.path.getsize(op.path_or_fileobj) for op in operations})\n"
        "    sent['__revision'] = kw.get('revision')\n"
        "    return mock.MagicMock(commit_url='u')\n"
        "with mock.patch('huggingface_hub.HfApi.create_repo') as repo, "
        "mock.patch('huggingface_hub.HfApi.create_branch'), mock.patch('huggingface_hub.HfApi.create_commit', commit):\n"
        "    repo.return_value = mock.MagicMock(repo_id='org/tiny')\n"
        "    main(sys.argv[1:])\n"
        "    sent['__private'] = repo.call_args.kwargs['private']\n"
        "print(json.dumps(sent))\n"
    )
    proc = subprocess.run([sys.executable, str(script), "push", str(converted), "org/tiny", "--private",
                           "--revision", "dev"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sent["__private"] is True and sent["__revision"] == "dev"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert sent[name] == (converted / name).stat().st_size


def test_scaling_fit_and_plot(tmp_path):
    for i, dof in enumerate([1_000, 10_000, 100_000, 1_000_000]):
        err = 2.0 * dof ** -0.25
        (tmp_path / f"run{i}.json").write_text(json.dumps(
            {"arch": "resnet18", "method": "rpg", "dof": dof, "top1": 1 - err, "seed": 0}))
    out = run("scaling", str(tmp_path / "run*.json"), "--plot", str(tmp_path / "law.png"), "--predict", "50000")
    assert "alpha=0.2500" in out.stdout and "predicted top-1 at DoF 50,000" in out.stdout
    assert (tmp_path / "law.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
