"""The trained network to fold: loading it, its plain form, and the RPG config of its architecture.

:func:`load_source` reads a network from wherever it lives (a timm, transformers ViT or RPG
folder, a weights file, or a timm model name); :func:`plain_network` is the plain network behind
a model (an RPG model is expanded: refolding); :func:`config_from_model` reads the architecture
off a model as an :class:`rpg_hf.RPGConfig` at a given DoF.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rpg_hf.reparam import expand, get_generator

__all__ = ["config_from_model", "is_rpg", "load_source", "plain_network", "rpg_backbone"]


def rpg_backbone(model: nn.Module) -> nn.Module:
    """The re-parameterized module of an RPG model: ``model.backbone`` for the HF wrapper."""
    from rpg_hf.hf.modeling_rpg import RPGPreTrainedModel

    return model.backbone if isinstance(model, RPGPreTrainedModel) else model


def is_rpg(model: nn.Module) -> bool:
    """Whether ``model`` (a module or an RPG HF model) carries an RPG generator."""
    try:
        get_generator(rpg_backbone(model))
    except ValueError:
        return False
    return True


def plain_network(source: nn.Module) -> nn.Module:
    """The plain network behind ``source``: itself, or the expansion of an RPG model (refolding)."""
    from rpg_hf.hf.modeling_rpg import RPGPreTrainedModel

    if isinstance(source, RPGPreTrainedModel):
        return source.expand()
    if is_rpg(source):
        return expand(source)
    return source


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


# --------------------------------------------------------------------------- loading


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
