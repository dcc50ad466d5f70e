"""Trainer end to end: ring-only ``checkpoint-N/`` folders, exact resume, Hub pushes (network mocked).

What Trainer guarantees for a vanilla model is measured on a plain network of the same size
(timm ``test_resnet`` through transformers' own ``TimmWrapperForImageClassification``), and the RPG
model must match it: an interrupted run resumed from ``checkpoint-N`` ends where the
uninterrupted run ends.  Trainer's default optimizer is used (fused AdamW), with a warm-up +
linear schedule, so the optimizer and scheduler states take part.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import rpg_hf
from rpg_hf.hf.remote_code import REMOTE_CODE_FILES
from rpg_hf.hf.trainer_card import keep_rpg_card, merge_trainer_card

LABELS = {0: "cat", 1: "dog", 2: "bird"}
STEPS, SAVE_EVERY, STOP_AT = 6, 2, 4  # 12 images / batch 4: 3 steps an epoch, the stop is mid-epoch


def _rpg():
    cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=2000, num_labels=3, seed=0,
                           image_size=32, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return rpg_hf.RPGForImageClassification(cfg)


def _vanilla():
    torch.manual_seed(0)
    return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="test_resnet", num_labels=3))


def _data():
    g = torch.Generator().manual_seed(0)
    return [{"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": i % 3} for i in range(12)]


def _args(out: Path, max_steps: int = STEPS, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
                             learning_rate=3e-3, warmup_steps=1, report_to=[], use_cpu=True, seed=0,
                             dataloader_num_workers=0, save_strategy="steps", save_steps=SAVE_EVERY,
                             logging_steps=1, disable_tqdm=True, **kw)


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def _train(make_model, out: Path, *, stop: int | None = None, resume: Path | None = None) -> Trainer:
    trainer = Trainer(model=make_model(), args=_args(out), train_dataset=_data(),
                      callbacks=[_StopAt(stop)] if stop else [])
    assert trainer.args.optim == "adamw_torch_fused"  # Trainer's default, as users get it
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def _scrambled(model):
    """A model whose every parameter differs from the run's: the resume must overwrite all of them."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """For both models: an uninterrupted run, and one stopped at STOP_AT then resumed from its checkpoint."""
    root = tmp_path_factory.mktemp("trainer")
    out = {}
    for name, make in (("vanilla", _vanilla), ("rpg", _rpg)):
        full = _train(make, root / name / "full")
        _train(make, root / name / "cut", stop=STOP_AT)
        resumed = _train(lambda make=make: _scrambled(make()), root / name / "cut",
                         resume=root / name / "cut" / f"checkpoint-{STOP_AT}")
        out[name] = (root / name, _state(full.model), _state(resumed.model), full, resumed)
    return out


@pytest.mark.parametrize("name", ["vanilla", "rpg"])
def test_resume_ends_where_the_uninterrupted_run_ends(runs, name):
    _, full, resumed, full_trainer, resumed_trainer = runs[name]
    assert full_trainer.state.global_step == resumed_trainer.state.global_step == STEPS
    assert full.keys() == resumed.keys()
    differing = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differing, f"{name}: resumed run differs from the uninterrupted one in {differing[:5]}"
    losses = [e["loss"] for e in full_trainer.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed_trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS and resumed_losses == losses  # restored history + the same batches after it


def test_the_ring_trained(runs):
    _, full, _, _, _ = runs["rpg"]
    assert not torch.equal(full["backbone.rpg.rings.0"], _rpg().generator.rings[0].detach())


def test_every_checkpoint_is_ring_only_and_loads(runs):
    root, full, _, full_trainer, _ = runs["rpg"]
    model = full_trainer.model
    generated = {f"backbone.{layer['name']}.weight" for layer in model.config.generated_layers}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY):
        ckpt = root / "full" / f"checkpoint-{step}"
        files = set(os.listdir(ckpt))
        assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json", *REMOTE_CODE_FILES,
                "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files, files
        with safe_open(ckpt / "model.safetensors", framework="pt") as f:
            keys = set(f.keys())
        assert keys == set(model.state_dict()) and not keys & generated
        loaded = AutoModelForImageClassification.from_pretrained(ckpt).eval()
        assert type(loaded) is rpg_hf.RPGForImageClassification
        if step == STEPS:
            assert all(torch.equal(v, full[k]) for k, v in loaded.state_dict().items())
            with torch.no_grad():
                assert torch.equal(loaded(x).logits, model.eval()(x).logits)


def test_int8_checkpoints_resume(tmp_path):
    """An int8-ring config: Trainer's checkpoints store int8, and Trainer's own resume reads them back."""
    def make():
        model = _rpg()
        model.config.ring_dtype = "int8"
        return model

    trainer = _train(make, tmp_path, stop=SAVE_EVERY)
    ckpt = tmp_path / f"checkpoint-{SAVE_EVERY}"
    with safe_open(ckpt / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("backbone.rpg.rings.0").dtype == torch.int8
    ring = AutoModelForImageClassification.from_pretrained(ckpt).generator.rings[0].detach()
    assert (ring - trainer.model.generator.rings[0].detach()).abs().max() > 0  # quantized, not the float ring
    restored = _scrambled(make())
    restored.load_state_dict(load_file(ckpt / "model.safetensors"), False)  # what Trainer's resume does
    assert torch.equal(restored.generator.rings[0].detach(), ring)
    resumed = Trainer(model=make(), args=_args(tmp_path), train_dataset=_data())
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == STEPS


def test_push_to_hub_during_and_after_training(tmp_path):
    uploads = []

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, run_as_future=False, **kw):
        uploads.append((path_in_repo or "", set(os.listdir(folder_path))))
        if path_in_repo is None and not run_as_future:  # the final push: keep a copy to load from
            import shutil

            shutil.copytree(folder_path, tmp_path / "pushed", ignore=shutil.ignore_patterns("checkpoint-*", "_*"))
        done = Future()
        done.set_result(mock.MagicMock(commit_url="https://hub/commit"))
        return done if run_as_future else done.result()

    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, \
            mock.patch("huggingface_hub.HfApi.upload_folder", upload_folder):
        create_repo.return_value = mock.MagicMock(repo_id="org/test-resnet-rpg")
        args = _args(tmp_path / "out", push_to_hub=True, hub_model_id="org/test-resnet-rpg",
                     hub_strategy="checkpoint")
        model = _rpg()
        trainer = Trainer(model=model, args=args, train_dataset=_data(), processing_class=model.image_processor())
        keep_rpg_card(trainer)  # the one line: Trainer's README is merged into the RPG card, not written over it
        trainer.train()
        trainer.push_to_hub()
    checkpoint_pushes = [files for where, files in uploads if where == "last-checkpoint"]
    assert checkpoint_pushes and all({"model.safetensors", "config.json", *REMOTE_CODE_FILES} <= f
                                     for f in checkpoint_pushes)
    root_pushes = [files for where, files in uploads if where == ""]
    assert len(root_pushes) > 1  # during training (hub_strategy) and the final push: all complete RPG folders
    assert all({"config.json", "model.safetensors", "README.md", *REMOTE_CODE_FILES} <= f for f in root_pushes)
    for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY):
        files = set(os.listdir(tmp_path / "out" / f"checkpoint-{step}"))
        assert {"README.md", "config.json", "model.safetensors", *REMOTE_CODE_FILES} <= files
    final = uploads[-1][1]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", *REMOTE_CODE_FILES} <= final

    # the uploaded README: the RPG card and Trainer's training summary, with one valid metadata block
    card = ModelCard.load(tmp_path / "pushed" / "README.md")
    data = card.data
    assert data.library_name == "rpg_hf" and data.pipeline_tag == "image-classification"
    assert {"rpg", "ring-only", "generated_from_trainer"} <= set(data.tags)
    assert data.model_name == "org/test-resnet-rpg" and data.eval_results is not None  # a model-index the Hub reads
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()  # re-parses to the same metadata
    text = card.text
    assert "Recurrent Parameter Generator" in text and "## How to load" in text  # ours
    assert "\n#### Training hyperparameters" in text and "- learning_rate: 0.003" in text  # Trainer's, one level down
    assert "\n#### Framework versions" in text and "More information needed" not in text
    assert "This model was trained from scratch" in text and "[](https://huggingface.co/)" not in text
    assert text.count("<!-- rpg-hf:trainer:start -->") == 1 and text.index("## How to load") < text.index(
        "Training hyperparameters")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "pushed").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, trainer.model.eval()(x).logits)


def test_merging_twice_keeps_one_trainer_section_and_our_results():
    from huggingface_hub import EvalResult, ModelCardData

    from rpg_hf.hf.card_results import EvalEntry
    from rpg_hf.hf.cards import CardInfo, build_model_card

    ours = build_model_card(CardInfo.from_model(_rpg(), model_id="org/m"),
                            [EvalEntry(dataset_type="imagefolder", dataset_name="val", split="validation",
                                       metric_type="accuracy", metric_name="top-1", value=71.5)])
    trainer_data = ModelCardData(tags=["generated_from_trainer"], model_name="m", eval_results=[EvalResult(
        task_type="image-classification", dataset_type="imagefolder", dataset_name="val", dataset_split="validation",
        metric_type="loss", metric_name="Loss", metric_value=0.9)])
    theirs = ModelCard(f"---\n{trainer_data.to_yaml()}\n---\n# m\n\n## Model description\n\nMore information "
                       "needed\n\n## Training procedure\n\n### Training hyperparameters\n\n- seed: 0\n")
    once = merge_trainer_card(ours, theirs)
    twice = merge_trainer_card(ModelCard(str(once)), theirs)
    assert twice.text.count("<!-- rpg-hf:trainer:start -->") == 1
    assert "#### Training hyperparameters" in twice.text and "Model description" not in twice.text
    metrics = {(r.metric_type, r.metric_value) for r in twice.data.eval_results}
    assert metrics == {("accuracy", 71.5), ("loss", 0.9)}
