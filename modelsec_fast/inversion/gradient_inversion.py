"""Gradient inversion: recovering a client's training images from the update it released.

* :func:`idlg_labels`: iDLG's exact label recovery at batch size 1 (Zhao et al.
  2020): the cross-entropy gradient of the last linear layer's bias is
  ``softmax - onehot``, negative only at the true label.
* :func:`recover_linear_input` / :class:`AnalyticLinearRecovery`: a fully
  connected layer ``W x + b`` has weight gradient ``g_b x^T`` for bias gradient
  ``g_b``, so ``x = g_b^T G_W / |g_b|^2`` exactly at batch size 1 (Phong et al.
  2017; Geiping et al. 2020, Prop. D.1).
* :class:`DLG` (Zhu et al. 2019): L-BFGS on dummy images and soft labels to match
  the update in squared L2 distance. :class:`IDLG`: DLG with iDLG's labels.
* :class:`InvertingGradients` (Geiping et al. 2020): cosine distance between
  updates, a total-variation prior, signed Adam steps in the pixel box [0, 1],
  several random restarts, the best kept.

The optimisation attacks reconstruct many updates at once (one per client, say)
with all their restarts in one batch: the model's parameter gradient of every
(update, restart) candidate comes from one ``torch.func.vmap(grad(...))`` call.
Every update is a list with one tensor per trainable parameter (see
:mod:`modelsec_fast.inversion.gradients`), the DP engine's released update included.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..validation import (check_int, check_non_negative, check_normalization,
                          check_positive, to_model_space)
from .gradients import check_gradients, trainable_parameters
from .metrics import label_accuracy, lpips, lpips_status, psnr, ssim

__all__ = ["idlg_labels", "recover_linear_input", "AnalyticLinearRecovery", "DLG", "IDLG",
           "InvertingGradients", "GradientInversionResult", "ReconstructionScores"]


# ------------------------------------------------------------------ results
@dataclass
class ReconstructionScores:
    """Per-image PSNR (dB) and SSIM against the true images, the fraction of labels
    recovered, and LPIPS where its weights are on disk (else None, with the reason)."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    label_accuracy: float | None
    lpips: torch.Tensor | None = None
    lpips_skipped: str = ""

    @property
    def mean_psnr(self) -> float:
        return float(self.psnr.mean())

    @property
    def mean_ssim(self) -> float:
        return float(self.ssim.mean())

    def to_json(self) -> dict:
        return {"psnr": self.psnr.tolist(), "mean_psnr": self.mean_psnr,
                "ssim": self.ssim.tolist(), "mean_ssim": self.mean_ssim,
                "label_accuracy": self.label_accuracy,
                "lpips": None if self.lpips is None else self.lpips.tolist(),
                "lpips_skipped": self.lpips_skipped or None}


@dataclass
class GradientInversionResult:
    """Reconstructions of P updates of B images each.

    Attributes:
        attack: the attack's name.
        images: (P * B, C, H, W) pixels in [0, 1], update by update.
        labels: (P * B,) the labels used or recovered (-1 where none were).
        objective: (P,) the attack's final objective of the kept restart.
        batch_size: B.
        settings: the attack's parameters (iterations, restarts, ...).
        seconds: wall time.
    """

    attack: str
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor
    objective: torch.Tensor
    batch_size: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def score(self, true_images: torch.Tensor, true_labels: torch.Tensor | None = None
              ) -> ReconstructionScores:
        """Compares with the true images (P * B, C, H, W) (and labels (P * B,)). Within
        an update of B > 1 images, reconstructions are matched to true images by
        the assignment of highest total PSNR (an update does not order its images)."""
        images = self.images
        if true_images.shape != images.shape:
            raise ValueError(f"true_images must be shaped {tuple(images.shape)}, got "
                             f"{tuple(true_images.shape)}")
        true_images = true_images.detach().cpu()
        if self.batch_size > 1:
            images = _match(images, true_images, self.batch_size)
        labels = None
        if true_labels is not None and bool((self.labels >= 0).all()):
            labels = label_accuracy(self.labels, true_labels)
        available, reason = lpips_status()
        return ReconstructionScores(psnr(images, true_images), ssim(images, true_images),
                                    labels, lpips(images, true_images) if available else None,
                                    "" if available else reason)

    def to_json(self) -> dict:
        return {"attack": self.attack, "labels": self.labels.tolist(),
                "objective": self.objective.tolist(), "batch_size": self.batch_size,
                "settings": dict(self.settings), "seconds": self.seconds}


def _match(images, truth, b):
    from scipy.optimize import linear_sum_assignment

    out = images.clone()
    for start in range(0, len(images), b):
        rec, tru = images[start:start + b], truth[start:start + b]
        mse = ((rec[:, None] - tru[None]) ** 2).flatten(2).mean(2).double()
        rows, cols = linear_sum_assignment(torch.log10(mse.clamp_min(1e-10)).numpy())
        out[start + cols] = rec[rows]
    return out


# ------------------------------------------------------------------ closed forms
def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to read labels from")
    return linears[-1]


def _index_of(model: nn.Module, param: nn.Parameter) -> int:
    for i, p in enumerate(trainable_parameters(model)):
        if p is param:
            return i
    raise ValueError("the layer's parameter is not trainable, so the update does not hold it")


def idlg_labels(model: nn.Module, gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """iDLG's label of a batch-size-1 update, (1,) int64.

    With a bias on the last linear layer: the index of its smallest bias gradient
    (``p - onehot`` is negative only at the label). Without one: the row of the
    weight gradient with the smallest sum (``(p - onehot) h^T`` with ``h >= 0``
    after a ReLU). Exact for a plain gradient at batch size 1.

    Raises:
        ValueError: the gradients do not match the model's parameters (see
            :func:`check_gradients`), or the model has no linear layer.
    """
    gradients = check_gradients(model, gradients)
    last = _last_linear(model)
    if last.bias is not None and last.bias.requires_grad:
        return gradients[_index_of(model, last.bias)].argmin().reshape(1).cpu()
    return gradients[_index_of(model, last.weight)].sum(1).argmin().reshape(1).cpu()


def recover_linear_input(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """The input (in_features,) of a linear layer from its weight gradient
    (out, in) and bias gradient (out,): ``g_b^T G_W / |g_b|^2`` (least squares over
    the rows; exact for one input).

    Raises:
        ValueError: shapes that do not fit, or a zero bias gradient.
    """
    if weight_grad.dim() != 2 or bias_grad.shape != (weight_grad.shape[0],):
        raise ValueError(f"need a weight gradient (out, in) and a bias gradient (out,), got "
                         f"{tuple(weight_grad.shape)} and {tuple(bias_grad.shape)}")
    gb = bias_grad.double()
    norm = float(gb @ gb)
    if norm == 0.0:
        raise ValueError("the bias gradient is zero: the layer's input cannot be recovered")
    return (gb @ weight_grad.double()) / norm


class AnalyticLinearRecovery:
    """Recovers the images of batch-size-1 updates from the first layer of a model that
    begins with a fully connected layer on the flattened image (an MLP).

    Args:
        model: the model; its first layer with parameters must be an ``nn.Linear``
            with a trainable bias and ``in_features = C * H * W``.
        normalization: the model's (mean, std) if it normalises, to map the recovered
            input back to pixels.
    """

    name = "analytic_linear"

    def __init__(self, model: nn.Module, *, normalization: Sequence | None = None):
        first = next((m for m in model.modules()
                      if list(m.parameters(recurse=False))), None)
        if not isinstance(first, nn.Linear) or first.bias is None:
            raise ValueError("analytic recovery needs a model whose first layer with "
                             "parameters is an nn.Linear with a bias, got "
                             f"{type(first).__name__}")
        self.model, self.layer = model, first
        self.normalization = check_normalization(normalization)

    def reconstruct(self, updates, *, input_shape: Sequence[int]) -> GradientInversionResult:
        """One image per update (a list of tensors, or a list of such lists), projected
        onto [0, 1]; labels by :func:`idlg_labels`."""
        started = time.perf_counter()
        updates = _as_updates(updates)
        shape = tuple(check_int("input_shape", s, 1) for s in input_shape)
        if math.prod(shape) != self.layer.in_features:
            raise ValueError(f"input_shape {shape} has {math.prod(shape)} values, the first "
                             f"layer takes {self.layer.in_features}")
        wi = _index_of(self.model, self.layer.weight)
        bi = _index_of(self.model, self.layer.bias)
        images, labels = [], []
        for update in updates:
            update = check_gradients(self.model, update)
            x = recover_linear_input(update[wi], update[bi]).float().reshape(1, *shape)
            if self.normalization is not None:
                mean, std = self.normalization
                x = x * std.reshape(1, -1, 1, 1) + mean.reshape(1, -1, 1, 1)
            images.append(x.clamp(0.0, 1.0).cpu())
            labels.append(idlg_labels(self.model, update))
        return GradientInversionResult(self.name, torch.cat(images), torch.cat(labels),
                                       torch.zeros(len(updates)), 1, {},
                                       time.perf_counter() - started)


def _as_updates(updates) -> list[list[torch.Tensor]]:
    """One update (a list of tensors) or several (a list of lists) as a list of lists."""
    if isinstance(updates, Sequence) and updates and isinstance(updates[0], torch.Tensor):
        return [list(updates)]
    if not isinstance(updates, Sequence) or not updates:
        raise TypeError("updates must be a list of gradient tensors or a non-empty list "
                        "of such lists")
    return [list(u) for u in updates]


# ------------------------------------------------------------------ optimisation attacks
class _GradientMatching:
    """Shared optimisation loop: candidates for every (update, restart) in one batch."""

    name = "gradient_matching"
    distance = "l2"
    optimizer = "lbfgs"
    label_strategy = "optimize"

    def __init__(self, model: nn.Module, *, iterations: int, lr: float, restarts: int,
                 tv_weight: float, normalization: Sequence | None, seed: int):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.iterations = check_int("iterations", iterations, 1)
        self.lr = check_positive("lr", lr)
        self.restarts = check_int("restarts", restarts, 1)
        self.tv_weight = check_non_negative("tv_weight", tv_weight)
        self.normalization = check_normalization(normalization)
        self.seed = check_int("seed", seed)

    def settings(self) -> dict:
        return {"iterations": self.iterations, "lr": self.lr, "restarts": self.restarts,
                "tv_weight": self.tv_weight, "distance": self.distance,
                "optimizer": self.optimizer, "labels": self.label_strategy, "seed": self.seed}

    def reconstruct(self, updates, *, input_shape: Sequence[int], batch_size: int = 1,
                    labels: torch.Tensor | None = None) -> GradientInversionResult:
        """Reconstructs the images of every update.

        Args:
            updates: one update (a list of tensors, one per trainable parameter) or a
                list of P such updates, each of a batch of ``batch_size`` images.
            input_shape: one image's (C, H, W).
            labels: the images' labels (P * B,), if known; otherwise iDLG's labels at
                B = 1, or (DLG) optimised soft labels.
        Raises:
            ValueError: an update that does not match the model's parameters, labels
                of the wrong shape, unknown labels at B > 1 where this attack needs them.
        """
        started = time.perf_counter()
        updates = [check_gradients(self.model, u) for u in _as_updates(updates)]
        b = check_int("batch_size", batch_size, 1)
        shape = tuple(check_int("input_shape", s, 1) for s in input_shape)
        p, r = len(updates), self.restarts
        device = trainable_parameters(self.model)[0].device
        k = _last_linear(self.model).out_features
        if labels is not None:
            labels = torch.as_tensor(labels).long().flatten()
            if labels.shape != (p * b,):
                raise ValueError(f"labels must hold one label per image ({p * b},), got "
                                 f"{tuple(labels.shape)}")
        elif self.label_strategy == "idlg":
            if b != 1:
                raise ValueError(f"{self.name} recovers labels only at batch size 1; pass "
                                 f"labels for batch_size={b}")
            labels = torch.cat([idlg_labels(self.model, u) for u in updates])
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.rand((p * r, b, *shape), generator=generator).to(device).requires_grad_(True)
        label_logits = None
        if labels is None:
            label_logits = torch.randn((p * r, b, k), generator=generator).to(device)
            label_logits.requires_grad_(True)
            fixed = None
        else:
            fixed = nn.functional.one_hot(labels, k).float().reshape(p, 1, b, k) \
                .expand(p, r, b, k).reshape(p * r, b, k).to(device)
        targets = [torch.stack([u[i] for u in updates]).repeat_interleave(r, 0)
                   for i in range(len(updates[0]))]
        was = self.model.training
        self.model.eval()
        try:
            objective = self._optimise(x, label_logits, fixed, targets)
        finally:
            self.model.train(was)
        best = objective.reshape(p, r).argmin(1)
        pick = torch.arange(p) * r + best.cpu()
        images = x.detach()[pick.to(device)].reshape(p * b, *shape).clamp(0, 1).cpu()
        if labels is None:
            labels = label_logits.detach()[pick.to(device)].argmax(2).reshape(-1).cpu()
        return GradientInversionResult(self.name, images, labels.cpu(),
                                       objective.reshape(p, r).min(1).values.detach().cpu(),
                                       b, self.settings(), time.perf_counter() - started)

    # -------------------------------------------------------------- the loop
    def _objective(self, x, label_logits, fixed, targets) -> torch.Tensor:
        """(P*R,) distance to the target update (+ TV prior) of every candidate."""
        named = [(n, q) for n, q in self.model.named_parameters() if q.requires_grad]
        frozen = {n: q.detach() for n, q in self.model.named_parameters() if not q.requires_grad}
        buffers = dict(self.model.named_buffers())
        names = [n for n, _ in named]
        train = {n: q.detach() for n, q in named}
        norm = self.normalization
        model = self.model

        def loss(params, xb, yb):
            out = functional_call(model, ({**params, **frozen}, buffers),
                                  (to_model_space(xb, norm),))
            return -(yb * torch.log_softmax(out, 1)).sum(1).mean()

        y = fixed if fixed is not None else torch.softmax(label_logits, 2)
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(train, x, y)
        g = [grads[n].flatten(1) for n in names]
        t = [tt.flatten(1) for tt in targets]
        if self.distance == "cosine":
            dot = sum((gi * ti).sum(1) for gi, ti in zip(g, t))
            gn = sum((gi * gi).sum(1) for gi in g)
            tn = sum((ti * ti).sum(1) for ti in t)
            dist = 1 - dot / (gn.sqrt() * tn.sqrt()).clamp_min(1e-12)
        else:
            dist = sum(((gi - ti) ** 2).sum(1) for gi, ti in zip(g, t))
        if self.tv_weight:
            from .class_inversion import total_variation

            flat = x.reshape(-1, *x.shape[2:])
            dist = dist + self.tv_weight * total_variation(flat).reshape(x.shape[0], -1).mean(1)
        return dist

    def _optimise(self, x, label_logits, fixed, targets) -> torch.Tensor:
        variables = [x] + ([label_logits] if label_logits is not None else [])
        if self.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(variables, lr=self.lr, max_iter=1, history_size=100)

            def closure():
                opt.zero_grad()
                value = self._objective(x, label_logits, fixed, targets).sum()
                value.backward()
                return value

            for _ in range(self.iterations):
                opt.step(closure)
        else:
            opt = torch.optim.Adam(variables, lr=self.lr)
            milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
            schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
            for _ in range(self.iterations):
                opt.zero_grad()
                self._objective(x, label_logits, fixed, targets).sum().backward()
                x.grad.sign_()  # Geiping et al.'s signed gradient steps
                opt.step()
                schedule.step()
                with torch.no_grad():
                    x.clamp_(0.0, 1.0)
        with torch.no_grad():
            return self._objective(x, label_logits, fixed, targets)


class DLG(_GradientMatching):
    """Deep Leakage from Gradients (Zhu et al. 2019): L-BFGS (one step per iteration)
    on dummy images and dummy soft labels, squared L2 distance between updates."""

    name = "dlg"

    def __init__(self, model: nn.Module, *, iterations: int = 300, lr: float = 1.0,
                 restarts: int = 1, normalization: Sequence | None = None, seed: int = 0):
        super().__init__(model, iterations=iterations, lr=lr, restarts=restarts, tv_weight=0.0,
                         normalization=normalization, seed=seed)


class IDLG(DLG):
    """iDLG (Zhao et al. 2020): DLG with the labels read off the update (batch size 1)."""

    name = "idlg"
    label_strategy = "idlg"


class InvertingGradients(_GradientMatching):
    """Inverting Gradients (Geiping et al. 2020): cosine distance, total-variation
    prior, signed Adam in the pixel box [0, 1] with the learning rate divided by 10 at
    3/8, 5/8 and 7/8 of the iterations, ``restarts`` random starts (the lowest
    objective kept). Labels: given, or iDLG's at batch size 1.

    ``tv_weight`` defaults to Geiping et al.'s 1e-4: the cosine distance of a good
    reconstruction is about 1e-4 to 1e-3 while a digit's TV (mean absolute neighbour
    difference) is about 0.3, so a weight of 1e-2 lets the prior outweigh the data
    term and flattens the image (a small ConvNet was then not reconstructed)."""

    name = "inverting_gradients"
    distance = "cosine"
    optimizer = "adam"
    label_strategy = "idlg"

    def __init__(self, model: nn.Module, *, iterations: int = 500, lr: float = 0.1,
                 restarts: int = 4, tv_weight: float = 1e-4,
                 normalization: Sequence | None = None, seed: int = 0):
        super().__init__(model, iterations=iterations, lr=lr, restarts=restarts,
                         tv_weight=tv_weight, normalization=normalization, seed=seed)

