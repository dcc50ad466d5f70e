"""Model cards of ring-only RPG checkpoints, rendered from the card template (:func:`template_path`).

A ring-only checkpoint is unusual — it holds a ring of DoF numbers and a seed instead of weights —
so its card has to say what is stored, how to load it and what it compresses, and carry
machine-readable results (``model-index``) that later evaluations update.  All card *text* lives
in the Jinja template (one file, shipped as package data); this module only gathers the numbers
from a real model and hands them to huggingface_hub's own mechanism (``ModelCard.from_template``,
``ModelCardData``, ``EvalResult``), so the Hub parses the metadata as it parses any card.

* :class:`CardInfo` — what a card says about one model (:meth:`CardInfo.from_model`);
* :class:`EvalEntry` — one metric on one dataset split, ↔ ``huggingface_hub.EvalResult``
  (with :func:`results_from_json`, in :mod:`rpg_hf.hf.card_results`, re-exported here);
* :func:`build_model_card` / :func:`write_model_card` — render (and save) a card;
* :func:`update_card_results` — add/replace results in an existing card, keeping the rest;
* :func:`results_from_json` — evaluation entries from the results JSON the recipes write;
* :func:`template_path` — where the template is (installed package or source checkout).

The body's results table is the template's ``results`` block, between ``<!-- rpg-hf:results:start -->``
and ``<!-- rpg-hf:results:end -->``; :func:`update_card_results` re-renders that block alone, from
the same template, so the text around it is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from rpg_hf.hf.card_results import EvalEntry, merge_results, results_from_json, to_entries

__all__ = [
    "TAGS",
    "CardInfo",
    "EvalEntry",
    "build_model_card",
    "results_from_json",
    "results_section",
    "template_path",
    "update_card_results",
    "write_model_card",
]

LIBRARY_NAME = "rpg_hf"
PIPELINE_TAG = "image-classification"
TAGS = ("rpg", "image-classification", "ring-only")
RESULTS_START = "<!-- rpg-hf:results:start -->"
RESULTS_END = "<!-- rpg-hf:results:end -->"
RESULTS_BLOCK = "results"
WEIGHTS_FILE = "model.safetensors"


def template_path(package: str | os.PathLike[str] | None = None) -> Path:
    """The card template: ``model_cards/template.md`` inside an installed wheel's ``rpg_hf`` folder
    (copied there at build time), else beside ``src/`` in a source checkout or editable install.
    ``package``: the ``rpg_hf`` folder to look in (default: this one).
    """
    package = Path(package) if package is not None else Path(str(resources.files("rpg_hf")))
    for candidate in (package / "model_cards" / "template.md", package.parents[1] / "model_cards" / "template.md"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"the model-card template is missing: neither {package / 'model_cards'} nor "
                            f"{package.parents[1] / 'model_cards'} holds template.md")


# --------------------------------------------------------------------------- card info


@dataclass(kw_only=True)
class CardInfo:
    """What a model card says about one ring-only RPG model: the template's variables.

    The model fields come from :meth:`from_model` (a real re-parameterized model — built on the
    meta device is enough); the provenance fields (datasets, recipe, notes, paper figures) are
    given by whoever writes the card.  Numbers stay raw: the template formats them.
    """

    model_id: str  # "org/name" or a local name; the card's title and the model-index name
    architecture: str  # e.g. "resnet34", "vit_b16"
    backbone: str  # "timm", or the transformers model_type ("vit")
    dof: int
    num_rings: int
    seed: int
    generator_version: int
    scope: str
    permute: bool
    sign_flip: bool
    free_params: int
    generated_params: int
    generated_kinds: list[str]  # "convolution" and/or "linear"
    num_labels: int | None = None
    ring_dtype: str = "float32"
    ring_sparsity: float | None = None  # fraction of ring entries pruned to zero
    checkpoint_bytes: int | None = None  # model.safetensors' size (measured) or its tensor payload
    checkpoint_measured: bool = False  # True: the size of an actual file
    datasets: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)  # extra tags
    recipe: str | None = None  # the script or command that trained the model
    recipe_config: str | None = None  # its config file, as a path relative to the repository
    recipe_command: str | None = None
    training_notes: list[str] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)  # {name, trainable, top1, top1_std, checkpoint_bytes}
    comparison_title: str | None = None
    result_notes: list[str] = field(default_factory=list)
    paper_figures: list[dict[str, str]] | None = None  # {text, source}; None: no paper section
    paper_note: str | None = None
    limitations: list[str] = field(default_factory=list)

    @property
    def trainable_params(self) -> int:
        return self.dof + self.free_params

    @property
    def original_params(self) -> int:
        return self.free_params + self.generated_params

    @property
    def compression(self) -> float:
        return self.original_params / self.trainable_params

    @classmethod
    def from_model(cls, model: nn.Module, **overrides: Any) -> CardInfo:
        """Read an :class:`~rpg_hf.RPGPreTrainedModel`, or a transformers model / a model built by
        ``timm.create_model`` re-parameterized by :func:`rpg_hf.reparameterize` (a plain model has
        no ring to describe: ValueError); ``overrides`` (any other field) win."""
        from transformers import PreTrainedModel

        from rpg_hf.hf import checkpoint
        from rpg_hf.reparam import get_generator
        from rpg_hf.reparam.dof import dof_table

        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown CardInfo field(s): {sorted(unknown)}")
        if isinstance(model, PreTrainedModel) and getattr(model.config, "model_type", None) == "rpg":  # RPG*
            owner, config = model.backbone, model.config
            architecture, backbone, num_labels = config.architecture, config.backbone, config.num_labels
            ring_dtype, state = config.ring_dtype, checkpoint.ring_only_state_dict(model)
        elif isinstance(model, PreTrainedModel):  # a transformers model re-parameterized in place
            owner, ring_dtype, state = model, "float32", model.state_dict()
            architecture = backbone = model.config.model_type
            num_labels = model.config.num_labels
        elif (architecture := _timm_architecture(model)) is not None:  # a timm model re-parameterized in place
            owner, ring_dtype, state, backbone = model, "float32", model.state_dict(), "timm"
            num_labels = model.num_classes
        else:
            raise TypeError(f"model cards describe RPG models over timm or transformers backbones, "
                            f"not {type(model).__name__}")
        model_id = _model_hub_id(model)
        gen = get_generator(owner)
        table = dof_table(owner)
        spec = gen.spec
        values: dict[str, Any] = {
            "model_id": model_id or f"{architecture}-rpg-dof{table.dof}",
            "architecture": architecture,
            "backbone": backbone,
            "dof": table.dof,
            "num_rings": len(table.ring_sizes),
            "seed": spec.seed,
            "generator_version": spec.generator_version,
            "scope": spec.scope,
            "permute": spec.permute,
            "sign_flip": spec.sign_flip,
            "free_params": table.free_params,
            "generated_params": table.generated_params,
            "generated_kinds": sorted({"convolution" if len(layer.shape) > 2 else "linear" for layer in gen.layers}),
            "num_labels": num_labels,
            "ring_dtype": ring_dtype,
            "ring_sparsity": _ring_sparsity(gen),
            "checkpoint_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "checkpoint_measured": False,
        }
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The template's variables: the fields plus the derived counts."""
        return {**asdict(self), "trainable_params": self.trainable_params, "original_params": self.original_params,
                "compression": self.compression}


def _ring_sparsity(gen: nn.Module) -> float | None:
    rings = [r for r in gen.rings if not r.is_meta]
    total = sum(int(r.numel()) for r in rings)
    zeros = sum(int((r.detach() == 0).sum()) for r in rings)
    return zeros / total if total and zeros else None


def _timm_architecture(model: nn.Module) -> str | None:
    """The registered timm architecture ``timm.create_model`` built ``model`` from (it records it
    in ``model.pretrained_cfg``); None for a model timm did not build."""
    import timm

    pretrained_cfg = getattr(model, "pretrained_cfg", None)
    name = pretrained_cfg.get("architecture") if isinstance(pretrained_cfg, Mapping) else None
    return name if name and timm.is_model(name) else None


def _model_hub_id(model: nn.Module) -> str | None:
    """A transformers model's ``config._name_or_path`` when it names a model: a Hub id as is, a
    local folder by its name; None for a fresh model and for timm models (they record none)."""
    from transformers import PreTrainedModel

    name = model.config._name_or_path if isinstance(model, PreTrainedModel) else ""
    if not name.strip():
        return None
    path = Path(name)
    if path.exists() or path.is_absolute() or name.startswith("."):
        return path.resolve().name or None
    return name


# --------------------------------------------------------------------------- rendering


def _card_data(info: CardInfo, results: Sequence[EvalEntry]) -> ModelCardData:
    library = "timm" if info.backbone == "timm" else "transformers"
    tags = list(TAGS) + [library]
    tags += [t for t in [info.architecture, *info.tags] if t and t not in tags]
    return ModelCardData(
        library_name=LIBRARY_NAME,
        license=info.license,
        tags=tags,
        pipeline_tag=PIPELINE_TAG,
        datasets=list(info.datasets) or None,
        base_model=info.base_model,
        metrics=sorted({e.metric_type for e in results}) or None,
        model_name=info.model_id,
        eval_results=[e.to_eval_result() for e in results],  # [] still records the model-index name
    )


def _results_context(results: Sequence[EvalEntry]) -> list[dict[str, Any]]:
    return [asdict(e) for e in results]


def build_model_card(
    info: CardInfo, results: Sequence[EvalEntry] = (), *, template: str | os.PathLike[str] | None = None
) -> ModelCard:
    """Render the card (metadata + body) for ``info`` with ``results`` in its model-index."""
    results = list(results)
    return ModelCard.from_template(_card_data(info, results), template_path=str(template or template_path()),
                                   **info.to_dict(), results=_results_context(results))


def results_section(results: Sequence[EvalEntry], template: str | os.PathLike[str] | None = None) -> str:
    """The template's ``results`` block alone (markers included), rendered for ``results``; what
    :func:`update_card_results` replaces in a card, and what other cards can embed to be updatable."""
    import jinja2

    tpl = jinja2.Template(Path(template or template_path()).read_text(encoding="utf-8"))
    return "".join(tpl.blocks[RESULTS_BLOCK](tpl.new_context({"results": _results_context(results)})))


def _readme_path(path: str | os.PathLike[str]) -> Path:
    """A folder (existing or not) means its README.md; a path ending in .md is the card itself."""
    p = Path(path)
    return p if p.suffix.lower() == ".md" and not p.is_dir() else p / "README.md"


def update_card_results(
    card_or_path: ModelCard | str | os.PathLike[str],
    results: Sequence[EvalEntry | EvalResult],
    *,
    model_name: str | None = None,
) -> ModelCard:
    """Add or replace results (matched on dataset_type + split + metric_name) in a card.

    ``card_or_path``: a ``ModelCard`` (updated in place, not saved) or a README.md path / the
    folder holding it (loaded, updated and written back).  Existing results with other keys and
    all other metadata and text are kept; the body's results table (between the rpg-hf markers,
    when present) is re-rendered from the merged results by the template's ``results`` block.
    ``model_name`` is required by the Hub for a model-index: kept if the card has one, else this
    argument, else the folder's name.
    """
    path = None
    if isinstance(card_or_path, ModelCard):
        card = card_or_path
    else:
        path = _readme_path(card_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"no model card at {path}")
        card = ModelCard.load(path)  # an existing local path: never a Hub lookup
    new = [r.to_eval_result() if isinstance(r, EvalEntry) else r for r in results]
    data = card.data
    merged = merge_results(data.eval_results or [], new)
    if not data.model_name:
        data.model_name = model_name or (path.resolve().parent.name if path is not None else "model")
    data.eval_results = merged
    data.metrics = sorted(set(data.metrics or []) | {r.metric_type for r in merged}) or None
    start, end = card.text.find(RESULTS_START), card.text.find(RESULTS_END)
    if 0 <= start < end:
        section = results_section([EvalEntry.from_eval_result(r) for r in merged])
        card.text = card.text[:start] + section + card.text[end + len(RESULTS_END):]
    if path is not None:
        card.save(path)
    return card


def write_model_card(
    model_or_info: nn.Module | CardInfo,
    save_directory: str | os.PathLike[str],
    results: Iterable[Any] | None = None,
    *,
    keep_existing_results: bool = True,
    template: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> ModelCard:
    """Render and save ``README.md`` for a model (or a :class:`CardInfo`); what ``save_pretrained``,
    ``push_to_hub``, ``rpg-hf card`` and the recipes call.  Returns the card.

    ``save_directory`` is the folder (or the README.md path).  ``overrides`` are CardInfo fields
    (``model_id``, ``recipe_command``, ``datasets`` ...); without ``model_id`` a model's Hub id
    (``config._name_or_path``) is used, else the folder's name.  When the folder holds
    ``model.safetensors`` the card gives its real size.  ``results``: EvalEntry, EvalResult,
    results-JSON records or files.  With ``keep_existing_results`` the results of an existing
    README.md there are carried over (new ones replace those with the same key), and so are its
    ``datasets`` unless given, so re-saving after an evaluation does not lose the model-index;
    the rest of the old card is rewritten.
    """
    target = _readme_path(save_directory)
    weights = target.parent / WEIGHTS_FILE
    if weights.is_file() and "checkpoint_bytes" not in overrides:
        overrides.update(checkpoint_bytes=weights.stat().st_size, checkpoint_measured=True)
    if isinstance(model_or_info, CardInfo):
        info = replace(model_or_info, **overrides) if overrides else model_or_info
    else:
        if "model_id" not in overrides:
            overrides["model_id"] = _model_hub_id(model_or_info) or target.resolve().parent.name
        info = CardInfo.from_model(model_or_info, **overrides)
    entries = to_entries(results)
    if keep_existing_results and target.is_file():
        try:
            old = ModelCard.load(target, ignore_metadata_errors=True).data
        except Exception:  # an unreadable old card is replaced, not fatal
            old = ModelCardData()
        merged = merge_results(old.eval_results or [], [e.to_eval_result() for e in entries])
        entries = [EvalEntry.from_eval_result(r) for r in merged]
        if not info.datasets and old.datasets:
            info = replace(info, datasets=list(old.datasets))
    card = build_model_card(info, entries, template=template)
    target.parent.mkdir(parents=True, exist_ok=True)
    card.save(target)
    return card
