"""Ring-only checkpoint vs the plain model's checkpoint: file size and from_pretrained time.

    python benchmarks/checkpoint_size.py --arch resnet34 --dof 45000

Both folders are written in the same run: the RPG model with ``save_pretrained`` (ring + free
tensors) and its expansion with timm's ``save_for_hf`` (every weight).  Load times are medians
over ``--repeats`` alternating loads: ``AutoModelForImageClassification.from_pretrained`` for the
ring-only folder (read, validate, expand) and ``timm.create_model("local-dir:...")`` for the plain one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from transformers import AutoModelForImageClassification

import rpg_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--dof", type=int, default=45_000)
    parser.add_argument("--num-labels", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = rpg_hf.RPGConfig(backbone="timm", architecture=args.arch, dof=args.dof, num_labels=args.num_labels)
    model = rpg_hf.RPGForImageClassification(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        rpg_dir, plain_dir = Path(tmp) / "rpg", Path(tmp) / "plain"
        model.save_pretrained(rpg_dir)
        rpg_hf.save_expanded(model, plain_dir)
        rpg_size = (rpg_dir / "model.safetensors").stat().st_size
        plain_size = (plain_dir / "model.safetensors").stat().st_size

        times: dict[str, list[float]] = {"rpg": [], "plain": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            loaded = AutoModelForImageClassification.from_pretrained(rpg_dir)
            with torch.no_grad():
                loaded.generator.generate_all()  # include the expansion itself
            times["rpg"].append(time.perf_counter() - t)
            t = time.perf_counter()
            timm.create_model(f"local-dir:{plain_dir}", pretrained=True)
            times["plain"].append(time.perf_counter() - t)

    table = rpg_hf.dof_table(model.backbone)
    rpg_t, plain_t = statistics.median(times["rpg"]), statistics.median(times["plain"])
    print(f"model            {args.arch}  dof={args.dof:,}  labels={args.num_labels}  torch={torch.__version__}")
    print(f"params           plain {table.original_params:,}   rpg trainable {table.trainable_params:,}")
    print(f"file size        rpg {rpg_size / 2**20:8.3f} MiB   plain {plain_size / 2**20:8.3f} MiB   "
          f"ratio plain/rpg {plain_size / rpg_size:6.1f}x")
    print(f"load time        rpg {rpg_t * 1e3:8.1f} ms    plain {plain_t * 1e3:8.1f} ms    "
          f"ratio rpg/plain {rpg_t / plain_t:6.2f}x   (median of {args.repeats})")


if __name__ == "__main__":
    main()
