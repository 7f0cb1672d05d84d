"""The report's PNG plots (matplotlib, Agg backend, so no display is needed).

* ``accuracy_vs_eps.png``: accuracy under the worst-case attack against the
  L-infinity radius eps (pixel space), one line per model; eps = 0 is clean.
* ``epsilon_vs_steps.png``: the accountant's DP epsilon against DP-SGD steps.
* ``robustness_vs_eps.png`` (scan): accuracy against the radius, one panel per norm.
* ``mi_roc.png``: membership-inference ROC curves on log-log axes (the low-FPR
  regime is what matters, Carlini et al. 2022), one per model and attack.
"""

from __future__ import annotations

import math

from modelsec_fast._plotting import agg_pyplot, save_figure

__all__ = ["plot_accuracy_vs_eps", "plot_epsilon_vs_steps", "plot_mi_roc",
           "plot_robust_accuracy_curves"]



def plot_accuracy_vs_eps(curves: dict[str, dict[float, float]], path: str) -> str:
    """``curves[model][eps] = accuracy in [0, 1]``; writes a PNG and returns its path."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in curves.items():
        eps = sorted(points)
        ax.plot(eps, [100 * points[e] for e in eps], marker="o", label=name)
    ax.set_xlabel("L-inf attack radius eps (pixel space)")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Robust accuracy (worst case over attacks)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_epsilon_vs_steps(curves: dict[str, list[tuple[int, float]]], path: str) -> str:
    """``curves[model] = [(steps, epsilon), ...]``; writes a PNG and returns its path."""
    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=name)
    ax.set_xlabel("DP-SGD steps")
    ax.set_ylabel("epsilon (accountant)")
    ax.set_title("Privacy spent during training")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    return save_figure(fig, path)


def plot_mi_roc(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: str) -> str:
    """``curves[model][attack] = (fpr, tpr)``: one log-log ROC panel per model."""
    plt = agg_pyplot()
    models = list(curves) or ["(no audit)"]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.4), dpi=120,
                             squeeze=False, sharey=True)
    # Below 1/N non-members no FPR is measurable: start the axes one decade under it.
    smallest = min((f for per in curves.values() for fpr, _ in per.values() for f in fpr if f > 0),
                   default=1e-3)
    floor = 10 ** math.floor(math.log10(smallest))
    for ax, model in zip(axes[0], models):
        for attack, (fpr, tpr) in curves.get(model, {}).items():
            ax.plot([max(f, floor) for f in fpr], [max(t, floor) for t in tpr], label=attack)
        ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1)
        ax.set_xlabel("false positive rate")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("true positive rate")
    fig.suptitle("Membership inference ROC (log-log)")
    return save_figure(fig, path)


def plot_robust_accuracy_curves(curves: dict[str, dict[float, float]], path: str) -> str:
    """``curves[norm][eps] = accuracy in [0, 1]``: one panel per norm (radii in input
    units; eps 0 is clean accuracy); writes a PNG and returns its path."""
    plt = agg_pyplot()
    norms = list(curves) or ["(none)"]
    fig, axes = plt.subplots(1, len(norms), figsize=(4.2 * len(norms), 3.6), dpi=120,
                             squeeze=False, sharey=True)
    for ax, norm in zip(axes[0], norms):
        points = curves.get(norm, {})
        eps = sorted(points)
        ax.plot(eps, [100 * points[e] for e in eps], marker="o")
        ax.set_xlabel(f"{norm} radius eps")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy under attack (%)")
    fig.suptitle("Accuracy against the attack radius")
    return save_figure(fig, path)
