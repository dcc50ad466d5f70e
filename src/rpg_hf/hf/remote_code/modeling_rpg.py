"""RPG image classifier for ``trust_remote_code=True`` (Recurrent Parameter Generators, WACV 2023).

rpg_hf writes this file into every ring-only checkpoint it saves, with its siblings (imported
relatively, so transformers' dynamic-module loader fetches them too).  Together they rebuild the
model with only torch + transformers (+ timm for timm backbones): the checkpoint holds the ring(s)
— a small vector that generates every selected conv/linear weight — the free tensors (stem, norms,
biases, head) and a config with the seed, the DoF and the recorded layer order; never index tables.

* ``configuration_rpg.py``: the config;
* ``construction.py``: the pinned construction (``generator_version`` 1 and 2) and ``reference.py``: the
  weights it generates, in plain PyTorch — both rpg_hf's own ``rpg_hf.core`` modules, verbatim;
* ``identity.py``: the construction's identity every state dict and file carries (rpg_hf's
  ``rpg_hf.reparam.identity``, verbatim), checked on load;
* ``rpg_checkpoint.py``: reading and validating the ring-only safetensors file, int8 rings;
* ``rpg_backbone.py``: the plain backbone and the ring module that generates its weights;
* this file: the `PreTrainedModel` classes, ``expand()`` to a plain timm model / ViT.

Where rpg_hf is installed and imported, transformers uses rpg_hf's registered classes instead
(subclasses of these with faster kernels for training); these files never import rpg_hf.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_rpg import RPGConfig
from .rpg_backbone import RPGRings, attach_rings, build_backbone, image_processor_for
from .rpg_checkpoint import (
    AUTO_MAP,
    BLOCK_SIZE_SUFFIX,
    HUB_KWARGS,
    check_loading_info,
    dequantize_state_dict,
    read_ring_only,
    resolve_weights,
    ring_only_state_dict,
    write_remote_code,
)


class RPGPreTrainedModel(PreTrainedModel):
    """Ring handling for `PreTrainedModel`: seeded init, ring-only save, validated load, `expand()`.

    rpg_hf's own classes subclass these and replace only how the backbone is re-parameterized
    (:meth:`_build`, :attr:`generator`, :meth:`_init_weights`, :meth:`expand`), so saving, loading and
    the forward pass are this code with rpg_hf and without it.
    """

    config: RPGConfig
    config_class = RPGConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["RPGRings"]
    model_tags = ["rpg_hf", "rpg"]
    # the construction's identity (identity.py): files written before they carried it still load
    _keys_to_ignore_on_load_missing = [r"(^|\.)rpg\.construction$"]
    supports_gradient_checkpointing = True

    def _build(self, config: RPGConfig) -> None:
        """The backbone the config describes, its recorded layers generated from the ring(s)."""
        self.backbone = build_backbone(config)
        attach_rings(self.backbone, config)

    @property
    def generator(self) -> RPGRings:
        return self.backbone.rpg

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone's constructors initialised the free tensors; the ring is drawn from the seed
        # unless transformers loaded it: it calls this on a module with any key missing from the file
        # (the identity buffer of a file written before files carried it), loaded ring or not.
        if isinstance(module, RPGRings):
            module.reset_rings(keep_loaded=True)
            module.reset_construction()

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs):
        """``gradient_checkpointing_enable()`` / ``TrainingArguments(gradient_checkpointing=True)``: a ViT's
        layers carry transformers' own flag; a timm backbone switches with timm's ``set_grad_checkpointing``
        (non-reentrant ``torch.utils.checkpoint`` around its blocks)."""
        if self.config.backbone == "timm":
            self.backbone.set_grad_checkpointing(enable)
            self.gradient_checkpointing = enable  # what `is_gradient_checkpointing` reads
        else:
            super()._set_gradient_checkpointing(enable, *args, **kwargs)

    def post_init(self):
        super().post_init()
        self.generator.invalidate_cache()  # backbone inits may have written into cached weights

    def num_dof(self) -> int:
        """Degrees of freedom: the number of ring entries."""
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

    def image_processor(self):
        """The image processor matching the backbone's preprocessing (saved beside the model)."""
        return image_processor_for(self.config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Ring-only safetensors + config (with ``auto_map``) + image processor + every trust_remote_code file.

        A ``state_dict`` passed in (``Trainer`` does) is converted to the ring-only form too.
        """
        state = kwargs.get("state_dict")
        kwargs["state_dict"] = ring_only_state_dict(self.state_dict() if state is None else state, self.config)
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            self.image_processor().save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a ring-only checkpoint (directory or Hub id), validated; safetensors only."""
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError("rpg_hf checkpoints are safetensors only; use_safetensors=False is not supported")
        output_loading_info = kwargs.pop("output_loading_info", False)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        if not isinstance(config, cls.config_class):
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
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
        self._build(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.backbone == "vit":
            logits = self.backbone(pixel_values=pixel_values, **kwargs).logits
        else:
            logits = self.backbone(pixel_values)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)


__all__ = ["RPGForImageClassification", "RPGPreTrainedModel"]
