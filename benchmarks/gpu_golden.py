#!/usr/bin/env python
"""Golden expansion check: a fixed model's generated weights on the GPU equal the CPU's bit for bit.

For each fixed configuration (timm architecture @ DoF, seed 0, rings filled with a fixed
exactly-representable pattern, so no RNG is involved) every generated weight is produced

* on the CPU with the default backend (the C kernels where they build) and, up to
  ``--reference-limit`` weights, with the pure-PyTorch reference (``RPG_HF_BACKEND=torch``);
* on ``--device`` (CUDA: the Triton kernels, and the pure-PyTorch reference run on the GPU);

and the copies are compared bit for bit (float32 and bfloat16 weights from a float32 ring,
float64 weights from a float64 ring).  The ring gradient of a fixed weight-gradient pattern is
compared to float32 summation order (max |diff| / max |ref| <= 2e-6, as tests/ops/test_kernels.py).
The SHA-256 of the CPU weights is compared with ``benchmarks/golden_expansion.json`` (written on
another machine with ``--write``): the expansion is the same across machines, not only devices.
The index/sign vectors of the golden layouts (tests/core/test_construction.py) are evaluated on the
device too and compared, whole, with the plain-Python specification modules tests/core/spec_v1.py
and tests/core/spec_v2.py.  Every check runs for each generator version of ``--versions`` (default
1 and 2: version 1 stays supported for loading); hash keys start with ``v<version>/``.

    python benchmarks/gpu_golden.py                        # on a CUDA machine (what gpu_check.sh runs)
    python benchmarks/gpu_golden.py --device cpu --configs test_resnet@1000   # dry run: CPU vs CPU
    python benchmarks/gpu_golden.py --device cpu --write benchmarks/golden_expansion.json   # record hashes

Exit status 0 when every comparison passed (a missing stored hash is reported, not failed), else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN_FILE = HERE / "golden_expansion.json"
GPU_CONFIGS = ["resnet18@45000", "resnet18@2000000", "vit_base_patch16_224@2000000"]
ALL_CONFIGS = GPU_CONFIGS + ["test_resnet@1000", "test_vit@5000"]
RING_PATTERN = "ring[i] = ((i * 2654435761 + 12345) mod 2**24 - 2**23) * 2**-28, i over all rings in order"
GRAD_PATTERN = "grad_l[j] = (((j + 7919 l) * 40503) mod 2**16 - 2**15) * 2**-20"
SPEC_DIR = HERE.parent / "tests" / "core"  # spec_v1.py, spec_v2.py: the constructions from their texts
# (position, layer size, unwrapped start) laid end to end on a ring of 1000, seed 0: the layouts of
# tests/core/test_construction.py's GOLDEN (smaller than the ring, larger, not a power of two)
SPEC_LAYOUTS = ((0, 300, 0), (1, 5000, 300), (2, 777, 5300))
SPEC_RING = 1000


@contextlib.contextmanager
def backend(name: str):
    old = os.environ.get("RPG_HF_BACKEND")
    os.environ["RPG_HF_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RPG_HF_BACKEND", None)
        else:
            os.environ["RPG_HF_BACKEND"] = old


def load_spec(version: int):
    """``tests/core/spec_v<version>.py`` (the construction re-implemented from its specification text), by path."""
    import importlib.util

    if str(SPEC_DIR) not in sys.path:  # spec_v2 builds on spec_v1
        sys.path.insert(0, str(SPEC_DIR))
    path = SPEC_DIR / f"spec_v{version}.py"
    spec = importlib.util.spec_from_file_location(f"spec_v{version}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ring_pattern(offset: int, n: int, dtype):
    import torch

    i = torch.arange(offset, offset + n, dtype=torch.int64)
    v = ((i * 2654435761 + 12345) % 2**24 - 2**23).to(torch.float64) * 2.0**-28  # exact in float32
    return v.to(dtype)


def grad_pattern(position: int, shape):
    import torch

    n = 1
    for d in shape:
        n *= d
    j = torch.arange(n, dtype=torch.int64)
    return ((((j + 7919 * position) * 40503) % 2**16 - 2**15).to(torch.float32) * 2.0**-20).view(shape)


def build_slots(config: str, version: int):
    """(ring sizes, per-ring slots) of the fixed model ``arch@dof`` (seed 0, default spec, generator ``version``)."""
    import timm
    import torch

    import rpg_hf

    arch, dof = config.split("@")
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=1000)
    rpg_hf.reparameterize(model, rpg_hf.RPGSpec(dof=int(float(dof)), seed=0, generator_version=version))
    gen = rpg_hf.get_generator(model)
    return list(gen.ring_sizes), [list(s) for s in gen.slots]


def expand_all(rings, slots, dtype, name: str, device):
    """Detached weights of every layer, ring by ring, with backend ``name`` on ``device``."""
    import torch

    from rpg_hf.ops import expand_ring

    with backend(name), torch.no_grad():
        out = []
        for ring, ss in zip(rings, slots, strict=True):
            out.extend(expand_ring(ring.to(device), ss, dtype))
    return out


def ring_grads(rings, slots, name: str, device):
    import torch

    from rpg_hf.ops import expand_ring

    grads = []
    with backend(name):
        for ring, ss in zip(rings, slots, strict=True):
            r = ring.to(device).detach().requires_grad_(True)
            ws = expand_ring(r, ss)
            torch.autograd.backward(list(ws), [grad_pattern(s.position, s.shape).to(device) for s in ss])
            grads.append(r.grad.detach().float().cpu())
    return grads


def selected(rings, slots, dtype, name: str, device) -> str:
    """The backend(s) ``name`` resolves to for these rings on ``device``."""
    from rpg_hf.ops import select_backend
    from rpg_hf.ops.plan import get_plan

    with backend(name):
        return "+".join(sorted({select_backend(r.to(device), get_plan(tuple(ss), r.numel()), dtype)
                                for r, ss in zip(rings, slots, strict=True)}))


def bits(t):
    import torch

    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.detach().cpu().contiguous().reshape(-1).view(ints[t.element_size()])


def same_bits(a: list, b: list) -> tuple[bool, str]:
    import torch

    if len(a) != len(b):
        return False, f"{len(a)} vs {len(b)} layers"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False, f"layer {i}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
        bx, by = bits(x), bits(y)
        if not torch.equal(bx, by):
            bad = (bx != by).nonzero()
            return False, f"layer {i}: {bad.numel()} of {bx.numel()} elements differ (first at {bad[0].item()})"
    return True, ""


def sha256(ws: list) -> str:
    h = hashlib.sha256()
    for w in ws:
        h.update(bits(w).numpy().tobytes())
    return h.hexdigest()


def grad_close(ours, ref) -> tuple[bool, str]:
    worst = 0.0
    for a, b in zip(ours, ref, strict=True):
        scale = max(float(b.abs().max()), 1.0)
        worst = max(worst, float((a.double() - b.double()).abs().max()) / scale)
    return worst <= 2e-6, f"max |diff|/max(|ref|,1) = {worst:.2e}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="device to compare with the CPU (default cuda)")
    p.add_argument("--configs", default=None, help=f"comma list of arch@dof (default {','.join(GPU_CONFIGS)})")
    p.add_argument("--reference-limit", type=int, default=30_000_000,
                   help="run the CPU pure-PyTorch reference only for models with at most this many weights")
    p.add_argument("--versions", default="1,2", help="generator versions to check (default 1,2)")
    p.add_argument("--golden", default=str(GOLDEN_FILE), help="stored hashes to compare with")
    p.add_argument("--write", default=None, metavar="PATH", help="record the CPU hashes of --configs into PATH")
    p.add_argument("--json", default=None, help="write every comparison as JSON to PATH")
    args = p.parse_args(argv)

    import timm
    import torch

    import rpg_hf

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("FAIL: --device cuda but torch sees no CUDA device")
        return 1
    configs = [c.strip() for c in (args.configs or ",".join(GPU_CONFIGS if not args.write else ALL_CONFIGS)).split(",")]
    stored = json.loads(Path(args.golden).read_text()) if Path(args.golden).exists() else {"hashes": {}}
    versions = [int(v) for v in args.versions.split(",") if v.strip()]
    record = {"generator_versions": versions, "ring_pattern": RING_PATTERN,
              "timm": timm.__version__, "torch": torch.__version__, "hashes": dict(stored.get("hashes", {}))}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"# gpu_golden | device={device} ({dev_name}) | torch={torch.__version__} | timm={timm.__version__} | "
          f"generator_versions={versions} (default {rpg_hf.GENERATOR_VERSION}) | "
          f"stored hashes from timm={stored.get('timm', 'n/a')} "
          f"torch={stored.get('torch', 'n/a')}", flush=True)
    results, failed = [], 0

    def report(ok: bool | None, what: str, detail: str = ""):
        nonlocal failed
        tag = {True: "PASS", False: "FAIL", None: "NOTE"}[ok]
        failed += ok is False
        results.append({"status": tag, "check": what, "detail": detail})
        print(f"{tag} {what}" + (f" -- {detail}" if detail else ""), flush=True)

    for version in versions:
        # 1. the golden layouts' index/sign vectors on the device == the specification module's == the CPU's
        try:
            spec = load_spec(version)
        except (ImportError, OSError) as e:
            report(None, f"v{version} golden index vectors", f"tests/core/spec_v{version}.py not loadable here ({e})")
        else:
            from rpg_hf.core.reference import LayerSlot, layer_indices

            for position, n, start in SPEC_LAYOUTS:
                slot = LayerSlot(position, (n,), start, 1.0, seed=0, version=version)
                idx, neg = layer_indices(slot, SPEC_RING, device)
                cidx, cneg = layer_indices(slot, SPEC_RING, "cpu")
                spec_idx, spec_sign = spec.layer_indices(n, start, SPEC_RING, seed=0, position=position)
                ok = (idx.cpu().tolist() == spec_idx and (1 - 2 * neg.cpu().int()).tolist() == spec_sign
                      and torch.equal(idx.cpu(), cidx) and torch.equal(neg.cpu(), cneg))
                report(ok, f"v{version} golden indices/signs position {position} (n={n}) on {device} == "
                       f"tests/core/spec_v{version}.py and cpu")

        # 2. fixed models: expansion on the device == CPU, bit for bit; gradients to tolerance
        for config in configs:
            t0 = time.perf_counter()
            sizes, slots = build_slots(config, version)
            total = sum(s.numel for ss in slots for s in ss)
            offsets = [sum(sizes[:r]) for r in range(len(sizes))]
            for ring_dtype, out_dtype in ((torch.float32, None), (torch.float32, torch.bfloat16), (torch.float64, None)):
                if ring_dtype == torch.float64 and config not in ("resnet18@45000", "test_resnet@1000"):
                    continue
                label = f"v{version} {config} {str(ring_dtype)[6:]}->{str(out_dtype or ring_dtype)[6:]}"
                rings = [ring_pattern(o, n, ring_dtype) for o, n in zip(offsets, sizes, strict=True)]
                cpu_w = expand_all(rings, slots, out_dtype, "auto", torch.device("cpu"))
                cpu_backend = selected(rings, slots, out_dtype, "auto", torch.device("cpu"))
                digest = sha256(cpu_w)
                key = f"v{version}/{config}/{str(ring_dtype)[6:]}->{str(out_dtype or ring_dtype)[6:]}"
                if args.write:
                    record["hashes"][key] = digest
                want = stored.get("hashes", {}).get(key)
                if want is None:
                    report(None, f"{label} sha256 {digest[:16]}", "no stored hash to compare with")
                else:
                    report(want == digest, f"{label} cpu:{cpu_backend} sha256 == stored ({want[:16]})",
                           "" if want == digest else f"got {digest[:16]}: the expansion differs from the recording machine's")
                if total <= args.reference_limit:
                    ok, why = same_bits(expand_all(rings, slots, out_dtype, "torch", torch.device("cpu")), cpu_w)
                    report(ok, f"{label} cpu:torch-reference == cpu:{cpu_backend} bit for bit ({total:,} weights)", why)
                if device.type != "cpu":
                    dev_backend = selected(rings, slots, out_dtype, "auto", device)
                    ok, why = same_bits(expand_all(rings, slots, out_dtype, "auto", device), cpu_w)
                    report(ok, f"{label} {device.type}:{dev_backend} == cpu:{cpu_backend} bit for bit ({total:,} weights)", why)
                    ok, why = same_bits(expand_all(rings, slots, out_dtype, "torch", device), cpu_w)
                    report(ok, f"{label} {device.type}:torch-reference == cpu:{cpu_backend} bit for bit", why)
                del cpu_w
                if out_dtype is None and ring_dtype == torch.float32:
                    ref = ring_grads(rings, slots, "auto", torch.device("cpu"))
                    if device.type != "cpu":
                        ok, why = grad_close(ring_grads(rings, slots, "auto", device), ref)
                        report(ok, f"{label} ring gradient {device.type}:{dev_backend} ~ cpu:{cpu_backend}", why)
                        ok, why = grad_close(ring_grads(rings, slots, "torch", device), ref)
                        report(ok, f"{label} ring gradient {device.type}:torch-reference ~ cpu:{cpu_backend}", why)
                    elif total <= args.reference_limit:
                        ok, why = grad_close(ring_grads(rings, slots, "torch", device), ref)
                        report(ok, f"{label} ring gradient cpu:torch-reference ~ cpu:{cpu_backend}", why)
            print(f"# v{version} {config}: {total:,} generated weights, {sum(len(s) for s in slots)} layers, "
                  f"{len(sizes)} ring(s), {time.perf_counter() - t0:.1f} s", flush=True)

    if args.write:
        Path(args.write).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"# wrote {len(record['hashes'])} hashes to {args.write}")
    n_pass = sum(r["status"] == "PASS" for r in results)
    print(f"# golden: {n_pass} passed, {failed} failed, {sum(r['status'] == 'NOTE' for r in results)} notes")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "device_name": dev_name, "results": results,
                                               "passed": n_pass, "failed": failed}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
