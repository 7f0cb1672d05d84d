"""Square and FAB-T against slow, one-sample reference loops written from the papers.

Square (Andriushchenko et al. 2020): the reference replays our generator's
draws in the attack's order (each draw once per iteration, sized by the
samples still running) but builds, projects, scores and accepts every
candidate one sample at a time, with the paper's formulas.
FAB (Croce & Hein 2020): the box-constrained projection onto the linearised
boundary, solved by bisection, and a one-sample FAB-T loop built on it.
"""

import math

import pytest
import torch
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.fab import project_onto_hyperplane_in_box

SEED = 7


def _margin(model, z, y):
    """z_y - max_{k != y} z_k of one sample (<= 0: misclassified)."""
    with torch.no_grad():
        logits = model(z[None])[0].float()
    return float(logits[y] - torch.cat([logits[:y], logits[y + 1:]]).max())


def _square_side(p_init, it, n_queries, n_features, c, h, norm):
    """The paper's p schedule (rescaled to n_queries) and window side."""
    it = int(it / n_queries * 10000)
    p = p_init
    for bound in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000):
        if it > bound:
            p /= 2
    s = int(round(math.sqrt(p * n_features / c)))
    if norm == "Linf":
        return min(max(s, 1), h)  # ours allows s = h (paper: h - 1)
    s = max(s, 3)
    return min(s + 1 if s % 2 == 0 else s, h)


def _rectangle(rows, cols):
    """The paper's pseudo-Gaussian rectangle: box k around the centre adds 1/(k+1)^2."""
    d = torch.zeros(rows, cols, dtype=torch.float64)
    ci, cj = rows // 2, cols // 2
    for k in range(max(ci, cj) + 1):
        d[max(ci - k, 0):ci + k + 1, max(cj - k, 0):cj + k + 1] += 1.0 / (k + 1) ** 2
    return d / d.norm() if d.numel() else d


def _pattern(s, gen):
    """L2 window pattern: +rectangle on top, -rectangle below, unit norm, maybe transposed."""
    eta = torch.cat([_rectangle(s // 2, s), -_rectangle(s - s // 2, s)])
    eta = (eta / eta.norm()).float()
    return eta.t() if float(torch.rand((), generator=gen)) > 0.5 else eta


def _signs(gen, *shape):
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).float()


def _ref_square(model, x, y, eps, n_queries, seed, norm, p_init=0.8):
    gen = torch.Generator().manual_seed(seed)
    _, c, h, w = x.shape
    with torch.no_grad():
        todo = [i for i in range(len(y)) if int(model(x[i:i + 1]).argmax()) == int(y[i])]
    best = {}
    if norm == "Linf":  # vertical stripes of +-eps
        stripes = _signs(gen, len(todo), c, 1, w)
        for k, i in enumerate(todo):
            best[i] = (x[i] + eps * stripes[k]).clamp(0, 1)
    else:  # a grid of signed patterns, rescaled to norm eps
        s = max(h // 5, 1)
        start = (h - s * (h // s)) // 2
        delta = torch.zeros(len(todo), c, h, w)
        for vh in range(start, start + s * (h // s), s):
            for vw in range(start, start + s * (w // s), s):
                eta, sg = _pattern(s, gen), _signs(gen, len(todo), c)
                for k in range(len(todo)):
                    for ch in range(c):
                        delta[k, ch, vh:vh + s, vw:vw + s] += eta * sg[k, ch]
        for k, i in enumerate(todo):
            best[i] = (x[i] + delta[k] / delta[k].norm() * eps).clamp(0, 1)
    margin = {i: _margin(model, best[i], int(y[i])) for i in todo}
    for it in range(n_queries):
        running = [i for i in todo if margin[i] > 0]  # a misclassified sample stops
        if not running:
            break
        s = _square_side(p_init, it, n_queries, c * h * w, c, h, norm)
        n = len(running)
        if norm == "Linf":
            vh = torch.randint(0, h - s + 1, (n,), generator=gen)
            vw = torch.randint(0, w - s + 1, (n,), generator=gen)
            sg = _signs(gen, n, c)
        else:
            vh, vw, vh2, vw2 = (int(v) for v in torch.randint(0, h - s + 1, (4,), generator=gen))
            eta, sg = _pattern(s, gen), _signs(gen, n, c)
        for k, i in enumerate(running):
            xi, cand = x[i], best[i].clone()
            if norm == "Linf":
                win = (slice(None), slice(int(vh[k]), int(vh[k]) + s), slice(int(vw[k]), int(vw[k]) + s))
                sign = sg[k].reshape(c, 1, 1)
                cand[win] = (xi[win] + eps * sign).clamp(0, 1)
                if (cand[win] - best[i][win]).abs().max() < 1e-7:  # no change: flip the signs
                    cand[win] = (xi[win] - eps * sign).clamp(0, 1)
            else:
                delta = best[i] - xi
                old = delta[:, vh:vh + s, vw:vw + s]
                both = torch.zeros(h, w)
                both[vh:vh + s, vw:vw + s] = 1.0
                both[vh2:vh2 + s, vw2:vw2 + s] = 1.0
                # In the input dtype, as the paper: with both windows empty and |delta| = eps,
                # eps^2 - |delta|^2 is rounding noise and sets the step's size.
                room = (eps ** 2 - delta.norm() ** 2).clamp(min=0) / c + (delta * both).norm() ** 2
                new = eta * sg[k].reshape(c, 1, 1) + old / (old.norm(dim=(1, 2), keepdim=True) + 1e-10)
                new = new / new.norm(dim=(1, 2), keepdim=True) * room.sqrt()
                delta[:, vh2:vh2 + s, vw2:vw2 + s] = 0.0
                delta[:, vh:vh + s, vw:vw + s] = new
                cand = (xi + delta / delta.norm() * eps).clamp(0, 1)
            new_margin = _margin(model, cand, int(y[i]))
            if new_margin < margin[i]:  # margin loss: keep improving candidates only
                best[i], margin[i] = cand, new_margin
    out = x.clone()
    for i in todo:
        out[i] = best[i]
    return out


def _rgb_linear():
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


@pytest.mark.parametrize("data", ["digits", "rgb"])
@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
def test_square_matches_the_slow_loop(norm, eps, data, digits_mlp):
    if data == "digits":
        m, x, y = digits_mlp.model, digits_mlp.x[:16], digits_mlp.y[:16]
    else:
        m, x, y = _rgb_linear()
    ours = ma.Square(m, norm=norm, eps=eps, n_queries=100, seed=SEED)(x, y)
    ref = _ref_square(m, x, y, eps, 100, SEED, norm)
    # 1e-5: float32 renormalisations drift by ~1e-6 over 100 queries; a diverging
    # accept decision or draw shows up as ~1e-2.
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5, msg=lambda s: f"seed {SEED}: {s}")
    with torch.no_grad():
        clean_ok, adv_ok = m(x).argmax(1) == y, m(ref).argmax(1) == y
    assert (clean_ok & ~adv_ok).any() and adv_ok.any(), f"seed {SEED}: need broken and robust samples"


def _ref_projection(t, w, b, norm):
    """Minimal-norm d (one row) with w.(t + d) = b and t + d in [0, 1], by bisection.

    Linf: the smallest radius r whose box-clipped extreme point d = clip(r sign(w))
    reaches the plane.  L2: the KKT point d = clip(r w), smallest r >= 0 reaching it.
    Out of reach: the box corner d = clip(inf * w), which gets closest.
    """
    t, w = t.double(), w.double()
    c = float(b) - float((w * t).sum())
    if c < 0:
        w, c = -w, -c
    direction = w.sign() if norm == "Linf" else w
    nonzero = w.abs()[w != 0]
    hi = 1.0 if norm == "Linf" or nonzero.numel() == 0 else 1.0 / float(nonzero.min())

    def d_of(r):
        return torch.minimum(torch.maximum(r * direction, -t), 1 - t)
    if float((w * d_of(hi)).sum()) <= c:
        return d_of(hi)
    lo, mid = 0.0, hi / 2
    while lo < mid < hi:  # until the interval is one ulp wide
        lo, hi = (mid, hi) if float((w * d_of(mid)).sum()) < c else (lo, mid)
        mid = (lo + hi) / 2
    return d_of(hi)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("n,d", [(1, 1), (6, 3), (9, 64), (4, 300)])
def test_fab_projection_matches_bisection(norm, n, d):
    gen = torch.Generator().manual_seed(SEED + d)
    t = torch.rand(n, d, generator=gen, dtype=torch.float64)
    edge = torch.rand(n, d, generator=gen) < 0.2
    t[edge] = t[edge].round()  # points on the box's faces: zero room
    w = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w[torch.rand(n, d, generator=gen) < 0.2] = 0.0
    b = (w * torch.rand(n, d, generator=gen, dtype=torch.float64)).sum(1)  # reachable
    out_of_reach = torch.arange(n) % 3 == 2
    lo_reach, hi_reach = w.clamp(max=0).sum(1), w.clamp(min=0).sum(1)
    b = torch.where(out_of_reach & (torch.arange(n) % 2 == 0), hi_reach + 0.5, b)
    b = torch.where(out_of_reach & (torch.arange(n) % 2 == 1), lo_reach - 0.5, b)
    if n > 1:
        w[-1] = 0.0  # no direction at all: d = 0
    ours = project_onto_hyperplane_in_box(t, w, b, norm)
    for i in range(n):
        ref = _ref_projection(t[i], w[i], b[i], norm)
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=1e-9,
                                   msg=lambda s: f"seed {SEED + d}, row {i}: {s}")
        if not out_of_reach[i] and w[i].abs().sum() > 0:
            assert abs(float((w[i] * (t[i] + ours[i])).sum() - b[i])) < 1e-9, f"seed {SEED + d}"


def _ref_fab_t(model, x, y, eps, steps, norm, n_targets, alpha_max=0.1, eta=1.05, beta=0.9):
    """FAB-T on one sample: the paper's iteration, one target after another, no restarts."""
    def size(d):
        return float(d.abs().max()) if norm == "Linf" else float(d.norm())
    with torch.no_grad():
        logits = model(x[None])[0]
    if int(logits.argmax()) != y:
        return x
    targets = sorted(range(len(logits)), key=lambda k: -float(logits[k]))[1:n_targets + 1]
    res, best, flat0 = math.inf, x, x.flatten()
    for t in targets:
        if res <= eps:
            break
        z = x.clone()
        for _ in range(steps):
            zg = z.clone().requires_grad_(True)
            out = model(zg[None])[0]
            f = out[t] - out[y]
            g, = torch.autograd.grad(f, zg)
            g, f = g.flatten(), float(f.detach())
            # linearised boundary {u : f + g.(u - z) = 0}, i.e. g.u = g.z - f
            plane = float((g.double() * z.flatten().double()).sum()) - f
            d1 = _ref_projection(z.flatten(), g, plane, norm).float()
            d2 = _ref_projection(flat0, g, plane, norm).float()
            a1, a2 = max(size(d1), 1e-8), max(size(d2), 1e-8)
            alpha = min(a1 / (a1 + a2), alpha_max)
            z = ((z.flatten() + eta * d1) * (1 - alpha) + (flat0 + eta * d2) * alpha)
            z = z.clamp(0, 1).reshape(x.shape)
            with torch.no_grad():
                fooled = int(model(z[None]).argmax()) != y
            if fooled:
                if size(z - x) < res:
                    res, best = size(z - x), z
                z = x + beta * (z - x)  # step back towards the original
    return best if 0 < res <= eps else x


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
def test_fab_t_matches_the_slow_loop(norm, eps, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:8], digits_mlp.y[:8]
    ours = ma.FAB(m, norm=norm, eps=eps, steps=10, multi_targeted=True, n_classes=10,
                  n_target_classes=3, seed=SEED)(x, y)
    ref = torch.stack([_ref_fab_t(m, x[i], int(y[i]), eps, 10, norm, 3) for i in range(8)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5, msg=lambda s: f"seed {SEED}: {s}")
    moved = (ref - x).flatten(1).abs().amax(1) > 0
    assert moved.any() and not moved.all(), f"seed {SEED}: need broken and robust samples"
