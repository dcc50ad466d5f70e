#!/usr/bin/env python
"""Render the catalogue of model cards (``model_cards/<name>.md``) from ``template.md`` and ``cards.yaml``.

    python model_cards/render.py            # write the cards
    python model_cards/render.py --check    # exit 1, naming them, if checked-in cards are stale

Each card's model is the real one: the recipe's own flag parser (``rpg_hf.train.arguments``)
reads the config, the recipe's model builder builds it on the meta device (no memory, no init),
and :meth:`rpg_hf.hf.cards.CardInfo.from_model` reads DoF, generated weights, compression and the
checkpoint's tensor payload from it.  Measured numbers come only from result files of runs that
exist (each card's ``measured`` file in ``cards.yaml``); the model built here must have the
trainable-parameter count those runs recorded, so a card cannot describe a different model than
the one measured.  The text is in ``template.md`` and ``cards.yaml``; this file only wires data
to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MANIFEST = HERE / "cards.yaml"


def _fill(text: str, values: dict[str, Any]) -> str:
    return " ".join(str(text).split()).format(**values)


def _fill_all(lines: list[str] | None, values: dict[str, Any]) -> list[str]:
    return [_fill(line, values) for line in lines or ()]


def _paper(entry: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, str]]:
    paper = manifest["paper"]
    return [{"text": " ".join(paper["figures"][key].split()), "source": paper["source"]} for key in entry["paper"]]


def _check_trainable(info, expected: int, name: str) -> None:
    if info.trainable_params != int(expected):
        raise SystemExit(f"{name}: the model built for the card trains {info.trainable_params:,} parameters, the "
                         f"measured run recorded {int(expected):,}: the card would describe another model")


def _relative(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- the three kinds


def recipe_card(entry: dict[str, Any], manifest: dict[str, Any]):
    """A recipes/train.py config on ImageNet: the model its flags build; no run exists."""
    from rpg_hf.hf.cards import CardInfo, build_model_card
    from rpg_hf.spec import spec_kwargs
    from rpg_hf.train.arguments import parse_args
    from rpg_hf.train.models import build_model

    kind = manifest["kinds"][entry["kind"]]
    config = ROOT / entry["recipe_config"]
    args = parse_args(["--config", str(config), "--data", kind["dataset"]])
    with torch.device("meta"):  # the same call as recipes/train.py's run setup
        model = build_model(args.model, args.arch, num_labels=kind["num_labels"], model_args=args.model_args,
                            vit_config=args.vit_config, image_size=args.image_size, crop_pct=args.crop_pct,
                            mean=args.mean, std=args.std, **spec_kwargs(args))
    values = {**vars(args), "name": entry["name"], "recipe_config": _relative(config)}
    info = CardInfo.from_model(
        model, model_id=entry["name"], datasets=[kind["dataset"]], recipe="recipes/train.py",
        recipe_config=values["recipe_config"], recipe_command=_fill(kind["command"], values),
        training_notes=_fill_all(kind.get("training_notes"), values), paper_figures=_paper(entry, manifest),
        paper_note=" ".join(str(entry.get("paper_note") or manifest["paper"]["note_imagenet"]).split()),
        limitations=_fill_all(kind.get("limitations"), values),
    )
    return build_model_card(info)


def demo_card(entry: dict[str, Any], manifest: dict[str, Any]):
    """The model `rpg-hf demo` trains, with the figures of the demo run in ``entry["measured"]``."""
    from rpg_hf.hf.cards import CardInfo, build_model_card, results_from_json
    from rpg_hf.train import demo
    from rpg_hf.train.models import build_model

    measured = json.loads((ROOT / entry["measured"]).read_text())
    args = demo.build_parser().parse_args([])
    with torch.device("meta"):
        model = build_model("rpg", args.arch, num_labels=entry["num_labels"], dof=args.dof, seed=args.seed,
                            model_args=entry["model_args"], image_size=entry["image_size"], crop_pct=1.0,
                            generator_version=measured.get("generator_version", 1))  # runs before v2: v1
    values = {**vars(args), **measured, "name": entry["name"]}
    rpg, vanilla = measured["rpg"], measured["vanilla"]
    record = {"dataset": entry["dataset"], "split": entry["split"], "top1": rpg["top1"], "top5": rpg["top5"],
              "config": _fill(entry["results_config"], values)}
    info = CardInfo.from_model(
        model, model_id=entry["name"], datasets=[entry["dataset"]], recipe="rpg-hf demo",
        recipe_command=entry["command"], checkpoint_bytes=rpg["checkpoint_bytes"], checkpoint_measured=True,
        comparison=[{"name": f"{row['name']} ({'ring-only' if row is rpg else 'timm'} checkpoint)",
                     "trainable": row["trainable_params"], "top1": row["top1"], "top1_std": None,
                     "checkpoint_bytes": row["checkpoint_bytes"]} for row in (rpg, vanilla)],
        comparison_title=_fill(entry["comparison_title"], values),
        training_notes=_fill_all(entry.get("training_notes"), values), paper_figures=_paper(entry, manifest),
        limitations=_fill_all(entry.get("limitations"), values),
    )
    _check_trainable(info, rpg["trainable_params"], entry["name"])
    return build_model_card(info, results_from_json(record))


def sweep_card(entry: dict[str, Any], manifest: dict[str, Any]):
    """One RPG point of the Fashion-MNIST science sweep, from its summary.json."""
    from rpg_hf import RPGConfig, RPGForImageClassification
    from rpg_hf.hf.cards import CardInfo, build_model_card, results_from_json

    common = manifest["sweep"]
    summary = json.loads((ROOT / entry["measured"]).read_text())
    proto, data = summary["protocol"], summary["protocol"]["dataset"]
    groups = summary["aggregate"]

    def group(**match: Any) -> dict[str, Any]:
        (found,) = [g for g in groups if all(g.get(k) == v for k, v in match.items())]
        return found

    point = group(arch=entry["arch"], method="rpg", dof=entry["dof"])
    seed = min(point["seeds"])
    (run,) = [r for r in summary["runs"] if r["arch"] == entry["arch"] and r["method"] == "rpg"
              and r["dof"] == entry["dof"] and r["seed"] == seed]
    config = RPGConfig(backbone="timm", architecture=entry["arch"], dof=entry["dof"], seed=seed,
                       model_args={"in_chans": data["in_chans"], "channels": proto["channels"]},
                       scope=run["scope"], permute=run["permute"], sign_flip=run["sign_flip"],
                       generator_version=run.get("generator_version", 1),  # runs recorded before v2: v1
                       num_labels=data["num_classes"], image_size=data["image_size"], crop_pct=1.0)
    with torch.device("meta"):
        model = RPGForImageClassification(config)

    rows = [("RPG (this model)", point)]
    matched = point.get("matched_vanilla")
    if matched:
        same = [g for g in groups if g["arch"] == matched["arch"] and g["method"] == "vanilla"
                and g["width"] == matched["width"]]
        rows += [(f"vanilla {matched['arch']}, width {matched['width']} (equal DoF)", g) for g in same]
    rows.append((f"vanilla {entry['arch']}, width {proto['width']} (full)",
                 group(arch=entry["arch"], method="vanilla", role="full")))
    values = {**proto, **summary["compute"], "seeds": ", ".join(map(str, point["seeds"])), "name": entry["name"]}
    info = CardInfo.from_model(
        model, model_id=entry["name"], datasets=[entry["dataset"]], recipe="recipes/science/sweep.py",
        recipe_config=common["recipe_config"], recipe_command=proto["command"],
        checkpoint_bytes=run["checkpoint_bytes"], checkpoint_measured=True,
        comparison=[{"name": name, "trainable": g["trainable_params"], "top1": 100 * g["top1_mean"],
                     "top1_std": 100 * g["top1_std"], "checkpoint_bytes": run["checkpoint_bytes"] if g is point else None}
                    for name, g in rows],
        comparison_title=common["comparison_title"], result_notes=_fill_all(common["result_notes"], values),
        training_notes=_fill_all(common["training_notes"], values), paper_figures=_paper(entry, manifest),
        limitations=_fill_all(common["limitations"], values),
    )
    _check_trainable(info, run["trainable_params"], entry["name"])
    record = {"dataset": entry["dataset"], "split": "test", "top1": run["top1"], "unit": "fraction"}
    return build_model_card(info, results_from_json(record))


KINDS = {"recipe": recipe_card, "vit": recipe_card, "demo": demo_card, "sweep": sweep_card}


# --------------------------------------------------------------------------- command line


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def render_all(manifest: dict[str, Any] | None = None) -> dict[Path, str]:
    """Every catalogue card's text, by the file it belongs in."""
    manifest = manifest or load_manifest()
    return {HERE / f"{entry['name']}.md": str(KINDS[entry["kind"]](entry, manifest))
            for entry in manifest["cards"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a card differs from its file")
    args = parser.parse_args(argv)
    cards = render_all()
    stale = [path for path, text in cards.items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"stale: {_relative(path)} (re-render with: python model_cards/render.py)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(cards[path], encoding="utf-8")
        print(f"wrote {_relative(path)}")
    print(f"{len(cards)} card(s), {len(stale)} rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
