"""Neural Cleanse (Wang et al. 2019) in PyTorch: find, for every class, the smallest
trigger that sends clean inputs there; a backdoor's target needs a far smaller one.

Reverse engineering, batched over classes: a mask ``m_k`` (1, H, W) and a pattern
``p_k`` (C, H, W) per class k (both through a sigmoid), applied as
``(1 - m_k) * x + m_k * p_k``; every step feeds the same clean batch through all K
triggers in one forward pass and minimises, for every class at once,
``CE(f(x_k), k) + lambda_k * |m_k|_1`` with Adam. Each ``lambda_k`` follows the
paper's schedule (Wang et al.'s reference code): it is 0 until the trigger's success
rate has been at or above ``success_threshold`` for ``patience`` checks, then
``init_cost``; after that, ``patience`` checks at or above the rate multiply it by
``cost_multiplier``, ``patience`` checks below divide it by ``cost_multiplier ** 1.5``.

The paper checks once per pass over its inputs and runs a thousand passes; at the
budgets used here (tens of passes over a few hundred inputs) that leaves the cost too
few checks to climb from ``init_cost`` to its working value, and the masks stay far
from minimal (a backdoor's target then hardly stands out). So the check runs after
every optimisation step, on the success rate over the last
``ceil(CHECK_INPUTS / batch_size)`` batches (at least 64 inputs, so that a 0.99 rate
means something). The smallest mask is kept from exact checks: at the end of every
pass the current triggers are measured on all the clean inputs and a class's trigger
replaces its best when it reaches ``success_threshold`` there with a smaller L1 norm.

Outlier test: every class's mask L1 norm, its MAD anomaly index
``|l_k - median| / (1.4826 * MAD)`` (1.4826 makes the MAD a consistent estimate of a
normal's standard deviation), and a flag for the classes whose norm is below the
median with an index above ``threshold`` (2 in the paper) and at most
``max_relative_norm`` (0.6) times the median. The second condition is this library's,
not the paper's (which flags an index above 2 on the small side only): it guards
against the MAD's small-sample false alarms. With 10 classes whose norms are merely
normally spread, some class has an index above 2 on the low side about one time in
three (a simulation of 200,000 draws gives 0.33); with the guard and norms spread by
15% of their median, about 3%. A backdoor's trigger is a fraction of a natural class's.

Mitigations (each returns a :class:`~.backdoor_repair.MitigationResult` with the
clean-accuracy change beside the ASR change, and never modifies the model it gets):

* :func:`unlearn`: fine-tune on clean data where a fraction of each batch carries
  a flagged class's reversed trigger with its true label kept;
* :func:`prune`: zero the channels of a layer that the reversed trigger activates
  most over clean inputs, until the reversed trigger no longer works or the clean
  accuracy budget is spent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..poisoning.base import PoisoningAttack, check_images
from ..poisoning.metrics import accuracy
from ..poisoning.training import eval_mode, model_device
from ..validation import check_in_range, check_int, check_positive
from .backdoor_repair import (MAX_CLEAN_DROP, MitigationResult, channel_activations, fine_tune,
                              finish_mitigation, prunable_layer, repaired_copy, zero_channels)

__all__ = ["NeuralCleanse", "NeuralCleanseResult", "anomaly_index", "unlearn", "prune"]

MAD_CONSISTENCY = 1.4826
CHECK_INPUTS = 64  # the fewest inputs a schedule check's success rate is measured on
EVAL_VALUES = 1 << 18  # triggered pixel values per forward pass when measuring success


def anomaly_index(values: torch.Tensor) -> torch.Tensor:
    """``|v - median| / (1.4826 * MAD)`` for each of ``values`` (K,); where the MAD is 0,
    inf for values off the median and 0 on it."""
    values = values.double()
    median = values.median()
    deviation = (values - median).abs()
    mad = MAD_CONSISTENCY * deviation.median()
    if float(mad) == 0.0:
        return torch.where(deviation > 0, torch.full_like(values, math.inf),
                           torch.zeros_like(values))
    return deviation / mad


@dataclass
class NeuralCleanseResult:
    """Every class's reversed trigger and the outlier test.

    Attributes:
        l1_norms: (K,) mask L1 norms (pixels); anomaly_index: (K,) MAD indices;
        relative_norms: (K,) norms over their median.
        flagged: classes with an index above ``threshold`` and a relative norm of at
            most ``max_relative_norm`` (see the module docstring).
        success: (K,) each reversed trigger's success rate on the clean inputs.
        reached: (K,) whether the trigger reached ``success_threshold`` at all.
        masks: (K, 1, H, W) and patterns: (K, C, H, W), CPU, in [0, 1].
    """

    l1_norms: list[float]
    anomaly_index: list[float]
    relative_norms: list[float]
    flagged: list[int]
    success: list[float]
    reached: list[bool]
    threshold: float
    median_l1: float
    mad_l1: float
    settings: dict
    seconds: float
    masks: torch.Tensor = field(repr=False)
    patterns: torch.Tensor = field(repr=False)

    def apply(self, x: torch.Tensor, label: int) -> torch.Tensor:
        """``x`` (B, C, H, W) with class ``label``'s reversed trigger."""
        m = self.masks[label].to(x.device, x.dtype)
        p = self.patterns[label].to(x.device, x.dtype)
        return (1.0 - m) * x + m * p

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k not in ("masks", "patterns")}
        return out


class NeuralCleanse:
    """Reverse-engineers a minimal trigger per class (see the module docstring).

    Args:
        model: the classifier (eval mode during the search, its mode restored).
        epochs: passes over the clean inputs.
        batch_size: clean inputs per step (each goes through all K triggers); smaller
            batches give more steps for the same work.
        lr: Adam's learning rate on the mask and pattern logits (twice the paper's 0.1:
            hundreds of steps here, not tens of thousands).
        init_cost: lambda once a trigger first succeeds; cost_multiplier (the paper's
            2), patience (checks, one per step): its schedule.
        success_threshold: the success rate a trigger must reach, in (0, 1].
        threshold: the anomaly index above which a class is flagged.
        max_relative_norm: a flagged class's norm is at most this fraction of the median.
        seed: seeds the start and the batches.
    """

    def __init__(self, model: nn.Module, *, epochs: int = 20, batch_size: int = 16,
                 lr: float = 0.2, init_cost: float = 1e-3, cost_multiplier: float = 2.0,
                 patience: int = 5, success_threshold: float = 0.99, threshold: float = 2.0,
                 max_relative_norm: float = 0.6, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.epochs = check_int("epochs", epochs, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.lr = check_positive("lr", lr)
        self.init_cost = check_positive("init_cost", init_cost)
        self.cost_multiplier = check_positive("cost_multiplier", cost_multiplier)
        if self.cost_multiplier <= 1.0:
            raise ValueError(f"cost_multiplier must be > 1, got {self.cost_multiplier}")
        self.patience = check_int("patience", patience, 1)
        self.success_threshold = check_in_range("success_threshold", success_threshold, 0.0, 1.0,
                                                low_open=True)
        self.threshold = check_positive("threshold", threshold)
        self.max_relative_norm = check_in_range("max_relative_norm", max_relative_norm, 0.0, 1.0,
                                                low_open=True)
        self.seed = check_int("seed", seed, 0)

    def settings(self) -> dict:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                "init_cost": self.init_cost, "cost_multiplier": self.cost_multiplier,
                "patience": self.patience, "success_threshold": self.success_threshold,
                "threshold": self.threshold, "max_relative_norm": self.max_relative_norm,
                "seed": self.seed}

    def reverse_engineer(self, x: torch.Tensor, y: torch.Tensor | None = None,
                         num_classes: int | None = None) -> NeuralCleanseResult:
        """Reverse-engineers every class's trigger on clean inputs ``x`` (N, C, H, W).

        ``y`` (N,): their labels; given, class k's trigger is fitted and measured on the
        inputs of the other classes only (an input already of class k says nothing
        about a trigger to k). ``num_classes``: None reads it from the model's output.

        Raises:
            TypeError / ValueError: bad images; fewer than 3 classes (no outlier test).
        """
        check_images(x, y)
        if len(x) == 0:
            raise ValueError("x holds no image")
        start = time.perf_counter()
        device = model_device(self.model)
        x = x.to(device)
        y = y.to(device).long() if y is not None else None
        with eval_mode(self.model):
            if num_classes is None:
                with torch.no_grad():
                    num_classes = int(self.model(x[:1]).shape[1])
            k = check_int("num_classes", num_classes, 3)
            if y is not None and int(y.max()) >= k:
                raise ValueError(f"labels must be < num_classes = {k}, found {int(y.max())}")
            masks, patterns, success, reached = self._search(x, y, k, device)
        l1 = masks.flatten(1).sum(1).double()
        index = anomaly_index(l1)
        median = float(l1.median())
        mad = float((l1 - l1.median()).abs().median())
        relative = (l1 / max(median, 1e-30)).tolist()
        flagged = [c for c in range(k) if float(index[c]) > self.threshold
                   and relative[c] <= self.max_relative_norm]
        return NeuralCleanseResult(
            l1_norms=l1.tolist(), anomaly_index=index.tolist(), relative_norms=relative,
            flagged=flagged,
            success=success, reached=reached, threshold=self.threshold, median_l1=median,
            mad_l1=mad, settings={**self.settings(), "num_classes": k, "n_clean": len(x)},
            seconds=time.perf_counter() - start, masks=masks.cpu(), patterns=patterns.cpu())

    def _search(self, x, y, k, device):
        n, c, h, w = x.shape
        g = torch.Generator().manual_seed(self.seed)
        mask_logit = (torch.rand(k, 1, h, w, generator=g) * 2 - 3).to(device).requires_grad_(True)
        pattern_logit = (torch.rand(k, c, h, w, generator=g) * 2 - 1).to(device)
        pattern_logit.requires_grad_(True)
        optimizer = torch.optim.Adam([mask_logit, pattern_logit], lr=self.lr, betas=(0.5, 0.9))
        targets = torch.arange(k, device=device)
        cost = torch.zeros(k, dtype=torch.float64, device=device)  # 0 until a first success
        up = torch.zeros(k, dtype=torch.long, device=device)
        down = torch.zeros(k, dtype=torch.long, device=device)
        best_l1 = torch.full((k,), math.inf, dtype=torch.float64, device=device)
        best_mask = torch.sigmoid(mask_logit.detach()).clone()
        best_pattern = torch.sigmoid(pattern_logit.detach()).clone()
        best_success = torch.zeros(k, dtype=torch.float64, device=device)
        window = max(1, math.ceil(CHECK_INPUTS / self.batch_size))
        recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (hits, seen) of recent steps
        params_flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in params_flags:
            p.requires_grad_(False)
        try:
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=g).to(device)
                for i in range(0, n, self.batch_size):
                    batch = order[i:i + self.batch_size]
                    xb = x[batch]
                    b = len(xb)
                    # (K, B) weights: class k's loss and success over other classes' inputs.
                    keep = (torch.ones(k, b, dtype=torch.float64, device=device) if y is None
                            else (y[batch][None] != targets[:, None]).double())
                    m = torch.sigmoid(mask_logit)
                    p = torch.sigmoid(pattern_logit)
                    triggered = (1 - m[:, None]) * xb[None] + (m * p)[:, None]  # (K, B, C, H, W)
                    logits = self.model(triggered.flatten(0, 1)).view(k, b, -1)
                    ce = F.cross_entropy(logits.flatten(0, 1), targets.repeat_interleave(b),
                                         reduction="none").view(k, b)
                    ce = (ce * keep).sum(1) / keep.sum(1).clamp_min(1.0)
                    l1 = m.flatten(1).sum(1)
                    loss = (ce + cost.to(ce.dtype) * l1).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        hits = ((logits.argmax(2) == targets[:, None]).double() * keep).sum(1)
                        recent = (recent + [(hits, keep.sum(1))])[-window:]
                        rate = (sum(r[0] for r in recent)
                                / sum(r[1] for r in recent).clamp_min(1.0))
                        cost, up, down = self._schedule(rate >= self.success_threshold,
                                                        cost, up, down)
                with torch.no_grad():  # exact check, on every input, of the triggers
                    m = torch.sigmoid(mask_logit)  # that could beat their class's best
                    p = torch.sigmoid(pattern_logit)
                    l1 = m.flatten(1).sum(1).double()
                    candidates = torch.nonzero(l1 < best_l1).flatten()
                    if len(candidates):
                        rate = self._success(x, y, m[candidates], p[candidates], candidates)
                        won = candidates[rate >= self.success_threshold]
                        best_l1[won] = l1[won]
                        best_mask[won] = m[won]
                        best_pattern[won] = p[won]
                        best_success[won] = rate[rate >= self.success_threshold]
            reached = torch.isfinite(best_l1)
            missed = torch.nonzero(~reached).flatten()
            if len(missed):  # no trigger reached the rate: report the last one
                best_mask[missed] = torch.sigmoid(mask_logit.detach())[missed]
                best_pattern[missed] = torch.sigmoid(pattern_logit.detach())[missed]
                best_success[missed] = self._success(x, y, best_mask[missed],
                                                     best_pattern[missed], missed)
        finally:
            for p, flag in params_flags:
                p.requires_grad_(flag)
        return best_mask, best_pattern, best_success.tolist(), reached.tolist()

    def _schedule(self, ok, cost, up, down):
        """One check of the paper's cost schedule: ``ok`` (K,) bool, whether each
        trigger met the success rate; returns the new (cost, up, down)."""
        up = torch.where(ok, up + 1, torch.zeros_like(up))
        down = torch.where(ok, torch.zeros_like(down), down + 1)
        start = (cost == 0) & (up >= self.patience)  # the first success sets the cost on
        cost = torch.where(start, torch.full_like(cost, self.init_cost), cost)
        active = (cost > 0) & ~start
        raise_cost = active & (up >= self.patience)
        lower_cost = active & (down >= self.patience)
        cost = torch.where(raise_cost, cost * self.cost_multiplier, cost)
        cost = torch.where(lower_cost, cost / self.cost_multiplier ** 1.5, cost)
        reset = start | raise_cost
        up = torch.where(reset, torch.zeros_like(up), up)
        down = torch.where(lower_cost, torch.zeros_like(down), down)
        return cost, up, down

    @torch.no_grad()
    def _success(self, x, y, masks, patterns, classes) -> torch.Tensor:
        """(len(classes),) success rates on ``x`` of the triggers ``masks``, ``patterns``
        towards ``classes`` (int64), over the inputs of other classes where ``y`` is given."""
        k = len(classes)
        hits = torch.zeros(k, dtype=torch.float64, device=x.device)
        seen = torch.zeros(k, dtype=torch.float64, device=x.device)
        chunk = max(1, EVAL_VALUES // (k * x[0].numel()))
        for i in range(0, len(x), chunk):
            xb = x[i:i + chunk]
            keep = (torch.ones(k, len(xb), dtype=torch.float64, device=x.device) if y is None
                    else (y[i:i + chunk][None] != classes[:, None]).double())
            triggered = (1 - masks[:, None]) * xb[None] + (masks * patterns)[:, None]
            logits = self.model(triggered.flatten(0, 1)).view(k, len(xb), -1)
            hits += ((logits.argmax(2) == classes[:, None]).double() * keep).sum(1)
            seen += keep.sum(1)
        return hits / seen.clamp_min(1.0)


def _classes(result: NeuralCleanseResult, classes) -> list[int]:
    chosen = result.flagged if classes is None else [int(c) for c in classes]
    return chosen


def unlearn(model: nn.Module, result: NeuralCleanseResult, x_clean: torch.Tensor,
            y_clean: torch.Tensor, *, classes=None, fraction: float = 0.2, epochs: int = 10,
            lr: float = 2e-3, batch_size: int = 128, seed: int = 0,
            test: tuple[torch.Tensor, torch.Tensor] | None = None,
            attack: PoisoningAttack | None = None,
            max_clean_drop: float = MAX_CLEAN_DROP) -> MitigationResult:
    """Neural Cleanse's unlearning: fine-tune a copy of ``model`` on the defender's clean
    data (x_clean (N, C, H, W), y_clean (N,)) with ``fraction`` of every batch stamped
    with the reversed trigger of a flagged class (``classes``: None = ``result.flagged``)
    and its true label kept. No flagged class: the copy is returned unchanged.

    ``test`` and ``attack``: measure C-Acc/ASR/RA before and after (else the clean
    accuracy on ``x_clean``).
    """
    start = time.perf_counter()
    check_images(x_clean, y_clean)
    fraction = check_in_range("fraction", fraction, 0.0, 1.0, low_open=True)
    chosen = _classes(result, classes)
    repaired = repaired_copy(model)
    masks = result.masks.to(model_device(model))
    patterns = result.patterns.to(model_device(model))

    def stamp(xb, yb, generator):
        n = int(round(fraction * len(xb)))
        if n == 0 or not chosen:
            return xb
        pick = torch.randperm(len(xb), generator=generator)[:n].to(xb.device)
        which = torch.tensor(chosen)[torch.randint(len(chosen), (n,), generator=generator)]
        m, p = masks[which.to(xb.device)], patterns[which.to(xb.device)]
        xb = xb.clone()
        xb[pick] = (1 - m) * xb[pick] + m * p
        return xb

    if chosen:
        fine_tune(repaired, x_clean, y_clean, epochs=check_int("epochs", epochs, 1),
                  lr=check_positive("lr", lr), batch_size=batch_size, seed=seed, transform=stamp)
    settings = {"classes": chosen, "fraction": fraction, "epochs": epochs, "lr": lr,
                "batch_size": batch_size, "seed": seed, "n_clean": len(y_clean)}
    return finish_mitigation("neural_cleanse_unlearning", settings, model, repaired,
                             (x_clean, y_clean), test=test, attack=attack,
                             max_clean_drop=max_clean_drop,
                             details={"unlearned": bool(chosen)},
                             seconds=time.perf_counter() - start)


def prune(model: nn.Module, result: NeuralCleanseResult, x_clean: torch.Tensor,
          y_clean: torch.Tensor, *, classes=None, layer: str | None = None,
          stop_success: float = 0.05, max_fraction: float = 0.5, step: int = 1,
          test: tuple[torch.Tensor, torch.Tensor] | None = None,
          attack: PoisoningAttack | None = None,
          max_clean_drop: float = MAX_CLEAN_DROP) -> MitigationResult:
    """Neural Cleanse's pruning: zero, in a copy of ``model``, the output channels of
    ``layer`` (None: the last convolution) in decreasing order of
    ``activation(reversed trigger) - activation(clean)`` over ``x_clean``, ``step`` at a
    time, until the flagged classes' reversed triggers succeed on at most
    ``stop_success`` of the clean inputs, at most ``max_fraction`` of the channels are
    gone, or the clean accuracy on ``x_clean`` would fall by more than ``max_clean_drop``
    (that last pruning step is then undone).
    """
    start = time.perf_counter()
    check_images(x_clean, y_clean)
    stop_success = check_in_range("stop_success", stop_success, 0.0, 1.0)
    max_fraction = check_in_range("max_fraction", max_fraction, 0.0, 1.0, low_open=True)
    step = check_int("step", step, 1)
    chosen = _classes(result, classes)
    repaired = repaired_copy(model)
    name, module = prunable_layer(repaired, layer)
    device = model_device(repaired)
    x_clean, y_clean = x_clean.to(device), y_clean.to(device)
    pruned = torch.empty(0, dtype=torch.long)
    trigger_success = None
    if chosen:
        triggered = torch.cat([result.apply(x_clean, c) for c in chosen])
        labels = torch.tensor(chosen, device=device).repeat_interleave(len(x_clean))
        difference = (channel_activations(repaired, module, triggered)
                      - channel_activations(repaired, module, x_clean))
        order = difference.argsort(descending=True).cpu()
        base_accuracy = accuracy(repaired, x_clean, y_clean)
        weight, bias = module.weight.detach().clone(), (
            module.bias.detach().clone() if module.bias is not None else None)
        limit = int(math.floor(max_fraction * len(order)))
        trigger_success = accuracy(repaired, triggered, labels)
        count = 0
        while trigger_success > stop_success and count + step <= limit:
            candidate = order[:count + step]
            zero_channels(module, candidate)
            if base_accuracy - accuracy(repaired, x_clean, y_clean) > max_clean_drop:
                with torch.no_grad():  # undo: this step costs too much clean accuracy
                    module.weight.copy_(weight)
                    if bias is not None:
                        module.bias.copy_(bias)
                zero_channels(module, pruned)
                break
            count += step
            pruned = candidate
            trigger_success = accuracy(repaired, triggered, labels)
    settings = {"classes": chosen, "layer": name, "stop_success": stop_success,
                "max_fraction": max_fraction, "step": step, "n_clean": len(y_clean)}
    details = {"pruned_channels": pruned.tolist(), "n_pruned": len(pruned),
               "n_channels": int(module.weight.shape[0]),
               "reversed_trigger_success": trigger_success}
    return finish_mitigation("neural_cleanse_pruning", settings, model, repaired,
                             (x_clean, y_clean), test=test, attack=attack,
                             max_clean_drop=max_clean_drop, details=details,
                             seconds=time.perf_counter() - start)
