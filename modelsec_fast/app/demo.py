"""The demo pipeline behind ``modelsec-fast demo``, and the evaluation pieces it
shares with the CLI's ``evaluate`` and ``audit`` commands.

:func:`run_demo` trains a baseline, a DP-SGD model and an adversarially trained
model on one dataset, attacks each (FGSM, PGD, APGD) over a grid of L-inf radii,
runs the membership-inference audit (loss threshold and LiRA with shadow models)
and the one-run canary audit of the DP-SGD recipe, and writes ``report.md``,
``report.json`` and PNG plots. The sizes it uses are fixed in
:data:`DEMO_SETTINGS` and printed in the report.

Bad input raises ``ValueError`` (``DataError`` for data); the CLI prints it as
one line and exits with status 2.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Callable

__all__ = ["DEFAULT_ATTACKS", "DEMO_SETTINGS", "check_model_name", "make_attack",
           "membership_split", "robust_curve", "run_demo", "shadow_trainer",
           "whole_batches_rate"]

DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd")

# Fixed sizes, printed in the report: (full, quick).
DEMO_SETTINGS = {
    "epochs": (30, 12),
    "dp_epochs": (30, 12),
    "adv_epochs": (15, 6),
    "shadows": (16, 8),
    "eps_grid": ((0.0, 0.05, 0.1, 0.15, 0.2, 0.3), (0.0, 0.1, 0.2)),
    "attack_steps": (20, 10),
    "canary_m": (1000, 400),
    "canary_r": (200, 100),
    "audited": (("baseline", "dp", "adv"), ("baseline", "dp")),
    # Caps on (training pool, test set): a fixed seeded subset of larger data.
    "max_sizes": ((4000, 1000), (1000, 300)),
}
HEADLINE_EPS = 0.1  # the adversarial-training radius and the report's headline eps


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` naming the known architectures if ``name`` is not one."""
    from modelsec_fast.models import model_names

    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")


def membership_split(num: int, mode: str, seed: int):
    """bool ``(num,)`` member mask: an independent fair coin per record ("coin"), or
    everyone ("all"). A coin split of ``num >= 2`` records always has at least one
    member and one non-member."""
    import torch

    if mode == "all":
        return torch.ones(num, dtype=torch.bool)
    gen = torch.Generator().manual_seed(10_007 + seed)
    mask = torch.rand(num, generator=gen) < 0.5
    if mask.all() or not mask.any():  # only possible for tiny pools
        mask[0] = not mask[0]
    return mask


# ----------------------------------------------------------------------------- robust evaluation
def make_attack(name: str, model, eps: float, steps: int, seed: int):
    """The L-inf attack ``name`` ("fgsm", "pgd" or "apgd") at radius ``eps`` (pixel space).

    PGD uses step size 2.5 * eps / steps with a random start. Raises ``ValueError``
    for an unknown name.
    """
    from modelsec_fast import attacks

    if name == "fgsm":
        return attacks.FGSM(model, eps=eps)
    if name == "pgd":
        return attacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                           random_start=True)
    if name == "apgd":
        return attacks.APGD(model, eps=eps, steps=steps, seed=seed)
    raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(DEFAULT_ATTACKS)}")


def robust_curve(model, x, y, eps_grid, *, attacks=DEFAULT_ATTACKS, steps: int = 10,
                 seed: int = 0, batch_size: int = 512, keep_adversarial: bool = False) -> dict:
    """Accuracy under the per-example worst case of ``attacks`` at each L-inf eps.

    Args:
        x, y: float32 (N, C, H, W) in [0, 1], int64 (N,).
        eps_grid: radii in pixel space; eps 0 is clean accuracy.
    Returns:
        ``{"clean_accuracy": a, "robust_accuracy": {eps: acc}, "per_attack": {eps:
        {attack: acc}}, "warnings": [...], "adversarial": {eps: tensor}?}`` with
        accuracies in [0, 1] (keys are ``str(eps)``).
    """
    import torch

    from modelsec_fast.evaluate import robust_accuracy

    torch.manual_seed(seed)
    out = {"robust_accuracy": {}, "per_attack": {}, "warnings": [], "adversarial": {}}
    clean = None
    for eps in eps_grid:
        if eps == 0:
            continue
        atks = [make_attack(a, model, eps, steps, seed) for a in attacks]
        result = robust_accuracy(model, (x, y), attacks=atks, batch_size=batch_size,
                                 progress=False, seed=seed,
                                 return_adversarial=keep_adversarial)
        clean = result.clean_accuracy
        out["robust_accuracy"][str(eps)] = float(result.robust_accuracy)
        # Each attack's figure is the cumulative worst case after it ran.
        out["per_attack"][str(eps)] = {name: float(rec.robust_accuracy)
                                       for name, rec in result.per_attack.items()}
        out["warnings"] += [f"eps {eps:g}: {w}" for w in result.warnings]
        if keep_adversarial and result.adversarial is not None:
            out["adversarial"][str(eps)] = result.adversarial
    if clean is None:
        from modelsec_fast.audit.recipe import evaluate_accuracy
        clean = evaluate_accuracy(model, x, y)
    out["clean_accuracy"] = float(clean)
    if 0 in eps_grid:
        out["robust_accuracy"]["0.0"] = float(clean)
    if not keep_adversarial:
        out.pop("adversarial")
    return out


def shadow_trainer(recipe, privacy: dict | None, num_classes: int, device="cpu"):
    """``train_fn(x, y, seed) -> model`` replaying the target's recipe for LiRA's shadows
    (a target-epsilon DP recipe is pinned to the target's noise multiplier)."""
    from modelsec_fast.audit.recipe import replay_recipe, train_model

    replay = replay_recipe(recipe, privacy)

    def train_fn(x, y, seed):
        return train_model(replay, x, y, num_classes=num_classes, seed=seed, device=device,
                           track_privacy=False).model

    return train_fn


def whole_batches_rate(sample_rate: float) -> float:
    """The canary audit replays a recipe with a whole number of batches per epoch:
    ``1 / round(1 / q)`` (at least one batch)."""
    return 1.0 / max(1, round(1.0 / sample_rate))


# ----------------------------------------------------------------------------- the demo
def run_demo(*, data: str = "digits", out: str = "report", quick: bool = False,
             target_epsilon: float = 4.0, delta: float = 1e-5, adv: str = "fgsm_rs",
             shadows: int | None = None, model: str = "mlp", seed: int = 0,
             device: str = "cpu", progress: bool = True,
             log: Callable[[str], None] | None = None,
             command: str = "modelsec-fast demo") -> tuple[dict, dict[str, str]]:
    """Train, attack and audit three models on ``data``; write the report into ``out``.

    Args:
        data: "digits", "fashion-mnist", an IDX folder or an ``.npz`` (see
            :func:`modelsec_fast.data.load_dataset`); capped at a seeded subset of
            ``DEMO_SETTINGS["max_sizes"]`` records.
        quick: the smaller settings of :data:`DEMO_SETTINGS` (under a minute on 2 cores).
        target_epsilon, delta: the DP-SGD model's (epsilon, delta) target.
        adv: adversarial-training method ("fgsm_rs", "pgd", "trades", "free"), L-inf
            radius :data:`HEADLINE_EPS` in pixel space.
        shadows: LiRA shadow models per audited model (default from the settings).
        log: called with each progress line (default: silent).
        command: the command line recorded in the report.
    Returns:
        ``(report, paths)``: the report dict (as written to ``report.json``) and the
        paths of the written files (``paths["markdown"]``, ...).
    Raises:
        ValueError: unknown model, ``target_epsilon <= 0``, ``shadows < 2``;
        ``DataError`` (a ``ValueError``) for missing or corrupt data.
    """
    from modelsec_fast import __version__
    from modelsec_fast.audit.canary import canary_audit_dp_sgd
    from modelsec_fast.audit.membership import membership_audit
    from modelsec_fast.audit.recipe import TrainingRecipe, train_model
    from modelsec_fast.data import load_dataset
    from modelsec_fast.report import (plot_accuracy_vs_eps, plot_epsilon_vs_steps, plot_mi_roc,
                                      write_report)

    log = log or (lambda message: None)
    check_model_name(model)
    if not target_epsilon > 0:
        raise ValueError(f"--target-epsilon must be > 0, got {target_epsilon}")
    setting = {k: v[1 if quick else 0] for k, v in DEMO_SETTINGS.items()}
    shadows = shadows or setting["shadows"]
    if shadows < 2:
        raise ValueError("--shadows must be >= 2")
    ds = load_dataset(data, seed=seed)
    pool, test = setting["max_sizes"]
    if len(ds.y_train) > pool or len(ds.y_test) > test:
        ds = load_dataset(data, train_size=min(pool, len(ds.y_train)),
                          test_size=min(test, len(ds.y_test)), seed=seed)
    mask = membership_split(len(ds.y_train), "coin", seed)
    x, y = ds.x_train[mask], ds.y_train[mask]
    x_test, y_test = ds.x_test.to(device), ds.y_test.to(device)
    adv_eps = HEADLINE_EPS
    recipes = {
        "baseline": TrainingRecipe(model=model, epochs=setting["epochs"]),
        "dp": TrainingRecipe(model=model, epochs=setting["dp_epochs"], lr=2e-3, dp=True,
                             target_epsilon=target_epsilon, delta=delta, max_grad_norm=1.0),
        "adv": TrainingRecipe(model=model, epochs=setting["adv_epochs"], adv=adv,
                              adv_eps=adv_eps, adv_steps=5),
    }
    labels = {"baseline": "baseline", "dp": f"DP-SGD (target eps {target_epsilon:g})",
              "adv": f"adversarial ({adv}, eps {adv_eps:g})"}
    log(f"demo: {ds.describe()}; {int(mask.sum())} of {len(mask)} training-pool records "
        f"are members (fair coin); {shadows} shadow models per audited model"
        f"{'; quick mode' if quick else ''}")
    report = {
        "tool": "modelsec-fast", "version": __version__, "command": command,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "data": ds.describe(), "pool_size": len(mask), "members": int(mask.sum()),
            "test_size": len(ds.y_test), "attacks": list(DEFAULT_ATTACKS),
            "attack_steps": setting["attack_steps"], "eps_grid": list(setting["eps_grid"]),
            "headline_eps": adv_eps, "shadow_models": shadows, "seed": seed,
            "quick": quick, "audited_models": [labels[k] for k in setting["audited"]],
        },
        "models": {}, "warnings": [],
    }
    roc_curves, eps_curves, acc_curves = {}, {}, {}
    dp_privacy, started_all = None, time.perf_counter()
    for key, recipe in recipes.items():
        label = labels[key]
        log(f"[{label}] training: {recipe.describe()}")
        started = time.perf_counter()
        trained = train_model(recipe, x, y, num_classes=ds.num_classes, seed=seed,
                              progress=progress, device=device)
        train_time = time.perf_counter() - started
        log(f"[{label}] attacking ({', '.join(DEFAULT_ATTACKS)}) at eps "
            f"{', '.join(f'{e:g}' for e in setting['eps_grid'])}")
        curve = robust_curve(trained.model, x_test, y_test, setting["eps_grid"],
                             steps=setting["attack_steps"], seed=seed)
        entry = {"recipe": recipe.to_dict(), "recipe_text": recipe.describe(),
                 "train_time_s": train_time, "history": trained.history,
                 "privacy": trained.privacy, **curve}
        acc_curves[label] = {float(e): a for e, a in curve["robust_accuracy"].items()}
        report["warnings"] += [f"{label}: {w}" for w in curve["warnings"]]
        if trained.privacy:
            dp_privacy = trained.privacy
            eps_curves[label] = trained.privacy["epsilon_curve"]
        if key in setting["audited"]:
            log(f"[{label}] membership audit with {shadows} shadow models")
            audit = membership_audit(
                trained.model, ds.x_train, ds.y_train, mask,
                train_fn=shadow_trainer(recipe, trained.privacy, ds.num_classes, device),
                num_shadow=shadows, design="coin_flip", delta=delta, seed=seed,
                progress=progress)
            entry["membership"] = audit.to_dict()
            roc_curves[label] = {a.name: (a.fpr.tolist(), a.tpr.tolist())
                                 for a in audit.attacks}
        report["models"][label] = entry
        log(f"[{label}] clean {100 * curve['clean_accuracy']:.1f}%, robust at eps "
            f"{adv_eps:g}: {100 * curve['robust_accuracy'][str(adv_eps)]:.1f}%"
            + (f", DP eps {trained.privacy['epsilon']:.2f}" if trained.privacy else "")
            + f" ({time.perf_counter() - started:.0f} s)")
    if dp_privacy is not None:
        log(f"[{labels['dp']}] one-run canary audit ({setting['canary_m']} canaries)")
        canary = canary_audit_dp_sgd(
            x=x, y=y, num_classes=ds.num_classes,
            noise_multiplier=dp_privacy["noise_multiplier"],
            max_grad_norm=dp_privacy["max_grad_norm"],
            sample_rate=whole_batches_rate(dp_privacy["sample_rate"]),
            steps=dp_privacy["steps"], delta=delta, accountant=dp_privacy["accountant"],
            m=setting["canary_m"], r=setting["canary_r"], model=model, seed=seed)
        report["canary_audit"] = canary.to_dict() | {"summary": canary.summary()}
        log(canary.summary())
    os.makedirs(out, exist_ok=True)
    report["plots"] = {
        "accuracy_vs_eps": plot_accuracy_vs_eps(acc_curves,
                                                os.path.join(out, "accuracy_vs_eps.png")),
        "epsilon_vs_steps": plot_epsilon_vs_steps(eps_curves,
                                                  os.path.join(out, "epsilon_vs_steps.png")),
        "mi_roc": plot_mi_roc(roc_curves, os.path.join(out, "mi_roc.png")),
    }
    report["total_time_s"] = time.perf_counter() - started_all
    paths = write_report(out, report)
    log(f"report: {paths['markdown']} ({report['total_time_s']:.0f} s)")
    return report, paths
