"""Fold a pretrained network into a ring: start RPG from the weights people already have.

Given a plain timm CNN or transformers ViT with trained weights, :func:`fold` returns the RPG
model whose ring is the **least-squares fit** of those weights under the pinned construction.
Generation is linear in the ring, ``W_l[j] = m_l · s_l(j) · ring[(o_l + π_l(j)) mod N]``, so the
ring that minimises ``Σ_l ||W_l(ring) − W_l||²`` decouples per entry:

    ring[k] = Σ m·s·w / Σ m²        over the weight entries w that map to ring entry k

— the multiplier- and sign-weighted mean of the weights sharing that entry.  The numerator is the
adjoint of generation applied to the target weights (what backward computes for a gradient equal
to the weights), the denominator the same adjoint applied to the constant ``m``.  Ring entries no
weight maps to (DoF larger than the generated weights) get 0, the minimum-norm solution.
Everything is computed in float64 on the CPU from the pinned integer construction, so the folded
ring is the same on every machine.  The free tensors (stem, norms, biases, head, buffers) are
copied unchanged.

The fit is exact when every ring entry receives at most one weight — DoF ≥ generated weights —
and, beyond that, whenever the weights already are a ring expansion of the same construction
(folding ``expand(rpg_model)`` gives its ring back).  Otherwise the report says how much is lost:
per layer and overall, the relative reconstruction error ``||W_fold − W|| / ||W||``.  For weights
with no structure, folding ``T`` weights into ``N`` entries keeps about ``N/T`` of their energy
(error ≈ sqrt(1 − N/T)): folding is a starting point for fine-tuning, not a compressor on its own.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rpg_hf.core.reference import layer_indices
from rpg_hf.reparam import expand, get_generator, reparameterize, select_targets
from rpg_hf.spec import RPGSpec

__all__ = [
    "FoldReport",
    "config_from_model",
    "fit_rings",
    "fold",
    "fold_into",
    "load_source",
    "plain_network",
    "recalibrate_batchnorm",
]


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class FoldReport:
    """How well a ring reproduces the weights it was folded from (per layer and overall)."""

    rows: list[dict]
    dof: int
    ring_sizes: list[int]
    unused_ring_entries: int
    weighting: str = "uniform"

    @property
    def generated_params(self) -> int:
        return sum(r["numel"] for r in self.rows)

    @property
    def reuse(self) -> float:
        """Generated weights per ring entry (T/N)."""
        return self.generated_params / self.dof

    @property
    def rel_error(self) -> float:
        """Overall relative reconstruction error sqrt(Σ||W_fold − W||² / Σ||W||²)."""
        den = sum(r["norm"] ** 2 for r in self.rows)
        num = sum((r["rel_error"] * r["norm"]) ** 2 for r in self.rows)
        return math.sqrt(num / den) if den > 0 else 0.0

    @property
    def energy_kept(self) -> float:
        """1 − rel_error²: the share of the weights' squared norm the folded ring reproduces."""
        return 1.0 - self.rel_error**2

    @property
    def exact(self) -> bool:
        """The folded weights equal the source weights to float32 rounding."""
        return self.rel_error < 1e-6

    def totals(self) -> dict:
        return {
            "dof": self.dof, "rings": list(self.ring_sizes), "generated_params": self.generated_params,
            "reuse": self.reuse, "rel_error": self.rel_error, "energy_kept": self.energy_kept,
            "unused_ring_entries": self.unused_ring_entries, "exact": self.exact, "weighting": self.weighting,
        }

    def to_dict(self) -> dict:
        return {**self.totals(), "layers": [dict(r) for r in self.rows]}

    def __str__(self) -> str:
        head = f"{'layer':<40} {'shape':<20} {'numel':>10} {'ring':>4} {'mult':>8} {'rel. error':>10}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r["shape"]))
            lines.append(f"{r['name']:<40.40} {shape:<20} {r['numel']:>10,} {r['ring']:>4} "
                         f"{r['multiplier']:>8.3f} {r['rel_error']:>10.4f}")
        lines += [
            "-" * len(head),
            f"DoF (ring entries)      {self.dof:>14,}   rings: {len(self.ring_sizes)}"
            + (f"   unused entries: {self.unused_ring_entries:,}" if self.unused_ring_entries else ""),
            f"generated parameters    {self.generated_params:>14,}   reuse T/N = {self.reuse:,.2f}",
            f"relative error (all)    {self.rel_error:>14.4f}   energy kept = {100 * self.energy_kept:.2f}%"
            + ("   (exact)" if self.exact else "") + f"   fit: {self.weighting} least squares",
        ]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _backbone(model: nn.Module) -> nn.Module:
    """The re-parameterized module of an RPG model: ``model.backbone`` for the HF wrapper."""
    from rpg_hf.hf.modeling_rpg import RPGPreTrainedModel

    return model.backbone if isinstance(model, RPGPreTrainedModel) else model


def _is_rpg(model: nn.Module) -> bool:
    try:
        get_generator(_backbone(model))
    except ValueError:
        return False
    return True


def plain_network(source: nn.Module) -> nn.Module:
    """The plain network behind ``source``: itself, or the expansion of an RPG model (refolding)."""
    from rpg_hf.hf.modeling_rpg import RPGPreTrainedModel

    if isinstance(source, RPGPreTrainedModel):
        return source.expand()
    if _is_rpg(source):
        return expand(source)
    return source


def _ring_keys(backbone: nn.Module) -> list[str]:
    """State-dict names of the generator's rings, in ring order."""
    gen = get_generator(backbone)
    index = {id(p): i for i, p in enumerate(gen.rings)}
    keys: list[str | None] = [None] * len(gen.rings)
    for name, value in backbone.state_dict(keep_vars=True).items():
        if id(value) in index:
            keys[index[id(value)]] = name
    if any(k is None for k in keys):
        raise RuntimeError("a ring of the generator is missing from the model's state_dict")
    return keys  # type: ignore[return-value]


def _match(backbone: nn.Module, source_sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(free keys, generated keys) of the RPG backbone, checked against the source's state dict."""
    gen = get_generator(backbone)
    ring_keys = set(_ring_keys(backbone))
    target_sd = backbone.state_dict()
    free = [k for k in target_sd if k not in ring_keys]
    generated = [f"{layer.name}.weight" for layer in gen.layers]
    expected = {k: tuple(target_sd[k].shape) for k in free}
    expected.update({f"{layer.name}.weight": tuple(layer.shape) for layer in gen.layers})
    missing = [k for k in expected if k not in source_sd]
    unexpected = [k for k in source_sd if k not in expected]
    wrong = [(k, tuple(source_sd[k].shape), s) for k, s in expected.items()
             if k in source_sd and tuple(source_sd[k].shape) != s]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the RPG model are not in the source (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) of the source have no place in the RPG model "
                         f"(e.g. {unexpected[:3]})")
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {k!r}: source {got}, RPG model {want})")
        raise ValueError(f"architecture mismatch: the source network does not fit this RPG "
                         f"{type(backbone).__name__}: " + "; ".join(parts))
    return free, generated


# --------------------------------------------------------------------------- the fit


WEIGHTINGS = ("uniform", "relative")


def _layer_weights(weights: list[torch.Tensor], weighting) -> list[float]:
    """Per-layer weights λ_l of the least-squares objective Σ_l λ_l ||W_l(ring) − W_l||²."""
    if weighting is None or weighting == "uniform":
        return [1.0] * len(weights)
    if weighting == "relative":  # every layer's *relative* error counts the same: λ_l = 1 / ||W_l||²
        out = []
        for w in weights:
            norm2 = float(w.detach().double().pow(2).sum())
            out.append(1.0 / norm2 if norm2 > 0 else 0.0)
        return out
    if isinstance(weighting, str):
        raise ValueError(f"unknown fold weighting {weighting!r}; expected one of {WEIGHTINGS} or per-layer floats")
    out = [float(v) for v in weighting]
    if len(out) != len(weights) or any(not v >= 0 for v in out):
        raise ValueError(f"fold weighting: expected {len(weights)} non-negative per-layer weights, got {out}")
    return out


@torch.no_grad()
def fit_rings(generator, weights: Iterable[torch.Tensor], weighting=None) -> tuple[list[torch.Tensor], int]:
    """Least-squares rings for target ``weights`` (one per generated layer, in recorded order).

    ``weighting`` chooses the objective ``Σ_l λ_l ||W_l(ring) − W_l||²``: ``None``/``"uniform"``
    (λ = 1, the plain reconstruction error), ``"relative"`` (λ_l = 1/||W_l||²: every layer's relative
    error counts the same, so small layers are not drowned by large ones), or one float per layer.
    The solution is ``ring[k] = Σ λ·m·s·w / Σ λ·m²``.  Returns the rings (float32, CPU) and the number
    of ring entries no weight maps to (set to 0).
    """
    weights = list(weights)
    if len(weights) != len(generator.layers):
        raise ValueError(f"{len(weights)} target weights for {len(generator.layers)} generated layers")
    lambdas = _layer_weights(weights, weighting)
    sizes = list(generator.ring_sizes)
    num = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    den = [torch.zeros(n, dtype=torch.float64) for n in sizes]
    for position, w in enumerate(weights):
        r, i = generator.slot_of[position]
        slot = generator.slots[r][i]
        if tuple(w.shape) != tuple(slot.shape):
            raise ValueError(f"layer {generator.layers[position].name!r}: target shape {tuple(w.shape)}, "
                             f"generated shape {tuple(slot.shape)}")
        idx, neg = layer_indices(slot, sizes[r])
        w = w.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
        m, lam = float(slot.multiplier), lambdas[position]
        num[r].index_add_(0, idx, torch.where(neg, -w, w) * (lam * m))
        den[r].index_add_(0, idx, torch.full_like(w, lam * m * m))
    rings, unused = [], 0
    for nr, dr in zip(num, den, strict=True):
        used = dr > 0
        unused += int((~used).sum())
        rings.append(torch.where(used, nr / torch.where(used, dr, 1.0), 0.0).float())
    return rings, unused


def _report(backbone: nn.Module, targets: list[torch.Tensor], unused: int, weighting) -> FoldReport:
    gen = get_generator(backbone)
    folded = gen.generate_all()
    rows = []
    for layer, (r, _), w, g in zip(gen.layers, gen.slot_of, targets, folded, strict=True):
        w64 = w.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        g64 = g.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        norm = float(w64.norm())
        err = float((g64 - w64).norm())
        rows.append({"name": layer.name, "shape": list(layer.shape), "numel": layer.numel, "ring": r,
                     "multiplier": layer.multiplier, "norm": norm,
                     "rel_error": err / norm if norm > 0 else (0.0 if err == 0 else math.inf)})
    name = weighting if isinstance(weighting, str) else ("uniform" if weighting is None else "per-layer")
    return FoldReport(rows, gen.spec.dof, list(gen.ring_sizes), unused, name)


def fold_into(rpg_model: nn.Module, source: nn.Module, weighting=None) -> FoldReport:
    """Overwrite ``rpg_model`` (re-parameterized module or RPG HF model) with ``source``'s weights.

    The ring(s) become the least-squares fit of the source's generated weights; every free tensor
    (norms, biases, stem, head, buffers) is copied.  ``source`` is a plain network of the same
    architecture (an RPG model is expanded first, so this also refolds at another DoF).
    ``weighting`` is :func:`fit_rings`'s (default: the plain least-squares fit).  Raises
    ``ValueError`` naming the first differences when the architectures do not match.
    """
    backbone = _backbone(rpg_model)
    gen = get_generator(backbone)
    plain = plain_network(source)
    source_sd = plain.state_dict()
    free, generated = _match(backbone, source_sd)
    targets = [source_sd[k] for k in generated]
    rings, unused = fit_rings(gen, targets, weighting)
    new_sd = {k: source_sd[k] for k in free}
    new_sd.update(dict(zip(_ring_keys(backbone), rings, strict=True)))
    backbone.load_state_dict(new_sd, strict=True)
    if hasattr(gen, "invalidate_cache"):
        gen.invalidate_cache()
    return _report(backbone, targets, unused, weighting)


def config_from_model(source: nn.Module, dof: int, *, model_args: Mapping[str, Any] | None = None,
                      **fields: Any):
    """The :class:`rpg_hf.RPGConfig` of an RPG model with ``source``'s architecture and ``dof``.

    Reads the architecture from the model: a ``ViTForImageClassification``'s config, or a timm
    model's ``pretrained_cfg["architecture"]`` with the keyword arguments timm recorded when it
    built the model (``model_args`` overrides them).  ``fields`` are further ``RPGConfig`` fields
    (``seed``, ``scope``, ``permute``, ``sign_flip``, ...).
    """
    from transformers import ViTForImageClassification

    from rpg_hf.hf.configuration_rpg import RPGConfig
    from rpg_hf.hf.modeling_rpg import RPGPreTrainedModel

    if isinstance(source, RPGPreTrainedModel):
        keep = {k: getattr(source.config, k) for k in ("backbone", "architecture", "model_args", "vit_config",
                                                        "num_labels", "id2label", "label2id", "image_size",
                                                        "crop_pct", "image_mean", "image_std")}
        if model_args is not None:
            keep["model_args"] = dict(model_args)
        return RPGConfig(**{**keep, "dof": dof, **fields})
    if isinstance(source, ViTForImageClassification):
        cfg = source.config
        return RPGConfig(backbone="vit", architecture=getattr(cfg, "_name_or_path", "") or "vit",
                         vit_config=cfg.to_dict(), num_labels=cfg.num_labels, id2label=dict(cfg.id2label),
                         label2id=dict(cfg.label2id), image_size=int(cfg.image_size), dof=dof, **fields)
    pcfg = dict(getattr(source, "pretrained_cfg", None) or {})
    arch = pcfg.get("architecture")
    if not arch or not hasattr(source, "num_classes"):
        raise TypeError(f"cannot tell the architecture of a {type(source).__name__}: fold a timm model or a "
                        "ViTForImageClassification, or pass an RPGConfig / RPGSpec")
    args = {k: v for k, v in (getattr(source, "_model_args", None) or {}).items() if k != "num_classes"}
    args.update(model_args or {})
    extra: dict[str, Any] = {}
    if pcfg.get("mean") and pcfg.get("std"):
        mean, std = [float(v) for v in pcfg["mean"]], [float(v) for v in pcfg["std"]]
        chans = int(args.get("in_chans", len(mean)))
        if len(mean) != chans:  # e.g. a 1-channel model with ImageNet's 3-channel default
            mean, std = [sum(mean) / len(mean)] * chans, [sum(std) / len(std)] * chans
        extra.update(image_mean=mean, image_std=std)
    if pcfg.get("input_size"):
        extra["image_size"] = int(pcfg["input_size"][-1])
    if pcfg.get("crop_pct"):
        extra["crop_pct"] = float(pcfg["crop_pct"])
    return RPGConfig(backbone="timm", architecture=arch, model_args=args or None,
                     num_labels=int(source.num_classes), dof=dof, **{**extra, **fields})


def fold(source: nn.Module, target, *, weighting=None, **spec_fields: Any) -> tuple[nn.Module, FoldReport]:
    """Fold ``source``'s trained weights into a ring; returns ``(rpg_model, report)``.

    ``target`` says which RPG model to build:

    * an ``int`` (the DoF) or an :class:`RPGSpec` — a re-parameterized copy of ``source`` (same
      class: a timm model or a ``ViTForImageClassification``); ``spec_fields`` complete the spec
      when an int is given (``seed=``, ``scope=``, ``permute=``...);
    * an :class:`rpg_hf.RPGConfig` — a fresh :class:`rpg_hf.RPGForImageClassification` (saves
      ring-only with ``save_pretrained``); :func:`config_from_model` makes one from ``source``;
    * an existing RPG model — folded into in place (see :func:`fold_into`).

    ``weighting``: the least-squares objective (:func:`fit_rings`; default plain).  ``source``
    itself is never modified.
    """
    from rpg_hf.hf.configuration_rpg import RPGConfig
    from rpg_hf.hf.modeling_rpg import RPGForImageClassification

    if isinstance(target, bool) or (isinstance(target, int) and not isinstance(target, RPGSpec)):
        if target <= 0:
            raise ValueError(f"fold: the DoF (ring size) must be a positive int, got {target}")
        target = RPGSpec(dof=int(target), **spec_fields)
    elif spec_fields:
        raise TypeError(f"fold: spec fields {sorted(spec_fields)} only apply when the target is a DoF")
    if isinstance(target, RPGSpec):
        plain = plain_network(source)
        try:
            select_targets(plain, target)
        except ValueError as err:
            raise ValueError(f"nothing to fold: {err}") from err
        model = reparameterize(copy.deepcopy(plain), target)
    elif isinstance(target, RPGConfig):
        model = RPGForImageClassification(target)
    elif isinstance(target, nn.Module) and _is_rpg(target):
        model = target
    else:
        raise TypeError(f"fold: target must be a DoF, an RPGSpec, an RPGConfig or an RPG model, "
                        f"got {type(target).__name__}")
    model.train(source.training)
    return model, fold_into(model, source, weighting)


# --------------------------------------------------------------------------- loading sources


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_model(arch: str, state: Mapping[str, torch.Tensor] | None, num_labels: int | None,
                model_args: Mapping[str, Any]) -> nn.Module:
    import timm

    from rpg_hf import timm_models  # noqa: F401  (registers cifar_resnet*)

    if num_labels is None and state is not None:  # the head's rows in the state dict
        probe = timm.create_model(arch, pretrained=False, **model_args)
        head = probe.pretrained_cfg.get("classifier")
        heads = head if isinstance(head, (list, tuple)) else [head]
        for name in heads:
            if name and f"{name}.weight" in state:
                num_labels = int(state[f"{name}.weight"].shape[0])
                break
    kwargs = dict(model_args)
    if num_labels is not None:
        kwargs["num_classes"] = num_labels
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the weights do not fit timm {arch!r} with {kwargs}: {err}") from err
    return model


def load_source(path_or_name: str, *, arch: str | None = None, model_args: Mapping[str, Any] | None = None,
                num_labels: int | None = None) -> nn.Module:
    """A trained network to fold, from wherever it lives.

    * a timm folder (``config.json`` with ``architecture``, e.g. written by ``save_for_hf`` or
      ``rpg-hf expand``): built with its recorded ``model_args`` and loaded strictly;
    * a transformers ViT folder (``model_type: vit``);
    * an RPG checkpoint folder (``model_type: rpg``): loaded as is (folding expands it: refolding);
    * a weights file (``.safetensors``, ``.pth``/``.pt``/``.bin`` loaded with ``weights_only``) of
      the timm architecture ``arch`` (built with ``model_args``; ``num_labels`` defaults to the
      head's rows in the file) — ``arch`` is used for files only;
    * else a timm model name, ``timm.create_model(name, pretrained=True)`` (cache or Hub).
    """
    path = Path(path_or_name)
    model_args = dict(model_args or {})
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a timm, transformers or RPG model folder")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("model_type") == "rpg":
            from rpg_hf.hf.modeling_rpg import RPGForImageClassification

            return RPGForImageClassification.from_pretrained(str(path))
        if cfg.get("model_type") == "vit":
            from transformers import ViTForImageClassification

            return ViTForImageClassification.from_pretrained(str(path))
        if "architecture" in cfg:
            weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()),
                           None)
            if weights is None:
                raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
            args = {**(cfg.get("model_args") or {}), **model_args}
            model = _timm_model(cfg["architecture"], _read_weights(weights),
                                num_labels if num_labels is not None else cfg.get("num_classes"), args)
            pcfg = {k: v for k, v in (cfg.get("pretrained_cfg") or {}).items() if k in ("mean", "std", "input_size",
                                                                                         "crop_pct")}
            model.pretrained_cfg = {**(model.pretrained_cfg or {}), **pcfg}
            return model
        raise ValueError(f"{cfg_file}: neither a timm folder (no 'architecture') nor a ViT / RPG model "
                         f"(model_type {cfg.get('model_type')!r})")
    if path.is_file():
        if not arch:
            raise ValueError(f"{path} is a bare weights file: name its timm architecture (arch=..., --arch)")
        return _timm_model(arch, _read_weights(path), num_labels, model_args)
    import timm

    kwargs = {**model_args, **({"num_classes": num_labels} if num_labels is not None else {})}
    try:
        return timm.create_model(str(path_or_name), pretrained=True, **kwargs)
    except Exception as err:  # noqa: BLE001  (unknown name, no cached weights offline, ...)
        raise ValueError(f"cannot load {path_or_name!r} as a folder, a file or a pretrained timm model: {err}") from err


# --------------------------------------------------------------------------- after folding


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (no gradient, no update).

    Folding changes the generated weights, so the source's running statistics no longer describe
    the activations; a few forward passes in train mode with cumulative averaging fix them.
    Returns the number of batches used.  The model's train/eval mode is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return n
