"""The demo pipeline behind ``modelsec-fast demo``.

:func:`run_demo` trains a baseline, a DP-SGD model and an adversarially trained
model on one dataset, attacks each (FGSM, PGD, APGD) over a grid of L-inf radii,
runs the membership-inference audit (loss threshold and LiRA with shadow models),
the one-run canary audit of the DP-SGD recipe, measures each model's distances to
the decision boundary with minimum-norm attacks (CW, DeepFool; SPSA and HopSkipJump,
which read no gradient, check them for masking), runs the poisoning
review (a BadNets victim, its detection and repair, DP-SGD as a defence), model
stealing and gradient inversion, and writes the report
(``report.md``, ``report.json`` and PNG plots), one section per analysis. The
sizes it uses are fixed in :data:`DEMO_SETTINGS` and printed in the report.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from modelsec_fast.validation import check_choice, check_in_range, check_int, check_positive

from .recipe import ADV_METHODS, TrainingRecipe
from .report import ReportFiles, ReportMeta, Section, SkippedSection, build_section, write_report
from .robustness import DEFAULT_ATTACKS
from .sections import (AccountantSection, CanaryAuditSection, InversionSection,
                       MembershipSection, MinimumNormSection, ModelsSection, PoisoningSection,
                       RobustnessSection, SettingsSection, StealingSection, TrainingSummary)

__all__ = ["DEMO_SETTINGS", "HEADLINE_EPS", "run_demo"]

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
    # Minimum-norm attacks: test examples attacked, CW's Adam steps per binary-search step.
    "min_norm": ((1000, 100), (128, 100)),
    # Query-based attacks (SPSA, HopSkipJump): test examples attacked, queries per example.
    "query_attacks": ((200, 2000), (32, 500)),
    # The poisoning review's ReviewSizes (its victims are small_cnn whatever the model);
    # quick mode skips its DP-SGD sweep (dozens of private trainings).
    "poisoning": (dict(epochs=20, strip_copies=20, nc_epochs=20, sweep_ks=(1, 10),
                       sweep_epsilons=(1.0, 8.0, math.inf), sweep_seeds=5, sweep_epochs=5),
                  dict(epochs=8, strip_copies=10, nc_epochs=10, sweep_ks=(1,),
                       sweep_epsilons=(1.0, math.inf), sweep_seeds=2, sweep_epochs=1)),
    "poisoning_sweep": (True, False),
    # Model stealing: the thief's query budgets and training (epochs, batch, least
    # steps); gradient inversion: images reconstructed, iDLG's iterations (non-MLPs).
    "query_budgets": ((50, 200, 600), (100, 400)),
    "thief_training": ((20, 64, 300), (10, 128, 40)),
    "inversion_images": (8, 6),
    "inversion_iterations": (100, 30),
}
HEADLINE_EPS = 0.1  # the adversarial-training radius and the log's headline eps
MIN_NORM_L2_RADII = (0.25, 0.5, 1.0)  # L2 radii the minimum-norm section reads off
TITLE = "modelsec-fast report"


def run_demo(*, data: str = "digits", out: str = "report", quick: bool = False,
             target_epsilon: float = 4.0, delta: float = 1e-5, adv: str = "fgsm_rs",
             shadows: int | None = None, model: str = "mlp", seed: int = 0,
             device: str = "cpu", progress: bool = True,
             log: Callable[[str], None] | None = None,
             command: str = "modelsec-fast demo", raise_errors: bool = False) -> ReportFiles:
    """Train, attack and audit three models on ``data``; write the report into ``out``.

    Args:
        data: "digits", "fashion-mnist", an IDX folder or an ``.npz`` (see
            :func:`modelsec_fast.data.load_dataset`); capped at a seeded subset of
            ``DEMO_SETTINGS["max_sizes"]`` records.
        quick: the smaller settings of :data:`DEMO_SETTINGS` (a first look, and the tests).
        target_epsilon, delta: the DP-SGD model's (epsilon, delta) target.
        adv: adversarial-training method ("fgsm_rs", "pgd", "trades", "free"), L-inf
            radius :data:`HEADLINE_EPS` in pixel space.
        shadows: LiRA shadow models per audited model (default from the settings).
        log: called with each progress line (default: silent).
        command: the command line recorded in the report.
        raise_errors: let an analysis's error through instead of reporting it as
            that section's failure.
    Returns:
        the written files, with the keys of any section that failed (the report
        says why, in its place).
    Raises:
        ValueError: an unknown model or method, ``target_epsilon <= 0``, ``delta``
            outside (0, 1), ``shadows < 2``; ``DataError`` (a ``ValueError``) for
            missing or corrupt data. All before any work.
    """
    from modelsec_fast.data import load_dataset
    from modelsec_fast.models import check_model_name

    from .audits import membership_split

    log = log or (lambda message: None)
    check_model_name(model)
    check_positive("target_epsilon", target_epsilon)
    check_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
    check_choice("adv", adv, ADV_METHODS)
    setting = {k: v[1 if quick else 0] for k, v in DEMO_SETTINGS.items()}
    shadows = check_int("shadows", setting["shadows"] if shadows is None else shadows, 2)
    meta = ReportMeta.now(command)
    started = time.perf_counter()
    ds = load_dataset(data, seed=seed)
    pool, test = setting["max_sizes"]
    if len(ds.y_train) > pool or len(ds.y_test) > test:
        ds = load_dataset(data, train_size=min(pool, len(ds.y_train)),
                          test_size=min(test, len(ds.y_test)), seed=seed)
    mask = membership_split(len(ds.y_train), "coin", seed)
    run = _DemoRun(ds=ds, mask=mask, setting=setting, shadows=shadows, delta=delta,
                   model=model, seed=seed, device=device, progress=progress, log=log,
                   raise_errors=raise_errors)
    recipes = {
        "baseline": TrainingRecipe(model=model, epochs=setting["epochs"]),
        f"DP-SGD (target eps {target_epsilon:g})": TrainingRecipe(
            model=model, epochs=setting["dp_epochs"], lr=2e-3, dp=True,
            target_epsilon=target_epsilon, delta=delta, max_grad_norm=1.0),
        f"adversarial ({adv}, eps {HEADLINE_EPS:g})": TrainingRecipe(
            model=model, epochs=setting["adv_epochs"], adv=adv, adv_eps=HEADLINE_EPS,
            adv_steps=5),
    }
    audited = [label for label, key in zip(recipes, ("baseline", "dp", "adv"))
               if key in setting["audited"]]
    log(f"demo: {ds.describe()}; {int(mask.sum())} of {len(mask)} training-pool records "
        f"are members (fair coin); {shadows} shadow models per audited model"
        f"{'; quick mode' if quick else ''}")
    sections: list[Section] = [run.settings_section(quick, audited)]
    trained = run.train(recipes)
    sections.append(run.models_section(trained))
    sections.append(build_section(RobustnessSection.key, RobustnessSection.title,
                                  lambda: run.robustness_section(trained),
                                  raise_errors=raise_errors))
    sections.append(build_section(MinimumNormSection.key, MinimumNormSection.title,
                                  lambda: run.minimum_norm_section(trained),
                                  raise_errors=raise_errors))
    sections.append(run.accountant_section(trained))
    sections.append(build_section(MembershipSection.key, MembershipSection.title,
                                  lambda: run.membership_section(trained, audited),
                                  raise_errors=raise_errors))
    sections.append(run.canary_section(trained))
    sections.append(build_section(PoisoningSection.key, PoisoningSection.title,
                                  run.poisoning_section, raise_errors=raise_errors))
    sections.append(build_section(StealingSection.key, StealingSection.title,
                                  lambda: run.stealing_section(trained),
                                  raise_errors=raise_errors))
    sections.append(build_section(InversionSection.key, InversionSection.title,
                                  lambda: run.inversion_section(trained),
                                  raise_errors=raise_errors))
    meta.total_time_s = time.perf_counter() - started
    files = write_report(out, TITLE, meta, sections, raise_errors=raise_errors)
    log(f"report: {files.markdown} ({meta.total_time_s:.0f} s)")
    return files


class _DemoRun:
    """The demo's stages, sharing its data, members and settings."""

    def __init__(self, *, ds, mask, setting, shadows, delta, model, seed, device, progress,
                 log, raise_errors):
        self.ds, self.mask, self.setting, self.shadows = ds, mask, setting, shadows
        self.delta, self.model, self.seed, self.device = delta, model, seed, device
        self.progress, self.log, self.raise_errors = progress, log, raise_errors
        self.x, self.y = ds.x_train[mask], ds.y_train[mask]
        self.x_test, self.y_test = ds.x_test.to(device), ds.y_test.to(device)

    def settings_section(self, quick: bool, audited: list[str]):
        s, ds, mask = self.setting, self.ds, self.mask
        members = int(mask.sum())
        settings = {
            "data": ds.describe(), "pool_size": len(mask), "members": members,
            "test_size": len(ds.y_test), "attacks": list(DEFAULT_ATTACKS),
            "attack_steps": s["attack_steps"], "eps_grid": list(s["eps_grid"]),
            "headline_eps": HEADLINE_EPS, "shadow_models": self.shadows, "seed": self.seed,
            "quick": quick, "audited_models": audited,
        }
        lines = [
            f"data: {ds.describe()}",
            f"membership: each of the {len(mask)} training-pool examples was included by an "
            f"independent fair coin ({members} members, {len(mask) - members} non-members); "
            "the same members train every model",
            f"test set for accuracy: {len(ds.y_test)} examples",
            f"attacks: {', '.join(DEFAULT_ATTACKS)} (L-inf, worst case per example; "
            f"{s['attack_steps']} steps for PGD and APGD), eps grid "
            f"{', '.join(f'{e:g}' for e in s['eps_grid'])}",
            f"shadow models per audited model (LiRA): {self.shadows}",
            f"seed: {self.seed}{'; quick mode' if quick else ''}",
        ]
        return SettingsSection(settings, lines)

    def train(self, recipes: dict[str, TrainingRecipe]) -> dict:
        """label -> :class:`~modelsec_fast.app.training.TrainedModel` for every recipe."""
        from .training import train_model

        trained = {}
        for label, recipe in recipes.items():
            self.log(f"[{label}] training: {recipe.describe()}")
            trained[label] = result = train_model(
                recipe, self.x, self.y, num_classes=self.ds.num_classes, seed=self.seed,
                progress=self.progress, device=self.device)
            self.log(f"[{label}] trained in {result.seconds:.0f} s"
                     + (f", DP eps {result.privacy['epsilon']:.2f}" if result.privacy else ""))
        return trained

    def models_section(self, trained: dict):
        from .training import evaluate_accuracy

        return ModelsSection({
            label: TrainingSummary(recipe=t.recipe, train_time_s=t.seconds,
                                   clean_accuracy=evaluate_accuracy(t.model, self.x_test,
                                                                    self.y_test),
                                   history=t.history, privacy=t.privacy)
            for label, t in trained.items()})

    def robustness_section(self, trained: dict):
        from .robustness import robust_curve

        grid, curves = self.setting["eps_grid"], {}
        for label, t in trained.items():
            self.log(f"[{label}] attacking ({', '.join(DEFAULT_ATTACKS)}) at eps "
                     f"{', '.join(f'{e:g}' for e in grid)}")
            curves[label] = curve = robust_curve(t.model, self.x_test, self.y_test, grid,
                                                 steps=self.setting["attack_steps"],
                                                 seed=self.seed)
            headline = curve.robust_accuracy.get(HEADLINE_EPS)
            self.log(f"[{label}] clean {100 * curve.clean_accuracy:.1f}%"
                     + (f", robust at eps {HEADLINE_EPS:g}: {100 * headline:.1f}%"
                        if headline is not None else ""))
        return RobustnessSection(curves, attacks=DEFAULT_ATTACKS,
                                 steps=self.setting["attack_steps"], eps_grid=grid,
                                 n_test=len(self.y_test))

    def accountant_section(self, trained: dict):
        dp_runs = {label: t.privacy for label, t in trained.items() if t.privacy}
        if not dp_runs:
            return SkippedSection(AccountantSection.key, AccountantSection.title,
                                  "no model was trained with DP-SGD")
        return AccountantSection(dp_runs)

    def membership_section(self, trained: dict, audited: list[str]):
        from modelsec_fast.audit.membership import membership_audit

        from .training import shadow_trainer

        audits = {}
        for label in audited:
            t = trained[label]
            self.log(f"[{label}] membership audit with {self.shadows} shadow models")
            audits[label] = membership_audit(
                t.model, self.ds.x_train, self.ds.y_train, self.mask,
                train_fn=shadow_trainer(t.recipe, t.privacy, self.ds.num_classes, self.device),
                num_shadow=self.shadows, design="coin_flip", delta=self.delta, seed=self.seed,
                progress=self.progress)
        skipped = {label: "quick mode audits fewer models" for label in trained
                   if label not in audited}
        return MembershipSection(audits, not_audited=skipped)

    def canary_section(self, trained: dict):
        dp = [(label, t) for label, t in trained.items() if t.privacy]
        key, title = CanaryAuditSection.key, CanaryAuditSection.title
        if not dp:
            return SkippedSection(key, title, "no model was trained with DP-SGD")
        label, t = dp[0]

        def audit():
            from .audits import replay_canary_audit

            self.log(f"[{label}] one-run canary audit ({self.setting['canary_m']} canaries)")
            result = replay_canary_audit(t.privacy, self.x, self.y,
                                         num_classes=self.ds.num_classes, model=self.model,
                                         seed=self.seed, m=self.setting["canary_m"],
                                         r=self.setting["canary_r"])
            self.log(result.summary())
            return CanaryAuditSection(result, label)

        return build_section(key, title, audit, raise_errors=self.raise_errors)

    def minimum_norm_section(self, trained: dict):
        from .scan.minimum_norm import (describe_attacks, describe_query_attacks,
                                        minimum_norm_results, query_attack_results)

        n, cw_steps = self.setting["min_norm"]
        x, y = self.x_test[:n], self.y_test[:n]
        n_query, queries = self.setting["query_attacks"]
        n_query = min(n_query, n)  # the first examples of the same set, to compare with
        results, score_based, decision_based = {}, {}, {}
        for label, t in trained.items():
            self.log(f"[{label}] minimum-norm attacks (CW-L2, DeepFool) on {len(y)} examples; "
                     f"SPSA and HopSkipJump ({queries} queries) on {n_query}")
            results[label] = minimum_norm_results(t.model, x, y, cw_steps=cw_steps)
            score_based[label], decision_based[label] = query_attack_results(
                t.model, x[:n_query], y[:n_query], eps_linf=HEADLINE_EPS, max_queries=queries,
                seed=self.seed)
        grid = {"L2": MIN_NORM_L2_RADII, "Linf": [e for e in self.setting["eps_grid"] if e > 0]}
        return MinimumNormSection(results, eps_grid=grid, n_examples=len(y),
                                  method=describe_attacks(cw_steps) + " "
                                  + describe_query_attacks(queries), score_based=score_based,
                                  decision_based=decision_based, max_queries=queries)

    def poisoning_section(self):
        from modelsec_fast.poisoning import ReviewSizes, poisoning_review

        sizes, sweep = ReviewSizes(**self.setting["poisoning"]), self.setting["poisoning_sweep"]
        self.log(f"[poisoning] BadNets victim (small_cnn, {sizes.epochs} epochs), detectors, "
                 "STRIP, Neural Cleanse, mitigations"
                 + (f", DP-SGD sweep ({sizes.sweep_seeds} seeds)" if sweep else ""))
        review = poisoning_review(self.ds, model="small_cnn", seed=self.seed, sizes=sizes,
                                  device=self.device, dp_sweep=sweep, progress=self.log)
        return PoisoningSection(review, sweep_skipped=None if sweep else (
            "quick mode: the full demo runs it"))

    def stealing_section(self, trained: dict):
        """KnockoffNets against the baseline, with and without each output defence, from
        the non-members (the attacker's pool); PRADA; dataset inference on the copy."""
        from modelsec_fast.models import build_model
        from modelsec_fast.stealing import ThiefTraining

        from .scan.extraction import measure_stealing

        label, t = next(iter(trained.items()))
        pool = ~self.mask
        shape = tuple(self.ds.x_train.shape[1:])

        def make_thief():
            return build_model(self.model, shape, self.ds.num_classes).to(self.device)

        epochs, batch, steps = self.setting["thief_training"]
        return measure_stealing(
            t.model, pool_x=self.ds.x_train[pool].to(self.device), held_x=self.x_test,
            held_y=self.y_test, make_thief=make_thief,
            thief=f"a fresh {self.model}, the {label} model's architecture",
            budgets=self.setting["query_budgets"],
            training=ThiefTraining(epochs=epochs, batch_size=batch, min_steps=steps),
            private=(self.x.to(self.device), self.y.to(self.device)),
            independent_data=(self.ds.x_train[pool].to(self.device),
                              self.ds.y_train[pool].to(self.device)),
            jacobian_queries=max(self.setting["query_budgets"]), seed=self.seed, log=self.log)

    def inversion_section(self, trained: dict):
        """Gradient inversion of one-image updates of the baseline, plain and at DP noise
        multipliers (the DP-SGD model's own among them)."""
        from .scan.inversion import NOISE_MULTIPLIERS, measure_inversion

        label, t = next(iter(trained.items()))
        sigmas = set(NOISE_MULTIPLIERS)
        sigmas.update(round(float(m.privacy["noise_multiplier"]), 3)
                      for m in trained.values() if m.privacy)
        return measure_inversion(t.model, self.x_test, self.y_test,
                                 model_label=f"the {label} model",
                                 iterations=self.setting["inversion_iterations"],
                                 noise_multipliers=sorted(sigmas),
                                 images=self.setting["inversion_images"], seed=self.seed,
                                 log=self.log)
