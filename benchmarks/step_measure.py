"""The measurement of ``step_time.py``: models on a device, timed training steps, memory, generation.

:class:`Bench` builds the vanilla timm model and its RPG twin, times turns of training steps
alternating between them (:meth:`Bench.alternate`) and measures the state held between steps,
the CUDA peak of one step and the generation alone; :func:`ratio_stats` reduces the turn times
to the median of the per-pair ratios.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

CUDA_BATCH = {"resnet18": 256, "resnet34": 256, "vit_base_patch16_224": 128}


def ratio_stats(vanilla: list[float], rpg: list[float]) -> dict:
    """Median of the per-pair ratios with its min-max and quartiles."""
    ratios = [r / v for v, r in zip(vanilla, rpg, strict=True)]
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        q1 = q3 = ratios[0]
    return {"vanilla_ms": statistics.median(vanilla), "rpg_ms": statistics.median(rpg),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_q1": q1, "ratio_q3": q3, "pair_ratios": ratios,
            "vanilla_turns_ms": vanilla, "rpg_turns_ms": rpg}


class Bench:
    """One device's setting (amp, channels_last, step counts, time budget) and the measurements on it."""

    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        if dev == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
        self.device = torch.device(dev)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        self.amp = args.amp == "on" or (args.amp == "auto" and self.cuda)
        self.channels_last = args.channels_last == "on" or (args.channels_last == "auto" and self.cuda)
        self.cfg = {
            "repeats": args.repeats or 11,
            "steps": args.steps or (5 if self.cuda else 2),
            "warmup": args.warmup if args.warmup is not None else (10 if self.cuda else 3),
            "gen_reps": args.gen_reps if args.gen_reps is not None else (20 if self.cuda else 5),
        }
        import rpg_hf

        self.version = args.generator_version or rpg_hf.GENERATOR_VERSION
        self.t_start = time.perf_counter()
        self.compile_cost: list[float] = []  # seconds each compiled model's warm-up took

    # -- helpers
    def remaining(self) -> float:
        if self.args.time_budget is None:
            return float("inf")
        return self.args.time_budget - (time.perf_counter() - self.t_start)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16) if self.amp else nullcontext()

    def workloads(self):
        a = self.args
        models = [m.strip() for m in a.models.split(",")] if a.models else (
            ["resnet18", "resnet34", "vit_base_patch16_224"] if self.cuda else ["resnet18"])
        dofs = [int(float(d)) for d in a.dofs.split(",")] if a.dofs else (
            [45_000, 2_000_000] if self.cuda else [45_000])
        return [(m, dofs) for m in models if m]

    def shape(self, name: str) -> tuple[int, int]:
        res = self.args.res or (224 if self.cuda else 64)
        batch = self.args.batch or (CUDA_BATCH.get(name, 128) if self.cuda else 32)
        return batch, res

    def data(self, name: str):
        torch = self.torch
        batch, res = self.shape(name)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, res, res, generator=gen).to(self.device)
        y = torch.randint(0, self.args.num_classes, (batch,), generator=gen).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def build(self, name: str, dof: int | None):
        """The vanilla model (dof None) or its RPG twin, on the device, with its optimizer."""
        import timm

        import rpg_hf

        torch = self.torch
        _, res = self.shape(name)
        kw = {"num_classes": self.args.num_classes}
        if "vit" in name:
            kw["img_size"] = res
        torch.manual_seed(0)
        how = "vanilla"
        if dof is None:
            model = timm.create_model(name, **kw)
        elif f"rpg_{name}" in timm.list_models("rpg_*"):
            model = timm.create_model(f"rpg_{name}", dof=dof, generator_version=self.version, **kw)
            how = f"timm.create_model('rpg_{name}')"
        else:
            spec = rpg_hf.RPGSpec(dof=dof, generator_version=self.version)
            model = rpg_hf.reparameterize(timm.create_model(name, **kw), spec)
            how = "rpg_hf.reparameterize"
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=self.args.lr, momentum=0.9, weight_decay=1e-4)
        return {"model": model, "opt": opt, "run": model, "how": how}

    def stepper(self, m: dict, x, y):
        torch = self.torch

        def step():
            m["opt"].zero_grad(set_to_none=True)
            with self.autocast():
                loss = torch.nn.functional.cross_entropy(m["run"](x), y)
            loss.backward()
            m["opt"].step()

        return step

    def timed(self, step, n: int) -> float:
        """Seconds of ``n`` consecutive steps (synchronised before and after): a warm-up, a compile."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        self.sync()
        return time.perf_counter() - t0

    def turn(self, step, n: int) -> float:
        """Mean ms per step over ``n`` consecutive steps."""
        return self.timed(step, n) * 1e3 / n

    def alternate(self, steps: dict) -> dict:
        v, r = [], []
        for i in range(self.cfg["repeats"]):
            order = ("vanilla", "rpg") if i % 2 == 0 else ("rpg", "vanilla")
            t = {k: None for k in order}
            for k in order:
                t[k] = self.turn(steps[k], self.cfg["steps"])
            v.append(t["vanilla"])
            r.append(t["rpg"])
        return ratio_stats(v, r)

    def rpg_backend(self, model) -> str:
        from rpg_hf import get_generator
        from rpg_hf.ops import select_backend
        from rpg_hf.ops.plan import get_plan

        gen = get_generator(model)
        return "+".join(sorted({select_backend(r, get_plan(gen.slots[i], r.numel())) for i, r in enumerate(gen.rings)}))

    # -- memory and generation (eager pass)
    def state_mib(self, model, opt) -> float:
        """Bytes held between steps: parameters, gradients, buffers, optimizer state, RPG's cached weights,
        reused output buffers and kept weight gradients."""
        torch = self.torch
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
        for entry in getattr(gen, "_cache", None) or []:  # eval cache: weights kept with a ring copy
            if entry is not None:
                add(entry.ring)
                for w in entry.weights:
                    add(w)
        for hub in getattr(gen, "_hubs", None) or []:  # training: the CPU output buffers kept for reuse
            for pool in (hub.buffers.values() if hub is not None else ()):
                for buf in pool:
                    add(buf)
            for g in (hub.held or ()) if hub is not None else ():  # the last backward's weight gradients
                add(g)
        return total / 2**20

    def peak_mib(self, m: dict, step) -> float | None:
        if not self.cuda:
            return None
        torch = self.torch
        self.sync()
        before = torch.cuda.memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        step()
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) / 2**20 - before + self.state_mib(m["model"], m["opt"])

    def generation(self, model) -> dict:
        """Generation alone, as training runs it: every ring forward, then random weight gradients folded back.

        One :class:`~rpg_hf.ops.RingGradient` per ring for all repetitions, so the CPU output buffers
        are reused as in a training step (fresh ones would add page faults that training never pays).
        """
        torch = self.torch
        from rpg_hf import get_generator
        from rpg_hf.ops import RingGradient

        gen = get_generator(model)
        hubs = [RingGradient(r) for r in gen.rings]
        reps = self.cfg["gen_reps"]
        out = {"generated": sum(s.numel for ss in gen.slots for s in ss), "gen_fwd_ms": None, "gen_bwd_ms": None}
        if reps <= 0:
            return out
        g = torch.Generator(device=self.device).manual_seed(0)
        grads = [[torch.randn(s.shape, device=self.device, generator=g) for s in gen.slots[i]] for i in range(len(gen.rings))]
        fwd, bwd = [], []
        for rep in range(reps + 1):
            self.sync()
            t0 = time.perf_counter()
            outs = [[hub.weight(r, s) for s in gen.slots[i]] for i, (hub, r) in enumerate(zip(hubs, gen.rings, strict=True))]
            self.sync()
            t1 = time.perf_counter()
            torch.autograd.backward([w for ws in outs for w in ws], [gg for gs in grads for gg in gs])
            self.sync()
            t2 = time.perf_counter()
            if rep:  # the first repetition warms up
                fwd.append((t1 - t0) * 1e3)
                bwd.append((t2 - t1) * 1e3)
            del outs
        for r in gen.rings:
            r.grad = None
        out["gen_fwd_ms"], out["gen_bwd_ms"] = statistics.median(fwd), statistics.median(bwd)
        # the memory floor: as many weights copied into kept buffers, and into fresh memory
        src = [gg for gs in grads for gg in gs]
        dst = [torch.empty_like(w) for w in src]
        copy, alloc_copy = [], []
        for rep in range(reps + 1):
            self.sync()
            t0 = time.perf_counter()
            for d, w in zip(dst, src, strict=True):
                d.copy_(w)
            self.sync()
            t1 = time.perf_counter()
            fresh = [torch.empty_like(w).copy_(w) for w in src]
            self.sync()
            t2 = time.perf_counter()
            del fresh
            if rep:
                copy.append((t1 - t0) * 1e3)
                alloc_copy.append((t2 - t1) * 1e3)
        out["copy_ms"], out["alloc_copy_ms"] = statistics.median(copy), statistics.median(alloc_copy)
        return out

    def eval_forward(self, vanilla, rpg, x) -> dict:
        """Eval forwards without gradient in alternating turns: RPG reads its cached weights (no ``expand()``)."""
        torch = self.torch
        models = {"vanilla": vanilla, "rpg": rpg}
        for m in models.values():
            m.eval()

        def forward(m):
            def run():
                with torch.no_grad(), self.autocast():
                    m(x)
            return run

        steps = {k: forward(m) for k, m in models.items()}
        try:
            for k in steps:
                self.timed(steps[k], max(3, self.cfg["warmup"]))
            turns = max(5, self.cfg["steps"] * 5)
            v, r = [], []
            for i in range(self.cfg["repeats"]):
                order = ("vanilla", "rpg") if i % 2 == 0 else ("rpg", "vanilla")
                t = {k: self.turn(steps[k], turns) for k in order}
                v.append(t["vanilla"])
                r.append(t["rpg"])
        finally:
            for m in models.values():
                m.train()
        return {**ratio_stats(v, r), "batch": int(x.shape[0])}

    # -- passes
    def compile(self, m: dict) -> None:
        """Run ``m`` through ``torch.compile`` from now on (it compiles at its first step)."""
        torch = self.torch
        a = self.args
        kw = {"fullgraph": True, "dynamic": False, "backend": a.compile_backend}
        if a.compile_mode:
            kw["mode"] = a.compile_mode
        m["run"] = torch.compile(m["model"], **kw)
