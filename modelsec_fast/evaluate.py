"""Robust accuracy as the per-sample worst case over a list of attacks (AutoAttack's rule).

    from modelsec_fast.evaluate import robust_accuracy
    result = robust_accuracy(model, (x_test, y_test), attacks="standard", eps=8/255)
    print(result)               # a table: clean, after each attack, warnings
    result.to_json("robust.json")

What it does, per chunk of at most ``batch_size`` samples:

1. checks that the images lie in [0, 1] pixel space (after un-normalising),
   then classifies them; only correctly classified ones are attacked;
2. runs each attack in order on the samples still robust, stopping each
   sample as soon as it is broken (:meth:`Attack.run_for_evaluation`); attacks
   with a random start are repeated ``restarts`` times on what is left;
3. checks every returned example (inside the eps ball of the attack's norm,
   in [0, 1] pixel space, no NaN) and re-classifies it: only a checked,
   misclassified example counts as broken; an unchecked one is "rejected".

Gradient-masking checks (``check_masking=True``, warnings in the result):
probabilities instead of logits, outputs that change between two identical
calls, zero input gradients at clean points, a gradient-free attack (Square)
lowering the robust accuracy by more than 0.2 percentage points below what
the gradient attacks before it reached (AutoAttack's rule), and (optional,
``eps_sweep``) robust accuracy not falling towards 0 as eps grows (Carlini
et al. 2019).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from typing import Iterable, Iterator, Sequence

import torch
from torch import nn

from .attacks.base import Attack, frozen_parameters
from .attacks.losses import dlr_loss
from .validation import (check_choice, check_input_pixels, check_int, check_non_negative,
                         check_normalization, to_pixels)

__all__ = ["robust_accuracy", "RobustAccuracyResult", "AttackRecord", "standard_attacks"]

# Slack of the ball / range checks (fp32 rounding of x + clamp(delta)).
_LINF_SLACK = 1e-5
_L2_REL_SLACK = 1e-4
_RANGE_SLACK = 1e-5
# Outputs differing more than this between two identical calls are "random".
_RANDOM_TOL = 1e-5
# Fraction of the samples a gradient-free attack must break beyond the gradient
# attacks to flag masking: AutoAttack's alpha, so one stray point in a large set is not flagged.
_GRADIENT_FREE_MARGIN = 0.002


@dataclasses.dataclass
class AttackRecord:
    """One attack's line of a :class:`RobustAccuracyResult`.

    Attributes:
        robust_accuracy: fraction in [0, 1] of all samples still robust after
            this attack: the worst case over it and the attacks before it (NaN
            if no samples).
        broken: samples it broke (checked, misclassified examples).
        rejected: returned examples that failed the validity check (outside
            the eps ball or [0, 1], or not finite): never counted as broken,
            whatever their prediction.
        seconds: wall time.
        gradient_free: the attack reads no gradients (Square); its breaks after
            a gradient attack are the masking check's evidence.
        settings: the attack's arguments, as its ``repr``.
    """

    robust_accuracy: float = math.nan
    broken: int = 0
    rejected: int = 0
    seconds: float = 0.0
    gradient_free: bool = False
    settings: str = ""


@dataclasses.dataclass
class RobustAccuracyResult:
    """Outcome of :func:`robust_accuracy`.

    Attributes:
        n_samples: number of evaluated samples.
        clean_accuracy, robust_accuracy: fractions in [0, 1] (NaN if no samples).
        per_attack: attack name -> :class:`AttackRecord`, in the order they ran.
        warnings: gradient-masking and validity warnings, one line each.
        eps, norm: the threat model (None when mixed or unknown).
        seconds: total wall time.
        eps_sweep: eps -> robust accuracy of the sanity sweep, if run.
        adversarial: worst-case examples (N, ...) on the CPU if requested, else None.
        restarts: runs of each randomly started attack (the ``restarts`` argument).
    """

    n_samples: int
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, AttackRecord]
    warnings: list[str]
    eps: float | None = None
    norm: str | None = None
    seconds: float = 0.0
    eps_sweep: dict | None = None
    adversarial: torch.Tensor | None = dataclasses.field(default=None, repr=False)
    restarts: int = 1

    def to_dict(self) -> dict:
        """Everything but the adversarial examples, JSON-serialisable."""
        out = dataclasses.asdict(dataclasses.replace(self, adversarial=None))
        out.pop("adversarial")
        if self.eps_sweep is not None:
            out["eps_sweep"] = {str(k): v for k, v in self.eps_sweep.items()}
        return out

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """The :meth:`to_dict` as JSON text; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def __str__(self) -> str:
        threat = f"{self.norm} eps={self.eps:.6g}" if self.eps is not None else "mixed threat models"
        width = max([len("robust (worst case)")] + [len(n) for n in self.per_attack]) + 2
        lines = [f"Robust accuracy on {self.n_samples} samples ({threat}, {self.seconds:.1f} s)",
                 f"{'stage':<{width}}{'accuracy':>10}{'broken':>9}{'rejected':>10}{'seconds':>9}",
                 f"{'clean':<{width}}{100 * self.clean_accuracy:>9.2f}%{'':>9}{'':>10}{'':>9}"]
        for name, rec in self.per_attack.items():
            lines.append(f"{name:<{width}}{100 * rec.robust_accuracy:>9.2f}%"
                         f"{rec.broken:>9d}{rec.rejected:>10d}{rec.seconds:>9.1f}")
        lines.append(f"{'robust (worst case)':<{width}}{100 * self.robust_accuracy:>9.2f}%")
        if self.eps_sweep:
            lines.append("eps sweep: " + ", ".join(
                f"{e:.4g}: {100 * a:.1f}%" for e, a in self.eps_sweep.items()))
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------- preset
def standard_attacks(model: nn.Module, eps: float, norm: str = "Linf", n_classes: int = 10,
                     seed: int = 0, normalization=None) -> list[Attack]:
    """AutoAttack's "standard" version: APGD-CE, APGD-T, FAB-T, Square.

    APGD-CE (100 steps), APGD-T (targeted DLR, 100 steps, 9 target classes),
    FAB-T (100 steps, 9 target classes), Square (5000 queries, p_init 0.8),
    each with ``n_restarts=1`` as in AutoAttack's standard version; fewer
    targets when the model has fewer than 10 classes.  Needs >= 4 classes.
    Their random starts come from generators seeded with ``seed``, so
    :func:`robust_accuracy`'s ``restarts`` does not repeat them.
    """
    from .attacks import APGD, APGDT, FAB, Square
    if n_classes < 4:
        raise ValueError(
            f"the standard preset needs >= 4 classes (targeted DLR), the model has {n_classes}; "
            "pass a list of attacks instead")
    targets = min(9, n_classes - 1)
    attacks = [
        APGD(model, norm=norm, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed),
        APGDT(model, norm=norm, eps=eps, steps=100, n_restarts=1, n_classes=n_classes,
              n_target_classes=targets, seed=seed),
        FAB(model, norm=norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
            n_classes=n_classes, n_target_classes=targets, seed=seed),
        Square(model, norm=norm, eps=eps, n_queries=5000, n_restarts=1, seed=seed),
    ]
    if normalization is not None:
        for atk in attacks:
            atk.set_normalization_used(*normalization)
    return attacks


def _attack_name(atk: Attack) -> str:
    name = atk.attack
    if name == "APGD":
        name = f"APGD-{str(getattr(atk, 'loss_name', 'ce')).upper()}"
    elif name == "APGDT":
        name = "APGD-T"
    elif name == "FAB" and getattr(atk, "multi_targeted", False):
        name = "FAB-T"
    return name


# ----------------------------------------------------------------------- data
def _chunks(data, batch_size: int) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int | None]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        if not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]:
            raise ValueError("data must be (images, labels) with one label per image")

        def gen():
            for i in range(0, x.shape[0], batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
        return gen(), x.shape[0]
    if isinstance(data, Iterable):
        total = len(data.dataset) if hasattr(data, "dataset") and hasattr(data.dataset, "__len__") \
            else None

        def gen():
            for batch in data:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("each batch of the data loader must be (images, labels)")
                bx, by = batch[0], batch[1]
                for i in range(0, bx.shape[0], batch_size):
                    yield bx[i:i + batch_size], by[i:i + batch_size]
        return gen(), total
    raise TypeError("data must be an (images, labels) pair of tensors or a DataLoader")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, flag in modes:
            m.training = flag


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


# --------------------------------------------------------------------- checks
def _pixels(atk: Attack, t: torch.Tensor) -> torch.Tensor:
    return atk.inverse_normalize(t) if atk.normalization_used is not None else t


def _valid_examples(atk: Attack, adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bool (B,): finite, in [0, 1] and inside the attack's eps ball (pixel space)."""
    if adv.shape != x.shape:
        raise ValueError(f"{atk.attack} returned shape {tuple(adv.shape)} for input {tuple(x.shape)}")
    pa, px = _pixels(atk, adv).flatten(1), _pixels(atk, x).flatten(1)
    ok = torch.isfinite(pa).all(1)
    ok &= (pa >= -_RANGE_SLACK).all(1) & (pa <= 1 + _RANGE_SLACK).all(1)
    eps = getattr(atk, "eps", None)
    if eps is not None:
        delta = (pa - px).nan_to_num(nan=math.inf)
        if getattr(atk, "norm", "Linf") == "L2":
            ok &= delta.norm(dim=1) <= eps * (1 + _L2_REL_SLACK) + _LINF_SLACK
        else:
            ok &= delta.abs().amax(1) <= eps + _LINF_SLACK
    return ok


def _looks_like_probabilities(logits: torch.Tensor) -> bool:
    if logits.numel() == 0:
        return False
    sums = logits.sum(1)
    return bool((logits >= 0).all() and (logits <= 1).all() and ((sums - 1).abs() < 1e-4).all())


def _zero_gradient_count(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with frozen_parameters(model), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        loss = dlr_loss(logits, y) if logits.shape[1] >= 3 else \
            nn.functional.cross_entropy(logits, y, reduction="none")
        grad, = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    if grad is None:
        return x.shape[0]
    return int((grad.flatten(1).abs().amax(1) == 0).sum())


def _masking_checks(model, x, y, logits) -> list[str]:
    """Warnings about the model itself, from one chunk and its clean ``logits``."""
    warnings = []
    if _looks_like_probabilities(logits):
        warnings.append(
            "the model seems to output probabilities (rows in [0, 1] summing to 1): "
            "attacks expect logits; remove the final softmax")
    with torch.no_grad():
        again = model(x)
    scale = max(1.0, float(logits.abs().max())) if logits.numel() else 1.0
    if logits.numel() and float((again - logits).abs().max()) > _RANDOM_TOL * scale:
        warnings.append(
            "the model's outputs differ between two identical calls (randomised defence?): "
            "use EOT (eot_iter in APGD) and treat this evaluation as an upper bound")
    correct = logits.argmax(1) == y
    if bool(correct.any()):
        zeros = _zero_gradient_count(model, x[correct], y[correct])
        if zeros:
            warnings.append(
                f"zero input gradient at {zeros} of {int(correct.sum())} correctly classified "
                "points (gradient masking, e.g. quantisation): gradient attacks cannot progress "
                "there; rely on Square or use BPDA")
    return warnings


def _eps_sweep(model, x, y, eps, norm, normalization) -> tuple[dict, list[str]]:
    """(eps -> robust accuracy of PGD-20 at growing eps, warnings if it does not fall to ~0)."""
    from .attacks import PGD, PGDL2
    if norm == "L2":
        top = math.sqrt(x[0].numel())
        grid = [eps * 2 ** k for k in range(6) if eps * 2 ** k < top] + [top]
    else:
        grid = [eps * 2 ** k for k in range(6) if eps * 2 ** k < 1.0] + [1.0]
    grid = [e for e in grid if e > 0]
    accuracies = {}
    for e in grid:
        atk = (PGDL2(model, eps=e, alpha=e / 4, steps=20) if norm == "L2"
               else PGD(model, eps=e, alpha=e / 4, steps=20))
        if normalization is not None:
            atk.set_normalization_used(*normalization)
        adv = atk.run_for_evaluation(x, y)
        with torch.no_grad():
            accuracies[e] = float((model(adv).argmax(1) == y).float().mean())
    values = list(accuracies.values())
    warnings = []
    if any(b > a + 0.02 for a, b in zip(values, values[1:])):
        warnings.append(f"eps sweep: robust accuracy rises with eps ({values}): attack failure "
                        "or gradient masking")
    if values and values[-1] > 0.05:
        warnings.append(f"eps sweep: robust accuracy {100 * values[-1]:.1f}% at the largest eps "
                        f"{grid[-1]:.3g} (should be ~0): gradient masking suspected")
    return accuracies, warnings


# ------------------------------------------------------------------ arguments
def _check_arguments(attacks, eps, norm, batch_size, restarts
                     ) -> tuple[list[Attack] | None, float | None, str | None]:
    """(the attack list, or None for the "standard" preset; the threat model's eps and norm).

    For a list of attacks, eps and norm are the attacks' own, None where they differ.
    """
    check_int("batch_size", batch_size, 1)
    check_int("restarts", restarts, 1)
    if isinstance(attacks, str):
        if attacks != "standard":
            raise ValueError(f"unknown preset {attacks!r}: use 'standard' or a list of attacks")
        if eps is None:
            raise ValueError("the 'standard' preset needs eps")
        return None, check_non_negative("eps", eps), check_choice("norm", norm, ("Linf", "L2"))
    attack_list = list(attacks)
    if not attack_list:
        raise ValueError("attacks must be 'standard' or a non-empty list of attacks")
    for atk in attack_list:
        if not isinstance(atk, Attack):
            raise TypeError(f"attacks must be modelsec_fast attacks, got {type(atk).__name__}")
        if atk.attack_mode == "targeted(label)":
            raise ValueError(f"{atk.attack} is in targeted(label) mode: robust_accuracy passes "
                             "true labels; use another targeted mode or the default")
    epss = {getattr(a, "eps", None) for a in attack_list}
    norms = {getattr(a, "norm", None) for a in attack_list}
    return (attack_list, epss.pop() if len(epss) == 1 else None,
            norms.pop() if len(norms) == 1 else None)


def _normalization_of(attack_list: list[Attack] | None, normalization):
    """The checked (mean, std) of the data: the argument, else the first attack's."""
    if normalization is None and attack_list and attack_list[0].normalization_used is not None:
        used = attack_list[0].normalization_used
        normalization = (used["mean"], used["std"])
    return check_normalization(normalization)


def _named(attack_list: list[Attack]) -> dict[str, Attack]:
    """Attacks by display name (APGD-CE, FAB-T, ...), a "+" added to repeated names."""
    named: dict[str, Attack] = {}
    for atk in attack_list:
        name = _attack_name(atk)
        while name in named:
            name += "+"
        named[name] = atk
    return named


# ----------------------------------------------------------------- per chunk
def _first_chunk(model, attack_list: list[Attack] | None, x, y, logits, *, eps, norm, seed,
                 normalization, check_masking: bool, eps_sweep: bool
                 ) -> tuple[dict[str, Attack], list[str], dict | None]:
    """What the first chunk settles: the attacks by name (the preset needs the class
    count), the model's masking warnings and the eps sweep (None if not run)."""
    if attack_list is None:
        attack_list = standard_attacks(model, eps, norm, logits.shape[1], seed, normalization)
    warnings = _masking_checks(model, x, y, logits) if check_masking else []
    sweep = None
    if eps_sweep and eps is not None and norm is not None:
        sub = (logits.argmax(1) == y).nonzero().flatten()[:200]
        sweep, sweep_warnings = _eps_sweep(model, x[sub], y[sub], eps, norm, normalization)
        warnings += sweep_warnings
    return _named(attack_list), warnings, sweep


def _clean_pass(model, x, y, device, normalization):
    """(x, y, clean logits) of one chunk on ``device``, checked; None for an empty chunk."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("images and labels must be tensors")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integers (int64), got {y.dtype}")
    x, y = x.to(device), y.to(device).long()
    if x.shape[0] == 0:
        return None
    check_input_pixels(to_pixels(x, normalization), unnormalised=normalization is not None,
                       hint="; for normalised images pass normalization=(mean, std) or use "
                            "set_normalization_used")
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"the model must return logits (B, K), got {tuple(logits.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), found "
                         f"[{int(y.min())}, {int(y.max())}]")
    return x, y, logits


def _attack_once(model, atk: Attack, x, y, robust: torch.Tensor, worst: torch.Tensor | None,
                 record: AttackRecord) -> bool:
    """One run of ``atk`` on the samples still ``robust`` (bool (B,), updated in place).

    Counts what it broke and rejected in ``record``; keeps broken examples in
    ``worst`` if given.  Returns False when no sample was left to attack.
    """
    idx = robust.nonzero().flatten()
    if idx.numel() == 0:
        return False
    adv = atk.run_for_evaluation(x[idx], y[idx])
    valid = _valid_examples(atk, adv, x[idx])
    with torch.no_grad():
        pred = model(adv).argmax(1)
    # Every invalid example is rejected: a NaN one has no meaningful prediction.
    record.rejected += int((~valid).sum())
    broken = (pred != y[idx]) & valid
    robust[idx[broken]] = False
    record.broken += int(broken.sum())
    if worst is not None:
        worst[idx[broken]] = adv[broken]
    return True


def _attack_chunk(model, attacks: dict[str, Attack], records: dict[str, AttackRecord], x, y,
                  logits, restarts: int, keep_worst: bool
                  ) -> tuple[int, int, torch.Tensor | None]:
    """Run the attacks in order on one chunk; add their counts to ``records``.

    Returns (samples classified correctly, samples robust to every attack,
    the worst-case examples (B, ...) if ``keep_worst``, else None).
    """
    robust = logits.argmax(1) == y
    n_clean = int(robust.sum())
    worst = x.clone() if keep_worst else None
    for name, atk in attacks.items():
        start = time.perf_counter()
        # Only an attack with fresh randomness per call can gain from another run.
        for _ in range(restarts if atk.stochastic else 1):
            if not _attack_once(model, atk, x, y, robust, worst, records[name]):
                break
        records[name].seconds += time.perf_counter() - start
    return n_clean, int(robust.sum()), worst


# ------------------------------------------------------------------ summary
def _finish_records(records: dict[str, AttackRecord], n_clean: int, n_total: int) -> None:
    """Set each record's robust accuracy: the cumulative worst case after it."""
    remaining = n_clean
    for rec in records.values():
        remaining -= rec.broken
        rec.robust_accuracy = remaining / n_total if n_total else math.nan


def _record_warnings(records: dict[str, AttackRecord], n_total: int, check_masking: bool
                     ) -> list[str]:
    """A gradient-free attack that beat the gradient attacks before it; rejected examples."""
    warnings = []
    gradient_ran = False
    for name, rec in records.items():
        beats = rec.broken if rec.gradient_free and gradient_ran else 0
        if check_masking and beats > _GRADIENT_FREE_MARGIN * n_total:
            warnings.append(f"{name} (gradient-free) broke {beats} points the gradient attacks "
                            f"missed ({100 * beats / n_total:.2f}% of the samples, more than "
                            f"{100 * _GRADIENT_FREE_MARGIN:.1f}%): gradient masking suspected; "
                            "try more queries or adaptive attacks")
        if rec.rejected:
            warnings.append(f"{name} returned {rec.rejected} examples outside the eps ball "
                            "or [0, 1] (or NaN); they were not counted as broken")
        gradient_ran = gradient_ran or not rec.gradient_free
    return warnings


@contextlib.contextmanager
def _progress_bar(progress: bool, total: int | None):
    if not progress:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="robust accuracy", unit="img", leave=False)
    try:
        yield bar
    finally:
        bar.close()


# ------------------------------------------------------------------ main API
def robust_accuracy(model: nn.Module, data, attacks="standard", *, eps: float | None = None,
                    norm: str = "Linf", batch_size: int = 500, restarts: int = 1,
                    normalization: Sequence | None = None, progress: bool = True,
                    check_masking: bool = True, eps_sweep: bool = False, seed: int = 0,
                    return_adversarial: bool = False) -> RobustAccuracyResult:
    """Per-sample worst-case robust accuracy over ``attacks``.

    Args:
        model: classifier returning logits (B, K); evaluated in eval mode
            (its modes are restored afterwards).
        data: ``(images, labels)`` tensors or an iterable of such batches
            (e.g. a DataLoader); images in the space the attacks expect
            ([0, 1], or normalised if the attacks use set_normalization_used;
            every chunk is range-checked before the clean pass). Each chunk
            is moved to the model's device (deliberately: DataLoaders yield
            CPU tensors), one chunk at a time.
        attacks: "standard" (AutoAttack's preset, needs ``eps``) or a list of
            :class:`~modelsec_fast.attacks.Attack` built on ``model``.
        eps, norm: threat model of the preset ("Linf" or "L2"); for a list of
            attacks each attack's own ``eps``/``norm`` is used.
        batch_size: samples per chunk (bounds memory), >= 1.
        restarts: runs of each randomly started attack (PGD, PGDL2, FFGSM) on
            the samples still robust; deterministic attacks run once.  APGD,
            APGD-T, FAB and Square draw their starts from a seeded generator
            (deterministic: set their own ``n_restarts``), so the "standard"
            preset ignores ``restarts``: like AutoAttack's standard version it
            runs each of its attacks with ``n_restarts=1``.
        normalization: (mean, std) per channel of normalised data, for the
            range check, the preset and the sweep's attacks; default: the
            first attack's ``set_normalization_used``.
        progress: show a tqdm progress bar.
        check_masking: run the gradient-masking checks (on the first chunk).
        eps_sweep: also run the eps sanity sweep (PGD-20 at growing eps on
            the first chunk; costs extra passes).
        seed: seed of the preset's attacks.
        return_adversarial: keep the worst-case examples (on the CPU).
    Raises:
        ValueError / TypeError: bad arguments, labels out of range, images
            outside [0, 1] (or NaN; the message gives the range found), a
            targeted attack in ``targeted(label)`` mode.
    """
    attack_list, eps, norm = _check_arguments(attacks, eps, norm, batch_size, restarts)
    normalization = _normalization_of(attack_list, normalization)
    device = _model_device(model)
    chunks, total = _chunks(data, batch_size)
    start = time.perf_counter()
    named: dict[str, Attack] = {}
    records: dict[str, AttackRecord] = {}
    warnings: list[str] = []
    sweep = None
    n_total = n_clean = n_robust = 0
    worst_parts: list[torch.Tensor] = []
    with _eval_mode(model), _progress_bar(progress, total) as bar:
        for x, y in chunks:
            chunk = _clean_pass(model, x, y, device, normalization)
            if chunk is None:
                continue
            x, y, logits = chunk
            if not named:
                named, warnings, sweep = _first_chunk(
                    model, attack_list, x, y, logits, eps=eps, norm=norm, seed=seed,
                    normalization=normalization, check_masking=check_masking,
                    eps_sweep=eps_sweep)
                records = {name: AttackRecord(gradient_free=atk.gradient_free, settings=repr(atk))
                           for name, atk in named.items()}
            clean, robust, worst = _attack_chunk(model, named, records, x, y, logits, restarts,
                                                 return_adversarial)
            n_total += x.shape[0]
            n_clean += clean
            n_robust += robust
            if worst is not None:
                worst_parts.append(worst.cpu())
            if bar is not None:
                bar.update(x.shape[0])
    _finish_records(records, n_clean, n_total)
    warnings += _record_warnings(records, n_total, check_masking)
    return RobustAccuracyResult(
        n_samples=n_total,
        clean_accuracy=n_clean / n_total if n_total else math.nan,
        robust_accuracy=n_robust / n_total if n_total else math.nan,
        per_attack=records, warnings=warnings, eps=eps, norm=norm,
        seconds=time.perf_counter() - start, eps_sweep=sweep,
        adversarial=torch.cat(worst_parts) if worst_parts else None, restarts=restarts)
