"""RPG image classifier for ``trust_remote_code=True`` (Recurrent Parameter Generators, WACV 2023).

rpg_hf writes this file into every ring-only checkpoint it saves.  It rebuilds the model with only
torch + transformers (+ timm for timm backbones): the checkpoint holds the ring(s) — a small vector
that generates every selected conv/linear weight — the free tensors (stem, norms, biases, head)
and a config with the seed, the DoF and the recorded layer order; never index tables.

Everything needed is below, in plain PyTorch:

* the pinned construction, ``generator_version`` 1 (a port of ``rpg_hf/generator.py`` and
  ``rpg_hf/ring.py``; rpg_hf's tests check it against the package's golden vectors and logits):
  ``W_l[j] = m_l * s_l(j) * ring[(o_l + pi_l(j)) mod N]`` with ``pi_l`` a keyed Feistel bijection
  with cycle walking and ``s_l`` a keyed hash bit — integer arithmetic only, no RNG;
* validation of the ring-only safetensors file (wrong DoF, missing / NaN ring, int8 rings);
* ``expand()``: a plain timm model / ``ViTForImageClassification`` with the generated weights.

Where rpg_hf is installed and imported, transformers uses rpg_hf's registered classes instead
(faster kernels for training); this file never imports rpg_hf.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_rpg import RPGConfig

# --------------------------------------------------------------------------- the pinned construction (v1)

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN64 = 0x9E3779B97F4A7C15
HASH_MUL1 = 0x2C1B3C6D
HASH_MUL2 = 0x297A2D39
NUM_ROUNDS = 4
MAX_LAYER_SIZE = 2**32 - 1
CHUNK = 1 << 20  # elements per index temporary


def mix64(z: int) -> int:
    """SplitMix64 output function on a Python int (exact 64-bit arithmetic)."""
    z = (z + GOLDEN64) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def layer_keys(seed: int, position: int) -> tuple[tuple[int, ...], int]:
    """The four Feistel round keys and the sign key of generated layer ``position``."""
    if position < 0:
        raise ValueError(f"layer position must be >= 0, got {position}")
    key = mix64(mix64(seed & MASK64) ^ mix64(position + 1))
    sub = [mix64((key + (i + 1) * GOLDEN64) & MASK64) & MASK32 for i in range(NUM_ROUNDS + 1)]
    return tuple(sub[:NUM_ROUNDS]), sub[NUM_ROUNDS]


def hash32(v: torch.Tensor, key: int) -> torch.Tensor:
    """Keyed 32-bit integer hash of an int64 tensor holding values in [0, 2**32)."""
    v = v ^ key
    v = v ^ (v >> 15)
    v = (v * HASH_MUL1) & MASK32
    v = v ^ (v >> 12)
    v = (v * HASH_MUL2) & MASK32
    return v ^ (v >> 15)


def grid_shape(n: int) -> tuple[int, int]:
    """(a, b) with a * b >= n and a * b - n < b: the Feistel domain for a layer of n weights."""
    if not 1 <= n <= MAX_LAYER_SIZE:
        raise ValueError(f"a generated tensor must hold 1..{MAX_LAYER_SIZE} values, got {n}")
    b = math.isqrt(n - 1) + 1 if n > 1 else 1
    a = -(-n // b)
    return a, b


class Permutation:
    """The keyed bijection pi on [0, n) (forward direction), evaluated at any positions."""

    def __init__(self, n: int, round_keys: tuple[int, ...], device: torch.device | str = "cpu"):
        self.n = n
        self.a, self.b = grid_shape(n)
        xs = torch.arange(self.a, dtype=torch.int64, device=device)
        ys = torch.arange(self.b, dtype=torch.int64, device=device)
        self.tables = [hash32(ys, k) % self.a if r % 2 == 0 else hash32(xs, k) % self.b
                       for r, k in enumerate(round_keys)]

    def _rounds(self, p: torch.Tensor) -> torch.Tensor:
        x, y = p // self.b, p % self.b
        for r in range(NUM_ROUNDS):
            if r % 2 == 0:
                x = (x + self.tables[r][y]) % self.a
            else:
                y = (y + self.tables[r][x]) % self.b
        return x * self.b + y

    def forward(self, j: torch.Tensor) -> torch.Tensor:
        p = self._rounds(j)
        outside = (p >= self.n).nonzero().squeeze(1)
        while outside.numel():  # cycle walking
            q = self._rounds(p[outside])
            p[outside] = q
            outside = outside[q >= self.n]
        return p


def negative_signs(j: torch.Tensor, sign_key: int) -> torch.Tensor:
    """Boolean mask of the positions whose generated weight is negated (s(j) = -1)."""
    return (hash32(j, sign_key) >> 31).bool()


def to_float32(x: float) -> float:
    """Round a Python float to the nearest float32 value."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


class LayerSlot:
    """One generated tensor's place in its ring: position (keys pi and s), shape, unwrapped start."""

    def __init__(self, position: int, shape, start: int, multiplier: float, seed: int = 0,
                 permute: bool = True, sign_flip: bool = True):
        self.position, self.shape, self.start = position, tuple(int(s) for s in shape), int(start)
        self.multiplier = to_float32(float(multiplier))
        self.permute, self.sign_flip = bool(permute), bool(sign_flip)
        self.round_keys, self.sign_key = layer_keys(seed, position)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _chunks(n: int, device):
    for lo in range(0, n, CHUNK):
        yield torch.arange(lo, min(n, lo + CHUNK), dtype=torch.int64, device=device)


def layer_indices(slot: LayerSlot, ring_size: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Ring index and negation mask of every weight of one layer."""
    perm = Permutation(slot.numel, slot.round_keys, device) if slot.permute else None
    idx, neg = [], []
    for j in _chunks(slot.numel, device):
        p = perm.forward(j) if perm is not None else j
        idx.append((p + slot.start) % ring_size)
        neg.append(negative_signs(j, slot.sign_key) if slot.sign_flip else torch.zeros_like(j, dtype=torch.bool))
    return torch.cat(idx), torch.cat(neg)


def generate_layer(ring: torch.Tensor, slot: LayerSlot) -> torch.Tensor:
    """W_l (differentiable w.r.t. the ring): ``m * s(j) * ring[(start + pi(j)) mod N]``, shaped."""
    size = ring.numel()
    perm = Permutation(slot.numel, slot.round_keys, ring.device) if slot.permute else None
    parts = []
    for j in _chunks(slot.numel, ring.device):
        p = perm.forward(j) if perm is not None else j
        w = ring[(p + slot.start) % size] * slot.multiplier
        if slot.sign_flip:
            w = torch.where(negative_signs(j, slot.sign_key), -w, w)
        parts.append(w)
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.view(slot.shape)


# --------------------------------------------------------------------------- ring-only checkpoints

WEIGHTS_NAME = "model.safetensors"
RING_PREFIX = "backbone.rpg.rings."
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
SCALE_SUFFIX = ".scale"
BLOCK_SIZE_SUFFIX = ".block_size"
QMAX = 127
REMOTE_CODE_FILES = ("configuration_rpg.py", "modeling_rpg.py")
AUTO_MAP = {
    "AutoConfig": "configuration_rpg.RPGConfig",
    "AutoModelForImageClassification": "modeling_rpg.RPGForImageClassification",
}


class CheckpointError(ValueError):
    """A ring-only checkpoint that cannot be loaded as it is."""


def ring_key(i: int) -> str:
    return f"{RING_PREFIX}{i}"


def resolve_weights(path_or_repo, hub_kwargs: dict) -> str:
    """Local path of ``model.safetensors`` in a directory or a (cached) Hub repo."""
    from transformers.utils import cached_file

    local = Path(path_or_repo) / hub_kwargs.get("subfolder", "") / WEIGHTS_NAME
    if local.is_file():
        return str(local)
    found = cached_file(path_or_repo, WEIGHTS_NAME, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if found is None:
        raise CheckpointError(
            f"no {WEIGHTS_NAME} in {path_or_repo!s}: rpg_hf checkpoints are ring-only safetensors "
            "(pytorch_model.bin and other pickle formats are never loaded)"
        )
    return found


def check_header(path: str) -> dict:
    """Parse the safetensors header and check the file holds every byte it promises."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8 or header_len > 100 * 2**20:
            raise CheckpointError(f"{path} is not a safetensors file (or is truncated): header length {header_len}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path} is not a safetensors file: unreadable header ({err})") from err
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise CheckpointError(
            f"{path} is truncated: the header promises {8 + header_len + end} bytes, the file has {size}"
        )
    return header


def _expand_scales(scales: torch.Tensor, n: int, block_size: int | None) -> torch.Tensor:
    return scales.expand(n) if block_size is None else scales.repeat_interleave(block_size)[:n]


def dequantize_state_dict(tensors: dict) -> dict:
    """Every int8 ring triple (``key``, ``key.scale``, ``key.block_size``) becomes a float32 ring."""
    prefixes = {
        k[: -len(BLOCK_SIZE_SUFFIX)] for k in tensors
        if k.endswith(BLOCK_SIZE_SUFFIX) and tensors.get(k[: -len(BLOCK_SIZE_SUFFIX)]) is not None
        and tensors[k[: -len(BLOCK_SIZE_SUFFIX)]].dtype == torch.int8
    }
    skip = {p + s for p in prefixes for s in (SCALE_SUFFIX, BLOCK_SIZE_SUFFIX)}
    out = {}
    for key, value in tensors.items():
        if key in skip:
            continue
        if key in prefixes:
            if key + SCALE_SUFFIX not in tensors:
                raise KeyError(f"quantized ring entry {key + SCALE_SUFFIX!r} missing from the checkpoint")
            values = value.reshape(-1)
            scales = tensors[key + SCALE_SUFFIX].reshape(-1)
            block = int(tensors[key + BLOCK_SIZE_SUFFIX].reshape(-1)[0]) or None
            if values.dtype != torch.int8 or scales.dtype != torch.float32:
                raise ValueError(f"quantized ring {key!r}: expected int8 values and float32 scales, "
                                 f"got {values.dtype} / {scales.dtype}")
            blocks = 1 if block is None else max(1, math.ceil(values.numel() / block))
            if scales.numel() != blocks:
                raise ValueError(f"{scales.numel()} scales do not fit {values.numel()} entries in blocks of {block}")
            value = values.to(torch.float32) * _expand_scales(scales, values.numel(), block)
        out[key] = value
    return out


def quantize_ring(ring: torch.Tensor, block_size: int | None = None) -> dict:
    """Symmetric int8 quantization of a ring: ``{"": values, ".scale": scales, ".block_size": [b]}``."""
    x = ring.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("cannot quantize a ring holding NaN or inf")
    n = x.numel()
    if block_size is None:
        amax = x.abs().max().reshape(1) if n else torch.zeros(1)
    else:
        blocks = max(1, math.ceil(n / block_size))
        padded = torch.zeros(blocks * block_size, dtype=torch.float32)
        padded[:n] = x.abs()
        amax = padded.view(blocks, block_size).amax(dim=1)
    scales = amax / QMAX
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(x / _expand_scales(safe, n, block_size)).clamp_(-QMAX, QMAX).to(torch.int8)
    return {"": q.contiguous(), SCALE_SUFFIX: scales.contiguous(),
            BLOCK_SIZE_SUFFIX: torch.tensor([block_size or 0], dtype=torch.int64)}


def read_ring_only(path: str, config: RPGConfig) -> dict:
    """All tensors of a ring-only file, validated against the config; int8 rings dequantized."""
    from safetensors import SafetensorError, safe_open

    check_header(path)
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a valid safetensors file: {err}") from err
    sizes = config.ring_sizes or [config.dof]
    for i in range(len(sizes)):
        if ring_key(i) not in tensors:
            raise CheckpointError(
                f"{path} has no ring tensor {ring_key(i)!r}: not a ring-only RPG checkpoint, or damaged"
            )
    if config.ring_dtype == "int8":
        try:
            tensors = dequantize_state_dict(tensors)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"int8 ring in {path} cannot be read: {err}") from err
    for i, expected in enumerate(sizes):
        key = ring_key(i)
        ring = tensors[key]
        if ring.ndim != 1 or ring.numel() != expected:
            raise CheckpointError(
                f"ring {key!r} in {path} has {ring.numel()} entries, but the config says "
                f"{'dof' if len(sizes) == 1 else f'ring_sizes[{i}]'}={expected}"
            )
        if not torch.isfinite(ring).all():
            bad = int((~torch.isfinite(ring)).sum())
            raise CheckpointError(f"ring {key!r} in {path} holds {bad} NaN/Inf value(s)")
    extra = [k for k in tensors if k.startswith(RING_PREFIX) and k not in {ring_key(i) for i in range(len(sizes))}]
    if extra:
        raise CheckpointError(f"{path} holds ring tensors {extra} beyond the config's {len(sizes)} ring(s)")
    return tensors


def check_loading_info(info: dict, path: str) -> None:
    """Turn transformers' missing/unexpected keys into an architecture-mismatch error."""
    missing, unexpected = sorted(info.get("missing_keys", ())), sorted(info.get("unexpected_keys", ()))
    mismatched = info.get("mismatched_keys", ())
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"architecture mismatch: {path} does not match the architecture in its config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}, mismatched {list(mismatched)[:5]}"
        )


def write_remote_code(save_directory) -> list[str]:
    """Copy this file and ``configuration_rpg.py`` into ``save_directory`` (the trust_remote_code files)."""
    here = Path(__file__).resolve().parent
    written = []
    for name in REMOTE_CODE_FILES:
        src, dst = here / name, Path(save_directory) / name
        if not (dst.exists() and dst.resolve() == src):
            shutil.copyfile(src, dst)
        written.append(str(dst))
    return written


# --------------------------------------------------------------------------- the model


def image_processor_for(config: RPGConfig):
    """The image processor of the config's preprocessing (saved as ``preprocessor_config.json``)."""
    from transformers import BitImageProcessor

    size = config.image_size
    return BitImageProcessor(
        do_resize=True, size={"shortest_edge": int(round(size / config.crop_pct))},
        do_center_crop=True, crop_size={"height": size, "width": size},
        do_normalize=True, image_mean=config.mean, image_std=config.std, do_convert_rgb=True,
    )


def build_backbone(config: RPGConfig) -> nn.Module:
    """The plain (not yet re-parameterized) backbone a config describes."""
    if config.backbone == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        vit_cfg = ViTConfig(**{**config.vit_config, "num_labels": config.num_labels,
                               "id2label": config.id2label, "label2id": config.label2id})
        return ViTForImageClassification(vit_cfg)
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"this RPG checkpoint has a timm backbone ({config.architecture}): pip install timm") from err
    try:
        return timm.create_model(config.architecture, pretrained=False, num_classes=config.num_labels,
                                 **(config.model_args or {}))
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown timm architecture {config.architecture!r} (timm {timm.__version__}); "
                "check the name with timm.list_models()"
            ) from err
        raise


class RPGRings(nn.Module):
    """Owns the ring(s) (``backbone.rpg.rings.<i>``) and generates the recorded layers' weights."""

    def __init__(self, config: RPGConfig):
        super().__init__()
        if not config.generated_layers or not config.ring_sizes:
            raise ValueError("an RPG checkpoint's config must record generated_layers and ring_sizes")
        self.seed, self.dof = int(config.seed), int(config.dof)
        self.ring_std = (2.0 / config.reference_fan) ** 0.5
        self.ring_sizes = [int(s) for s in config.ring_sizes]
        self.names = [str(d["name"]) for d in config.generated_layers]
        self.rings = nn.ParameterList(nn.Parameter(part) for part in self._initial_ring().split(self.ring_sizes))
        self.slots: list[tuple[int, LayerSlot]] = []
        starts = [0] * len(self.ring_sizes)
        for position, d in enumerate(config.generated_layers):
            r = int(d["ring"])
            if not 0 <= r < len(self.ring_sizes):
                raise ValueError(f"layer {d['name']!r} names ring {r}, but there are {len(self.ring_sizes)}")
            slot = LayerSlot(position, d["shape"], starts[r], d["multiplier"], self.seed, config.permute,
                             config.sign_flip)
            self.slots.append((r, slot))
            starts[r] += slot.numel
        self._modules_ref: list[nn.Module] = []
        self._cache = None

    def _initial_ring(self) -> torch.Tensor:
        """Kaiming-normal ring for the reference fan, drawn on the CPU from the seed (a fresh model only)."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        return torch.randn(self.dof, generator=gen, device="cpu") * self.ring_std

    @torch.no_grad()
    def reset_rings(self) -> None:
        for ring, part in zip(self.rings, self._initial_ring().split(self.ring_sizes), strict=True):
            if not ring.is_meta:
                ring.copy_(part)
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        self._cache = None

    def _apply(self, fn, recurse=True):
        self.invalidate_cache()
        return super()._apply(fn, recurse)

    def generate_all(self) -> list[torch.Tensor]:
        """Weights of every generated layer in the recorded order (with autograd when it is on).

        Without autograd the result is cached and reused while the rings' values are unchanged
        (compared by value, so in-place optimizer updates of any kind are seen).
        """
        rings = list(self.rings)
        if any(r.is_meta for r in rings):
            return [torch.empty(s.shape, device="meta", dtype=rings[r].dtype) for r, s in self.slots]
        if torch.is_grad_enabled() and any(r.requires_grad for r in rings):
            return [generate_layer(rings[r], s) for r, s in self.slots]
        key = tuple((r.device, r.dtype) for r in rings)
        cached = self._cache
        if cached is not None and cached[0] == key and all(torch.equal(a, b) for a, b in zip(cached[1], rings, strict=True)):
            return cached[2]
        with torch.no_grad():
            weights = [generate_layer(rings[r], s) for r, s in self.slots]
            self._cache = (key, [r.detach().clone() for r in rings], weights)
        return weights

    def materialize(self, *args) -> None:
        """Put the current generated weights on the generated modules (a forward pre-hook of the backbone)."""
        for module, weight in zip(self._modules_ref, self.generate_all(), strict=True):
            module.__dict__["weight"] = weight

    def release(self, *args) -> None:
        """Detach the weights after a forward pass, so the model stays deep-copyable."""
        for module in self._modules_ref:
            w = module.__dict__.get("weight")
            if isinstance(w, torch.Tensor) and w.grad_fn is not None:
                module.__dict__["weight"] = w.detach()


def attach_rings(backbone: nn.Module, config: RPGConfig) -> RPGRings:
    """Replace the recorded layers' ``weight`` parameters of ``backbone`` by ring-generated tensors."""
    rings = RPGRings(config)
    modules = dict(backbone.named_modules())
    targets = []
    for name, (_, slot) in zip(rings.names, rings.slots, strict=True):
        module = modules.get(name)
        weight = module._parameters.get("weight") if module is not None else None
        if weight is None:
            raise ValueError(f"architecture mismatch: the recorded generated layer {name!r} has no weight "
                             f"parameter in {type(backbone).__name__}")
        if tuple(weight.shape) != slot.shape:
            raise ValueError(f"architecture mismatch at {name!r}: recorded shape {slot.shape}, "
                             f"model has {tuple(weight.shape)}")
        targets.append(module)
    rings.to(device=targets[0]._parameters["weight"].device)
    for module in targets:
        del module._parameters["weight"]
    backbone.add_module("rpg", rings)
    rings._modules_ref = targets
    backbone.register_forward_pre_hook(rings.materialize)
    backbone.register_forward_hook(rings.release)
    with torch.no_grad():
        rings.materialize()
    return rings


class RPGPreTrainedModel(PreTrainedModel):
    """Ring handling for `PreTrainedModel`: seeded init, ring-only save, validated load, `expand()`."""

    config: RPGConfig
    config_class = RPGConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["RPGRings"]
    model_tags = ["rpg_hf", "rpg"]

    @property
    def generator(self) -> RPGRings:
        return self.backbone.rpg

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, RPGRings):  # the backbone's constructors initialised the free tensors
            module.reset_rings()

    def post_init(self):
        super().post_init()
        self.generator.invalidate_cache()

    def num_dof(self) -> int:
        return self.config.dof

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts int8 rings (a Trainer resuming from an int8 checkpoint)."""
        if any(k.endswith(BLOCK_SIZE_SUFFIX) for k in state_dict):
            state_dict = dequantize_state_dict(dict(state_dict))
        self.generator.invalidate_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def expand(self) -> nn.Module:
        """A plain timm model / `ViTForImageClassification` whose outputs equal this model's."""
        ring = self.generator.rings[0]
        plain = build_backbone(self.config).to(device=ring.device, dtype=ring.dtype)
        state = {k[len("backbone."):]: v for k, v in self.state_dict().items()
                 if k.startswith("backbone.") and not k.startswith("backbone.rpg.")}
        with torch.no_grad():
            for name, weight in zip(self.generator.names, self.generator.generate_all(), strict=True):
                state[f"{name}.weight"] = weight.detach()
        plain.load_state_dict(state, strict=True)
        return plain.train(self.training)

    def ring_only_state_dict(self) -> dict:
        state = self.state_dict()
        if self.config.ring_dtype == "int8":
            for i in range(len(self.generator.ring_sizes)):
                key = ring_key(i)
                for suffix, tensor in quantize_ring(state.pop(key), self.config.ring_block_size).items():
                    state[key + suffix] = tensor
        return state

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Ring-only safetensors + config (with ``auto_map``) + these two code files."""
        if kwargs.get("state_dict") is None:
            kwargs["state_dict"] = self.ring_only_state_dict()
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            image_processor_for(self.config).save_pretrained(save_directory)

    def image_processor(self):
        return image_processor_for(self.config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a ring-only checkpoint (directory or Hub id), validated; safetensors only."""
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError("rpg_hf checkpoints are safetensors only; use_safetensors=False is not supported")
        output_loading_info = kwargs.pop("output_loading_info", False)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        if not isinstance(config, RPGConfig):
            config = RPGConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        weights = resolve_weights(pretrained_model_name_or_path, hub)
        state_dict = read_ring_only(weights, config)
        model, info = super().from_pretrained(
            None, *model_args, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
        )
        check_loading_info(info, weights)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        model.generator.invalidate_cache()
        return (model, info) if output_loading_info else model


class RPGForImageClassification(RPGPreTrainedModel):
    """An RPG image classifier over a timm CNN or a transformers ViT backbone."""

    def __init__(self, config: RPGConfig):
        super().__init__(config)
        self.backbone = build_backbone(config)
        attach_rings(self.backbone, config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.backbone == "vit":
            logits = self.backbone(pixel_values=pixel_values, **kwargs).logits
        else:
            logits = self.backbone(pixel_values)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
            elif self.config.num_labels == 1 or self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long())
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


__all__ = ["RPGForImageClassification", "RPGPreTrainedModel"]
