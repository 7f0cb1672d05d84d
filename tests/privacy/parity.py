"""Slow ground truth for the DP engine: one backward per sample, clip, sum, scale.

``check_parity`` trains nothing: it runs the engine's step with
noise_multiplier=0 and an lr=0 optimizer on a deep copy of the model and
compares every ``p.grad`` with the micro-batch ground truth. All mismatches
are collected (with their sizes) before the assertion fails.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule


def ground_truth(model, inputs, targets, loss_fn, *, max_grad_norm, reduction,
                 expected_batch_size):
    """(sum_i c_i g_i) / E[B] (or the plain sum) from per-sample backward passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for i in range(inputs.shape[0]):
        grads = torch.autograd.grad(loss_fn(model(inputs[i:i + 1]), targets[i:i + 1]), params,
                                    allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        c = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for t, g in zip(total, grads):
            t += c * g
    if reduction == "mean":
        total = [t / expected_batch_size for t in total]
    return total


def engine_grads(model, inputs, targets, loss_fn, *, max_grad_norm, reduction,
                 expected_batch_size, micro_batches=1, use_skip=False, batch_first=True,
                 low_memory=False):
    """p.grad after one private step (noise 0) over ``micro_batches`` backward passes."""
    pm = PrivateModule(model, loss_reduction=reduction, batch_first=batch_first,
                       low_memory=low_memory)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
                      loss_reduction=reduction)
    opt.zero_grad()
    chunks = list(zip(inputs.tensor_split(micro_batches), targets.tensor_split(micro_batches)))
    for k, (x, y) in enumerate(chunks):
        loss_fn(pm(x), y).backward()
        if use_skip and k < len(chunks) - 1:
            opt.signal_skip_step(True)
            opt.step()
            opt.zero_grad()
    opt.step()
    out = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    pm.cleanup()
    return out


def check_parity(make_model, inputs, targets, *, loss="ce", reduction="mean",
                 max_grad_norm=1.0, rtol=1e-10, atol=1e-12, micro_batches=1,
                 use_skip=False, expected_batch_size=None, batch_first=True, low_memory=False):
    """Assert the engine's private gradient equals the slow ground truth."""
    base = {"ce": nn.functional.cross_entropy, "mse": nn.functional.mse_loss}[loss]

    def loss_fn(out, y):
        if out.shape[0] == 0:
            return out.sum() * 0.0
        return base(out, y, reduction=reduction)

    model = make_model()
    ebs = expected_batch_size or max(inputs.shape[0], 1)
    truth = ground_truth(copy.deepcopy(model), inputs, targets, loss_fn,
                         max_grad_norm=max_grad_norm, reduction=reduction,
                         expected_batch_size=ebs)
    got = engine_grads(copy.deepcopy(model), inputs, targets, loss_fn,
                       max_grad_norm=max_grad_norm, reduction=reduction,
                       expected_batch_size=ebs, micro_batches=micro_batches,
                       use_skip=use_skip, batch_first=batch_first, low_memory=low_memory)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    problems = []
    for name, t, g in zip(names, truth, got):
        if not torch.allclose(g, t, rtol=rtol, atol=atol):
            err = (g - t).abs().max().item()
            problems.append(f"{name}: max abs err {err:.3e}, |truth|max {t.abs().max().item():.3e}")
    assert not problems, "engine != ground truth:\n" + "\n".join(problems)
    return truth
