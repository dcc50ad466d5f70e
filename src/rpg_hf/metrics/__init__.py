"""``evaluate`` metrics shipped with rpg_hf, loadable with no network.

``evaluate.load("accuracy")`` fetches a script from the Hub; :data:`TOPK_ACCURACY` is the local
folder of ours, so ``evaluate.load(rpg_hf.metrics.TOPK_ACCURACY)`` works offline.
"""

from __future__ import annotations

from pathlib import Path

TOPK_ACCURACY = str(Path(__file__).resolve().parent / "topk_accuracy")

__all__ = ["TOPK_ACCURACY", "load_topk_accuracy"]


def load_topk_accuracy(**kwargs):
    """``evaluate.load`` of the packaged top-k accuracy metric (``kwargs`` go to ``evaluate.load``)."""
    import evaluate

    return evaluate.load(TOPK_ACCURACY, **kwargs)
