"""recipes/train.py and rpg_hf.train: the issue-5 acceptance checks, on CPU and offline.

Why these tests: the recipe's promises are easy to break silently — a multi-process run that
does not actually shard, a resume that replays or skips batches, a card without the result, a
README command with a flag that no longer exists.  Each is checked on a tiny imagefolder
generated here (3 colour-coded classes of 16×16 PNGs, so the loss falls within a few steps):

* two CPU processes over gloo (``accelerate launch --multi_gpu`` with ``ACCELERATE_USE_CPU``;
  ``--cpu`` alone starts a single process) train, checkpoint, and write a ring-only model whose
  card holds the evaluation result;
* those two processes with half the per-process batch end with the same ring as one process with
  the full batch, and so does gradient accumulation.  The model is a tiny transformers ViT: its
  LayerNorms do not depend on the batch, whereas BatchNorm statistics are per process in DDP;
* a run stopped after 4 steps (mid-epoch) and resumed ends with the same ring, bit for bit
  (torch.equal on every saved tensor);
* every flag used in recipes/README.md's commands exists, every YAML in recipes/configs loads, and
  the flag spellings (``--batch-size``, ``--no-permute``, ``--resume`` with or without a value,
  ``--scale MIN MAX``, JSON ``--model-args``) keep their meaning.

One process runs in this interpreter (``train.main``), which saves ~10 s of imports per run;
Accelerate's singletons are reset after each such run.  The two-process launch (~20 s on 2 CPU
cores, mostly interpreter start-up) is marked ``slow`` (``pytest -m slow``); the default run keeps
the one-process, gradient-accumulation and resume checks and the sharding arithmetic.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
CONFIGS = RECIPES / "configs"
TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "intermediate_size": 64, "patch_size": 8})
STEPS = 9  # 3 epochs of 3 steps (24 images, global batch 8)
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


def _load_recipe(name: str):
    return importlib.import_module(f"recipes.{name}")


@pytest.fixture(scope="module")
def train_recipe():
    return _load_recipe("train")


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory) -> Path:
    """ImageNet's layout: train/<class>/*.png (8 per class) and val/<class>/*.png (4 per class)."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for c, colour in enumerate(COLOURS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 40, (16, 16, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _args(data: Path, out: Path, *extra: str, batch: int = 8) -> list[str]:
    return ["--data", str(data), "--val-split", "val", "--cache-dir", str(data.parent / f"{data.name}-cache"),
            "--arch", "vit", "--vit-config", TINY_VIT, "--dof", "2000", "--image-size", "16",
            "--optimizer", "sgd", "--lr", "0.05", "--max-steps", str(STEPS), "--batch-size", str(batch),
            "--num-workers", "0", "--log-every", "1", "--checkpoint-every", "3", "--eval-every", "3",
            "--log-with", "none", "--no-progress", "--output-dir", str(out), *extra]


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_in_process(recipe, argv: list[str]) -> dict:
    try:
        return recipe.main(argv)
    finally:
        _reset_accelerate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerate_bin() -> list[str]:
    exe = Path(sys.executable).parent / "accelerate"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]


def _final_tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit for bit: same keys, dtypes, shapes and values (torch.equal)."""
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (
            f"{key}: max |diff| {(a[key].double() - b[key].double()).abs().max().item():.3g}")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        assert diff <= atol, f"{key}: max |diff| {diff:.3g} > {atol}"


@pytest.fixture(scope="module")
def two_process_run(imagefolder, tmp_path_factory) -> Path:
    """`accelerate launch` with two CPU processes, per-process batch 4, TensorBoard on."""
    out = tmp_path_factory.mktemp("two-proc") / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out.parent / "hf-home")}
    cmd = [*_accelerate_bin(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           str(RECIPES / "train.py"), *_args(imagefolder, out, batch=4)]
    cmd[cmd.index("none")] = "tensorboard"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def one_process_run(train_recipe, imagefolder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-proc") / "run"
    run_in_process(train_recipe, _args(imagefolder, out))
    return out


# --------------------------------------------------------------------------- acceptance


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_card(two_process_run):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForImageClassification

    import rpg_hf
    from rpg_hf.hf.remote_code import REMOTE_CODE_FILES

    out = two_process_run
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch_size"] == 8 and results["steps"] == STEPS
    assert results["method"] == "rpg" and results["dof"] == 2000 and results["compression"] > 1

    losses = [r["train/loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if "train/loss" in r]
    assert len(losses) == STEPS
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), f"loss did not go down: {losses}"

    # Accelerate's automatic naming: checkpoint_<i>, the registered run state written last
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    files = set(os.listdir(out / "checkpoints" / checkpoints[-1]))
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl",
            "random_states_1.pkl"} <= files
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events written"

    model_dir = out / "model"
    assert sorted(os.listdir(model_dir)) == sorted(["README.md", "config.json", "model.safetensors",
                                                    "preprocessor_config.json", *REMOTE_CODE_FILES])
    stored = _final_tensors(out)
    model = AutoModelForImageClassification.from_pretrained(model_dir)
    assert isinstance(model, rpg_hf.RPGForImageClassification)
    # ring-only: the ring and the free tensors, nothing generated (transformers 5 stores ViT tensors
    # under their v4 names, so count elements rather than compare names)
    table = rpg_hf.dof_table(model.backbone)
    buffers = sum(b.numel() for b in model.buffers())
    assert sum(t.numel() for t in stored.values()) == table.dof + table.free_params + buffers
    assert table.generated_params > 5 * table.dof and stored["backbone.rpg.rings.0"].numel() == 2000
    assert torch.equal(model.state_dict()["backbone.rpg.rings.0"], stored["backbone.rpg.rings.0"])

    card = ModelCard.load(model_dir / "README.md")
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert metrics["Top-1 accuracy"] == pytest.approx(results["top1"])
    assert metrics["Top-5 accuracy"] == pytest.approx(results["top5"])
    assert card.data.eval_results[0].dataset_split == "val"


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_full_batch(two_process_run, one_process_run):
    one = json.loads((one_process_run / "results.json").read_text())
    assert one["world_size"] == 1 and one["global_batch_size"] == 8
    _assert_close(_final_tensors(two_process_run), _final_tensors(one_process_run), atol=1e-5)


def test_two_processes_split_each_epoch(train_recipe):
    """Fast stand-in for the slow two-process launch: the step arithmetic it relies on, by hand."""
    from argparse import Namespace

    steps = train_recipe.steps_per_epoch
    # 24 images, 4 per process: 6 batches, 3 per process when 2 processes shard them
    assert steps(24, Namespace(batch_size=4, grad_accum=1), 2) == 3
    assert steps(24, Namespace(batch_size=8, grad_accum=1), 1) == 3  # the same global batch on one process
    assert steps(24, Namespace(batch_size=4, grad_accum=2), 1) == 3  # ... or accumulated
    assert steps(26, Namespace(batch_size=4, grad_accum=1), 2) == 3  # drop_last: the 2 spare images wait
    with pytest.raises(SystemExit, match="do not fill one batch"):
        steps(7, Namespace(batch_size=4, grad_accum=1), 2)


def test_gradient_accumulation_matches_the_full_batch(train_recipe, imagefolder, one_process_run, tmp_path):
    out = tmp_path / "accum"
    run_in_process(train_recipe, _args(imagefolder, out, "--grad-accum", "2", batch=4))
    assert json.loads((out / "results.json").read_text())["global_batch_size"] == 8
    _assert_close(_final_tensors(out), _final_tensors(one_process_run), atol=1e-5)


def test_resume_mid_epoch_matches_an_uninterrupted_run(train_recipe, imagefolder, one_process_run, tmp_path):
    out = tmp_path / "resumed"
    # --resume with no checkpoint yet starts from scratch, as a requeued job's first attempt does.
    first = run_in_process(train_recipe, _args(imagefolder, out, "--resume", "--stop-after-steps", "4"))
    assert first == {"stopped_at": 4, "output_dir": str(out)}
    assert not (out / "model").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]  # steps 3, 4
    (out / "checkpoints" / "checkpoint_2").mkdir()  # a save_state cut short by the pre-emption: skipped, removed
    (out / "checkpoints" / "checkpoint_2" / "model.safetensors").write_bytes(b"")
    run_in_process(train_recipe, _args(imagefolder, out, "--resume", "--keep-checkpoints", "3"))
    # the resumed run numbers its checkpoints on (steps 6, 9) and drops the oldest beyond --keep-checkpoints
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_1", "checkpoint_3", "checkpoint_4"]
    _assert_identical(_final_tensors(out), _final_tensors(one_process_run))
    resumed = json.loads((out / "results.json").read_text())
    uninterrupted = json.loads((one_process_run / "results.json").read_text())
    assert resumed["top1"] == uninterrupted["top1"] and resumed["steps"] == STEPS
    assert [e["step"] for e in resumed["evals"]] == [3, 6, 9]


def test_resume_from_a_given_checkpoint_folder(train_recipe, imagefolder, one_process_run, tmp_path):
    out = tmp_path / "rewound"
    run_in_process(train_recipe, _args(imagefolder, out, "--stop-after-steps", "4"))
    (out / "checkpoints" / "checkpoint_2").mkdir()  # incomplete: no run state
    with pytest.raises(SystemExit, match="not a complete checkpoint"):
        run_in_process(train_recipe, _args(imagefolder, out, "--resume", str(out / "checkpoints" / "checkpoint_2")))
    # back to step 3 (checkpoint_0) although step 4 is newer: the same ring, new checkpoints after the old ones
    run_in_process(train_recipe, _args(imagefolder, out, "--resume", str(out / "checkpoints" / "checkpoint_0"),
                                       "--keep-checkpoints", "0"))
    _assert_identical(_final_tensors(out), _final_tensors(one_process_run))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"checkpoint_{i}" for i in (0, 1, 3, 4)]


def test_vanilla_baseline_is_saved_as_a_timm_folder_with_a_card(train_recipe, imagefolder, tmp_path):
    import timm
    from huggingface_hub import ModelCard

    out = tmp_path / "vanilla"
    argv = _args(imagefolder, out, "--model", "vanilla", "--max-steps", "2")
    argv[argv.index("vit"):argv.index("--dof")] = ["test_resnet"]  # drop --vit-config: a timm CNN with BatchNorm
    results = run_in_process(train_recipe, argv)
    assert results["method"] == "vanilla" and results["compression"] == 1.0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == ["class0", "class1", "class2"]
    model = timm.create_model(f"local-dir:{out / 'model'}")
    assert sum(p.numel() for p in model.parameters()) == results["trainable_params"]
    card = ModelCard.load(out / "model" / "README.md")
    assert {r.metric_name for r in card.data.eval_results} == {"Top-1 accuracy", "Top-5 accuracy"}


# --------------------------------------------------------------------------- configs and README


def test_paper_setting_yamls_parse_with_the_intended_recipe(train_recipe):
    import timm

    from rpg_hf import RPGSpec
    from rpg_hf.reparam import plan_layers

    yamls = {p.stem: p for p in CONFIGS.glob("*.yaml") if p.stem.startswith(("resnet", "vit"))}
    assert set(yamls) == {"resnet18_45k", "resnet18_2m", "resnet18_full", "resnet34_45k", "resnet34_2m",
                          "resnet34_full", "vit_b16"}
    for name, path in yamls.items():
        args = train_recipe.parse_args(["--config", str(path), "--data", "/data/imagenet"])
        if name.startswith("resnet"):
            assert (args.optimizer, args.base_lr, args.lr_base_batch, args.momentum, args.weight_decay,
                    args.epochs) == ("sgd", 0.1, 256, 0.9, 1e-4, 90), name
            assert args.batch_size * 8 == 256
        else:
            assert (args.optimizer, args.schedule, args.label_smoothing, args.wd_skip_1d) == ("adamw", "cosine", 0.1, True)
            assert args.warmup_epochs == 5
    for arch in ("resnet18", "resnet34"):  # full-equivalent DoF = one ring entry per generated weight
        layers, _ = plan_layers(timm.create_model(arch), RPGSpec(dof=1))
        args = train_recipe.parse_args(["--config", str(yamls[f"{arch}_full"]), "--data", "x"])
        assert args.dof == sum(layer.numel for layer in layers)
    cli = train_recipe.parse_args(["--config", str(yamls["resnet18_45k"]), "--data", "x", "--dof", "7", "--batch-size", "4"])
    assert (cli.dof, cli.batch_size) == (7, 4)  # the command line wins over the YAML


def _train_configs() -> list[Path]:
    """recipes/configs/*.yaml whose keys are train.py flags (the others are Accelerate configs)."""
    import yaml

    return [p for p in sorted(CONFIGS.glob("*.yaml")) if "compute_environment" not in yaml.safe_load(p.read_text())]


def test_every_train_config_parses_to_its_values(train_recipe):
    import yaml

    configs = _train_configs()
    assert len(configs) == 7
    for path in configs:
        args = vars(train_recipe.parse_args(["--config", str(path), "--data", "x"]))
        for key, value in yaml.safe_load(path.read_text()).items():
            assert args[key.replace("-", "_")] == value, (path.name, key)


def test_help_lists_every_flag_group(train_recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_recipe.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--batch-size", "--resume", "--scale", "--model-args", "--init-from", "--config",
                 "--dof", "--seed", "--scope", "--no-permute", "--no-sign-flip"):
        assert flag in text, flag
    assert "ring (rpg_hf.RPGSpec):" in text and "optimization:" in text
    assert "(default: None)" not in text  # each default is named once


def test_flag_spellings(train_recipe, tmp_path):
    """The spellings the README, the configs and existing job scripts use keep their meaning."""
    parse = train_recipe.parse_args
    base = parse(["--data", "x"])
    assert (base.resume, base.permute, base.sign_flip, base.scale, base.dof, base.nesterov) == (
        None, True, True, (0.08, 1.0), 45_000, False)
    a = parse(["--data", "x", "--batch-size", "16", "--grad_accum", "2", "--no-permute", "--no-sign-flip",
               "--scale", "0.2", "0.9", "--model-args", '{"in_chans": 1}', "--mean", "0.3", "--std", "0.4",
               "--nesterov", "--scope", "stage", "--resume"])
    assert (a.batch_size, a.grad_accum, a.permute, a.sign_flip, a.scale, a.scope) == (16, 2, False, False,
                                                                                      (0.2, 0.9), "stage")
    assert (a.model_args, a.mean, a.std, a.nesterov, a.resume) == ({"in_chans": 1}, [0.3], [0.4], True, "latest")
    assert parse(["--data", "x", "--resume", "runs/a/checkpoints/checkpoint_3"]).resume.endswith("checkpoint_3")
    assert parse(["--data", "x", "--mean", "0.5", "0.5", "0.5"]).mean == [0.5, 0.5, 0.5]
    vit = parse(["--data", "x", "--arch", "vit_b16"])
    assert (vit.optimizer, vit.schedule, vit.weight_decay, vit.base_lr) == ("adamw", "cosine", 0.05, 5e-4)
    config = tmp_path / "run.yaml"
    config.write_text("no-permute: true\nmodel_args: {in_chans: 1}\nscale: [0.3, 1.0]\nresume: latest\n")
    y = parse(["--config", str(config), "--data", "x", "--scale", "0.5", "1.0"])
    assert (y.permute, y.model_args, y.scale, y.resume, y.mean) == (False, {"in_chans": 1}, (0.5, 1.0), "latest", [0.5])
    for bad in (["--scale", "0.5"], ["--model-args", "{oops"], ["--scope", "layer"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit):
            parse(["--data", "x", *bad])
    with pytest.raises(SystemExit):
        parse([])  # --data is required


def test_unknown_yaml_key_is_refused(train_recipe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: resnet18\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit, match="learning_rate"):
        train_recipe.parse_args(["--config", str(bad), "--data", "x"])


def test_accelerate_configs_and_slurm_script_are_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    expected = {"single_gpu": (1, 1), "multi_gpu_8": (8, 1), "multi_node": (16, 2)}
    for name, (procs, machines) in expected.items():
        config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
        assert (config.num_processes, config.num_machines) == (procs, machines)
    script = CONFIGS / "slurm_multinode.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "$SLURM_PROCID", "--resume"):
        assert flag in text


def _readme_commands() -> list[list[str]]:
    text = (RECIPES / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


def _flags(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_every_flag_in_the_readme_commands_exists(train_recipe, capsys):
    from accelerate.commands.launch import launch_command_parser

    from rpg_hf.train import demo

    with pytest.raises(SystemExit):  # --help prints and exits
        train_recipe.parse_args(["--help"])
    help_text = capsys.readouterr().out
    eval_recipe = _load_recipe("eval_objectnet")
    with pytest.raises(SystemExit):
        eval_recipe.parse_args(["--help"])
    eval_help = capsys.readouterr().out
    known = {
        "recipes/train.py": set(re.findall(r"--[a-z][a-z0-9_-]*", help_text)),
        "recipes/eval_objectnet.py": set(re.findall(r"--[a-z][a-z0-9-]*", eval_help)),
        "accelerate": _flags(launch_command_parser()),
        "demo": _flags(demo.build_parser()),
    }
    checked = 0
    for tokens in _readme_commands():
        owner = "accelerate" if "accelerate" in tokens else None
        if tokens[:2] == ["rpg-hf", "demo"]:
            owner = "demo"
        for token in tokens:
            if token in known and token.startswith("recipes/"):
                owner = token
            elif token.startswith("--") and owner is not None:
                flag = token.split("=", 1)[0]
                assert flag in known[owner], f"README uses {flag} with {owner}, which has no such flag"
                checked += 1
    assert checked > 40  # the README really was parsed


def test_readme_yaml_and_config_paths_exist():
    text = (RECIPES / "README.md").read_text()
    for path in set(re.findall(r"recipes/configs/[\w.]+", text)):
        assert (ROOT / path).is_file(), path


# --------------------------------------------------------------------------- rpg_hf.train pieces


def test_lr_schedules():
    from rpg_hf.train.optim import lr_factor

    common = dict(total_steps=100, steps_per_epoch=10)
    assert lr_factor(0, schedule="cosine", warmup_steps=10, **common) == pytest.approx(0.1)
    assert lr_factor(9, schedule="cosine", warmup_steps=10, **common) == pytest.approx(1.0)
    assert lr_factor(99, schedule="cosine", warmup_steps=10, min_lr_ratio=0.1, **common) == pytest.approx(0.1, abs=1e-3)
    # step: x0.1 every 3 epochs; exponential: the reference code's 0.1 ** (epoch // 1 / 45)
    assert [lr_factor(s, schedule="step", decay_epochs=3, **common) for s in (29, 30, 60)] == pytest.approx([1, 0.1, 0.01])
    assert lr_factor(45 * 10, schedule="exponential", decay_epochs=45, **common) == pytest.approx(0.1)
    assert lr_factor(15, schedule="exponential", decay_epochs=45, **common) == pytest.approx(0.1 ** (1 / 45))
    with pytest.raises(ValueError, match="schedule"):
        lr_factor(0, schedule="linear", **common)


def test_data_order_and_augmentation_depend_only_on_seed_epoch_index(imagefolder):
    from rpg_hf.train.datasets import (
        EpochShuffleSampler,
        ImageClassificationDataset,
        build_transform,
        load_split,
    )

    sampler = EpochShuffleSampler(24, seed=3)
    first = list(sampler)
    sampler.use_epoch(1)
    assert sorted(first) == list(range(24)) and list(sampler) != first
    sampler.use_epoch(0)
    assert list(sampler) == first

    ds = load_split(imagefolder, "train", cache_dir=imagefolder.parent / f"{imagefolder.name}-cache")
    tf = build_transform(16, train=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5)
    data = ImageClassificationDataset(ds, tf, seed=0)
    a = data[5][0]
    torch.manual_seed(123)  # the global RNG state must not matter ...
    state = torch.get_rng_state()
    assert torch.equal(data[5][0], a)
    assert torch.equal(torch.get_rng_state(), state)  # ... nor be touched
    data.use_epoch(1)
    assert not torch.equal(data[5][0], a)


def test_ring_is_weight_decayed_even_when_1d_tensors_are_not():
    from rpg_hf.train.models import build_model
    from rpg_hf.train.optim import param_groups

    model = build_model("rpg", "vit", vit_config=json.loads(TINY_VIT), num_labels=3, dof=500, image_size=16)
    decay, no_decay = param_groups(model, 0.05, skip_1d=True)
    ring = model.generator.rings[0]
    assert any(p is ring for p in decay["params"]) and not any(p is ring for p in no_decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_evaluate_counts_topk_over_batches():
    from rpg_hf.train.evaluate import evaluate

    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([0, 2, 0, 2])
    model = torch.nn.Identity()
    res = evaluate(model, [(logits[:3], labels[:3]), (logits[3:], labels[3:])], ks=(1, 2))
    assert res["top1"] == pytest.approx(25.0) and res["top2"] == pytest.approx(50.0) and res["n"] == 4
