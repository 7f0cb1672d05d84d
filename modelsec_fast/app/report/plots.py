"""The demo's report: report.json (everything), report.md (for people) and PNG plots.

Plots (matplotlib, Agg backend, so no display is needed):

* ``accuracy_vs_eps.png``: accuracy under the worst-case attack against the
  L-infinity radius eps (pixel space), one line per model; eps = 0 is clean.
* ``epsilon_vs_steps.png``: the accountant's DP epsilon against DP-SGD steps.
* ``mi_roc.png``: membership-inference ROC curves on log-log axes (the low-FPR
  regime is what matters, Carlini et al. 2022), one per model and attack.
"""

from __future__ import annotations

import json
import math
import os

__all__ = ["plot_accuracy_vs_eps", "plot_epsilon_vs_steps", "plot_mi_roc", "write_report",
           "markdown_report", "strict_json"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str) -> str:
    """Write ``fig`` as a PNG at ``path``, free it, and return ``path``."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_vs_eps(curves: dict[str, dict[float, float]], path: str) -> str:
    """``curves[model][eps] = accuracy in [0, 1]``; writes a PNG and returns its path."""
    plt = _pyplot()
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
    return _save(plt, fig, path)


def plot_epsilon_vs_steps(curves: dict[str, list[tuple[int, float]]], path: str) -> str:
    """``curves[model] = [(steps, epsilon), ...]``; writes a PNG and returns its path."""
    plt = _pyplot()
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
    return _save(plt, fig, path)


def plot_mi_roc(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: str) -> str:
    """``curves[model][attack] = (fpr, tpr)``: one log-log ROC panel per model."""
    plt = _pyplot()
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
    return _save(plt, fig, path)


def _pct(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * v:.1f}%"


def _fmt_tpr(v) -> str:
    return "not measurable" if v is None else f"{100 * v:.2f}%"


def markdown_report(report: dict) -> str:
    """Render the report dict (as written to report.json) as Markdown."""
    s = report["settings"]
    lines = [
        "# modelsec-fast report",
        "",
        f"Created {report['created_utc']} by `{report['command']}` (modelsec_fast "
        f"{report['version']}).",
        "",
        "## Settings",
        "",
        f"- data: {s['data']}",
        f"- membership: each of the {s['pool_size']} training-pool examples was included by an "
        f"independent fair coin ({s['members']} members, {s['pool_size'] - s['members']} "
        "non-members); the same members train every model",
        f"- test set for accuracy: {s['test_size']} examples",
        f"- attacks: {', '.join(s['attacks'])} (L-inf, worst case per example; "
        f"{s.get('attack_steps', '?')} steps for PGD and APGD), eps grid "
        f"{', '.join(f'{e:g}' for e in s['eps_grid'])}",
        f"- shadow models per audited model (LiRA): {s['shadow_models']}",
        f"- seed: {s['seed']}{'; quick mode' if s.get('quick') else ''}",
        "",
        "## Models",
        "",
        "| model | recipe | clean acc. | robust acc. at eps " f"{s['headline_eps']:g} | DP epsilon "
        "| train time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, m in report["models"].items():
        eps = m.get("privacy", {}) or {}
        dp = f"{eps['epsilon']:.2f} (delta {eps['delta']:g})" if eps else "none"
        lines.append(f"| {name} | {m['recipe_text']} | {_pct(m['clean_accuracy'])} | "
                     f"{_pct(m['robust_accuracy'].get(str(s['headline_eps'])))} | {dp} | "
                     f"{m['train_time_s']:.1f} s |")
    lines += ["", "![accuracy vs eps](accuracy_vs_eps.png)", "",
              "## Privacy: the accountant", ""]
    for name, m in report["models"].items():
        if m.get("privacy"):
            p = m["privacy"]
            lines.append(f"- {name}: epsilon = {p['epsilon']:.3f} at delta = {p['delta']:g} "
                         f"({p['accountant']} accountant; noise multiplier "
                         f"{p['noise_multiplier']:.3f}, sample rate {p['sample_rate']:.4f}, "
                         f"{p['steps']} steps, clipping bound {p['max_grad_norm']:g})")
    lines += ["", "![epsilon vs steps](epsilon_vs_steps.png)", "",
              "## Privacy: what an attacker can infer", "",
              "Membership inference on the training pool (members vs. non-members): the "
              "loss-threshold attack and LiRA (Carlini et al. 2022) with shadow models. "
              "Higher AUC and TPR at low FPR mean more leakage; a perfectly private model "
              "sits on the diagonal. Membership was a fair coin per record, so an empirical "
              "epsilon lower bound is valid: Clopper-Pearson on half of the records, the "
              "threshold chosen on the other half, jointly at 95% over the attacks "
              "(Bonferroni). A DP model's bound must stay below its accountant's epsilon.", ""]
    for name, m in report["models"].items():
        mi = m.get("membership")
        if not mi:
            continue
        bounds = {b["attack"]: b["epsilon_lower_bound"]
                  for b in mi.get("epsilon_lower_bounds") or []}
        head = "| attack | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR |"
        rule = "|---|---:|---:|---:|"
        if bounds:
            head, rule = head + " epsilon lower bound |", rule + "---:|"
        lines += [f"### {name}", "", head, rule]
        for a in mi["attacks"]:
            row = (f"| {a['attack']} | {a['auc']:.4f} | {_fmt_tpr(a['tpr_at_fpr']['0.01'])}"
                   f" | {_fmt_tpr(a['tpr_at_fpr']['0.001'])} |")
            if bounds:
                row += f" {bounds[a['attack']]:.3f} |"
            lines.append(row)
        lines.append("")
        for note in mi.get("notes", []):
            lines.append(f"- note: {note}")
        lines.append("")
    lines += ["![membership inference ROC](mi_roc.png)", ""]
    canary = report.get("canary_audit")
    if canary:
        lines += ["## One-run canary audit of DP-SGD", "",
                  f"Steinke, Nasr and Jagielski (2023): m = {canary['m']} white-box Dirac "
                  f"gradient canaries, each included by a fair coin; r = {canary['r']} guesses, "
                  f"{canary['correct']} correct; beta = {canary['beta']:g}.",
                  "",
                  f"Certified lower bound: epsilon >= {canary['epsilon_lower_bound']:.3f}; the "
                  f"accountant claims {canary['claimed_epsilon']:.3f} (delta {canary['delta']:g}). "
                  + ("The bound EXCEEDS the claim: the DP-SGD implementation is broken."
                     if canary["detected_violation"] else
                     "The bound stays below the claim, as it must for a correct implementation."),
                  ""]
    for warning in report.get("warnings", []):
        lines.append(f"- warning: {warning}")
    return "\n".join(lines).rstrip() + "\n"


def _json_default(o):
    """Tensors and numpy values as (nested) lists or numbers; floats, NaN included,
    never reach here (json writes them itself, and :func:`_clean` nulls NaN/inf)."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """Replace NaN/inf by None so report.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def strict_json(obj, indent: int = 2) -> str:
    """JSON text of ``obj`` (tensors/arrays as lists, NaN/inf as null), always parseable."""
    return json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))),
                      indent=indent, allow_nan=False)


def write_report(out_dir: str, report: dict) -> dict[str, str]:
    """Write report.json and report.md into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"),
             "markdown": os.path.join(out_dir, "report.md")}
    text = strict_json(report)
    with open(paths["json"], "w") as f:
        f.write(text + "\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(json.loads(text)))
    return paths
