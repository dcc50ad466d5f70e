"""Model cards (rpg_hf.hf.cards, model_cards/): real models only, metadata checked offline, catalogue fresh.

Every model here is a real (tiny, or meta-device) timm / transformers model re-parameterized by
rpg_hf; every card is parsed back with huggingface_hub's own readers (``metadata_load``,
``ModelCardData``, ``model_index_to_eval_results``); nothing reaches the Hub.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import huggingface_hub.repocard
import pytest
import timm
import torch
import yaml
from conftest import tiny_vit
from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from torch import nn

import rpg_hf
from rpg_hf.hf.cards import (
    RESULTS_END,
    RESULTS_START,
    TAGS,
    CardInfo,
    EvalEntry,
    build_model_card,
    results_from_json,
    results_section,
    template_path,
    update_card_results,
    write_model_card,
)

ROOT = Path(__file__).resolve().parents[2]
CARDS = ROOT / "model_cards"


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Every card here is local: any Hub access is a bug."""

    def refuse(*args, **kwargs):
        raise AssertionError("model-card code tried to reach the Hub")

    monkeypatch.setattr(huggingface_hub.repocard, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.repocard, "get_session", refuse)


@pytest.fixture(scope="module")
def render():
    return importlib.import_module("model_cards.render")


@pytest.fixture(scope="module")
def rpg_resnet():
    torch.manual_seed(0)
    return rpg_hf.reparameterize(timm.create_model("test_resnet", num_classes=4), rpg_hf.RPGSpec(dof=5000, seed=7))


def _rpg_model(**kw) -> rpg_hf.RPGForImageClassification:
    cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=kw.pop("dof", 3000), num_labels=3,
                           image_size=32, **kw)
    torch.manual_seed(0)
    return rpg_hf.RPGForImageClassification(cfg)


def _results() -> list[EvalEntry]:
    return [
        EvalEntry("Fashion-MNIST", "fashion_mnist", "test", "accuracy", "Top-1 accuracy", 91.25),
        EvalEntry("Fashion-MNIST", "fashion_mnist", "test", "accuracy", "Top-5 accuracy", 99.8),
        EvalEntry("ObjectNet", "objectnet", "test", "accuracy", "Top-1 accuracy", 12.5, config="imagenet-overlap-113"),
    ]


def _info(model, **kw) -> CardInfo:
    kw.setdefault("model_id", "rpg-org/test-resnet-rpg")
    kw.setdefault("datasets", ["fashion_mnist"])
    kw.setdefault("recipe_command", "rpg-hf demo --arch test_resnet --dof 5000 --seed 7")
    return CardInfo.from_model(model, **kw)


def _as_tuples(results) -> list[tuple]:
    return [(r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_name, r.metric_value)
            for r in results]


def check_metadata(path: Path) -> dict:
    """A card's YAML front matter as the Hub reads it: valid ModelCardData and a well-formed model-index."""
    meta = metadata_load(path)
    assert meta is not None, f"{path}: no YAML front matter"
    data = ModelCardData(**meta)  # raises on an invalid model-index (huggingface_hub validates it)
    assert meta["library_name"] == "rpg_hf" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "image-classification"
    assert {"rpg", "image-classification"} <= set(meta["tags"]) and {"timm", "transformers"} & set(meta["tags"])
    (index,) = meta["model-index"]
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == index["name"] == data.model_name and index["name"]
    for entry in index["results"]:
        assert entry["task"]["type"] == "image-classification"
        assert entry["dataset"]["type"] and entry["dataset"]["name"]
        assert entry["metrics"] and all(m["type"] and isinstance(m["value"], float) for m in entry["metrics"])
    if results:
        assert meta["metrics"] == sorted({r.metric_type for r in results})
    return meta


# --------------------------------------------------------------------------- the template and its shipping


def test_template_is_the_one_in_model_cards():
    assert template_path() == CARDS / "template.md"
    assert not (ROOT / "src" / "rpg_hf" / "templates").exists()
    assert "Recurrent Parameter Generator" not in (ROOT / "src" / "rpg_hf" / "hf" / "cards.py").read_text()


def test_wheel_ships_the_template(tmp_path):
    """setup.py's build_py copies model_cards/template.md into the wheel, where template_path finds it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    (src / "model_cards").mkdir()
    shutil.copy(CARDS / "template.md", src / "model_cards" / "template.md")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("rpg_hf-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("rpg_hf/model_cards/template.md") == (CARDS / "template.md").read_bytes()
        z.extractall(tmp_path / "site")
    installed = tmp_path / "site" / "rpg_hf"
    assert template_path(installed) == installed / "model_cards" / "template.md"


# --------------------------------------------------------------------------- card info from real models


def test_card_info_from_a_reparameterized_timm_model(rpg_resnet):
    info = CardInfo.from_model(rpg_resnet)
    totals = rpg_hf.dof_table(rpg_resnet)
    assert (info.architecture, info.backbone, info.num_labels, info.generated_kinds) == (
        "test_resnet", "timm", 4, ["convolution"])
    assert (info.dof, info.seed, info.scope, info.permute, info.sign_flip) == (5000, 7, "global", True, True)
    assert info.generator_version == rpg_hf.GENERATOR_VERSION and info.num_rings == 1
    assert info.trainable_params == totals.trainable_params and info.free_params == totals.free_params
    assert info.original_params == totals.original_params and info.generated_params == totals.generated_params
    assert info.compression == pytest.approx(totals.compression)
    assert info.checkpoint_bytes == 4 * sum(t.numel() for t in rpg_resnet.state_dict().values()
                                            if t.dtype == torch.float32) + 8 * sum(
        t.numel() for t in rpg_resnet.state_dict().values() if t.dtype == torch.int64)
    assert info.model_id == "test_resnet-rpg-dof5000" and info.license == "apache-2.0"
    assert not info.checkpoint_measured and info.ring_sparsity is None
    with pytest.raises(TypeError, match="no_such_field"):
        CardInfo.from_model(rpg_resnet, no_such_field=1)


def test_a_timm_models_card_is_named_after_its_folder(rpg_resnet, tmp_path):
    """timm models record no Hub id: write_model_card names the card after the folder it is in."""
    card = write_model_card(rpg_resnet, tmp_path / "my-resnet")
    assert card.data.model_name == "my-resnet" and "timm" in card.data.tags
    assert 'timm.create_model("hf-hub:my-resnet", pretrained=True)' in card.text


def test_card_info_from_an_rpg_pretrained_model_reads_its_config():
    model = _rpg_model(dof=3000, seed=5, scope="stage", ring_dtype="int8")
    info = CardInfo.from_model(model)
    cfg = model.config
    assert (info.architecture, info.backbone, info.num_labels, info.seed, info.scope) == (
        "test_resnet", "timm", 3, 5, "stage")
    assert info.num_rings == len(cfg.ring_sizes) > 1 and info.generator_version == cfg.generator_version
    assert info.ring_dtype == "int8"
    fp32 = CardInfo.from_model(_rpg_model(dof=3000, seed=5, scope="stage"))
    # the ring shrinks from 4 bytes an entry to 1, plus a scale and a block size per ring
    assert fp32.checkpoint_bytes - info.checkpoint_bytes >= 3 * 3000 - 16 * info.num_rings


def test_card_info_built_on_the_meta_device_matches_the_real_model():
    real = CardInfo.from_model(_rpg_model(dof=4000))
    with torch.device("meta"):
        meta = CardInfo.from_model(_rpg_model(dof=4000))
    assert meta == real


def test_pruned_ring_sparsity_is_reported():
    model = _rpg_model(dof=2000)
    with torch.no_grad():
        model.generator.rings[0][:500] = 0.0
    info = CardInfo.from_model(model)
    assert info.ring_sparsity == pytest.approx(0.25)
    assert "| Ring entries pruned to zero | 25.0% |" in build_model_card(info).text


def test_only_rpg_models_get_cards():
    with pytest.raises(ValueError, match="re-parameterized|generator"):
        CardInfo.from_model(timm.create_model("test_resnet", num_classes=2))
    with pytest.raises(TypeError, match="timm or transformers"):
        CardInfo.from_model(rpg_hf.reparameterize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)),
                                                  rpg_hf.RPGSpec(dof=100, exclude_stem=False)))


# --------------------------------------------------------------------------- rendering


def test_render_save_and_parse_back(rpg_resnet, tmp_path):
    info = _info(rpg_resnet)
    path = tmp_path / "README.md"
    build_model_card(info, _results()).save(path)
    meta = check_metadata(path)
    assert meta["datasets"] == ["fashion_mnist"] and set(TAGS) | {"timm", "test_resnet"} == set(meta["tags"])
    loaded = ModelCard.load(path)
    assert _as_tuples(loaded.data.eval_results) == _as_tuples([e.to_eval_result() for e in _results()])
    assert loaded.data.eval_results[2].dataset_config == "imagenet-overlap-113"

    text = loaded.text
    # the three ways to load, and the pinned generator version
    assert 'import rpg_hf' in text and 'AutoModelForImageClassification.from_pretrained("rpg-org/test-resnet-rpg")' in text
    assert 'from_pretrained("rpg-org/test-resnet-rpg", trust_remote_code=True)' in text
    assert 'timm.create_model("hf-hub:rpg-org/test-resnet-rpg", pretrained=True)' in text
    assert f"| `generator_version` (pinned) | {rpg_hf.GENERATOR_VERSION} |" in text and ".expand()" in text
    for row in ("| Degrees of freedom (ring entries) | 5,000 |",
                f"| Generated weights | {info.generated_params:,} (each ring entry used ~74.0x) |",
                f"| Trainable parameters (DoF + free) | {info.trainable_params:,} |",
                f"| Plain model parameters | {info.original_params:,} |",
                f"| Compression (plain / trainable) | {info.compression:,.2f}x |",
                "| Ring options | scope global, permutation on, sign flip on, seed 7 |"):
        assert row in text
    assert "| Checkpoint (`model.safetensors`) | ≈ 39.2 KiB;" in text  # not measured: the tensor payload
    assert "| Fashion-MNIST (`fashion_mnist`) | test | Top-1 accuracy | 91.25% |" in text
    assert "| ObjectNet (`objectnet`), imagenet-overlap-113 | test | Top-1 accuracy | 12.50% |" in text
    assert text.count(RESULTS_START) == 1 and text.count(RESULTS_END) == 1
    assert info.recipe_command in text and "@inproceedings{wang2023rpg" in text
    assert "Figures from the paper" not in text  # no paper section unless paper_figures is given


def test_card_without_results_or_recipe(rpg_resnet, tmp_path):
    build_model_card(_info(rpg_resnet, recipe_command=None, datasets=[])).save(tmp_path / "README.md")
    check_metadata(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.eval_results == [] and loaded.data.datasets is None
    assert loaded.data.model_name == "rpg-org/test-resnet-rpg"  # kept for later result updates
    assert "No evaluation of this checkpoint has been recorded yet" in loaded.text
    assert "was not recorded" in loaded.text


def test_vit_card_is_tagged_transformers_and_has_no_timm_loader():
    model = rpg_hf.reparameterize(tiny_vit(), rpg_hf.RPGSpec(dof=3000))
    info = CardInfo.from_model(model)
    assert (info.backbone, info.architecture, info.num_labels) == ("vit", "vit", 5)
    assert info.generated_kinds == ["convolution", "linear"]
    card = build_model_card(info)
    assert "transformers" in card.data.tags and "timm" not in card.data.tags
    assert "convolution and linear weights" in card.text and "plain transformers model" in card.text
    assert "trust_remote_code=True" in card.text and "hf-hub:" not in card.text


def test_paper_figures_are_a_section_of_their_own(rpg_resnet):
    fig = {"text": "ImageNet top-1 67.2%", "source": "the paper"}
    card = build_model_card(_info(rpg_resnet, paper_figures=[fig], paper_note="Not measured here."), _results())
    paper = card.text.split("### Figures from the paper (not measured here)")[1].split("## ")[0]
    assert "- ImageNet top-1 67.2% — *the paper*" in paper and "Not measured here." in paper
    assert 67.2 not in [r.metric_value for r in card.data.eval_results]
    assert "No figure of the paper" in build_model_card(_info(rpg_resnet, paper_figures=[])).text


# --------------------------------------------------------------------------- updates


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
    check_metadata(path)
    loaded = ModelCard.load(path)
    got = loaded.data.eval_results
    assert [(r.dataset_type, r.metric_name, r.metric_value) for r in got] == [
        ("fashion_mnist", "top-1 ACCURACY", 92.5),  # replaced in place
        ("fashion_mnist", "Top-5 accuracy", 99.8),  # kept
        ("objectnet", "Top-1 accuracy", 12.5),  # kept
        ("imagenet-1k", "Top-1 accuracy", 70.1),  # added
    ]
    assert loaded.data.model_name == "rpg-org/test-resnet-rpg" and loaded.data.library_name == "rpg_hf"
    assert "Hand-written notes that must survive." in loaded.text and "wang2023rpg" in loaded.text
    # the body's table is the template's block, rendered for the merged results
    assert results_section([EvalEntry.from_eval_result(r) for r in got]) in loaded.text
    assert "92.50%" in loaded.text and "91.25%" not in loaded.text and "70.10%" in loaded.text
    # ... and the whole card equals a fresh render with those results (plus the appended notes)
    fresh = build_model_card(_info(rpg_resnet), [EvalEntry.from_eval_result(r) for r in got]).text
    assert loaded.text.startswith(fresh.rstrip("\n"))

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


def test_write_model_card_keeps_existing_results_and_datasets(rpg_resnet, tmp_path):
    write_model_card(_info(rpg_resnet), tmp_path, _results())
    card = write_model_card(rpg_resnet, tmp_path, [{"dataset": "fashion_mnist", "top1": 90.0}], model_id="x")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert [r.metric_value for r in loaded.data.eval_results] == [90.0, 99.8, 12.5]
    assert loaded.data.datasets == ["fashion_mnist"]  # carried over from the old card
    assert _as_tuples(card.data.eval_results) == _as_tuples(loaded.data.eval_results)
    write_model_card(_info(rpg_resnet), tmp_path, keep_existing_results=False)
    assert not ModelCard.load(tmp_path / "README.md").data.eval_results


def test_save_pretrained_card_then_objectnet_recipe_updates_the_same_card(tmp_path):
    """save_pretrained writes the card (real file size); eval_objectnet's update re-renders its table."""
    model = _rpg_model(dof=2500)
    folder = tmp_path / "tiny-rpg"
    model.save_pretrained(folder)
    meta = check_metadata(folder / "README.md")
    text = (folder / "README.md").read_text()
    size = (folder / "model.safetensors").stat().st_size
    info = CardInfo.from_model(model)
    assert info.model_id == "test_resnet-rpg-dof2500"  # a fresh model has no Hub id
    assert CardInfo.from_model(rpg_hf.RPGForImageClassification.from_pretrained(folder)).model_id == "tiny-rpg"
    assert size - 20_000 < info.checkpoint_bytes <= size  # the payload estimate is the file less its header
    assert f"| Checkpoint (`model.safetensors`) | {size / 1024:.1f} KiB;" in text  # measured: no "≈"
    assert meta["model-index"][0]["name"] == "tiny-rpg" and "trust_remote_code=True" in text

    recipe = importlib.import_module("recipes.eval_objectnet")
    recipe.update_model_card(folder, {"top1": 12.5, "top5": 30.0, "classes": 113})
    check_metadata(folder / "README.md")
    card = ModelCard.load(folder / "README.md")
    assert [(r.dataset_name, r.metric_name, r.metric_value) for r in card.data.eval_results] == [
        ("ObjectNet", "Top-1 Accuracy", 12.5), ("ObjectNet", "Top-5 Accuracy", 30.0)]
    table = results_section([EvalEntry.from_eval_result(r) for r in card.data.eval_results])
    assert "| ObjectNet (`objectnet`), imagenet-overlap-113 | test | Top-1 Accuracy | 12.50% |" in table
    assert card.text == text.split("---\n", 2)[2].replace(results_section([]), table)


def test_cli_card_renders_with_options(tmp_path):
    from rpg_hf import cli

    folder = tmp_path / "m"
    _rpg_model().save_pretrained(folder)
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"dataset": "fashion_mnist", "top1": 88.0}))
    cli.main(["card", str(folder), "--results", str(results), "--model-id", "org/m", "--dataset", "fashion_mnist",
              "--recipe-command", "rpg-hf demo"])
    meta = check_metadata(folder / "README.md")
    assert meta["model-index"][0]["name"] == "org/m" and meta["datasets"] == ["fashion_mnist"]
    assert 'timm.create_model("hf-hub:org/m", pretrained=True)' in (folder / "README.md").read_text()


# --------------------------------------------------------------------------- results JSON


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

    # the JSON written by the ObjectNet recipe, as is
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


# --------------------------------------------------------------------------- the catalogue in model_cards/


@pytest.fixture(scope="module")
def catalogue(render):
    return render.render_all()


def test_checked_in_cards_are_fresh(catalogue):
    stale = [p.name for p, text in catalogue.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"stale model cards {stale}: re-render with `python model_cards/render.py`"
    on_disk = {p.name for p in CARDS.glob("*.md")} - {"template.md"}
    assert on_disk == {p.name for p in catalogue}, "a card in model_cards/ that cards.yaml does not render"


def test_every_recipe_config_has_a_card(render):
    manifest = render.load_manifest()
    configs = {e["recipe_config"] for e in manifest["cards"] if "recipe_config" in e}
    models = {f"recipes/configs/{p.name}" for p in (ROOT / "recipes" / "configs").glob("*.yaml")
              if "model" in (yaml.safe_load(p.read_text()) or {})}
    assert models and models == configs
    kinds = {e["kind"] for e in manifest["cards"]}
    assert {"demo", "sweep"} <= kinds


def test_catalogue_metadata_and_measured_results(render, catalogue):
    """Recipe configs: no run exists, so no result and the paper's figures apart; demo / sweep: ours."""
    for entry in render.load_manifest()["cards"]:
        path = CARDS / f"{entry['name']}.md"
        meta = check_metadata(path)
        text = path.read_text()
        # the recipes' models are new (the default construction); the demo and sweep runs were version 1
        version = 1 if entry["kind"] in ("demo", "sweep") else rpg_hf.GENERATOR_VERSION
        assert "trust_remote_code=True" in text and f"`generator_version` (pinned) | {version} |" in text
        name, results = model_index_to_eval_results(meta["model-index"])
        assert name == entry["name"] and "Figures from the paper (not measured here)" in text
        got = {(r.dataset_type, r.metric_name): r.metric_value for r in results}
        if entry["kind"] in ("recipe", "vit"):
            assert got == {} and "No evaluation of this checkpoint has been recorded yet" in text
            assert meta["datasets"] == ["ILSVRC/imagenet-1k"]
        elif entry["kind"] == "demo":
            demo = json.loads((ROOT / entry["measured"]).read_text())
            assert got == {(entry["dataset"], "Top-1 accuracy"): demo["rpg"]["top1"],
                           (entry["dataset"], "Top-5 accuracy"): demo["rpg"]["top5"]}
        else:
            sweep = json.loads((ROOT / entry["measured"]).read_text())
            (run,) = [r for r in sweep["runs"] if (r["arch"], r["method"], r["dof"], r["seed"]) ==
                      (entry["arch"], "rpg", entry["dof"], 0)]
            assert got == {(entry["dataset"], "Top-1 accuracy"): pytest.approx(100 * run["top1"])}
            assert f"{run['trainable_params']:,}" in text
    r34 = (CARDS / "resnet34-rpg-45k.md").read_text()
    assert "| Degrees of freedom (ring entries) | 45,000 |" in r34 and "| Generated weights | 21,258,240" in r34
    assert "52% of the vanilla ResNet-34's" in r34.split("### Figures from the paper")[1]


def test_a_card_cannot_describe_another_model_than_the_measured_one(render, tmp_path):
    manifest = render.load_manifest()
    (entry,) = [e for e in manifest["cards"] if e["kind"] == "demo"]
    measured = json.loads((ROOT / entry["measured"]).read_text())
    measured["rpg"]["trainable_params"] += 1
    wrong = tmp_path / "demo.json"
    wrong.write_text(json.dumps(measured))
    with pytest.raises(SystemExit, match="another model"):
        render.demo_card({**entry, "measured": str(wrong)}, manifest)
