"""`RPGSpec`: what to generate from which ring, validated up front.

Fields carry their help text in ``metadata["help"]`` (PEFT's habit), so the CLI and the docs
read the same words.  The defaults are the reference code's choices (DESIGN.md §1).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from rpg_hf.core.construction import GENERATOR_VERSION, check_generator_version

SCOPES = ("global", "stage", "block")
DEFAULT_TARGET_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")
REFERENCE_FAN = 512 * 3 * 3


@dataclass
class RPGSpec:
    """How a model is re-parameterized by recurrent parameter generators."""

    dof: int = field(metadata={"help": "Degrees of freedom: total size of the ring(s)."})
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
            "a single conv (a ViT's patch embedding is generated, DESIGN.md §1)."
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
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RPGSpec field(s): {sorted(unknown)}")
        return cls(**d)
