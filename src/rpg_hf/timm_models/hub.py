"""timm loading of ring-only RPG checkpoints: ``timm.create_model("hf-hub:org/name", pretrained=True)``.

timm reads a Hub repo's / local folder's ``config.json`` itself (``architecture``, ``model_args``,
``pretrained_cfg``) and calls the entrypoint that ``architecture`` names.  A ring-only checkpoint
writes ``"architecture": "rpg.<backbone>"`` (see :mod:`rpg_hf.hf.remote_code.configuration_rpg`), so
timm calls the generic entrypoint :func:`rpg` registered here (on ``import rpg_hf``), which

* reads the checkpoint's `RPGConfig` (refusing an unknown ``generator_version``),
* builds the timm backbone with the recorded ``model_args`` (your keyword arguments win),
  re-parameterizes it with the recorded layer order and ring sizes,
* loads the ring-only safetensors through :func:`rpg_hf.hf.checkpoint.read_ring_only` — the same
  validation, and the same errors, as ``from_pretrained`` — and
* handles ``num_classes`` / ``in_chans`` like timm does for its own pretrained weights: a
  different class count drops the head's weights (it keeps its fresh init), a different channel
  count adapts a free stem with timm's ``adapt_input_conv``.

It returns the timm model itself (``model.rpg`` holds the ring), with logits equal bit for bit to
the transformers load of the same checkpoint.  The same entrypoint also makes any timm
architecture available fresh: ``timm.create_model("rpg.convnext_atto", dof=20_000, num_classes=10)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from timm.models import register_model

from rpg_hf.hf.configuration_rpg import TIMM_PREFIX, RPGConfig
from rpg_hf.reparam import GeneratedLayer, reparameterize
from rpg_hf.spec import SPEC_FIELDS, RPGSpec

# the base architecture's weight provenance, not this checkpoint's: dropped from the model's pretrained_cfg
_PROVENANCE = ("url", "file", "state_dict", "hf_hub_id", "hf_hub_filename", "source", "tag", "origin_url",
               "test_input_size", "test_pool_size", "test_crop_pct", "label_names", "label_descriptions")


def _as_dict(pretrained_cfg: Any) -> dict[str, Any] | None:
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        return None
    if isinstance(pretrained_cfg, dict):
        return pretrained_cfg
    to_dict = getattr(pretrained_cfg, "to_dict", None)  # a timm PretrainedCfg
    return to_dict() if callable(to_dict) else None


def checkpoint_source(pretrained_cfg: Any) -> tuple[str, str] | None:
    """``("local-dir", folder)`` or ``("hf-hub", "org/name[@rev]")`` when a pretrained_cfg locates a checkpoint."""
    cfg = _as_dict(pretrained_cfg)
    if not cfg:
        return None
    if cfg.get("source") == "hf-hub" or (cfg.get("hf_hub_id") and not cfg.get("file")):
        return ("hf-hub", cfg["hf_hub_id"]) if cfg.get("hf_hub_id") else None
    if cfg.get("file"):
        return "local-dir", str(cfg["file"])
    return None


def _resolve_files(source: tuple[str, str], cache_dir: str | os.PathLike | None) -> tuple[Path, str]:
    """(folder holding config.json, local path of model.safetensors) of a local folder or a Hub repo."""
    from rpg_hf.hf.checkpoint import WEIGHTS_NAME, CheckpointError

    kind, where = source
    if kind == "local-dir":
        folder = Path(where)
        if folder.is_file():  # a `file=` pointing at the weights themselves
            folder = folder.parent
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(
                f"no {WEIGHTS_NAME} in {folder}: rpg_hf checkpoints are ring-only safetensors "
                "(pytorch_model.bin and other pickle formats are never loaded)"
            )
        return folder, str(weights)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models._hub import hf_split

    repo_id, revision = hf_split(where)
    config_path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir)
    try:
        weights = hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, cache_dir=cache_dir)
    except EntryNotFoundError as err:
        raise CheckpointError(
            f"no {WEIGHTS_NAME} in {where}: rpg_hf checkpoints are ring-only safetensors "
            "(pytorch_model.bin and other pickle formats are never loaded)"
        ) from err
    return Path(config_path).parent, weights


def _classifier_names(model) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _first_conv_names(model) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_rpg_timm_model(source: tuple[str, str], *, pretrained: bool = True, architecture: str | None = None,
                        cache_dir: str | os.PathLike | None = None, **kwargs):
    """The RPG timm model of a ring-only checkpoint (``source`` as from :func:`checkpoint_source`).

    ``pretrained=False`` builds the checkpoint's architecture (same DoF, seed and layer order) with
    the seeded fresh ring, as timm does for ``pretrained=False``.  ``architecture`` (the plain timm
    name), when given, must match the checkpoint's.
    """
    import timm
    import torch

    from rpg_hf.hf.checkpoint import CONSTRUCTION_KEY, CheckpointError, read_ring_only

    folder, weights = _resolve_files(source, cache_dir)
    config = RPGConfig.from_pretrained(str(folder))
    where = source[1]
    if config.backbone != "timm":
        raise ValueError(
            f"{where} is an RPG checkpoint with a transformers {config.backbone} backbone, not a timm model: "
            "load it with transformers.AutoModelForImageClassification.from_pretrained"
        )
    if architecture is not None and architecture != config.architecture:
        raise ValueError(f"{where} holds an RPG {config.architecture}, not {architecture}")
    given = {key: kwargs.pop(key) for key in SPEC_FIELDS if key in kwargs}
    if given:  # compared as RPGSpec values: a list equals the tuple, None the default
        saved = config.spec
        wanted = RPGSpec(**{**saved.to_dict(), **{k: v for k, v in given.items() if v is not None}})
        for key in given:
            if getattr(wanted, key) != getattr(saved, key):
                raise ValueError(f"{key}={getattr(saved, key)!r} is fixed by the checkpoint {where}; "
                                 "the ring cannot be loaded into a different construction")
    kwargs.pop("pretrained_model_args", None)
    if kwargs.get("features_only"):
        raise ValueError("features_only is not supported when loading a ring-only checkpoint through timm; load "
                         "the classifier and use model.forward_features / model.forward_intermediates")
    saved_args = dict(config.model_args or {})
    model_args = {**saved_args, **kwargs}
    num_classes = int(model_args.pop("num_classes", config.num_labels))
    model = timm.create_model(config.architecture, pretrained=False, num_classes=num_classes, **model_args)
    classifiers = _classifier_names(model)
    if config.generated_layers is None or config.ring_sizes is None:
        raise CheckpointError(f"{where}: the config records no generated_layers / ring_sizes")
    layers = [GeneratedLayer.from_dict(d) for d in config.generated_layers]
    generated_head = [layer.name for layer in layers if layer.name in classifiers]
    if num_classes != config.num_labels and generated_head:
        raise ValueError(f"num_classes={num_classes} differs from the checkpoint's {config.num_labels}, but its "
                         f"classifier {generated_head} is generated from the ring: it cannot be re-initialised")
    reparameterize(model, config.spec, layers, list(config.ring_sizes))
    if pretrained:
        tensors = read_ring_only(weights, config)
        state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        dropped = set()
        if num_classes != config.num_labels:  # timm: a new head keeps its init, the old one is discarded
            for name in classifiers:
                for key in (f"{name}.weight", f"{name}.bias"):
                    if state.pop(key, None) is not None:
                        dropped.add(key)
        in_chans = int(model_args.get("in_chans", 3))
        saved_chans = int(saved_args.get("in_chans", 3))
        if in_chans != saved_chans:
            from timm.models import adapt_input_conv

            for name in _first_conv_names(model):
                key = f"{name}.weight"
                if key in state:
                    state[key] = adapt_input_conv(in_chans, state[key], base_chans=saved_chans)
        own = model.state_dict()
        mismatched = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        # files written before they carried the construction's identity lack it (read_ring_only checked it)
        old = {CONSTRUCTION_KEY[len("backbone."):]}
        missing = sorted(set(own) - set(state) - dropped - old)
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"architecture mismatch: {weights} does not match the architecture in its config: missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}, mismatched {mismatched[:5]}"
            )
        with torch.no_grad():
            model.load_state_dict(state, strict=False)
    # timm's data config (resolve_data_config / create_transform) from the checkpoint's preprocessing
    pcfg = {k: v for k, v in (getattr(model, "pretrained_cfg", None) or {}).items() if k not in _PROVENANCE}
    if tuple(pcfg.get("input_size") or ())[1:] != (config.image_size, config.image_size):
        pcfg.pop("pool_size", None)
    pcfg.update({k: v for k, v in config.timm_pretrained_cfg().items() if k != "label_names"})
    pcfg["input_size"] = tuple(pcfg["input_size"])
    pcfg["mean"], pcfg["std"] = tuple(pcfg["mean"]), tuple(pcfg["std"])
    pcfg["num_classes"] = num_classes
    if num_classes == config.num_labels:
        pcfg["label_names"] = config.timm_pretrained_cfg()["label_names"]
    if pretrained:
        pcfg["source"], pcfg["hf_hub_id" if source[0] == "hf-hub" else "file"] = source
    model.pretrained_cfg = pcfg
    return model


def load_pretrained_entrypoint(name: str, architecture: str, **kwargs):
    """``pretrained=True`` on an ``rpg_<arch>`` entrypoint: the checkpoint its pretrained cfg locates.

    ``timm.create_model("rpg_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=folder))`` (or
    ``hf_hub_id=``, or a registered default cfg that names one) loads like ``local-dir:`` / ``hf-hub:``;
    the DoF, seed and layer order are the checkpoint's.  Without a checkpoint: a clear error.
    """
    from timm.models._builder import resolve_pretrained_cfg

    pretrained_cfg, overlay = kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    source = checkpoint_source(pretrained_cfg)
    if source is None:  # a tag, an overlay, or a default cfg registered for the entrypoint
        source = checkpoint_source(resolve_pretrained_cfg(name, pretrained_cfg, overlay))
    if source is None:
        raise ValueError(
            f"{name} has no pretrained timm weights; load a ring-only checkpoint with "
            "timm.create_model('hf-hub:org/name', pretrained=True) / 'local-dir:PATH', or "
            "AutoModelForImageClassification.from_pretrained"
        )
    return load_rpg_timm_model(source, architecture=architecture, cache_dir=kwargs.pop("cache_dir", None), **kwargs)


@register_model
def rpg(pretrained: bool = False, pretrained_cfg: Any = None, pretrained_cfg_overlay: Any = None,
        cache_dir: str | os.PathLike | None = None, **kwargs):
    """RPG model of any timm architecture: ``rpg.<arch>`` fresh, or a ring-only checkpoint via hf-hub:/local-dir:."""
    source = checkpoint_source(pretrained_cfg)
    if source is not None:
        return load_rpg_timm_model(source, pretrained=pretrained, cache_dir=cache_dir, **kwargs)
    architecture = pretrained_cfg if isinstance(pretrained_cfg, str) else None
    if not architecture:
        raise ValueError("name the timm backbone of an RPG model as rpg.<architecture> (e.g. 'rpg.resnet18'), "
                         "or load a ring-only checkpoint with 'hf-hub:org/name' / 'local-dir:PATH'")
    if pretrained:
        raise ValueError(
            f"{TIMM_PREFIX}{architecture} has no pretrained timm weights; load a ring-only checkpoint with "
            "timm.create_model('hf-hub:org/name', pretrained=True) or 'local-dir:PATH'"
        )
    from rpg_hf.timm_models import create_rpg_model

    return create_rpg_model(architecture, False, pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir,
                            **kwargs)


__all__ = ["checkpoint_source", "load_pretrained_entrypoint", "load_rpg_timm_model", "rpg"]
