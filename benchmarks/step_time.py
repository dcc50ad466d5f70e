#!/usr/bin/env python
"""Training-step time of RPG models vs the vanilla timm models, in one process.

For every workload (model x DoF) the script builds the vanilla timm model and its RPG twin,
then times full training steps (zero_grad, forward, cross-entropy, backward, SGD momentum 0.9
step) *alternating* vanilla and RPG (the order flips every pair), drops the warm-up pairs and
reports medians, their ratio, the memory of both, and the generation alone (expanding all rings
forward, and back-propagating random weight gradients onto them).

CUDA (default when present): 224 px, bf16 autocast, channels_last, resnet18/34 at batch 256 and
ViT-B/16 at batch 128.  CPU: 64 px, batch 32, resnet18/34 (ask for others with --models).

Output: one header line starting with ``# step_time v1`` (the format version), a fixed-width
table (one row per workload, columns below), and with ``--json PATH`` (``-`` = stdout) the same
numbers plus every raw step time as JSON.  Columns:

  model dof            workload
  vanilla_ms rpg_ms    median step time
  ratio                rpg_ms / vanilla_ms
  van_peak rpg_peak    CUDA: peak allocated MiB of one step: the model's state + the step's transients;
                       CPU: n/a (no allocator statistics)
  van_state rpg_state  MiB held between steps: parameters, their gradients, buffers, optimizer state
                       and, for RPG, the cached generated weights (reparam keeps them between steps)
  gen_fwd_ms gen_bwd   median generation-only forward / backward time (all rings)
  backend              generation backend used (RPG_HF_BACKEND / --backend)

Example:  python benchmarks/step_time.py                 # CPU defaults here, CUDA defaults on a GPU
          python benchmarks/step_time.py --models resnet18 --dofs 45000 --steps 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

FORMAT_VERSION = 1
CUDA_BATCH = {"resnet18": 256, "resnet34": 256, "vit_base_patch16_224": 128}


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--models", default=None, help="comma list (default: resnet18,resnet34 on CPU; + vit_base_patch16_224 on CUDA)")
    p.add_argument("--dofs", default="45000,2000000", help="comma list of ring sizes (default 45000,2000000)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: CPU 32; CUDA 256 resnets, 128 ViT)")
    p.add_argument("--res", type=int, default=None, help="image size (default: CPU 64, CUDA 224; ViT always 224)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default: CPU 10, CUDA 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default: CPU 3, CUDA 10)")
    p.add_argument("--gen-reps", type=int, default=None, help="generation-only repetitions (default: CPU 5, CUDA 20)")
    p.add_argument("--backend", choices=["auto", "torch", "cpu", "triton"], default=None,
                   help="generation backend (sets RPG_HF_BACKEND; default: the environment's or auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: torch's)")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on for CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto", help="(auto: on for CUDA)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--json", default=None, help="write the results as JSON to PATH ('-': stdout)")
    return p.parse_args(argv)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_mib(model, opt) -> float:
    """Bytes held between steps: parameters, buffers, optimizer state, RPG's cached weights."""
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
        add(t.grad)
    for state in opt.state.values():
        for v in state.values():
            add(v)
    gen = getattr(model, "rpg", None)
    for entry in getattr(gen, "_cache", None) or []:
        if entry is not None:
            for w in entry[1]:
                add(w)
    return total / 2**20


def _workloads(args, device):
    models = args.models.split(",") if args.models else (
        ["resnet18", "resnet34", "vit_base_patch16_224"] if device.type == "cuda" else ["resnet18", "resnet34"])
    dofs = [int(float(d)) for d in args.dofs.split(",")]
    return [(m.strip(), d) for m in models for d in dofs]


def main(argv=None) -> int:
    args = _parse(argv)
    if args.backend:
        os.environ["RPG_HF_BACKEND"] = args.backend
    import timm
    import torch

    import rpg_hf
    from rpg_hf.kernels import requested_backend, select_backend
    from rpg_hf.kernels.plan import get_plan
    from rpg_hf.ring import expand_ring

    if args.threads:
        torch.set_num_threads(args.threads)
    dev_name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_name)
    cuda = device.type == "cuda"
    amp = args.amp == "on" or (args.amp == "auto" and cuda)
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and cuda)
    steps = args.steps or (30 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    gen_reps = args.gen_reps or (20 if cuda else 5)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext

    if cuda:
        desc = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        desc = f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    header = (f"# step_time v{FORMAT_VERSION} | device={desc} | torch={torch.__version__} | "
              f"backend={requested_backend()} | amp={'bf16' if amp else 'off'} | channels_last={'on' if channels_last else 'off'} | "
              f"steps={steps} warmup={warmup} gen_reps={gen_reps}")
    print(header, flush=True)
    cols = (f"{'model':<22} {'dof':>9} {'batch':>5} {'res':>4} {'vanilla_ms':>10} {'rpg_ms':>9} {'ratio':>6} "
            f"{'van_peak':>9} {'rpg_peak':>9} {'van_state':>9} {'rpg_state':>9} {'gen_fwd_ms':>10} {'gen_bwd_ms':>10} "
            f"{'generated':>10} {'backend':>7}")
    print(cols)
    print("-" * len(cols), flush=True)

    results = []
    for name, dof in _workloads(args, device):
        vit = name.startswith("vit")
        res = 224 if vit else (args.res or (224 if cuda else 64))
        batch = args.batch or (CUDA_BATCH.get(name, 128) if cuda else 32)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, res, res, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def build(rpg: bool, name=name, res=res, vit=vit, dof=dof):
            torch.manual_seed(0)
            kw = {"img_size": res} if vit else {}
            model = timm.create_model(name, num_classes=1000, **kw)
            if rpg:
                model = rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=dof))
            model = model.to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
            return model, opt

        def step(model, opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        models = {"vanilla": build(False), "rpg": build(True)}
        times = {"vanilla": [], "rpg": []}
        for i in range(warmup + steps):
            order = ("vanilla", "rpg") if i % 2 == 0 else ("rpg", "vanilla")
            for kind in order:
                model, opt = models[kind]
                _sync(device)
                t0 = time.perf_counter()
                step(model, opt)
                _sync(device)
                if i >= warmup:
                    times[kind].append((time.perf_counter() - t0) * 1e3)

        # memory: what each model holds between steps, and (CUDA) the peak of one step of that model
        # = its own state + the step's transient peak (the other model is resident but not counted)
        states = {k: _state_mib(*models[k]) for k in models}
        peaks = {}
        if cuda:
            for kind, (model, opt) in models.items():
                _sync(device)
                before = torch.cuda.memory_allocated(device) / 2**20
                torch.cuda.reset_peak_memory_stats(device)
                step(model, opt)
                _sync(device)
                peaks[kind] = torch.cuda.max_memory_allocated(device) / 2**20 - before + states[kind]

        # generation alone: every ring of the RPG model, forward and backward with random weight grads
        rpg_model = models["rpg"][0]
        gen = rpg_model.rpg
        backends = sorted({select_backend(r, get_plan(gen.slots[i], r.numel())) for i, r in enumerate(gen.rings)})
        grads = [[torch.randn(s.shape, device=device) for s in gen.slots[i]] for i in range(len(gen.rings))]
        fwd, bwd = [], []
        for rep in range(gen_reps + 1):
            _sync(device)
            t0 = time.perf_counter()
            outs = [expand_ring(r, gen.slots[i]) for i, r in enumerate(gen.rings)]
            _sync(device)
            t1 = time.perf_counter()
            torch.autograd.backward([w for ws in outs for w in ws], [g for gs in grads for g in gs])
            _sync(device)
            t2 = time.perf_counter()
            if rep:  # first repetition warms up
                fwd.append((t1 - t0) * 1e3)
                bwd.append((t2 - t1) * 1e3)
            del outs
        for r in gen.rings:
            r.grad = None

        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "model": name, "dof": dof, "batch": batch, "res": res,
            "vanilla_ms": med["vanilla"], "rpg_ms": med["rpg"], "ratio": med["rpg"] / med["vanilla"],
            "vanilla_peak_mib": peaks.get("vanilla"), "rpg_peak_mib": peaks.get("rpg"),
            "vanilla_state_mib": states["vanilla"], "rpg_state_mib": states["rpg"],
            "gen_fwd_ms": statistics.median(fwd), "gen_bwd_ms": statistics.median(bwd),
            "generated": sum(s.numel for ss in gen.slots for s in ss), "backend": "+".join(backends),
            "vanilla_steps_ms": times["vanilla"], "rpg_steps_ms": times["rpg"],
        }
        results.append(row)

        def mib(v):
            return f"{v:>9.1f}" if v is not None else f"{'n/a':>9}"

        print(f"{name:<22} {dof:>9} {batch:>5} {res:>4} {row['vanilla_ms']:>10.1f} {row['rpg_ms']:>9.1f} {row['ratio']:>6.3f} "
              f"{mib(row['vanilla_peak_mib'])} {mib(row['rpg_peak_mib'])} {mib(states['vanilla'])} {mib(states['rpg'])} "
              f"{row['gen_fwd_ms']:>10.2f} {row['gen_bwd_ms']:>10.2f} {row['generated']:>10} {row['backend']:>7}", flush=True)
        del models, grads
        if cuda:
            torch.cuda.empty_cache()

    if args.json:
        payload = {"format": f"step_time v{FORMAT_VERSION}", "header": header, "device": desc,
                   "torch": torch.__version__, "amp": amp, "channels_last": channels_last,
                   "steps": steps, "warmup": warmup, "results": results}
        text = json.dumps(payload, indent=1)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
