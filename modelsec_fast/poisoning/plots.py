"""PNG figures of the poisoning review (matplotlib, Agg backend: no display needed).

Each function takes the figure's data as the review record holds it
(:attr:`PoisoningReview.figures`) and writes one PNG, returning its path.
"""

from __future__ import annotations

import math
import os

from .._plotting import agg_pyplot, save_figure

__all__ = ["plot_asr_vs_epsilon", "plot_anomaly_index", "plot_detection_roc", "save_figures"]



def plot_asr_vs_epsilon(data: dict, path: str) -> str:
    """ASR against epsilon per k: the mean, its confidence band, the bound (dashed) and
    the non-private ASR (dotted). ``data``: ``{"series": {k: EpsilonSweep.series(k)},
    "non_private": {k: asr}, "confidence": c}``."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (k, s) in enumerate(sorted(data["series"].items(), key=lambda kv: int(kv[0]))):
        colour = colours[i % len(colours)]
        ax.plot(s["epsilon"], s["asr"], "o-", color=colour, label=f"k = {k}: measured ASR")
        ax.fill_between(s["epsilon"], s["low"], s["high"], color=colour, alpha=0.2)
        ax.plot(s["epsilon"], s["bound"], "--", color=colour, label=f"k = {k}: group-privacy bound")
        non_private = data.get("non_private", {}).get(k)
        if non_private is not None:
            ax.axhline(non_private, color=colour, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ticks = sorted({e for s in data["series"].values() for e in s["epsilon"]})
    ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("DP-SGD epsilon (log scale)")
    ax.set_ylabel("attack success rate")
    conf = data.get("confidence", 0.95)
    ax.set_title(f"BadNets ASR vs epsilon ({conf:.0%} band; dotted: no DP)")
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, path, dpi=110)


def plot_anomaly_index(data: dict, path: str) -> str:
    """Neural Cleanse: each class's mask L1 norm, coloured by flag, with its anomaly
    index written above. ``data``: ``{"l1": [...], "index": [...], "flagged": [...]}``."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    k = len(data["l1"])
    colours = ["tab:red" if c in data["flagged"] else "tab:blue" for c in range(k)]
    ax.bar(range(k), data["l1"], color=colours)
    for c, (l1, idx) in enumerate(zip(data["l1"], data["index"])):
        label = "inf" if math.isinf(idx) else f"{idx:.1f}"
        ax.text(c, l1, label, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(k))
    ax.set_xlabel("class (red: flagged)")
    ax.set_ylabel("reversed trigger mask L1")
    ax.set_title("Neural Cleanse: mask norms and anomaly indices")
    return save_figure(fig, path, dpi=110)


def plot_detection_roc(data: dict, path: str) -> str:
    """ROC curves of the training-data detectors. ``data``: ``{name: {"fpr", "tpr", "auroc"}}``."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    for name, curve in data.items():
        ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUROC {curve['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false positive rate (clean samples flagged)")
    ax.set_ylabel("true positive rate (poisons flagged)")
    ax.set_title("Poison detection")
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path, dpi=110)


def save_figures(figures: dict, out_dir: str) -> dict[str, str]:
    """Writes every figure of a review's ``figures`` dict present; name -> PNG path."""
    writers = {"asr_vs_epsilon": plot_asr_vs_epsilon, "nc_anomaly": plot_anomaly_index,
               "detection_roc": plot_detection_roc}
    return {name: writers[name](figures[name], os.path.join(out_dir, f"poisoning_{name}.png"))
            for name in writers if figures.get(name)}
