"""Sharded training of RPG models: FSDP2 (``fully_shard``, Accelerate's FSDP plugin v2) and DeepSpeed ZeRO-3.

What is special about an RPG model is that one parameter, the ring, is *read by every generated
layer* although it is registered in one module only (``rpg.rings.<i>`` of the ring holder,
:class:`~rpg_hf.reparam.layer.RPGGenerator`, whose own ``forward`` never runs inside the model's).
Both sharding schemes gather a parameter when the module that owns it runs, so the ring needs a rule:

* **FSDP2** — the ring must be in exactly one FSDP unit, and that unit's forward must enclose the
  forward of every module that reads the ring.  :func:`shard_rpg_model` gives each block its own
  unit and leaves the ring(s) to the root unit, which FSDP2 keeps unsharded from its forward to
  the end of its backward; :func:`check_rpg_sharding` refuses any other layout (a unit of its own
  for the ring holder — what Accelerate's transformer-based auto-wrap does with the model's
  ``_no_split_modules`` — or a unit that holds the ring but not all its readers), because such a
  layout reads a sharded ring: an error at best, wrong weights at worst.
* **ZeRO-3** — :func:`register_rings_for_zero3` registers each ring as an external parameter of
  every module that reads it (``deepspeed.zero.register_external_parameter``, DeepSpeed's API for a
  parameter used outside its owner's forward), so DeepSpeed gathers the ring around each of those
  modules' forward and backward and releases it after them.

What sharding buys for an RPG model: the ring, the free tensors (norms, biases, stem, head) and
their gradients and optimizer state are split across ranks.  The generated weights are not
parameters: every rank generates each layer's full weight in its forward (autograd keeps it for the
backward, as it keeps activations), exactly as without sharding.

:func:`full_state_dict` / :func:`save_pretrained_sharded` gather the model on rank 0 and write the
usual ring-only folder, which ``from_pretrained`` loads bit-identically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from rpg_hf.reparam import RPGGenerator

__all__ = [
    "check_rpg_sharding",
    "default_blocks",
    "full_state_dict",
    "generated_modules",
    "register_rings_for_zero3",
    "save_pretrained_sharded",
    "shard_rpg_model",
    "sharding_mode",
    "unsharded_copy",
]

BlockSpec = Iterable[nn.Module | str | type] | Callable[[nn.Module], bool]


def generated_modules(model: nn.Module) -> list[tuple[str, nn.Module, RPGGenerator, int]]:
    """``(name, module, generator, ring index)`` for every generated module of ``model``, in module order."""
    out = []
    for name, module in model.named_modules():
        gen = module.__dict__.get("_rpg_generator")
        if isinstance(gen, RPGGenerator):
            out.append((name, module, gen, gen.slot_of[module.__dict__["_rpg_position"]][0]))
    return out


def _generators(model: nn.Module) -> list[tuple[str, RPGGenerator]]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, RPGGenerator)]
    if not found:
        raise ValueError(f"{type(model).__name__} holds no RPG ring (not re-parameterized by rpg_hf)")
    return found


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks :func:`shard_rpg_model` gives a unit each: the elements of the outermost
    ``nn.Sequential`` / ``nn.ModuleList`` containers that hold generated modules and no ring holder;
    single layers and parameter-free elements are left to the root, as a unit of their own would
    shard nothing (timm ResNets: each ``BasicBlock``/``Bottleneck`` of ``layer1..4``; timm ViTs: ``blocks[i]``;
    transformers ViT: ``encoder.layer[i]``; ConvNeXt: each stage)."""
    holders = {id(m) for _, m in _generators(model)}
    readers = {id(m) for _, m, _, _ in generated_modules(model)}
    blocks: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.Sequential | nn.ModuleList):
                for element in child.children():
                    ids = {id(m) for m in element.modules()}
                    is_block = any(True for _ in element.children()) and any(True for _ in element.parameters())
                    if ids & readers and not ids & holders and is_block:
                        blocks.append(element)
                    elif ids & readers:
                        visit(element)
            elif not isinstance(child, RPGGenerator):
                visit(child)

    visit(model)
    return blocks


def _resolve_blocks(model: nn.Module, blocks: BlockSpec | None) -> list[nn.Module]:
    if blocks is None:
        return default_blocks(model)
    if callable(blocks) and not isinstance(blocks, nn.Module):
        return [m for m in model.modules() if m is not model and blocks(m)]
    named = dict(model.named_modules())
    out = []
    for b in blocks:
        if isinstance(b, str):
            if b not in named:
                raise ValueError(f"no module named {b!r} in {type(model).__name__}")
            out.append(named[b])
        elif isinstance(b, type):
            out += [m for m in model.modules() if isinstance(m, b) and m is not model]
        else:
            out.append(b)
    return out


def shard_rpg_model(
    model: nn.Module,
    *,
    mesh=None,
    blocks: BlockSpec | None = None,
    reshard_after_forward: bool | int = False,
    **fully_shard_kwargs,
) -> nn.Module:
    """Apply FSDP2's ``fully_shard`` to ``model``: one unit per block, then the root, which keeps the ring(s).

    ``blocks``: the modules that get a unit each — module objects, names in ``named_modules()``,
    classes, or a predicate; default :func:`default_blocks`.  None may hold a ring holder.
    ``mesh``: the data-parallel ``DeviceMesh`` (``init_device_mesh("cuda", (world,))``; default:
    FSDP's, over the default process group).  Other keyword arguments (``mp_policy``,
    ``offload_policy``) go to every ``fully_shard`` call.  Call it before building the optimizer
    (``fully_shard`` replaces the parameters by sharded ``DTensor`` ones), and before
    ``accelerator.prepare`` when Accelerate runs FSDP2: Accelerate leaves an already sharded model
    as it is.

    **The ring stays in the root unit.**  Every generated layer reads the ring, so the ring must be
    gathered from before the first generated layer runs until the last one's gradient is folded
    in; the root unit is gathered at the start of the forward and, for the root, FSDP2 does not
    reshard after forward (the backward would gather it again at once), so one all-gather and one
    reduce-scatter of the ring per step is all the ring costs.  The ring is small (DoF numbers),
    so keeping it gathered through the step costs little memory.  Local rings (one per stage) stay
    there too: they are all parameters of the one ring holder, and an FSDP unit is a module.

    **``reshard_after_forward=False`` for the blocks** (the default here, where FSDP2's default
    for non-root units is ``True``): a block of an RPG model owns only free tensors — norms,
    biases — because its convolution / linear weights are generated, not parameters.  Freeing
    those few kB after the forward would save nothing worth an extra all-gather per block in the
    backward.  Pass ``True`` (or an int, to reshard to a smaller group) when many layers are left
    free (``RPGSpec(exclude=...)``) and their parameters dominate memory.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        raise ValueError("the model is already sharded (its root is an FSDP unit); check it with check_rpg_sharding")
    holders = [g for _, g in _generators(model)]
    units = _resolve_blocks(model, blocks)
    for unit in units:
        if unit is model:
            raise ValueError("the root is sharded last by shard_rpg_model itself: leave it out of `blocks`")
        if any(m is g for m in unit.modules() for g in holders):
            raise ValueError(
                f"block {type(unit).__name__} contains the ring holder (RPGGenerator): the ring must stay in the "
                "root unit, whose forward encloses every generated layer; choose smaller blocks"
            )
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, **fully_shard_kwargs)
    fully_shard(model, mesh=mesh, **fully_shard_kwargs)  # the root: FSDP2 does not reshard it after forward
    check_rpg_sharding(model)
    return model


def _fsdp_units(model: nn.Module) -> dict[str, nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, FSDPModule)}


def _fsdp_state(module: nn.Module):
    get = getattr(module, "_get_fsdp_state", None)
    return get() if get is not None else None


def _owner(name: str, units: dict[str, nn.Module]) -> str | None:
    """The FSDP unit that manages the parameters of module ``name``: its nearest unit ancestor (or itself)."""
    parts = name.split(".") if name else []
    for cut in range(len(parts), -1, -1):
        prefix = ".".join(parts[:cut])
        if prefix in units:
            return prefix
    return None


def _inside(name: str, unit: str) -> bool:
    return unit == "" or name == unit or name.startswith(unit + ".")


def check_rpg_sharding(model: nn.Module) -> None:
    """Raise a ValueError naming the problem if ``model``'s FSDP2 units would read a sharded ring.

    Valid: the ring holder is not a unit of its own, and the unit that manages the ring (its
    nearest ancestor unit) contains every module that reads the ring — the root, in
    :func:`shard_rpg_model`'s layout.  A model with no FSDP unit at all is not sharded and passes;
    one whose units leave the ring outside every unit does not (its ring would be replicated and
    its gradient never reduced).  Call it after ``accelerator.prepare`` when Accelerate's auto-wrap
    chose the units.
    """
    units = _fsdp_units(model)
    if not units:
        return
    readers = generated_modules(model)
    for holder_name, gen in _generators(model):
        shown = holder_name or "<root>"
        if holder_name in units:
            state = _fsdp_state(units[holder_name])
            peers = [n or "<root>" for n, m in units.items() if n != holder_name and state is not None
                     and _fsdp_state(m) is state]
            where = (f"shares an FSDP unit with {peers[:3]} (fully_shard([...]) on a list)" if peers
                     else "is an FSDP unit of its own")
            raise ValueError(
                f"the ring holder {shown!r} (RPGGenerator) {where}: that unit is gathered around its modules' "
                "forward, and the ring holder's forward never runs, so the generated layers elsewhere would "
                "read a sharded ring. Leave the ring to the root unit (rpg_hf.sharding.shard_rpg_model does; "
                "with Accelerate set fsdp_transformer_layer_cls_to_wrap to the model's block classes, not "
                "RPGGenerator)"
            )
        owner = _owner(holder_name, units)
        if owner is None:
            raise ValueError(f"the ring {shown}.rings is in no FSDP unit: shard the root module too")
        outside = [name for name, _, g, _ in readers if g is gen and not _inside(name, owner)]
        if outside:
            raise ValueError(
                f"the ring {shown}.rings is in the FSDP unit {owner or '<root>'!r}, but generated module(s) "
                f"{outside[:3]} outside that unit read it: the ring would be split between two groups (sharded "
                "while they run). Keep the ring in a unit that encloses every generated module (the root)"
            )


# --------------------------------------------------------------------------- gathering and saving


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (ring, free tensors, buffers) on rank 0's CPU; ``{}`` on other ranks.

    A collective: every rank must call it.  Works on an FSDP2 model and on a ZeRO-3 model (the
    engine's ``.module``); a model that is not sharded gives its plain state dict.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if _fsdp_units(model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]  # ZeRO-3: gather the partitions
    if not partitioned:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None):
        if dist.get_rank() != 0:
            return {}
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _plain_class(model: nn.Module) -> type:
    """The model's own class (under FSDP2's dynamic ``FSDP<Class>`` subclass, if any)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return type(model)
    return next(c for c in type(model).__mro__ if c is not FSDPModule and not issubclass(c, FSDPModule))


def unsharded_copy(model: nn.Module) -> nn.Module | None:
    """A plain (unsharded, CPU) copy of a sharded :class:`~rpg_hf.RPGPreTrainedModel` on rank 0, None elsewhere.

    A collective (:func:`full_state_dict`).  The copy is built from ``model.config`` and loads the
    gathered state strictly, so it is exactly the trained model; a model that is not sharded
    gives a copy too.
    """
    import torch.distributed as dist
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"unsharded_copy rebuilds transformers models from their config, not {type(model).__name__}; "
                        "use full_state_dict(model) and load it into an unsharded model")
    state = full_state_dict(model)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank != 0:
        return None
    plain = _plain_class(model)(model.config)
    plain.load_state_dict(state, strict=True)
    return plain


def save_pretrained_sharded(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> Path | None:
    """``save_pretrained`` for a sharded (FSDP2 or ZeRO-3) :class:`~rpg_hf.RPGPreTrainedModel`: a collective.

    The full state dict is gathered on rank 0 (:func:`unsharded_copy`) and saved there — config,
    ring-only safetensors, processor, card and the remote-code files, as for any model.  Returns
    the folder on rank 0, None on the others; ``kwargs`` go to ``save_pretrained``.
    """
    import torch.distributed as dist

    plain = unsharded_copy(model)
    path = None
    if plain is not None:
        plain.save_pretrained(save_directory, **kwargs)
        path = Path(save_directory)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return path


def sharding_mode(accelerator) -> str | None:
    """``"fsdp2"``, ``"zero3"`` or None for an ``accelerate.Accelerator`` (what the recipes branch on)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) == 2:
        return "fsdp2"
    if kind == DistributedType.FSDP:
        raise ValueError("FSDP version 1 is not supported for RPG models: set fsdp_version: 2 in the accelerate "
                         "config (recipes/configs/fsdp2_8.yaml)")
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if kind == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3:
        return "zero3"
    return None


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3


def register_rings_for_zero3(model: nn.Module) -> int:
    """Register each ring as a ZeRO-3 external parameter of every module that reads it; returns the count.

    ZeRO-3 partitions every parameter and gathers a module's own parameters around that module's
    forward and backward.  The ring belongs to the ring holder, whose forward never runs inside the
    model's; registered, it is gathered (DoF numbers: small) around each generated module and
    released after it, as DeepSpeed documents for a parameter used outside its module.  (With
    DeepSpeed 0.19.8 an unregistered ring also trained correctly in a 2-process CPU run, because
    DeepSpeed fetches a partitioned parameter when its attribute is read; that fetch is not part of
    its documented contract, the registration is.)  Call it on the
    model before ``deepspeed.initialize`` / ``accelerator.prepare`` (the registration is a plain
    attribute of the module; DeepSpeed's hooks, installed at initialize, read it); it is harmless
    without ZeRO-3 and idempotent.  Needs ``deepspeed`` installed (``pip install rpg_hf[deepspeed]``).
    """
    import deepspeed  # deepspeed.zero is an attribute of the package, not an importable module

    count = 0
    for _, module, gen, ring in generated_modules(model):
        deepspeed.zero.register_external_parameter(module, gen.rings[ring])
        count += 1
    return count
