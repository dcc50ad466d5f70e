"""`RPGSpec`: what to generate from which ring, validated up front — the one list of ring options.

Fields carry their help text in ``metadata["help"]`` (PEFT's habit).  Everything else derives
from ``dataclasses.fields(RPGSpec)``: the command-line flags (:func:`add_spec_arguments`), the
picking of the options out of parsed arguments / keyword arguments (:func:`spec_kwargs`, used by
`RPGConfig.spec` and the timm entrypoints).  The defaults are the reference code's choices
(the paper's official implementation): every conv but the stem generated, one global ring.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from rpg_hf.core.construction import GENERATOR_VERSION, check_generator_version

SCOPES = ("global", "stage", "block")
DEFAULT_TARGET_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
REFERENCE_FAN = 512 * 3 * 3


@dataclass
class RPGSpec:
    """How a model is re-parameterized by recurrent parameter generators."""

    dof: int = field(metadata={"help": "Degrees of freedom: total size of the ring(s); at most the number of "
                                       "generated weights (a larger ring holds entries no weight reads: refused)."})
    seed: int = field(default=0, metadata={"help": "Seed of the pinned permutation/sign construction."})
    target_types: tuple[str, ...] = field(
        default=DEFAULT_TARGET_TYPES,
        metadata={"help": "torch.nn class names (matched along the MRO) whose `weight` is generated."},
    )
    include: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Regexes on module names; when given, only matching modules are generated."},
    )
    exclude: tuple[str, ...] = field(
        default=(), metadata={"help": "Regexes on module names that stay free (ordinary parameters)."}
    )
    exclude_stem: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the first convolution free. None: yes for conv nets; no when the model has "
            "a single conv (a ViT's patch embedding is generated, as in the paper's ViT)."
        },
    )
    exclude_head: bool = field(
        default=True, metadata={"help": "Keep the classifier head free (timm get_classifier / HF `classifier`)."}
    )
    scope: str = field(
        default="global",
        metadata={"help": "One global ring, or local rings per 'stage' or per 'block' (DoF split by size)."},
    )
    permute: bool = field(default=True, metadata={"help": "Apply the per-layer random permutation π_l."})
    sign_flip: bool = field(default=True, metadata={"help": "Apply the per-layer random sign flip s_l."})
    reference_fan: int = field(
        default=REFERENCE_FAN,
        metadata={"help": "F_ref: ring init std is sqrt(2/F_ref); conv multiplier sqrt(F_ref/fan_out)."},
    )
    linear_std: float = field(
        default=0.02, metadata={"help": "Init std reproduced for generated Linear layers (ViT/ConvNeXt: 0.02)."}
    )
    generator_version: int = field(
        default=GENERATOR_VERSION, metadata={"help": "Version of the pinned seeded construction."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.dof, bool) or not isinstance(self.dof, int):
            raise TypeError(f"RPGSpec.dof must be an int, got {type(self.dof).__name__}")
        if self.dof <= 0:
            raise ValueError(f"RPGSpec.dof must be positive, got {self.dof}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RPGSpec.seed must be a non-negative int, got {self.seed!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown ring scope {self.scope!r}; expected one of {SCOPES}")
        if self.reference_fan <= 0:
            raise ValueError(f"RPGSpec.reference_fan must be positive, got {self.reference_fan}")
        if not self.linear_std > 0:
            raise ValueError(f"RPGSpec.linear_std must be positive, got {self.linear_std}")
        self.target_types = tuple(self.target_types)
        if not self.target_types:
            raise ValueError("RPGSpec.target_types is empty: no tensor could be generated")
        self.include, self.exclude = tuple(self.include), tuple(self.exclude)
        for pattern in self.include + self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"invalid module-name regex {pattern!r}: {err}") from err
        check_generator_version(self.generator_version)

    @property
    def ring_std(self) -> float:
        """Kaiming-normal std of the ring for the reference fan (the paper's initialisation)."""
        return (2.0 / self.reference_fan) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("target_types", "include", "exclude"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RPGSpec:
        unknown = set(d) - set(SPEC_FIELDS)
        if unknown:
            raise ValueError(f"unknown RPGSpec field(s): {sorted(unknown)}")
        return cls(**d)


SPEC_FIELDS = tuple(f.name for f in fields(RPGSpec))
"""The names of the `RPGSpec` fields, in declaration order."""


def spec_kwargs(source: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The `RPGSpec` fields of ``source``: a mapping (``**kwargs``, a config dict) or an object with
    attributes (an ``argparse.Namespace``, an `RPGConfig`).

    Absent fields and fields set to ``None`` are left out: ``None`` means the field's default
    (a config's ``target_types=None``, a flag that was not given), so ``RPGSpec(**spec_kwargs(x))``
    works on any of them.
    """
    if isinstance(source, Mapping):
        values = {name: source.get(name) for name in SPEC_FIELDS}
    else:
        values = {name: getattr(source, name, None) for name in SPEC_FIELDS}
    return {name: value for name, value in values.items() if value is not None}


def add_spec_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, exclude: Iterable[str] = (),
                       required: Iterable[str] = ("dof",),
                       overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Add one flag per `RPGSpec` field to ``parser`` (or an argument group), with the field's help.

    The destination is the field's name, so ``RPGSpec(**spec_kwargs(args))`` reads them back:
    ``--dof`` / ``--seed`` / ``--reference-fan`` / ``--linear-std`` / ``--generator-version`` take a
    number, ``--scope`` one of `SCOPES`, ``--target-types`` / ``--include`` / ``--exclude`` one or more
    values (not given: the spec's default), a switch on by default is turned off by ``--no-<name>``
    (``--no-permute``, ``--no-sign-flip``, ``--no-exclude-head``) and the tri-state ``exclude_stem``
    is ``--exclude-stem`` / ``--no-exclude-stem`` (neither: decided by the model).  ``exclude`` names
    fields that get no flag, ``required`` the flags that must be given (a field without a default,
    ``dof``, that is not required defaults to None); ``overrides`` updates the ``add_argument``
    keywords of a field, e.g. ``{"dof": {"default": 45_000}}``.
    """
    exclude, required, overrides = set(exclude), set(required), dict(overrides or {})
    unknown = (exclude | required | set(overrides)) - set(SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown RPGSpec field(s): {sorted(unknown)}")
    for f in fields(RPGSpec):
        if f.name in exclude:
            continue
        dashed, default = f.name.replace("_", "-"), None if f.default is MISSING else f.default
        flag, kwargs = f"--{dashed}", {"dest": f.name, "help": f.metadata["help"]}
        if default is None and "bool" in str(f.type):  # tri-state: True, False or None (decided later)
            kwargs.update(action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, bool):
            flag, kwargs["action"], kwargs["default"] = f"--no-{dashed}", "store_false", default
            kwargs["help"] += f" {flag} turns it off."
        elif isinstance(default, tuple):
            kwargs.update(nargs="+", default=None, metavar=f.name.upper())
            kwargs["help"] += f" Default: {' '.join(default) or 'none'}."
        else:
            kwargs.update(type=type(default) if default is not None else int, default=default)
            if f.name == "scope":
                kwargs["choices"] = SCOPES
            if default is not None:
                kwargs["help"] += " Default: %(default)s."
        if f.name in required:
            kwargs["required"] = True
            kwargs.pop("default", None)
        kwargs.update(overrides.get(f.name, {}))
        parser.add_argument(flag, **kwargs)
