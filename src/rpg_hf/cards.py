"""Model cards for ring-only RPG checkpoints (``save_pretrained`` / ``push_to_hub`` / recipes / CLI).

Why a module of its own: a ring-only checkpoint is unusual — the file holds a ring of DoF numbers
and a seed instead of the weights — so the card must say what is (and is not) stored, how to
load it (``import rpg_hf`` first), what it compresses, and carry machine-readable results
(``model-index``) that later evaluations can update without rewriting the prose.  Everything is
rendered through huggingface_hub's own mechanism (``ModelCard.from_template`` with a Jinja
template, ``ModelCardData``, ``EvalResult``), so the Hub parses the metadata as it parses any card.

* :class:`CardInfo` — what the card says about the model (from :meth:`CardInfo.from_model`);
* :class:`EvalEntry` — one metric on one dataset split, ↔ ``huggingface_hub.EvalResult``;
* :func:`build_model_card` / :func:`write_model_card` — render (and save) a card;
* :func:`update_card_results` — add/replace results in an existing README.md, keeping the rest;
* :func:`results_from_json` — read results JSON files written by recipes (shapes documented there);
* :func:`card_main` — the ``rpg-hf card`` command (``render`` / ``update``).

The results table in the body sits between ``<!-- rpg-hf:results:start -->`` and
``<!-- rpg-hf:results:end -->`` so :func:`update_card_results` can re-render it together with the
metadata; text outside the markers is never touched.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .generator import GENERATOR_VERSION

__all__ = [
    "CITATION",
    "DEFAULT_TEMPLATE_PATH",
    "TAGS",
    "CardInfo",
    "EvalEntry",
    "build_model_card",
    "results_from_json",
    "update_card_results",
    "write_model_card",
]

DEFAULT_TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
LIBRARY_NAME = "rpg_hf"
PIPELINE_TAG = "image-classification"
TAGS = ["image-classification", "rpg", "recurrent-parameter-generator", "ring-only"]
RESULTS_START = "<!-- rpg-hf:results:start -->"
RESULTS_END = "<!-- rpg-hf:results:end -->"
TASK_NAMES = {"image-classification": "Image Classification"}

CITATION = """@inproceedings{wang2023rpg,
  title={Compact and Optimal Deep Learning with Recurrent Parameter Generators},
  author={Wang, Jiayun and Chen, Yubei and Yu, Stella X. and Cheung, Brian and LeCun, Yann},
  booktitle={IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year={2023}
}"""

# dataset id (lower case) -> (dataset type written to model-index, display name)
KNOWN_DATASETS: dict[str, tuple[str, str]] = {
    "fashion_mnist": ("fashion_mnist", "Fashion-MNIST"),
    "fashion-mnist": ("fashion_mnist", "Fashion-MNIST"),
    "zalando-datasets/fashion_mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
    "imagenet-1k": ("imagenet-1k", "ImageNet-1k"),
    "ilsvrc/imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "imagenet": ("imagenet-1k", "ImageNet-1k"),
    "objectnet": ("objectnet", "ObjectNet"),
    "cifar10": ("cifar10", "CIFAR-10"),
    "cifar100": ("cifar100", "CIFAR-100"),
}


# --------------------------------------------------------------------------- evaluation entries


def _norm(s: Any) -> str:
    return str(s or "").strip().lower()


@dataclass
class EvalEntry:
    """One metric on one dataset split.  ``value`` is in percent for accuracies (91.2, not 0.912)."""

    dataset_name: str  # display name, e.g. "Fashion-MNIST"
    dataset_type: str  # Hub dataset id, e.g. "fashion_mnist"
    split: str  # e.g. "test", "validation"
    metric_type: str  # e.g. "accuracy"
    metric_name: str  # e.g. "Top-1 accuracy"
    value: float
    task_type: str = "image-classification"
    config: str | None = None  # dataset config, e.g. "imagenet-overlap-113"

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity used to replace results: (dataset_type, split, metric_name), case-insensitive."""
        return (_norm(self.dataset_type), _norm(self.split), _norm(self.metric_name or self.metric_type))

    def to_eval_result(self) -> EvalResult:
        return EvalResult(
            task_type=self.task_type,
            task_name=TASK_NAMES.get(self.task_type),
            dataset_type=self.dataset_type,
            dataset_name=self.dataset_name,
            dataset_split=self.split,
            dataset_config=self.config,
            metric_type=self.metric_type,
            metric_name=self.metric_name,
            metric_value=float(self.value),
        )

    @classmethod
    def from_eval_result(cls, result: EvalResult) -> EvalEntry:
        return cls(
            dataset_name=result.dataset_name,
            dataset_type=result.dataset_type,
            split=result.dataset_split or "",
            metric_type=result.metric_type,
            metric_name=result.metric_name or result.metric_type,
            value=float(result.metric_value),
            task_type=result.task_type,
            config=result.dataset_config,
        )


def _eval_key(result: EvalResult) -> tuple[str, str, str]:
    return (_norm(result.dataset_type), _norm(result.dataset_split), _norm(result.metric_name or result.metric_type))


def _dataset_ids(dataset: str) -> tuple[str, str]:
    known = KNOWN_DATASETS.get(dataset.strip().lower())
    return known if known else (dataset, dataset)


def _record_entries(record: Mapping[str, Any], unit: str | None, where: str) -> list[EvalEntry]:
    dataset = record.get("dataset_type") or record.get("dataset")
    if not dataset:
        raise ValueError(f"{where}: a results record needs a 'dataset' (or 'dataset_type') key")
    dataset_type, dataset_name = _dataset_ids(str(dataset))
    if record.get("dataset_type"):
        dataset_type = str(record["dataset_type"])
    dataset_name = str(record.get("dataset_name") or dataset_name)
    split = str(record.get("split") or "test")
    config = record.get("config")
    if config is None and dataset_type == "objectnet" and record.get("classes"):
        config = f"imagenet-overlap-{record['classes']}"  # as recipes/eval_objectnet.py writes it
    task_type = str(record.get("task_type") or "image-classification")
    unit = (unit or record.get("unit") or "percent").lower()
    if unit not in ("percent", "fraction"):
        raise ValueError(f"{where}: unit must be 'percent' or 'fraction', got {unit!r}")
    scale = 100.0 if unit == "fraction" else 1.0

    metrics: list[tuple[str, str, Any]] = []
    for key, value in record.items():
        m = re.fullmatch(r"top(\d+)", str(key))
        if m:
            metrics.append(("accuracy", f"Top-{int(m.group(1))} accuracy", value))
    metrics.sort(key=lambda t: int(re.search(r"\d+", t[1]).group()))  # type: ignore[union-attr]
    for extra in record.get("metrics") or []:
        if not isinstance(extra, Mapping) or "value" not in extra or "type" not in extra:
            raise ValueError(f"{where}: entries of 'metrics' need 'type' and 'value' (and optionally 'name')")
        metrics.append((str(extra["type"]), str(extra.get("name") or extra["type"]), extra["value"]))
    if not metrics:
        raise ValueError(f"{where}: no metric found (expected top1/top5/... keys or a 'metrics' list)")

    out = []
    for metric_type, metric_name, value in metrics:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: metric {metric_name!r} must be a finite number, got {value!r}")
        value = float(value) * scale
        if metric_type == "accuracy" and not 0.0 <= value <= 100.0:
            hint = " (fractions need \"unit\": \"fraction\")" if unit == "percent" else ""
            raise ValueError(f"{where}: accuracy {value} is not a percentage in [0, 100]{hint}")
        out.append(EvalEntry(dataset_name, dataset_type, split, metric_type, metric_name, value, task_type,
                             None if config is None else str(config)))
    return out


def results_from_json(path_or_dict: str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any], *,
                      unit: str | None = None) -> list[EvalEntry]:
    """Evaluation entries from a results JSON file (path) or its parsed content.

    Accepted shapes:

    * one record: ``{"dataset": "fashion_mnist", "split": "test", "top1": 91.2, "top5": 99.8}``;
    * a list of records, or ``{"results": [record, ...]}``.

    A record's keys: ``dataset`` (Hub dataset id; known ids such as ``fashion_mnist``,
    ``imagenet-1k``, ``objectnet`` get their display name and canonical type), optional
    ``dataset_type`` / ``dataset_name`` overriding those, ``split`` (default ``"test"``),
    ``config``, ``task_type`` (default image-classification), ``unit`` (``"percent"``, the default,
    or ``"fraction"`` for values in [0, 1], converted to percent).  Metrics: every ``top<k>`` key
    becomes an ``accuracy`` metric named ``"Top-<k> accuracy"``; a ``metrics`` list of
    ``{"type", "name", "value"}`` adds any other metric.  Other keys (counts, paths, settings) are
    ignored, so the JSON written by ``recipes/eval_objectnet.py`` is accepted as is.  ``unit``
    given here overrides the records'.
    """
    where = "results"
    data: Any = path_or_dict
    if isinstance(path_or_dict, (str, os.PathLike)):
        where = str(path_or_dict)
        data = json.loads(Path(path_or_dict).read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "results" in data and isinstance(data["results"], list):
        data = data["results"]
    records = [data] if isinstance(data, Mapping) else data
    if not isinstance(records, Sequence) or isinstance(records, str):
        raise ValueError(f"{where}: expected a results record, a list of them or {{'results': [...]}}")
    out: list[EvalEntry] = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"{where}[{i}]: a results record must be a JSON object, got {type(record).__name__}")
        out.extend(_record_entries(record, unit, f"{where}[{i}]" if len(records) > 1 else where))
    return out


def _merge(existing: Iterable[EvalResult], new: Iterable[EvalResult]) -> list[EvalResult]:
    """Existing results, each replaced in place by a new one with the same key; others appended."""
    merged = list(existing)
    index = {_eval_key(r): i for i, r in enumerate(merged)}
    for result in new:
        key = _eval_key(result)
        if key in index:
            merged[index[key]] = result
        else:
            index[key] = len(merged)
            merged.append(result)
    return merged


def _format_value(entry: EvalEntry) -> str:
    return f"{entry.value:.2f}%" if entry.metric_type == "accuracy" else f"{entry.value:.4g}"


def _results_section(entries: Sequence[EvalEntry]) -> str:
    if entries:
        lines = ["| Dataset | Split | Metric | Value |", "|---|---|---|---|"]
        for e in entries:
            dataset = e.dataset_name if _norm(e.dataset_name) == _norm(e.dataset_type) else \
                f"{e.dataset_name} (`{e.dataset_type}`)"
            if e.config:
                dataset += f", {e.config}"
            lines.append(f"| {dataset} | {e.split or '-'} | {e.metric_name} | {_format_value(e)} |")
        body = "\n".join(lines)
    else:
        body = "No evaluation results recorded yet (add them with `rpg-hf card update README.md --results results.json`)."
    return f"{RESULTS_START}\n{body}\n{RESULTS_END}"


# --------------------------------------------------------------------------- card info


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _owner_of(model: Any, gen: Any) -> Any:
    """The (sub)module whose ``.rpg`` is ``gen``: the re-parameterized backbone itself."""
    if _get(model, "rpg") is gen:
        return model
    named = getattr(model, "named_modules", None)
    if callable(named):
        for _, m in named():
            if getattr(m, "rpg", None) is gen:
                return m
    return model


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


def _param_totals(owner: Any, gen: Any) -> dict[str, int]:
    try:
        from .reparam import dof_table

        t = dof_table(owner)
        return {"dof": t.dof, "free_params": t.free_params, "generated_params": t.generated_params}
    except Exception:  # duck-typed input: count what is there
        rings = list(_get(gen, "rings", []) or [])
        dof = sum(int(r.numel()) for r in rings) or int(sum(_get(gen, "ring_sizes", []) or [])) \
            or int(_get(_get(gen, "spec"), "dof", 0) or 0)
        layers = _get(gen, "layers", []) or []
        generated = sum(int(_get(layer, "numel")) if _get(layer, "numel") is not None
                        else _numel(_get(layer, "shape", ())) for layer in layers)
        ring_ids = {id(r) for r in rings}
        params = getattr(owner, "parameters", None)
        free = sum(p.numel() for p in params() if id(p) not in ring_ids) if callable(params) else 0
        return {"dof": dof, "free_params": free, "generated_params": generated}


def _architecture(model: Any, owner: Any) -> str:
    for obj in (model, owner):
        for cfg in (_get(obj, "config"), _get(obj, "pretrained_cfg"), _get(obj, "default_cfg")):
            for attr in ("architecture", "backbone_architecture", "timm_architecture"):
                value = _get(cfg, attr)
                if isinstance(value, str) and value:
                    return value
    for obj in (model, owner):
        model_type = _get(_get(obj, "config"), "model_type")
        if isinstance(model_type, str) and model_type and model_type not in ("rpg", "timm_wrapper"):
            return model_type
    return type(owner).__name__


def _backbone(model: Any, owner: Any) -> str:
    for obj in (model, owner):
        cfg = _get(obj, "config")
        for attr in ("backbone_kind", "backbone_type", "backbone"):
            value = _get(cfg, attr)
            if isinstance(value, str) and value in ("timm", "vit"):
                return value
    for obj in (owner, model):
        model_type = _get(_get(obj, "config"), "model_type")
        if model_type == "timm_wrapper" or _get(obj, "pretrained_cfg") is not None:
            return "timm"
        if isinstance(model_type, str) and model_type and model_type != "rpg":
            return "vit" if model_type == "vit" else model_type
    module = type(owner).__module__
    if module.startswith("timm."):
        return "timm"
    if module.startswith("transformers."):
        return "vit" if "vit" in module else "transformers"
    return "torch"


def _num_labels(model: Any, owner: Any) -> int | None:
    for obj in (model, owner):
        for value in (_get(_get(obj, "config"), "num_labels"), _get(obj, "num_classes"),
                      _get(_get(obj, "config"), "num_classes")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def _ring_sparsity(gen: Any) -> float | None:
    try:
        rings = list(gen.rings)
        total = sum(int(r.numel()) for r in rings)
        zeros = sum(int((r.detach() == 0).sum()) for r in rings)
    except Exception:
        return None
    return zeros / total if total and zeros else None


def _hub_id(model: Any) -> str | None:
    """``config._name_or_path`` when it names a model: a Hub id as is, a local folder by its name."""
    cfg = _get(model, "config")
    name = _get(cfg, "_name_or_path") or _get(cfg, "name_or_path")
    if not isinstance(name, str) or not name.strip():
        return None
    path = Path(name)
    if path.exists() or path.is_absolute() or name.startswith("."):
        return path.resolve().name or None
    return name


def _ring_storage(model: Any, owner: Any) -> str | None:
    for obj in (model, owner):
        dtype = _get(_get(obj, "config"), "ring_dtype")
        if dtype == "int8":
            return "int8 with float32 scales (dequantized on load)"
        if isinstance(dtype, str) and dtype:
            return dtype
    return None


@dataclass(kw_only=True)
class CardInfo:
    """What a model card says about one ring-only RPG model."""

    model_id: str  # "org/name" or a local name; the card's title and the model-index name
    architecture: str  # e.g. "resnet34", "vit"
    backbone: str = "timm"  # "timm" or "vit" (transformers ViT); other strings are shown as is
    dof: int
    seed: int = 0
    generator_version: int = GENERATOR_VERSION
    scope: str = "global"
    permute: bool = True
    sign_flip: bool = True
    num_rings: int = 1
    original_params: int | None = None
    trainable_params: int | None = None
    free_params: int | None = None
    generated_params: int | None = None
    compression: float | None = None
    num_labels: int | None = None
    datasets: list[str] = field(default_factory=list)
    license: str = "apache-2.0"
    recipe_command: str | None = None
    base_model: str | None = None
    ring_storage: str | None = None  # e.g. "float32", "int8, per-block scales (block 256)"
    ring_sparsity: float | None = None  # fraction of ring entries pruned to zero
    tags: list[str] = field(default_factory=list)  # extra tags

    def __post_init__(self) -> None:
        self.datasets = [self.datasets] if isinstance(self.datasets, str) else list(self.datasets)
        self.tags = list(self.tags)
        if self.trainable_params is None and self.free_params is not None:
            self.trainable_params = self.dof + self.free_params
        if self.original_params is None and self.free_params is not None and self.generated_params is not None:
            self.original_params = self.free_params + self.generated_params
        if self.compression is None and self.original_params and self.trainable_params:
            self.compression = self.original_params / self.trainable_params

    @classmethod
    def from_model(cls, model: Any, **overrides: Any) -> CardInfo:
        """Read a re-parameterized model (or a wrapper holding one); ``overrides`` win.

        Tolerant of duck-typed inputs: the generator is ``model.rpg`` or the first sub-module's
        ``.rpg`` with ``rings``; its ``spec`` may be an ``RPGSpec`` or a dict; the architecture
        comes from ``config.architecture``, timm's ``pretrained_cfg``, ``config.model_type`` or the
        class name; missing counts are computed from the rings, layers and parameters present.
        """
        from .quantization import find_generator

        gen = find_generator(model)
        owner = _owner_of(model, gen)
        spec = _get(gen, "spec")
        totals = _param_totals(owner, gen)
        architecture = overrides.get("architecture") or _architecture(model, owner)
        dof = totals["dof"] or int(_get(spec, "dof", 0) or 0)
        default_id = _hub_id(model) or f"{architecture}-rpg-dof{dof}"
        values: dict[str, Any] = {
            "model_id": default_id,
            "architecture": architecture,
            "backbone": _backbone(model, owner),
            "dof": dof,
            "seed": int(_get(spec, "seed", 0) or 0),
            "generator_version": int(_get(spec, "generator_version", GENERATOR_VERSION) or GENERATOR_VERSION),
            "scope": str(_get(spec, "scope", "global") or "global"),
            "permute": bool(_get(spec, "permute", True)),
            "sign_flip": bool(_get(spec, "sign_flip", True)),
            "num_rings": len(_get(gen, "ring_sizes", None) or _get(gen, "rings", None) or [0]),
            "free_params": totals["free_params"],
            "generated_params": totals["generated_params"],
            "num_labels": _num_labels(model, owner),
            "ring_sparsity": _ring_sparsity(gen),
            "ring_storage": _ring_storage(model, owner),
        }
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown CardInfo field(s): {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CardInfo:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown CardInfo field(s): {sorted(unknown)}")
        return cls(**d)

    @property
    def backbone_library(self) -> str:
        return {"timm": "timm", "vit": "transformers"}.get(self.backbone, self.backbone)


# --------------------------------------------------------------------------- rendering


def _fmt_int(n: int | None) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def _card_data(info: CardInfo, results: Sequence[EvalEntry]) -> ModelCardData:
    tags = list(TAGS)
    if info.backbone_library in ("timm", "transformers"):
        tags.append(info.backbone_library)
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


def _summary(info: CardInfo) -> str:
    text = (
        f"`{info.architecture}` ({info.backbone_library}) re-parameterized by a **Recurrent Parameter "
        f"Generator** (RPG; Wang et al., WACV 2023): a ring of {_fmt_int(info.dof)} trainable numbers "
        f"generates its {_fmt_int(info.generated_params)} convolution/linear weights"
    )
    if info.trainable_params and info.original_params:
        text += (f", so it trains {_fmt_int(info.trainable_params)} parameters instead of "
                 f"{_fmt_int(info.original_params)} ({info.compression:,.1f}x fewer)")
    text += "."
    if info.num_labels:
        text += f" Image classifier over {info.num_labels} classes"
        text += f", trained on {', '.join(info.datasets)}." if info.datasets else "."
    return text


def build_model_card(
    info: CardInfo, results: Sequence[EvalEntry] = (), *, template_path: str | os.PathLike[str] | None = None
) -> ModelCard:
    """Render the card (metadata + body) for ``info`` with ``results`` in its model-index."""
    results = list(results)
    params = {
        "dof": _fmt_int(info.dof),
        "num_rings": info.num_rings,
        "trainable_params": _fmt_int(info.trainable_params),
        "free_params": _fmt_int(info.free_params),
        "generated_params": _fmt_int(info.generated_params),
        "original_params": _fmt_int(info.original_params),
        "compression": "n/a" if info.compression is None else f"{info.compression:,.2f}x",
    }
    kwargs = {k: v for k, v in info.to_dict().items() if k != "tags"}
    kwargs.update(
        params=params,
        summary=_summary(info),
        backbone_library=info.backbone_library,
        results_section=_results_section(results),
        citation=CITATION,
        ring_sparsity=None if not info.ring_sparsity else f"{100 * info.ring_sparsity:.1f}%",
    )
    return ModelCard.from_template(
        _card_data(info, results), template_path=str(template_path or DEFAULT_TEMPLATE_PATH), **kwargs
    )


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
    when present) is re-rendered from the merged results.  ``model_name`` is required by the Hub
    for a model-index: kept if the card has one, else this argument, else the folder's name.
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
    merged = _merge(getattr(data, "eval_results", None) or [], new)
    if not getattr(data, "model_name", None):
        data.model_name = model_name or (path.resolve().parent.name if path is not None else "model")
    data.eval_results = merged
    metrics = set(getattr(data, "metrics", None) or []) | {r.metric_type for r in merged}
    data.metrics = sorted(metrics) or None
    start, end = card.text.find(RESULTS_START), card.text.find(RESULTS_END)
    if 0 <= start < end:
        section = _results_section([EvalEntry.from_eval_result(r) for r in merged])
        card.text = card.text[:start] + section + card.text[end + len(RESULTS_END):]
    if path is not None:
        card.save(path)
    return card


def _to_entries(results: Iterable[Any] | None) -> list[EvalEntry]:
    """EvalEntry / EvalResult / results-JSON records or paths, as EvalEntry."""
    out: list[EvalEntry] = []
    for r in results or ():
        if isinstance(r, EvalEntry):
            out.append(r)
        elif isinstance(r, EvalResult):
            out.append(EvalEntry.from_eval_result(r))
        elif isinstance(r, (Mapping, str, os.PathLike)):
            out.extend(results_from_json(r))
        else:
            raise TypeError(f"cannot read an evaluation result from {type(r).__name__}")
    return out


def write_model_card(
    model_or_info: Any,
    save_directory: str | os.PathLike[str],
    results: Iterable[Any] | None = None,
    *,
    keep_existing_results: bool = True,
    template_path: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> ModelCard:
    """Render and save ``README.md`` for a model (or a :class:`CardInfo`); what ``save_pretrained``,
    ``push_to_hub`` and ``rpg-hf card`` call.  Returns the card.

    ``save_directory`` is the folder (or the README.md path).  ``overrides`` are CardInfo fields
    (``model_id``, ``recipe_command``, ``datasets`` ...); without ``model_id`` a model's Hub id
    (``config._name_or_path``) is used, else the folder's name.  ``results``: EvalEntry,
    EvalResult, results-JSON records or files.  With ``keep_existing_results`` the results of an
    existing README.md there are carried over (new ones replace those with the same key), so
    re-saving after an evaluation does not lose the model-index; the rest of the old card is
    rewritten.
    """
    target = _readme_path(save_directory)
    if isinstance(model_or_info, CardInfo):
        info = replace(model_or_info, **overrides) if overrides else model_or_info
    else:
        if "model_id" not in overrides:
            overrides["model_id"] = _hub_id(model_or_info) or target.resolve().parent.name
        info = CardInfo.from_model(model_or_info, **overrides)
    entries = _to_entries(results)
    if keep_existing_results and target.is_file():
        try:
            old = ModelCard.load(target, ignore_metadata_errors=True).data.eval_results or []
        except Exception:  # an unreadable old card is replaced, not fatal
            old = []
        entries = [EvalEntry.from_eval_result(r) for r in _merge(old, [e.to_eval_result() for e in entries])]
    card = build_model_card(info, entries, template_path=template_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    card.save(target)
    return card
