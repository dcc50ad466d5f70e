"""Model cards of ring-only checkpoints (rpg_hf.cards): render, parse, update, results JSON, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import huggingface_hub.repocard
import pytest
import timm
import torch
from conftest import tiny_vit
from huggingface_hub import EvalResult, ModelCard
from torch import nn

import rpg_hf
from rpg_hf.cards import (
    CITATION,
    RESULTS_END,
    RESULTS_START,
    TAGS,
    CardInfo,
    EvalEntry,
    build_model_card,
    results_from_json,
    update_card_results,
    write_model_card,
)


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Every card here is local: any Hub access is a bug."""

    def refuse(*args, **kwargs):
        raise AssertionError("model-card code tried to reach the Hub")

    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.repocard, "get_session", refuse)


@pytest.fixture(scope="module")
def rpg_resnet():
    torch.manual_seed(0)
    return rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=4), rpg_hf.RPGSpec(dof=5000, seed=7))


def _results() -> list[EvalEntry]:
    return [
        EvalEntry("Fashion-MNIST", "fashion_mnist", "test", "accuracy", "Top-1 accuracy", 91.25),
        EvalEntry("Fashion-MNIST", "fashion_mnist", "test", "accuracy", "Top-5 accuracy", 99.8),
        EvalEntry("ObjectNet", "objectnet", "test", "accuracy", "Top-1 accuracy", 12.5, config="imagenet-overlap-113"),
    ]


def _info(model, **kw) -> CardInfo:
    kw.setdefault("model_id", "rpg-org/test-resnet-rpg")
    kw.setdefault("datasets", ["fashion_mnist"])
    kw.setdefault("recipe_command", "python recipes/train_fashion_mnist.py --arch test_resnet --dof 5000 --seed 7")
    return CardInfo.from_model(model, **kw)


def _as_tuples(results) -> list[tuple]:
    return [(r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_name, r.metric_value)
            for r in results]


def test_card_info_from_model_matches_dof_table(rpg_resnet):
    info = CardInfo.from_model(rpg_resnet)
    totals = rpg_hf.dof_table(rpg_resnet)
    assert (info.architecture, info.backbone, info.num_labels) == ("test_resnet", "timm", 4)
    assert (info.dof, info.seed, info.scope, info.permute, info.sign_flip) == (5000, 7, "global", True, True)
    assert info.generator_version == rpg_hf.GENERATOR_VERSION and info.num_rings == 1
    assert info.trainable_params == totals.trainable_params and info.free_params == totals.free_params
    assert info.original_params == totals.original_params and info.generated_params == totals.generated_params
    assert info.compression == pytest.approx(totals.compression)
    assert info.model_id == "test_resnet-rpg-dof5000" and info.license == "apache-2.0"
    assert CardInfo.from_dict(info.to_dict()) == info
    with pytest.raises(TypeError):
        CardInfo.from_model(rpg_resnet, no_such_field=1)


def test_render_save_and_parse_back(rpg_resnet, tmp_path):
    info = _info(rpg_resnet)
    card = build_model_card(info, _results())
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.library_name == "rpg_hf" and data.pipeline_tag == "image-classification"
    assert data.license == "apache-2.0" and data.datasets == ["fashion_mnist"]
    assert set(TAGS) | {"timm"} <= set(data.tags)
    assert data.model_name == "rpg-org/test-resnet-rpg" and data.metrics == ["accuracy"]
    assert _as_tuples(data.eval_results) == _as_tuples([e.to_eval_result() for e in _results()])
    assert data.eval_results[2].dataset_config == "imagenet-overlap-113"
    assert all(r.task_type == "image-classification" for r in data.eval_results)

    text = loaded.text
    assert CITATION in text and "@inproceedings{wang2023rpg" in text
    assert "import rpg_hf" in text
    assert 'AutoModelForImageClassification.from_pretrained("rpg-org/test-resnet-rpg")' in text
    assert 'pipeline("image-classification", model="rpg-org/test-resnet-rpg")' in text
    assert ".expand()" in text and "bit-identically" in text and "index tables" in text
    assert info.recipe_command in text
    for row in ("| Degrees of freedom (ring entries) | 5,000 |",
                f"| Trainable parameters (ring + free) | {info.trainable_params:,} |",
                f"| Original parameters (plain model) | {info.original_params:,} |",
                f"| Compression (original / trainable) | {info.compression:,.2f}x |",
                "| Generator version | 1 |", "| Seed | 7 |", "| Ring scope | global"):
        assert row in text
    assert "| Fashion-MNIST (`fashion_mnist`) | test | Top-1 accuracy | 91.25% |" in text
    assert text.count(RESULTS_START) == 1 and text.count(RESULTS_END) == 1


def test_card_without_results_or_recipe(rpg_resnet, tmp_path):
    info = _info(rpg_resnet, recipe_command=None, datasets=[])
    card = build_model_card(info)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.eval_results == [] and loaded.data.datasets is None
    assert loaded.data.model_name == "rpg-org/test-resnet-rpg"  # kept for later result updates
    assert "No evaluation results recorded yet" in loaded.text and "was not recorded" in loaded.text


def test_vit_card_is_tagged_transformers():
    model = rpg_hf.reparameterize(tiny_vit(), rpg_hf.RPGSpec(dof=3000))
    info = CardInfo.from_model(model)
    assert info.backbone == "vit" and info.architecture == "vit" and info.num_labels == 5
    card = build_model_card(info)
    assert "transformers" in card.data.tags and "plain transformers model" in card.text


class _Wrapper(nn.Module):
    """Like an HF PreTrainedModel around an RPG timm backbone: config + backbone sub-module."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.config = SimpleNamespace(model_type="rpg", architecture="resnet34", backbone_kind="timm",
                                      num_labels=10, _name_or_path="org/wrapped")


def test_card_info_is_tolerant_of_wrappers_and_duck_types(rpg_resnet):
    info = CardInfo.from_model(_Wrapper(rpg_resnet))
    assert (info.architecture, info.backbone, info.num_labels, info.model_id) == ("resnet34", "timm", 10, "org/wrapped")
    assert info.dof == 5000 and info.trainable_params == rpg_hf.dof_table(rpg_resnet).trainable_params

    duck = SimpleNamespace(
        rpg=SimpleNamespace(
            spec={"dof": 6, "seed": 3, "scope": "global"},
            rings=[torch.tensor([1.0, 0.0, 2.0, 3.0, 0.0, 4.0])],
            ring_sizes=[6],
            layers=[SimpleNamespace(shape=(4, 3)), SimpleNamespace(shape=(2, 2, 1, 1))],
        ),
        config={"architecture": "tiny", "num_labels": 3},
    )
    info = CardInfo.from_model(duck, model_id="duck")
    assert (info.dof, info.seed, info.generated_params, info.architecture) == (6, 3, 16, "tiny")
    assert info.ring_sparsity == pytest.approx(2 / 6)
    assert "| Ring sparsity (pruned entries) | 33.3% |" in build_model_card(info).text


def test_update_card_results_replaces_and_keeps(rpg_resnet, tmp_path):
    path = tmp_path / "README.md"
    build_model_card(_info(rpg_resnet), _results()).save(path)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n## Notes\n\nHand-written notes that must survive.\n")

    new = [
        EvalEntry("Fashion-MNIST", "fashion_mnist", "test", "accuracy", "top-1 ACCURACY", 92.5),  # same key
        EvalEntry("ImageNet-1k", "imagenet-1k", "validation", "accuracy", "Top-1 accuracy", 70.1),  # new
    ]
    update_card_results(tmp_path, new)  # the folder works as well as the file
    loaded = ModelCard.load(path)
    got = loaded.data.eval_results
    assert [(r.dataset_type, r.metric_name, r.metric_value) for r in got] == [
        ("fashion_mnist", "top-1 ACCURACY", 92.5),  # replaced in place
        ("fashion_mnist", "Top-5 accuracy", 99.8),  # kept
        ("objectnet", "Top-1 accuracy", 12.5),  # kept
        ("imagenet-1k", "Top-1 accuracy", 70.1),  # added
    ]
    assert loaded.data.model_name == "rpg-org/test-resnet-rpg" and loaded.data.library_name == "rpg_hf"
    assert "Hand-written notes that must survive." in loaded.text and CITATION in loaded.text
    assert "92.50%" in loaded.text and "91.25%" not in loaded.text and "70.10%" in loaded.text

    # a ModelCard object is updated in place (not saved); EvalResult inputs are accepted too
    card = ModelCard.load(path)
    same = update_card_results(card, [EvalResult(task_type="image-classification", dataset_type="objectnet",
                                                 dataset_name="ObjectNet", dataset_split="test",
                                                 metric_type="accuracy", metric_name="Top-1 accuracy",
                                                 metric_value=13.0)])
    assert same is card and [r.metric_value for r in card.data.eval_results] == [92.5, 99.8, 13.0, 70.1]
    assert ModelCard.load(path).data.eval_results[2].metric_value == 12.5


def test_update_a_card_rpg_hf_did_not_write(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Someone else's card\n\nText.\n", encoding="utf-8")
    update_card_results(folder / "README.md", results_from_json({"dataset": "fashion_mnist", "top1": 90.0}))
    loaded = ModelCard.load(folder / "README.md")
    assert loaded.data.model_name == "my-model" and loaded.data.license == "mit"
    assert _as_tuples(loaded.data.eval_results) == [
        ("fashion_mnist", "Fashion-MNIST", "test", "accuracy", "Top-1 accuracy", 90.0)]
    assert loaded.text == "# Someone else's card\n\nText.\n"
    with pytest.raises(FileNotFoundError):
        update_card_results(tmp_path / "missing", [])


def test_write_model_card_keeps_existing_results(rpg_resnet, tmp_path):
    write_model_card(_info(rpg_resnet), tmp_path, _results())
    card = write_model_card(_info(rpg_resnet), tmp_path, [{"dataset": "fashion_mnist", "top1": 90.0}],
                            ring_storage="int8, per-ring scale")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert [r.metric_value for r in loaded.data.eval_results] == [90.0, 99.8, 12.5]
    assert _as_tuples(card.data.eval_results) == _as_tuples(loaded.data.eval_results)
    assert "| Ring storage | int8, per-ring scale |" in loaded.text
    write_model_card(_info(rpg_resnet), tmp_path, keep_existing_results=False)
    assert not ModelCard.load(tmp_path / "README.md").data.eval_results


def test_write_model_card_from_a_model_names_it_after_the_folder(rpg_resnet, tmp_path):
    folder = tmp_path / "resnet-rpg-5k"
    card = write_model_card(rpg_resnet, folder, recipe_command="rpg-hf demo")
    assert card.data.model_name == "resnet-rpg-5k" and "# resnet-rpg-5k" in card.text and "rpg-hf demo" in card.text
    assert ModelCard.load(folder / "README.md").data.library_name == "rpg_hf"
    card = write_model_card(_Wrapper(rpg_resnet), folder, results=[_results()[0].to_eval_result()])
    assert card.data.model_name == "org/wrapped" and card.data.eval_results[0].metric_value == 91.25


def test_eval_entry_roundtrip():
    for entry in _results():
        assert EvalEntry.from_eval_result(entry.to_eval_result()) == entry


def test_results_from_json_shapes(tmp_path):
    one = {"dataset": "fashion_mnist", "split": "test", "top1": 91.2, "top5": 99.8}
    entries = results_from_json(one)
    assert [(e.dataset_type, e.dataset_name, e.split, e.metric_name, e.value) for e in entries] == [
        ("fashion_mnist", "Fashion-MNIST", "test", "Top-1 accuracy", 91.2),
        ("fashion_mnist", "Fashion-MNIST", "test", "Top-5 accuracy", 99.8),
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps([one, {"dataset": "my/data", "split": "validation", "top1": 0.5, "unit": "fraction"}]))
    from_file = results_from_json(path)
    assert len(from_file) == 3 and from_file[2].value == 50.0 and from_file[2].dataset_name == "my/data"
    assert results_from_json({"results": [one]}) == entries
    assert results_from_json({"dataset": "fashion_mnist", "top1": 0.9}, unit="fraction")[0].value == 90.0

    extra = results_from_json({"dataset": "cifar10", "metrics": [{"type": "f1", "name": "Macro F1", "value": 0.8}]})
    assert (extra[0].metric_type, extra[0].metric_name, extra[0].value, extra[0].split) == ("f1", "Macro F1", 0.8, "test")

    # the JSON written by recipes/eval_objectnet.py, as is
    objectnet = {"model": "x", "dataset": "ObjectNet", "n_images": 10, "top1": 12.5, "top5": 30.0,
                 "top1_correct": 1, "top5_correct": 3, "classes": 113, "border": 2}
    on = results_from_json(objectnet)
    assert [(e.dataset_type, e.dataset_name, e.config, e.metric_name) for e in on] == [
        ("objectnet", "ObjectNet", "imagenet-overlap-113", "Top-1 accuracy"),
        ("objectnet", "ObjectNet", "imagenet-overlap-113", "Top-5 accuracy"),
    ]

    with pytest.raises(ValueError, match="dataset"):
        results_from_json({"top1": 90.0})
    with pytest.raises(ValueError, match="fraction"):
        results_from_json({"dataset": "fashion_mnist", "top1": 912.0})
    with pytest.raises(ValueError, match="no metric"):
        results_from_json({"dataset": "fashion_mnist"})


