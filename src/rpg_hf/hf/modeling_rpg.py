"""`RPGPreTrainedModel` / `RPGForImageClassification`: ring-only checkpoints in transformers.

The backbone is a real timm model or a real `ViTForImageClassification`, re-parameterized by
:func:`rpg_hf.reparameterize`, so ``state_dict()`` is the ring(s) plus the free tensors and
``save_pretrained`` writes nothing generated.  Loading reads the safetensors file itself first —
to refuse a wrong DoF, a missing or non-finite ring, a truncated or non-safetensors file with an
error that names the problem, and to dequantize an int8 ring — then hands the tensors to
transformers' own loader (meta-device construction, ``dtype=``, ``device_map=``).

Saving, loading and the forward pass are those of the ``trust_remote_code`` classes every checkpoint
carries (:mod:`rpg_hf.hf.remote_code.modeling_rpg`), which these classes subclass: a folder behaves
the same with rpg_hf and without it.  What rpg_hf adds is the re-parameterization itself (the
package's `RPGGenerator`, with its fast kernels, instead of the plain-PyTorch ring module), model
cards and `push_to_hub`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from rpg_hf.hf.configuration_rpg import RPGConfig
from rpg_hf.hf.remote_code import modeling_rpg as remote
from rpg_hf.hf.remote_code.rpg_backbone import build_backbone
from rpg_hf.reparam import GeneratedLayer, RPGGenerator, expand, get_generator, reparameterize


class RPGPreTrainedModel(remote.RPGPreTrainedModel):
    """Ring handling for `PreTrainedModel`: seeded init, ring-only save, validated load, `expand()`."""

    config: RPGConfig
    config_class = RPGConfig
    _no_split_modules = ["RPGGenerator"]

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
        # ring is ours: re-drawn from the seed so meta-device construction ends up identical.  A ring
        # transformers loaded from the file is kept, whatever else of the module the file lacked
        # (the identity buffer, in files written before they carried it: derived, recomputed).
        if isinstance(module, RPGGenerator):
            module.reset_rings(keep_loaded=True)
            module.reset_construction()

    # ------------------------------------------------------------------ API
    def expand(self) -> nn.Module:
        """A plain timm model / `ViTForImageClassification` whose outputs equal this model's."""
        plain = expand(self.backbone)
        if isinstance(plain, PreTrainedModel):
            plain.config.id2label, plain.config.label2id = dict(self.config.id2label), dict(self.config.label2id)
        return plain

    # ------------------------------------------------------------------ save / upload
    def save_pretrained(self, save_directory, *args, model_card: bool = True, **kwargs):
        """Write config, the ring-only safetensors, the image processor, the remote code and a model card.

        The files of :mod:`rpg_hf.hf.remote_code` and the ``auto_map`` in config.json let
        ``trust_remote_code=True`` load the folder without rpg_hf.
        A ``state_dict`` passed in (``Trainer`` does) is converted to the ring-only form too.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        if model_card and kwargs.get("is_main_process", True):
            from rpg_hf.hf.cards import write_model_card

            write_model_card(self, save_directory)

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
        model.safetensors, preprocessor_config.json, README.md and the remote-code files.
        """
        from rpg_hf.hf.cards import write_model_card
        from rpg_hf.hf.hub import upload_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, model_card=False)
            write_model_card(self, tmp, results=results, model_id=repo_id)
            return upload_folder(tmp, repo_id, private=private, token=token, revision=revision,
                                 commit_message=commit_message, commit_description=commit_description,
                                 create_pr=create_pr)


class RPGForImageClassification(RPGPreTrainedModel, remote.RPGForImageClassification):
    """An RPG image classifier over a timm CNN or a transformers ViT backbone.

    ``__init__`` and ``forward`` are the trust_remote_code class's; ``_build`` is rpg_hf's.
    """


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
