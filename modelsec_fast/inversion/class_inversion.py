"""Class inversion (Fredrikson, Jha and Ristenpart 2015, "MI-Face"), batched over classes.

For each target class, projected gradient descent on the pixels minimises

    c(x) = 1 - p_class(x) + tv_weight * TV(x)

(TV: the mean absolute difference of neighbouring pixels, the image prior), with
Fredrikson et al.'s Algorithm 1 as the stopping rule, per class: stop when
``c(x_i) >= max(c(x_{i-1}), ..., c(x_{i-patience}))`` (no longer improving on
any of the last ``patience`` steps, including the standstill of convergence) or
when ``c(x_i) <= threshold``, after at most ``steps`` steps; return the best
iterate, ``argmin c(x_i)``. Each class stops on its own; the classes still
running share one forward and backward pass per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..validation import (check_input_pixels, check_int, check_non_negative,
                          check_normalization, check_positive, check_real, to_model_space)

__all__ = ["ClassInversion", "ClassInversionResult", "total_variation"]

STOP_REASONS = ("threshold", "no_improvement", "max_steps")


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image, (N, C, H, W) -> (N,): the mean absolute
    difference between vertically and horizontally neighbouring pixels."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).mean(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).mean(1)
    return dh + dw


@dataclass
class ClassInversionResult:
    """One inverted image per class.

    Attributes:
        images: (n, C, H, W) pixels in [0, 1], the best iterate of each class.
        classes: (n,) the target classes.
        costs: (n,) c(x) of each image.
        confidences: (n,) the model's probability of the target class.
        steps: (n,) gradient steps each class took.
        stop_reasons: per class, "threshold", "no_improvement" or "max_steps".
        seconds: wall time.
    """

    images: torch.Tensor = field(repr=False)
    classes: torch.Tensor
    costs: torch.Tensor
    confidences: torch.Tensor
    steps: torch.Tensor
    stop_reasons: list[str]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"classes": self.classes.tolist(), "costs": self.costs.tolist(),
                "confidences": self.confidences.tolist(), "steps": self.steps.tolist(),
                "stop_reasons": list(self.stop_reasons), "settings": dict(self.settings),
                "seconds": self.seconds}


class ClassInversion:
    """MI-Face class inversion of a classifier returning logits (B, K).

    Args:
        model: the classifier (evaluated in eval mode, its parameters untouched).
        steps: the most gradient steps per class (alpha in the paper).
        lr: the step size lambda, in pixels per unit gradient.
        patience: beta, the window of the no-improvement rule.
        threshold: gamma; a class stops once its cost is at or below it.
        tv_weight: weight of the total-variation prior (0: no prior, the paper's
            plain objective).
        normalization: the model's (mean, std) per channel, if it expects
            normalised inputs; the images stay in pixel space [0, 1].

    Raises:
        ValueError / TypeError: a bad setting (named in the message).
    """

    def __init__(self, model: nn.Module, *, steps: int = 1000, lr: float = 0.1,
                 patience: int = 100, threshold: float = 0.0, tv_weight: float = 0.0,
                 normalization: Sequence | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.steps = check_int("steps", steps, 1)
        self.lr = check_positive("lr", lr)
        self.patience = check_int("patience", patience, 1)
        self.threshold = check_real("threshold", threshold)
        self.tv_weight = check_non_negative("tv_weight", tv_weight)
        self.normalization = check_normalization(normalization)

    def cost(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """c(x) per image: ``1 - p_class(x) + tv_weight * TV(x)``, (n,)."""
        logits = self.model(to_model_space(x, self.normalization))
        p = torch.softmax(logits.double(), 1).gather(1, classes[:, None])[:, 0]
        out = 1.0 - p
        if self.tv_weight:
            out = out + self.tv_weight * total_variation(x).double()
        return out

    def invert(self, classes: Sequence[int] | torch.Tensor, *, input_shape: Sequence[int],
               init: torch.Tensor | float = 0.0,
               thresholds: Sequence[float] | torch.Tensor | None = None
               ) -> ClassInversionResult:
        """Inverts every class of ``classes`` (n,), one image each.

        Args:
            input_shape: one image's (C, H, W).
            init: the start, a value for every pixel or images (n, C, H, W) in [0, 1].
            thresholds: (n,) gamma of each class, in place of ``threshold`` (to stop
                each class at a cost reached elsewhere, a baseline's for instance).
        Raises:
            ValueError: ``init`` outside [0, 1] or of the wrong shape, ``thresholds``
                not (n,) finite values, a class outside the model's range, no classes.
        """
        started = time.perf_counter()
        device = next(self.model.parameters()).device
        classes = torch.as_tensor(classes, dtype=torch.long).flatten().to(device)
        n = len(classes)
        if n == 0:
            raise ValueError("classes must name at least one class")
        shape = (n, *(check_int("input_shape", s, 1) for s in input_shape))
        if isinstance(init, torch.Tensor):
            if init.shape != shape:
                raise ValueError(f"init must be images shaped {shape}, got {tuple(init.shape)}")
            x = init.detach().to(device, torch.float32).clone()
        else:
            x = torch.full(shape, check_real("init", init), device=device)
        check_input_pixels(x, unnormalised=False)
        if thresholds is None:
            gamma = torch.full((n,), self.threshold, dtype=torch.float64, device=device)
        else:
            gamma = torch.as_tensor(thresholds, dtype=torch.float64).flatten().to(device)
            if gamma.shape != (n,) or not bool(torch.isfinite(gamma).all()):
                raise ValueError(f"thresholds must be {n} finite values, one per class, got "
                                 f"{tuple(torch.as_tensor(thresholds).shape)}")
        was = self.model.training
        self.model.eval()
        try:
            return self._run(x, classes, gamma, started)
        finally:
            self.model.train(was)

    def _run(self, x, classes, gamma, started) -> ClassInversionResult:
        n = len(classes)
        with torch.no_grad():
            k = self.model(to_model_space(x[:1], self.normalization)).shape[1]
        if int(classes.min()) < 0 or int(classes.max()) >= k:
            raise ValueError(f"classes must lie in [0, {k}), got {classes.tolist()}")
        best_x, best_cost = x.clone(), torch.full((n,), float("inf"), dtype=torch.float64,
                                                 device=x.device)
        window = torch.full((n, self.patience), float("-inf"), dtype=torch.float64,
                            device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        steps = torch.zeros(n, dtype=torch.long)
        reasons = ["max_steps"] * n
        with torch.no_grad():
            cost = self.cost(x, classes)
        window[:, 0] = cost
        best_cost = cost.clone()
        for i in range(1, self.steps + 1):
            rows = active.nonzero()[:, 0]
            xr = x[rows].requires_grad_(True)
            (grad,) = torch.autograd.grad(self.cost(xr, classes[rows]).sum(), xr)
            with torch.no_grad():
                x[rows] = (xr - self.lr * grad).clamp(0.0, 1.0)
                new = self.cost(x[rows], classes[rows])
            steps[rows.cpu()] += 1
            better = new < best_cost[rows]
            best_cost[rows] = torch.where(better, new, best_cost[rows])
            best_x[rows[better]] = x[rows[better]]
            # Algorithm 1: stop on a cost >= the max of the last `patience` costs
            # (filled only once that many steps were taken), or at or below gamma.
            full = i >= self.patience
            stalled = (new >= window[rows].amax(1)) & full
            reached = new <= gamma[rows]
            window[rows, i % self.patience] = new
            for r, s, g in zip(rows.tolist(), stalled.tolist(), reached.tolist()):
                if g or s:
                    reasons[r] = "threshold" if g else "no_improvement"
            active[rows[stalled | reached]] = False
            if not bool(active.any()):
                break
        with torch.no_grad():
            conf = torch.softmax(self.model(to_model_space(best_x, self.normalization)).double(),
                                 1).gather(1, classes[:, None])[:, 0]
        return ClassInversionResult(
            images=best_x.detach().cpu(), classes=classes.cpu(), costs=best_cost.cpu(),
            confidences=conf.cpu(), steps=steps, stop_reasons=reasons,
            settings={"steps": self.steps, "lr": self.lr, "patience": self.patience,
                      "threshold": self.threshold, "thresholds": gamma.cpu().tolist(),
                      "tv_weight": self.tv_weight},
            seconds=time.perf_counter() - started)
