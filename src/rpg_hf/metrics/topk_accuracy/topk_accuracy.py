"""Top-k accuracy as an ``evaluate`` metric that loads offline: ``evaluate.load(rpg_hf.metrics.TOPK_ACCURACY)``.

``evaluate.load("accuracy")`` downloads its script from the Hub; this one ships inside the rpg_hf
package (a folder holding a script of the same name, the layout ``evaluate.load`` reads from a
local path).  It imports only ``evaluate``, ``datasets`` and NumPy, so the folder can be copied
anywhere, a Hub Space included.

Inputs: ``references`` (class ids) and ``predictions`` — per example either the ranked class ids
(best first; as many as the largest k) or one class id (top-1 only).  Output: ``{"top1": ...,
"top5": ...}`` as fractions, like ``evaluate``'s ``accuracy``; ``k`` chooses the ks.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-k accuracy: the fraction of examples whose reference is among the first k predicted classes."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per example, the predicted class ids ranked best first (a list), or a single id.
    references: per example, the true class id.
    k: the ks to report (default (1, 5)); an example with fewer than k ranked predictions counts
       as a hit when its reference is among those it has.
Returns:
    top{k}: the fraction of examples whose reference is among the first k predictions, per k.
Examples:
    >>> metric = evaluate.load("path/to/topk_accuracy")
    >>> metric.compute(predictions=[[0, 1, 2], [2, 0, 1]], references=[0, 1], k=(1, 3))
    {'top1': 0.5, 'top3': 1.0}
"""

_CITATION = ""


def topk_hits(predictions, references, k):
    """Per example 1.0 if its reference is among its first ``k`` predictions, else 0.0."""
    ranked = [list(np.atleast_1d(p))[:k] for p in predictions]
    return np.array([float(r in p) for p, r in zip(ranked, references, strict=True)], dtype=np.float64)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                   "references": datasets.Value("int64")}),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ks = (k,) if isinstance(k, int) else tuple(k)
        return {f"top{kk}": float(topk_hits(predictions, references, kk).mean()) if len(references) else float("nan")
                for kk in ks}
