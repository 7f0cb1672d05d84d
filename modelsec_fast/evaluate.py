"""Robust accuracy as the per-sample worst case over a list of attacks (AutoAttack's rule).

    from modelsec_fast.evaluate import robust_accuracy
    result = robust_accuracy(model, (x_test, y_test), attacks="standard", eps=8/255)
    print(result)               # a table: clean, after each attack, warnings
    result.to_json("robust.json")

What it does, per chunk of at most ``batch_size`` samples:

1. checks that the images lie in [0, 1] pixel space (after un-normalising),
   then classifies them; only correctly classified ones are attacked;
2. runs each attack in order on the samples still robust, stopping each
   sample as soon as it is broken (attacks' ``_forward_eval``); attacks with a
   random start are repeated ``restarts`` times on what is left;
3. checks every returned example (inside the eps ball of the attack's norm,
   in [0, 1] pixel space, no NaN) and re-classifies it: only a checked,
   misclassified example counts as broken; an unchecked one is "rejected".

Gradient-masking checks (``check_masking=True``, warnings in the result):
probabilities instead of logits, outputs that change between two identical
calls, zero input gradients at clean points, a gradient-free attack (Square)
lowering the robust accuracy by more than 0.2 percentage points below what
the gradient attacks reached (AutoAttack's rule), and (optional,
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

from .attacks.base import Attack, check_pixel_range, frozen_parameters
from .attacks.losses import dlr_loss

__all__ = ["robust_accuracy", "RobustAccuracyResult", "standard_attacks"]

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
class RobustAccuracyResult:
    """Outcome of :func:`robust_accuracy`.

    Attributes:
        n_samples: number of evaluated samples.
        clean_accuracy, robust_accuracy: fractions in [0, 1] (NaN if no samples).
        per_attack: attack name -> {"robust_accuracy": accuracy after this attack
            (cumulative worst case), "broken": samples it broke, "rejected":
            returned examples that failed the validity check (outside the
            eps ball or [0, 1], or not finite; never counted as broken,
            whatever their prediction), "seconds": time}.
        warnings: gradient-masking and validity warnings, one line each.
        eps, norm: the threat model (None when mixed or unknown).
        seconds: total wall time.
        eps_sweep: eps -> robust accuracy of the sanity sweep, if run.
        adversarial: worst-case examples (N, ...) on the CPU if requested, else None.
    """

    n_samples: int
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict
    warnings: list
    eps: float | None = None
    norm: str | None = None
    seconds: float = 0.0
    eps_sweep: dict | None = None
    adversarial: torch.Tensor | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict:
        """Everything but the adversarial examples, JSON-serialisable."""
        out = dataclasses.asdict(self)
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
            lines.append(f"{name:<{width}}{100 * rec['robust_accuracy']:>9.2f}%"
                         f"{rec['broken']:>9d}{rec['rejected']:>10d}{rec['seconds']:>9.1f}")
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


def _check_image_range(x: torch.Tensor, normalization: Sequence | None) -> None:
    """ValueError unless ``x`` (B, C, ...) lies in [0, 1] pixel space (after un-normalising)."""
    if normalization is None:
        check_pixel_range(x, hint="; for normalised images pass normalization=(mean, std) or "
                                  "use set_normalization_used")
        return
    shape = (1, -1) + (1,) * max(x.dim() - 2, 0)
    mean = torch.as_tensor(normalization[0], dtype=x.dtype, device=x.device).reshape(shape)
    std = torch.as_tensor(normalization[1], dtype=x.dtype, device=x.device).reshape(shape)
    check_pixel_range(x * std + mean, _RANGE_SLACK,
                      where=" after un-normalising with the given mean/std")


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


def _masking_checks(model, x, y, logits, warnings: list) -> None:
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


def _eps_sweep(model, x, y, eps, norm, normalization, warnings) -> dict:
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
        adv = atk._run(atk._forward_eval, x, y)
        with torch.no_grad():
            accuracies[e] = float((model(adv).argmax(1) == y).float().mean())
    values = list(accuracies.values())
    if any(b > a + 0.02 for a, b in zip(values, values[1:])):
        warnings.append(f"eps sweep: robust accuracy rises with eps ({values}): attack failure "
                        "or gradient masking")
    if values and values[-1] > 0.05:
        warnings.append(f"eps sweep: robust accuracy {100 * values[-1]:.1f}% at the largest eps "
                        f"{grid[-1]:.3g} (should be ~0): gradient masking suspected")
    return accuracies


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
        normalization: (mean, std) for the preset and the sweep's attacks.
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
    preset = isinstance(attacks, str)
    if preset:
        if attacks != "standard":
            raise ValueError(f"unknown preset {attacks!r}: use 'standard' or a list of attacks")
        if eps is None:
            raise ValueError("the 'standard' preset needs eps")
        if norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        attack_list: list[Attack] = []
    else:
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
        eps = epss.pop() if len(epss) == 1 else None
        norm = norms.pop() if len(norms) == 1 else None

    if normalization is None and attack_list and attack_list[0].normalization_used is not None:
        used = attack_list[0].normalization_used
        normalization = (used["mean"].flatten().tolist(), used["std"].flatten().tolist())
    device = _model_device(model)
    chunks, total = _chunks(data, batch_size)
    names: list[str] = []
    records: dict[str, dict] = {}
    warnings: list[str] = []
    n_total = n_clean = n_robust = 0
    gradient_ran = False
    adversarial = [] if return_adversarial else None
    sweep = None
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc="robust accuracy", unit="img", leave=False)

    try:
        with _eval_mode(model):
            first = True
            for x, y in chunks:
                if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                    raise TypeError("images and labels must be tensors")
                if y.is_floating_point() or y.dtype == torch.bool:
                    raise TypeError(f"labels must be integers (int64), got {y.dtype}")
                x, y = x.to(device), y.to(device).long()
                if x.shape[0] == 0:
                    continue
                _check_image_range(x, normalization)
                with torch.no_grad():
                    logits = model(x)
                if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                    raise ValueError(f"the model must return logits (B, K), got {tuple(logits.shape)}")
                if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
                    raise ValueError(f"labels must be in [0, {logits.shape[1]}), found "
                                     f"[{int(y.min())}, {int(y.max())}]")
                if first:
                    if preset:
                        attack_list = standard_attacks(model, eps, norm, logits.shape[1], seed,
                                                       normalization)
                    for atk in attack_list:
                        name = _attack_name(atk)
                        while name in records:
                            name += "+"
                        names.append(name)
                        records[name] = {"robust_accuracy": 0.0, "broken": 0, "rejected": 0,
                                         "seconds": 0.0}
                    if check_masking:
                        _masking_checks(model, x, y, logits, warnings)
                    if eps_sweep and eps is not None and norm is not None:
                        sub = (logits.argmax(1) == y).nonzero().flatten()[:200]
                        sweep = _eps_sweep(model, x[sub], y[sub], eps, norm, normalization,
                                           warnings)
                    first = False
                robust = logits.argmax(1) == y
                worst = x.clone() if return_adversarial else None
                n_total += x.shape[0]
                n_clean += int(robust.sum())
                for atk, name in zip(attack_list, names):
                    t0 = time.perf_counter()
                    runs = restarts if getattr(atk, "stochastic", False) else 1
                    broken_here = 0
                    for _ in range(runs):
                        idx = robust.nonzero().flatten()
                        if idx.numel() == 0:
                            break
                        adv = atk._run(atk._forward_eval, x[idx], y[idx])
                        valid = _valid_examples(atk, adv, x[idx])
                        with torch.no_grad():
                            pred = model(adv).argmax(1)
                        # Every invalid example is rejected: a NaN one has no meaningful prediction.
                        records[name]["rejected"] += int((~valid).sum())
                        broken = (pred != y[idx]) & valid
                        robust[idx[broken]] = False
                        broken_here += int(broken.sum())
                        if worst is not None:
                            worst[idx[broken]] = adv[broken]
                    records[name]["broken"] += broken_here
                    records[name]["seconds"] += time.perf_counter() - t0
                    if atk.gradient_free and broken_here and gradient_ran:
                        records[name]["_beats_white_box"] = \
                            records[name].get("_beats_white_box", 0) + broken_here
                    if not atk.gradient_free:
                        gradient_ran = True
                n_robust += int(robust.sum())
                if worst is not None:
                    adversarial.append(worst.cpu())
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        if bar is not None:
            bar.close()

    remaining = n_clean
    for name in names:
        rec = records[name]
        remaining -= rec["broken"]
        rec["robust_accuracy"] = remaining / n_total if n_total else math.nan
        beats = rec.pop("_beats_white_box", 0)
        if check_masking and beats > _GRADIENT_FREE_MARGIN * n_total:
            warnings.append(f"{name} (gradient-free) broke {beats} points the gradient attacks "
                            f"missed ({100 * beats / n_total:.2f}% of the samples, more than "
                            f"{100 * _GRADIENT_FREE_MARGIN:.1f}%): gradient masking suspected; "
                            "try more queries or adaptive attacks")
        if rec["rejected"]:
            warnings.append(f"{name} returned {rec['rejected']} examples outside the eps ball "
                            "or [0, 1] (or NaN); they were not counted as broken")
    return RobustAccuracyResult(
        n_samples=n_total,
        clean_accuracy=n_clean / n_total if n_total else math.nan,
        robust_accuracy=n_robust / n_total if n_total else math.nan,
        per_attack={name: records[name] for name in names},
        warnings=warnings, eps=eps, norm=norm,
        seconds=time.perf_counter() - start, eps_sweep=sweep,
        adversarial=torch.cat(adversarial) if adversarial else None)
