"""`RPGPreTrainedModel` / `RPGForImageClassification`: ring-only checkpoints in transformers.

The backbone is a real timm model or a real `ViTForImageClassification`, re-parameterized by
:func:`rpg_hf.reparameterize`, so ``state_dict()`` is the ring(s) plus the free tensors and
``save_pretrained`` writes nothing generated.  Loading reads the safetensors file itself first —
to refuse a wrong DoF, a missing or non-finite ring, a truncated or non-safetensors file with an
error that names the problem, and to dequantize an int8 ring — then hands the tensors to
transformers' own loader (meta-device construction, ``dtype=``, ``device_map=``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from rpg_hf.hf import checkpoint
from rpg_hf.hf.configuration_rpg import RPGConfig
from rpg_hf.hf.remote_code.modeling_rpg import (
    AUTO_MAP,
    BLOCK_SIZE_SUFFIX,
    build_backbone,
    dequantize_state_dict,
    image_processor_for,
    write_remote_code,
)
from rpg_hf.reparam import GeneratedLayer, RPGGenerator, expand, get_generator, reparameterize


class RPGPreTrainedModel(PreTrainedModel):
    """Ring handling for `PreTrainedModel`: seeded init, ring-only save, validated load, `expand()`."""

    config: RPGConfig
    config_class = RPGConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["RPGGenerator"]
    model_tags = ["rpg_hf", "rpg"]

    # ------------------------------------------------------------------ init
    def _build(self, config: RPGConfig) -> None:
        self.backbone = build_backbone(config)
        layers = ring_sizes = None
        if config.generated_layers is not None:
            layers = [GeneratedLayer.from_dict(d) for d in config.generated_layers]
            ring_sizes = list(config.ring_sizes or [])
        reparameterize(self.backbone, config.spec, layers, ring_sizes)
        gen = self.generator
        config.generated_layers = [layer.to_dict() for layer in gen.layers]
        config.ring_sizes = list(gen.ring_sizes)
        if config.image_mean is None and config.backbone == "timm":
            pcfg = getattr(self.backbone, "pretrained_cfg", None) or {}
            config.image_mean, config.image_std = list(pcfg.get("mean", ())) or None, list(pcfg.get("std", ())) or None

    @property
    def generator(self) -> RPGGenerator:
        return get_generator(self.backbone)

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone's constructors initialised the free tensors (timm / ViT schemes); only the
        # ring is ours: re-drawn from the seed so meta-device construction ends up identical.
        if isinstance(module, RPGGenerator):
            module.reset_rings()

    def post_init(self):
        super().post_init()
        self.generator.invalidate_cache()  # backbone inits may have written into cached weights

    # ------------------------------------------------------------------ API
    def num_dof(self) -> int:
        """Degrees of freedom: the number of ring entries."""
        return self.config.dof

    def expand(self) -> nn.Module:
        """A plain timm model / `ViTForImageClassification` whose outputs equal this model's."""
        plain = expand(self.backbone)
        if isinstance(plain, PreTrainedModel):
            plain.config.id2label, plain.config.label2id = dict(self.config.id2label), dict(self.config.label2id)
        return plain

    def image_processor(self):
        """The image processor matching the backbone's preprocessing (saved beside the model)."""
        return image_processor_for(self.config)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory, *args, model_card: bool = True, **kwargs):
        """Write config, the ring-only safetensors, the image processor, the remote code and a model card.

        ``configuration_rpg.py`` / ``modeling_rpg.py`` (from :mod:`rpg_hf.hf.remote_code`) and the
        ``auto_map`` in config.json let ``trust_remote_code=True`` load the folder without rpg_hf.
        A ``state_dict`` passed in (``Trainer`` does) is converted to the ring-only form too.
        """
        kwargs["state_dict"] = checkpoint.ring_only_state_dict(self, kwargs.get("state_dict"))
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory)
            self.image_processor().save_pretrained(save_directory)
            if model_card:
                from rpg_hf.hf.cards import write_model_card

                write_model_card(self, save_directory)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """`nn.Module.load_state_dict` that also takes int8 rings (``Trainer`` resuming an int8 checkpoint)."""
        if any(k.endswith(BLOCK_SIZE_SUFFIX) for k in state_dict):
            state_dict = dequantize_state_dict(dict(state_dict))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a ring-only checkpoint (directory or Hub id) and expand it; safetensors only."""
        if kwargs.pop("use_safetensors", True) is False:
            raise ValueError("rpg_hf checkpoints are safetensors only; use_safetensors=False is not supported")
        output_loading_info = kwargs.pop("output_loading_info", False)
        hub = {k: kwargs.pop(k) for k in checkpoint.HUB_KWARGS if k in kwargs}
        if not isinstance(config, RPGConfig):
            config = RPGConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        weights = checkpoint.resolve_weights(pretrained_model_name_or_path, hub)
        state_dict = checkpoint.read_ring_only(weights, config)
        model, info = super().from_pretrained(
            None, *model_args, config=config, state_dict=state_dict, output_loading_info=True, **kwargs
        )
        checkpoint.check_loading_info(info, weights)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        model.generator.invalidate_cache()
        return (model, info) if output_loading_info else model

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        results: list | None = None,
    ):
        """Upload the ring-only folder and its model card (keyword-only, like transformers 5).

        The card is built locally (no read of a remote card), then one commit uploads config.json,
        model.safetensors, preprocessor_config.json, README.md and the two remote-code files.
        """
        from rpg_hf.hf.cards import write_model_card
        from rpg_hf.hf.hub import upload_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=False)
            write_model_card(self, tmp, results=results, model_id=repo_id)
            return upload_folder(tmp, repo_id, private=private, token=token, revision=revision,
                                 commit_message=commit_message, commit_description=commit_description,
                                 create_pr=create_pr)


class RPGForImageClassification(RPGPreTrainedModel):
    """An RPG image classifier over a timm CNN or a transformers ViT backbone."""

    def __init__(self, config: RPGConfig):
        super().__init__(config)
        self._build(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if self.config.backbone == "vit":
            logits = self.backbone(pixel_values=pixel_values, **kwargs).logits
        else:
            logits = self.backbone(pixel_values)
        loss = self._loss(logits, labels) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return ImageClassifierOutput(loss=loss, logits=logits)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if self.config.num_labels == 1 or self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
        return nn.functional.cross_entropy(logits.float(), labels.long())


def save_expanded(model: RPGPreTrainedModel, directory: str | os.PathLike) -> Path:
    """Save ``model.expand()`` in its native format: a timm folder or a transformers ViT folder."""
    directory = Path(directory)
    plain = model.expand()
    if isinstance(plain, PreTrainedModel):
        plain.save_pretrained(directory)
        model.image_processor().save_pretrained(directory)
    else:
        from timm.models import save_for_hf

        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        save_for_hf(plain, directory, model_config={"label_names": labels},
                    model_args=model.config.model_args or None, safe_serialization=True)
        # timm's own folder, loadable by transformers' TimmWrapper too: it passes num_classes
        # itself, so a second one in model_args would be a duplicate keyword argument
        config_path = directory / "config.json"
        config = json.loads(config_path.read_text())
        if isinstance(config.get("model_args"), dict):
            config["model_args"].pop("num_classes", None)
            config_path.write_text(json.dumps(config, indent=2) + "\n")
    return directory


__all__ = ["RPGPreTrainedModel", "RPGForImageClassification", "build_backbone", "save_expanded"]
