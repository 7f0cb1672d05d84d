"""Flat per-sample clipping of one backward pass (one micro-batch of samples).

Given the calls recorded in a backward pass, computes every sample's total
gradient norm n_i across all trainable layers, Opacus's clip factor
c_i = min(1, C / (n_i + 1e-6)), and each parameter's clipped sum
sum_i c_i * g_i by the layers' rules.

Loss scaling, as in Opacus: with ``loss_reduction="mean"`` the recorded
output gradients carry a 1/B factor, so the per-sample gradient is B times the
recorded one. With a GradScaler of scale S the recorded gradients carry S, so
the norms divide it out while the sums keep it (the scaler unscales ``p.grad``).
"""

from __future__ import annotations

import torch

from modelsec_fast.reference import CLIP_EPS  # one value for the kernels and the engine

from .base import flat_rows, opmath, release, row_sq_norms


def group_calls(pending):
    """[(recorder, call, mask)] -> [(recorder, [calls], mask)], first-seen order."""
    groups: dict[int, tuple] = {}
    for rec, call, mask in pending:
        entry = groups.get(id(rec))
        if entry is None:
            groups[id(rec)] = (rec, [call], dict(mask))
        else:
            entry[1].append(call)
            for k, v in mask.items():
                entry[2][k] = entry[2][k] or v
    return list(groups.values())


def _batch_size(groups) -> int:
    sizes = {}
    for rec, calls, _ in groups:
        for c in calls:
            sizes.setdefault(c.batch_size, rec.name or type(rec.module).__name__)
    if len(sizes) > 1:
        detail = ", ".join(f"{n!r} saw {b}" for b, n in sizes.items())
        raise ValueError(
            "layers of one backward pass saw different numbers of samples "
            f"({detail}); per-sample clipping needs the sample index on the batch "
            "dimension of every layer input (reshaping samples into the batch "
            "dimension, or batch_first mismatch?)")
    return next(iter(sizes))


def layout_evidence(groups, batch: int):
    """What this pass says about ``batch_first``, for the optimizer's check.

    None: no layer's sample dimension depends on the layout. "distinct": some
    sequence layer's other leading dimension differs from ``batch``, so a
    wrong ``batch_first`` shows up as a sample count that differs from the data
    loader's batch. "ambiguous": every such dimension equals ``batch`` > 1
    (B == T), so this pass cannot tell the two layouts apart. (With B == T == 1
    both layouts group the same elements: nothing to check.)
    """
    alts = [c.meta["alt_batch"] for _, calls, _ in groups for c in calls if "alt_batch" in c.meta]
    if any(a != batch for a in alts):
        return "distinct"
    return "ambiguous" if alts and batch > 1 else None


def clip_pass(pending, *, max_grad_norm, loss_reduction: str,
              grad_scale: float, batch_dim: int, shared=frozenset(),
              materialise: bool = False):
    """Clip one backward pass.

    Returns (sums, norms, layout, per_sample): sums is a list of (parameter,
    clipped sum in the parameter's dtype and shape, still multiplied by
    ``grad_scale``); norms is (B,) in fp32 (fp64 for fp64 models), the
    unclipped per-sample norms over all parameters; layout is
    :func:`layout_evidence`; per_sample maps id(parameter) to (parameter, its
    unscaled per-sample gradients (B, *shape)) for the layers that
    materialised them (all of them when ``materialise``).

    ``max_grad_norm`` is C (flat clipping), or a dict id(parameter) -> C_k
    (per-parameter clipping: each parameter clipped by its own bound; the
    per-sample gradients are then materialised). ``shared`` holds the ids of
    parameters used by several layers: the layers using one materialise their
    per-sample gradients, which are summed per parameter before the norm.
    """
    per_param = isinstance(max_grad_norm, dict)
    materialise = materialise or per_param
    groups = group_calls(pending)
    batch = _batch_size(groups)
    first = groups[0][0].params[0][1]
    acc = opmath(first.dtype)
    sq = torch.zeros(batch, dtype=acc, device=first.device)
    caches = []
    tied: dict[int, list] = {}  # id(param) -> [param, summed per-sample gradient]
    for rec, calls, mask in groups:
        if materialise or any(id(p) in shared and mask.get(n) for n, p in rec.params):
            parts = rec.rule.per_sample_grads(rec.module, calls, mask, batch_dim)
            for n, p in rec.params:
                if mask.get(n):
                    entry = tied.setdefault(id(p), [p, None])
                    entry[1] = parts[n] if entry[1] is None else entry[1] + parts[n]
            caches.append(None)
            continue
        s, cache = rec.rule.sq_norms(rec.module, calls, mask, batch_dim)
        sq += s.to(acc)
        caches.append(cache)
    param_sq = {}
    for key, (_, per) in tied.items():
        param_sq[key] = row_sq_norms(per).to(acc)
        sq += param_sq[key]
    loss_factor = float(batch) if loss_reduction == "mean" else 1.0
    unscale = loss_factor / grad_scale
    norms = sq.sqrt() * unscale
    sums = []
    if per_param:
        for key, (p, per) in tied.items():
            f = (max_grad_norm[key] / (param_sq[key].sqrt() * unscale + CLIP_EPS)).clamp(max=1.0)
            total = (f * loss_factor).to(per.dtype) @ flat_rows(per)
            sums.append((p, total.to(p.dtype).reshape(p.shape)))
    else:
        factors = (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0) * loss_factor
        caches.reverse()  # popped in group order: a layer's cache and records are freed
        for rec, calls, mask in groups:  # as soon as its clipped sum is formed
            cache = caches.pop()
            if cache is None:
                continue
            out = rec.rule.clipped_sums(rec.module, calls, mask, batch_dim, cache, factors)
            release(calls)
            for pname, p in rec.params:
                if mask.get(pname):
                    sums.append((p, out[pname].to(p.dtype).reshape(p.shape)))
        for p, per in tied.values():
            total = factors.to(per.dtype) @ flat_rows(per)
            sums.append((p, total.to(p.dtype).reshape(p.shape)))
    per_sample = {key: (p, per * unscale) for key, (p, per) in tied.items()}
    return sums, norms, layout_evidence(groups, batch), per_sample
