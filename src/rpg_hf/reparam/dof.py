"""Where each generated layer sits on its ring, and a model's parameter totals (``dof_table``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rpg_hf.reparam.model import get_generator


@dataclass(frozen=True)
class DofTable:
    """Per-layer placement and totals of a re-parameterized model."""

    rows: list[dict]
    dof: int
    ring_sizes: list[int]
    free_params: int
    generated_params: int

    @property
    def original_params(self) -> int:
        return self.free_params + self.generated_params

    @property
    def trainable_params(self) -> int:
        return self.dof + self.free_params

    @property
    def compression(self) -> float:
        """Parameters of the plain model per trainable parameter of the RPG model."""
        return self.original_params / self.trainable_params

    @property
    def generated_compression(self) -> float:
        """Generated weights per ring entry (the reuse factor T/N)."""
        return self.generated_params / self.dof

    def totals(self) -> dict:
        return {
            "dof": self.dof,
            "rings": self.ring_sizes,
            "free_params": self.free_params,
            "generated_params": self.generated_params,
            "trainable_params": self.trainable_params,
            "original_params": self.original_params,
            "compression": self.compression,
            "generated_compression": self.generated_compression,
        }

    def __str__(self) -> str:
        head = f"{'layer':<40} {'shape':<20} {'numel':>10} {'ring':>4} {'window':>9} {'mult':>8}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r["shape"]))
            lines.append(
                f"{r['name']:<40.40} {shape:<20} {r['numel']:>10,} {r['ring']:>4} {r['window']:>9,} {r['multiplier']:>8.3f}"
            )
        lines += [
            "-" * len(head),
            f"DoF (ring entries)      {self.dof:>14,}   rings: {len(self.ring_sizes)}",
            f"free parameters         {self.free_params:>14,}",
            f"generated parameters    {self.generated_params:>14,}   reuse T/N = {self.generated_compression:,.1f}",
            f"trainable (DoF + free)  {self.trainable_params:>14,}",
            f"plain model parameters  {self.original_params:>14,}   compression = {self.compression:,.1f}x",
        ]
        return "\n".join(lines)


def dof_table(model: nn.Module) -> DofTable:
    """Where each generated layer sits on its ring, and the model's parameter totals."""
    gen = get_generator(model)
    rows = []
    for layer, (r, i) in zip(gen.layers, gen.slot_of, strict=True):
        slot = gen.slots[r][i]
        rows.append({
            "name": layer.name, "shape": list(layer.shape), "numel": layer.numel, "ring": r,
            "window": slot.start % gen.ring_sizes[r], "multiplier": layer.multiplier,
        })
    ring_ids = {id(p) for p in gen.rings}
    free = sum(p.numel() for p in model.parameters() if id(p) not in ring_ids)
    return DofTable(rows, gen.spec.dof, list(gen.ring_sizes), free, sum(row["numel"] for row in rows))
