"""The `rpg-hf` command (also `python -m rpg_hf`): convert, info, expand, card, push, fold, demo, scaling.

Heavy imports happen inside the subcommands so that `rpg-hf --help` answers at once.  The ring
options of ``convert`` and ``fold`` are generated from the `RPGSpec` fields (:mod:`rpg_hf.spec`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rpg_hf.spec import add_spec_arguments, spec_kwargs


def _load(path_or_repo: str):
    from transformers import AutoModelForImageClassification

    import rpg_hf  # noqa: F401  (registers model_type "rpg")

    return AutoModelForImageClassification.from_pretrained(path_or_repo)


def _local_files(path_or_repo: str) -> dict[str, int]:
    """Sizes of the checkpoint's files: a local folder, or the cached snapshot of a Hub repo."""
    folder = Path(path_or_repo)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(path_or_repo, local_files_only=True))
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def cmd_convert(args: argparse.Namespace) -> None:
    from transformers import ViTConfig

    import rpg_hf

    common = dict(num_labels=args.num_labels, **spec_kwargs(args))
    if args.image_size:
        common["image_size"] = args.image_size
    arch = Path(args.arch)
    if arch.exists():  # a transformers ViT config (file or folder)
        vit = ViTConfig.from_pretrained(str(arch))
        cfg = rpg_hf.RPGConfig(backbone="vit", architecture=arch.stem, vit_config=vit.to_dict(), **common)
    else:
        model_args = json.loads(args.model_args) if args.model_args else None
        cfg = rpg_hf.RPGConfig(backbone="timm", architecture=args.arch, model_args=model_args, **common)
    model = rpg_hf.RPGForImageClassification(cfg)
    model.save_pretrained(args.out)
    table = rpg_hf.dof_table(model.backbone)
    print(f"saved ring-only {cfg.architecture} (dof={cfg.dof:,}, compression {table.compression:,.1f}x) to {args.out}")


def cmd_info(args: argparse.Namespace) -> None:
    import rpg_hf

    model = _load(args.path)
    table = rpg_hf.dof_table(model.backbone)
    cfg = model.config
    if args.json:
        print(json.dumps({"architecture": cfg.architecture, "backbone": cfg.backbone, "seed": cfg.seed,
                          "generator_version": cfg.generator_version, "scope": cfg.scope,
                          "ring_dtype": cfg.ring_dtype, "files": _local_files(args.path), **table.totals()}, indent=2))
        return
    print(f"{cfg.architecture} ({cfg.backbone})  seed={cfg.seed}  generator_version={cfg.generator_version}  "
          f"scope={cfg.scope}  ring_dtype={cfg.ring_dtype}  labels={cfg.num_labels}")
    print(table)
    for name, size in _local_files(args.path).items():
        print(f"file {name:<28} {size:>14,} bytes")


def cmd_expand(args: argparse.Namespace) -> None:
    import rpg_hf

    model = _load(args.path)
    native = "transformers" if model.config.backbone == "vit" else "timm"
    if args.format == "timm" and native != "timm":
        raise SystemExit("error: a ViT backbone exports as a transformers folder (--format transformers)")
    if args.format == "transformers" and native != "transformers":
        raise SystemExit("error: a timm backbone exports as a timm folder (--format timm); it loads with "
                         "timm.create_model('local-dir:<folder>', pretrained=True) and with transformers' "
                         "AutoModelForImageClassification (TimmWrapper)")
    out = rpg_hf.save_expanded(model, args.out)
    print(f"expanded {model.config.architecture} to {out} ({native} format)")


def cmd_card(args: argparse.Namespace) -> None:
    from rpg_hf.hf.cards import results_from_json, write_model_card

    model = _load(args.path)
    results = []
    for path in args.results or ():
        results += results_from_json(path)
    fields = {"model_id": args.model_id, "datasets": args.dataset, "recipe_command": args.recipe_command}
    card = write_model_card(model, args.path, results=results, template=args.template,
                            **{k: v for k, v in fields.items() if v})
    print(f"wrote {Path(args.path) / 'README.md'} ({len(card.data.eval_results or [])} eval result(s))")


def cmd_push(args: argparse.Namespace) -> None:
    from rpg_hf.hf.hub import upload_folder

    folder = Path(args.path)
    if not (folder / "README.md").exists():
        from rpg_hf.hf.cards import write_model_card

        write_model_card(_load(args.path), folder, model_id=args.repo_id)
    info = upload_folder(folder, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                         commit_message=args.commit_message)
    print(f"pushed {folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")


def cmd_scaling(args: argparse.Namespace) -> None:
    from rpg_hf.train.scaling import fit_runs, format_fit, load_runs, plot_scaling

    runs = load_runs(args.results)
    archs = [args.arch] if args.arch else sorted({r["arch"] for r in runs if r["method"] == args.method})
    fits = {arch: fit_runs(runs, arch=arch, method=args.method) for arch in archs}
    for arch, fit in fits.items():
        print(f"{arch}: {format_fit(fit)}")
        if args.predict:
            for dof in args.predict:
                print(f"  predicted top-1 at DoF {dof:,}: {100 * fit.predict_top1(dof):.2f}%")
    if args.plot:
        print(f"plot: {plot_scaling(runs, fits, args.plot)}")


def cmd_fold(args: argparse.Namespace) -> None:
    from rpg_hf.compress.fold import config_from_model, fold, load_source

    model_args = json.loads(args.model_args) if args.model_args else None
    try:
        source = load_source(args.source, arch=args.arch, model_args=model_args, num_labels=args.num_labels)
        fields = spec_kwargs(args)
        config = config_from_model(source, fields.pop("dof"), model_args=model_args, **fields)
        model, report = fold(source, config, weighting=args.weighting)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    model.save_pretrained(args.out)
    if args.json:
        print(json.dumps({"source": args.source, "out": args.out, **report.to_dict()}, indent=2))
        return
    print(report)
    print(f"saved ring-only {config.architecture} folded from {args.source} (dof={config.dof:,}, relative error "
          f"{report.rel_error:.4f}) to {args.out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from rpg_hf.train import demo

    demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpg-hf", description="Recurrent Parameter Generators for timm and HF.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="a fresh RPG model saved ring-only")
    p.add_argument("arch", help="timm architecture name, or a transformers ViT config (file or folder)")
    p.add_argument("out", help="output folder")
    p.add_argument("--num-labels", type=int, default=1000)
    p.add_argument("--image-size", type=int, default=None, help="preprocessing crop size")
    p.add_argument("--model-args", default=None, help='JSON of extra timm.create_model kwargs, e.g. \'{"in_chans": 1}\'')
    add_spec_arguments(p.add_argument_group("ring (RPGSpec)"))
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="DoF table, compression, files and generator version of a checkpoint")
    p.add_argument("path", help="folder or Hub repo id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("expand", help="write the plain (expanded) model in timm or transformers format")
    p.add_argument("path", help="folder or Hub repo id")
    p.add_argument("out", help="output folder")
    p.add_argument("--format", choices=["timm", "transformers"], default=None,
                   help="default: the backbone's native format (timm for a timm CNN, transformers for a ViT)")
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("card", help="(re)write the model card from the template, optionally with evaluation results",
                       description="Render README.md of a ring-only folder from the model-card template "
                                   "(model_cards/template.md). The results and datasets of an existing card are "
                                   "kept; its other text is rewritten. The repository's catalogue of cards is "
                                   "rendered by `python model_cards/render.py`.")
    p.add_argument("path", help="local checkpoint folder")
    p.add_argument("--results", nargs="*", help="results JSON file(s)")
    p.add_argument("--recipe-command", default=None, help="the command that produced the model")
    p.add_argument("--model-id", default=None, help="Hub id shown in the card (default: the folder's name)")
    p.add_argument("--dataset", action="append", default=None, help="training dataset id (repeatable)")
    p.add_argument("--template", default=None, help="another Jinja template (default: rpg_hf's)")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("push", help="upload a ring-only folder and its card to the Hub")
    p.add_argument("path", help="local checkpoint folder")
    p.add_argument("repo_id")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--commit-message", default=None)
    p.add_argument("--token", default=None)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("scaling", help="fit the log-linear DoF -> accuracy law to run results")
    p.add_argument("results", nargs="+", help="result JSON files, globs, or a summary.json")
    p.add_argument("--arch", default=None)
    p.add_argument("--method", default="rpg")
    p.add_argument("--plot", default=None, help="write a PNG plot here")
    p.add_argument("--predict", type=int, nargs="*", help="DoF values to predict accuracy at")
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("fold", help="fold a trained timm / ViT network into a ring (least squares), saved ring-only")
    p.add_argument("source", help="timm or transformers ViT folder, RPG checkpoint (refold), weights file of --arch, "
                                  "or a pretrained timm model name")
    p.add_argument("-o", "--out", required=True, help="output folder (loads with from_pretrained)")
    p.add_argument("--arch", default=None, help="timm architecture of a bare weights file")
    p.add_argument("--model-args", default=None, help="JSON of timm.create_model kwargs for a bare weights file")
    p.add_argument("--num-labels", type=int, default=None, help="head size (default: read from the weights)")
    p.add_argument("--weighting", default="uniform", choices=["uniform", "relative"],
                   help="least-squares objective: the plain reconstruction error, or every layer's relative error "
                        "counted equally")
    p.add_argument("--json", action="store_true", help="print the fit report as JSON")
    add_spec_arguments(p.add_argument_group("ring (RPGSpec)"))
    p.set_defaults(func=cmd_fold)

    p = sub.add_parser("demo", help="train RPG vs equal-DoF vanilla on Fashion-MNIST and compare")
    from rpg_hf.train import demo

    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
