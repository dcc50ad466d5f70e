"""Sharded training of a tiny RPG model in N CPU processes (gloo), against the same steps in one process.

Run by ``tests/test_sharding.py`` in its own interpreter (no process group leaks into pytest)::

    python tests/sharding_worker.py fsdp2|zero3 --world 2 --out DIR [--steps 3] [--backbone timm|vit]

Every rank trains an unsharded reference on the full batch (the 1-process run) and the sharded
model (FSDP2 through ``rpg_hf.sharding.shard_rpg_model``, or a DeepSpeed ZeRO-3 engine after
``register_rings_for_zero3``) on its slice of the batch; both average the gradients over ranks, so with BatchNorm in eval
mode the two are the same maths.  Rank 0 writes ``DIR/result.json`` (largest differences, key
sets) and the sharded model's ring-only folder ``DIR/model`` (saved through
``rpg_hf.sharding.save_pretrained_sharded``), which the test loads with ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

BATCH, LR = 8, 0.05


def make_model(backbone: str):
    import rpg_hf

    labels = {i: f"c{i}" for i in range(3)}
    if backbone == "vit":
        from transformers import ViTConfig

        vit = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=3)
        cfg = rpg_hf.RPGConfig(backbone="vit", vit_config=vit, dof=3000, num_labels=3, seed=0, id2label=labels,
                               label2id={v: k for k, v in labels.items()})
    else:
        cfg = rpg_hf.RPGConfig(backbone="timm", architecture="test_resnet", dof=2000, num_labels=3, seed=0,
                               image_size=32, id2label=labels, label2id={v: k for k, v in labels.items()})
    torch.manual_seed(0)
    return rpg_hf.RPGForImageClassification(cfg).eval()  # eval: BatchNorm uses its running stats


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 32, 32, generator=g), torch.arange(BATCH) % 3


def train(model, x, y, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x).logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def fsdp2(rank: int, world: int, out: Path, steps: int, backbone: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from rpg_hf.sharding import full_state_dict, save_pretrained_sharded, shard_rpg_model

    x, y = batch()
    reference = make_model(backbone)
    ref_losses = train(reference, x, y, steps)

    model = make_model(backbone)
    mesh = init_device_mesh("cpu", (world,))
    shard_rpg_model(model, mesh=mesh)
    units = sorted(name or "<root>" for name, m in model.named_modules() if type(m).__name__.startswith("FSDP"))
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    losses = train(model, xs, ys, steps)
    state = full_state_dict(model)
    save_pretrained_sharded(model, out / "model")
    if rank == 0:
        _report(out, state, reference, backbone, world, losses, ref_losses, units=units)


def zero3(rank: int, world: int, out: Path, steps: int, backbone: str) -> None:
    import deepspeed

    from rpg_hf.sharding import full_state_dict, register_rings_for_zero3, save_pretrained_sharded

    deepspeed.init_distributed(dist_backend="gloo")  # takes the group initialized here
    x, y = batch()
    reference = make_model(backbone)
    ref_losses = train(reference, x, y, steps)
    model = make_model(backbone)
    registered = register_rings_for_zero3(model) if os.environ.get("RPG_TEST_REGISTER", "1") == "1" else 0
    config = {"train_micro_batch_size_per_gpu": BATCH // world, "gradient_accumulation_steps": 1,
              "gradient_clipping": 0.0,  # DeepSpeed's default clips at 1.0; the reference does not clip
              "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    partitioned = sum(p.numel() == 0 for p in engine.module.parameters())
    xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(engine(xs).logits, ys)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    ring = engine.module.generator.rings[0]
    ring_state = {"ring_status_between_steps": str(getattr(ring, "ds_status", None)),
                  "ring_numel_between_steps": ring.numel()}  # 0: partitioned, as a ZeRO-3 parameter should be
    state = full_state_dict(engine.module)
    save_pretrained_sharded(engine.module, out / "model")
    if rank == 0:
        _report(out, state, reference, backbone, world, losses, ref_losses,
                registered=registered, partitioned_between_steps=partitioned, **ring_state)


def _report(out: Path, state: dict, reference, backbone: str, world: int, losses, ref_losses, **extra) -> None:
    ref_state = {k: v.detach() for k, v in reference.state_dict().items()}
    diffs = {k: float((state[k].float() - ref_state[k].float()).abs().max()) for k in ref_state
             if k in state and state[k].is_floating_point()}
    torch.save(state, out / "gathered.pt")
    result = {
        "world": world, "keys_equal": sorted(state) == sorted(ref_state),
        "ring_diff": max(v for k, v in diffs.items() if ".rpg.rings." in k),
        "free_diff": max(v for k, v in diffs.items() if ".rpg.rings." not in k),
        "ring_moved": float((state["backbone.rpg.rings.0"] - make_model(backbone).generator.rings[0].detach()).abs().max()),
        "losses": losses, "ref_losses": ref_losses, **extra,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))


def worker(rank: int, world: int, init_file: str, mode: str, out: str, steps: int, backbone: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # read by DeepSpeed
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        {"fsdp2": fsdp2, "zero3": zero3}[mode](rank, world, Path(out), steps, backbone)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fsdp2", "zero3"])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backbone", choices=["timm", "vit"], default="timm")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init_file = out / "pg_init"
    if init_file.exists():
        init_file.unlink()
    mp.spawn(worker, args=(args.world, str(init_file), args.mode, str(out), args.steps, args.backbone),
             nprocs=args.world, join=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
