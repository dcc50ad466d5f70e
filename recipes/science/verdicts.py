"""The science sweep's verdicts: one computed verdict per claim of the paper, with its criterion.

Used by ``report.py`` (beside this file); the numbers come from the aggregated run files, the
paper's figures from :data:`PAPER`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PAPER = {  # the paper's numbers behind each claim (percent top-1)
    "claim1": {"rpg_deep": 78.9, "vanilla_equal": 77.5, "vanilla_deep": 79.1, "dataset": "CIFAR-100"},
    "claim3": {"rpg": 67.2, "vanilla": 70.5, "dof_fraction": 0.18, "dataset": "ImageNet"},
    "claim4": {"rpg": 78.9, "plain_sharing": 74.9, "dataset": "CIFAR-100"},
}
METHOD_ORDER = ("rpg", "vanilla")
R2_REPRODUCED = 0.9  # claim 2: a straight line in log-log space explains >= 90% of the variance
SMALL_FRACTION = 0.25  # claim 3: "a small fraction" = at most a quarter of the full model's parameters
MATCH_TOLERANCE = 0.05  # claim 1: an equal-DoF pair differs by at most 5% in trainable parameters


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _pm(g: Mapping[str, Any]) -> str:
    return f"{_pct(g['top1_mean'])} ± {_pct(g['top1_std'])}" if g["n"] > 1 else _pct(g["top1_mean"])


def _noise(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    """Spread of a difference of two means: sqrt(std_a² + std_b²) (seed-to-seed std, ddof=1);
    None while either side has a single seed (no spread measured yet: nothing is "beyond" it)."""
    if a.get("n", 2) < 2 or b.get("n", 2) < 2:
        return None
    return math.hypot(a["top1_std"], b["top1_std"])


def _clear(diff: float, noise: float | None) -> bool:
    return noise is not None and diff > noise


def _beyond(diff: float, a, b) -> str:
    n = _noise(a, b)
    if n is None:
        return "one seed: spread not measured yet"
    return "beyond the seed spread" if abs(diff) > n else "within the seed spread"


def claims(groups: Sequence[Mapping[str, Any]], fits: Mapping[str, Mapping[str, Any]], rpg_archs: Sequence[str],
           ablation: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One computed verdict per paper claim (reproduced / partly / not reproduced / not tested)."""
    out: list[dict[str, Any]] = []
    get = {(g["arch"], g["method"], g["dof"]): g for g in groups}
    full = {g["arch"]: g for g in groups if g["role"] == "full"}

    # Claim 1 — equal DoF: the deeper RPG network against the vanilla network with as many parameters
    # (the vanilla group whose parameter count is nearest the RPG model's trainable parameters, within 5%).
    def network_size(arch: str) -> int:
        return max((g["params"] or 0 for g in groups if g["arch"] == arch and g["method"] == "rpg"), default=0)

    deep = max(rpg_archs, key=network_size) if rpg_archs else None
    vanillas = [g for g in groups if g["method"] == "vanilla" and g["arch"] != deep]
    pairs = []
    for g in groups:
        if g["arch"] == deep and g["method"] == "rpg" and vanillas:
            v = min(vanillas, key=lambda v: abs(v["params"] - g["trainable_params"]))
            if abs(v["params"] - g["trainable_params"]) <= MATCH_TOLERANCE * g["trainable_params"]:
                pairs.append((g, v))
    c1: dict[str, Any] = {"claim": 1, "title": "At equal DoF a deeper RPG network beats a vanilla network",
                          "paper": "CIFAR-100: ResNet-34-RPG 78.9% at 11M DoF vs vanilla ResNet-18 77.5% at 11M "
                                   "(vanilla ResNet-34 79.1% at 21M)", "pairs": []}
    lines = []
    for g, v in pairs:
        diff = g["top1_mean"] - v["top1_mean"]
        c1["pairs"].append({"dof": g["dof"], "trainable_params": g["trainable_params"], "vanilla_arch": v["arch"],
                            "vanilla_width": v["width"], "vanilla_params": v["params"], "rpg_top1": g["top1_mean"],
                            "vanilla_top1": v["top1_mean"], "diff": diff, "noise": _noise(g, v)})
        lines.append(f"{deep}-RPG {_pm(g)}% at {g['dof']:,} DoF vs {v['arch']} w{v['width']} {_pm(v)}% at "
                     f"{v['params']:,} params: {100 * diff:+.2f} points ({_beyond(diff, g, v)})")
    if pairs:
        wins = sum(p["diff"] > 0 for p in c1["pairs"])
        clear = sum(_clear(p["diff"], p["noise"]) for p in c1["pairs"])
        one_seed = any(p["noise"] is None for p in c1["pairs"])
        c1["verdict"] = ("reproduced" if clear == len(pairs) else
                         "direction only (one seed)" if one_seed and wins == len(pairs) else
                         "partly reproduced" if wins else "not reproduced")
        c1["text"] = (f"{c1['verdict']} (criterion: a win beyond the seed spread at every matched point): the deeper "
                      f"RPG network wins {wins} of {len(pairs)} equal-DoF comparisons, {clear} of them beyond the "
                      "seed spread. " + "; ".join(lines) + ".")
        if deep in full:
            top = max((p for p in pairs), key=lambda p: p[0]["dof"])[0]
            d = top["top1_mean"] - full[deep]["top1_mean"]
            c1["text"] += (f" Against the full vanilla {deep} ({full[deep]['params']:,} params, {_pm(full[deep])}%) "
                           f"the RPG network at {top['dof']:,} DoF is {100 * d:+.2f} points "
                           f"(paper: {PAPER['claim1']['rpg_deep'] - PAPER['claim1']['vanilla_deep']:+.1f}).")
    else:
        c1.update(verdict="not tested", text="not tested: no deeper-RPG / equal-DoF vanilla pair in this sweep.")
    out.append(c1)

    # Claim 2 — log-linear law.
    c2: dict[str, Any] = {"claim": 2, "title": "Accuracy rises log-linearly with DoF (power law in the error)",
                          "paper": "a straight line in log DoF from tiny DoF up to the full model", "fits": []}
    parts, ok = [], []
    for arch in rpg_archs:
        f = fits.get(arch)
        if not f:
            continue
        rs = sorted((g for g in groups if g["arch"] == arch and g["method"] == "rpg"), key=lambda g: g["dof"])
        monotone = all(b["top1_mean"] >= a["top1_mean"] for a, b in zip(rs, rs[1:], strict=False))
        good = f["exponent"] > 0 and f["r2"] >= R2_REPRODUCED
        ok.append(good)
        c2["fits"].append({**f, "monotone": monotone})
        span = math.log10(f["dof_max"] / f["dof_min"])
        parts.append(f"{arch}: error ∝ DoF^-{f['exponent']:.3f}, R² = {f['r2']:.3f} over {span:.1f} decades "
                     f"({rs[0]['dof']:,}→{rs[-1]['dof']:,} DoF: {_pm(rs[0])}% → {_pm(rs[-1])}%"
                     f"{', rising at every step' if monotone else ', not monotone'})")
    if ok:
        c2["verdict"] = "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"
        c2["text"] = f"{c2['verdict']} (criterion: exponent > 0 and R² ≥ {R2_REPRODUCED}): " + "; ".join(parts) + "."
    else:
        c2.update(verdict="not tested", text="not tested: no RPG arch with two or more DoF values.")
    out.append(c2)

    # Claim 3 — most of the accuracy at a small fraction of the DoF.
    c3: dict[str, Any] = {"claim": 3, "title": "RPG keeps much of the accuracy at a small fraction of the DoF",
                          "paper": "ImageNet: ResNet-18-RPG 67.2% at ~18% of the DoF vs 70.5% (95.3% of it kept)",
                          "points": []}
    keep_paper = PAPER["claim3"]["rpg"] / PAPER["claim3"]["vanilla"]
    parts, ok = [], []
    for arch in rpg_archs:
        if arch not in full:
            continue
        v = full[arch]
        cands = [g for g in groups if g["arch"] == arch and g["method"] == "rpg"
                 and g["dof"] <= SMALL_FRACTION * v["params"]]
        if not cands:
            continue
        g = max(cands, key=lambda g: g["dof"])
        frac, kept = g["dof"] / v["params"], g["top1_mean"] / v["top1_mean"]
        ok.append(kept >= keep_paper)
        c3["points"].append({"arch": arch, "dof": g["dof"], "dof_fraction": frac, "rpg_top1": g["top1_mean"],
                             "vanilla_top1": v["top1_mean"], "kept": kept,
                             "error_ratio": (1 - g["top1_mean"]) / max(1e-12, 1 - v["top1_mean"])})
        parts.append(f"{arch}-RPG {_pm(g)}% at {g['dof']:,} DoF ({100 * frac:.1f}% of {v['params']:,}) vs "
                     f"vanilla {_pm(v)}%: {100 * kept:.1f}% of the accuracy kept, "
                     f"{100 * (g['top1_mean'] - v['top1_mean']):+.2f} points")
    if ok:
        c3["verdict"] = "reproduced" if all(ok) else "partly reproduced" if any(ok) else "not reproduced"
        c3["text"] = (f"{c3['verdict']} (criterion: at ≤ {100 * SMALL_FRACTION:.0f}% of the parameters keep ≥ "
                      f"{100 * keep_paper:.1f}% of the accuracy, the paper's ratio): " + "; ".join(parts) + ".")
    else:
        c3.update(verdict="not tested", text="not tested: no RPG point below a quarter of a full vanilla network.")
    out.append(c3)

    # Claim 4 — permutation and sign flip matter.
    c4: dict[str, Any] = {"claim": 4, "title": "Permutation and sign flip matter",
                          "paper": "CIFAR-100: plain random weight sharing 74.9% vs RPG 78.9%", "ablations": []}
    ref = get.get((ablation["arch"], "rpg", ablation["dof"])) if ablation else None
    abls = [g for g in groups if g["role"] == "ablation"]
    if ref is not None and abls:
        parts = []
        for a in abls:
            diff = ref["top1_mean"] - a["top1_mean"]
            c4["ablations"].append({"method": a["method"], "top1": a["top1_mean"], "rpg_top1": ref["top1_mean"],
                                    "rpg_minus_ablation": diff, "noise": _noise(ref, a)})
            parts.append(f"{a['method']} {_pm(a)}% ({100 * -diff:+.2f}, {_beyond(diff, ref, a)})")
        plain = [x for x in c4["ablations"] if x["method"] == ablation.get("plain_sharing", "plain-sharing")]
        if plain:
            p = plain[0]
            c4["verdict"] = ("reproduced" if _clear(p["rpg_minus_ablation"], p["noise"]) else
                             "not reproduced" if p["rpg_minus_ablation"] <= 0 else
                             "direction only (one seed)" if p["noise"] is None else
                             "direction only (within the seed spread)")
        else:
            c4["verdict"] = "not tested (no plain-sharing run)"
        c4["text"] = (f"{c4['verdict']}: {ablation['arch']}-RPG at {ref['dof']:,} DoF {_pm(ref)}% vs " + "; ".join(parts)
                      + f" (paper: plain sharing {PAPER['claim4']['plain_sharing'] - PAPER['claim4']['rpg']:+.1f}).")
    else:
        c4.update(verdict="not tested", text="not tested: no ablation runs next to their RPG reference.")
    out.append(c4)
    return out


def generator_versions(groups: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Generator version 2 (``rpg-v2`` rows) against version 1's RPG rows at the same DoFs.

    Criterion, fixed before the runs: version 2 may stay the default unless at some DoF its mean
    top-1 is below version 1's by more than the seed spread (sqrt(std_v1² + std_v2²)).
    """
    get = {(g["arch"], g["method"], g["dof"]): g for g in groups}
    pairs = [(get.get((g["arch"], "rpg", g["dof"])), g) for g in groups if g["method"] == "rpg-v2"]
    pairs = [(v1, v2) for v1, v2 in pairs if v1 is not None]
    if not pairs:
        return None
    points, parts, losses = [], [], 0
    for v1, v2 in sorted(pairs, key=lambda p: p[1]["dof"]):
        diff = v2["top1_mean"] - v1["top1_mean"]
        noise = _noise(v1, v2)
        lost = _clear(-diff, noise)
        losses += lost
        points.append({"arch": v2["arch"], "dof": v2["dof"], "v1_top1": v1["top1_mean"], "v1_std": v1["top1_std"],
                       "v1_seeds": v1["n"], "v2_top1": v2["top1_mean"], "v2_std": v2["top1_std"],
                       "v2_seeds": v2["n"], "v2_minus_v1": diff, "noise": noise, "v2_loses": lost})
        parts.append(f"{v2['dof']:,} DoF: v2 {_pm(v2)}% vs v1 {_pm(v1)}% ({100 * diff:+.2f}, {_beyond(diff, v1, v2)})")
    verdict = ("version 2 loses beyond the seed spread: keep version 1 as the default" if losses else
               "no loss beyond the seed spread: version 2 stays the default")
    text = (f"{verdict} (criterion: at no DoF is version 2's mean below version 1's by more than the seed spread): "
            + "; ".join(parts) + ".")
    return {"title": "Generator version 2 (blocks of 32) vs version 1", "verdict": verdict, "text": text,
            "points": points}
