"""Each attack against a slow, per-sample reference loop written from the papers.

The references run one sample at a time with plain eager formulas (no fused
ops, no batching), so batching, in-place updates and early stopping cannot
hide a bug.  Per-sample gradients differ from the batch's only by the mean's
1/B scale, which sign steps and L2-normalised steps ignore.
"""

import pytest
import torch
import torch.nn.functional as F

import modelsec_fast.attacks as ma
from modelsec_fast.attacks.losses import dlr_loss, margin_loss

SEED = 5


def _grad(model, x, y, loss=F.cross_entropy):
    x = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(loss(model(x), y), x)
    return g


def _ref_pgd_linf(model, x, y, eps, alpha, steps, start):
    out = []
    for i in range(x.shape[0]):
        xi, yi, adv = x[i:i + 1], y[i:i + 1], start[i:i + 1].clone()
        for _ in range(steps):
            adv = adv + alpha * _grad(model, adv, yi).sign()
            adv = torch.min(torch.max(adv, xi - eps), xi + eps).clamp(0, 1)
        out.append(adv)
    return torch.cat(out)


def _ref_pgd_l2(model, x, y, eps, alpha, steps):
    out = []
    for i in range(x.shape[0]):
        xi, yi, adv = x[i:i + 1], y[i:i + 1], x[i:i + 1].clone()
        for _ in range(steps):
            g = _grad(model, adv, yi)
            adv = adv + alpha * g / (g.norm() + 1e-10 / x.shape[0])
            d = adv - xi
            if d.norm() > eps:
                d = d * (eps / d.norm())
            adv = (xi + d).clamp(0, 1)
        out.append(adv)
    return torch.cat(out)


def test_fgsm_matches_the_slow_loop(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:40], digits_mlp.y[:40]
    ref = torch.cat([(x[i:i + 1] + 0.1 * _grad(m, x[i:i + 1], y[i:i + 1]).sign()).clamp(0, 1)
                     for i in range(40)])
    torch.testing.assert_close(ma.FGSM(m, eps=0.1)(x, y), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_and_bim_match_the_slow_loop(random_start, digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:16], digits_mlp.y[:16]
    torch.manual_seed(SEED)
    ours = ma.PGD(m, eps=0.1, alpha=0.02, steps=6, random_start=random_start)(x, y)
    torch.manual_seed(SEED)
    start = x.clone()
    if random_start:
        start = (x + torch.empty_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
    ref = _ref_pgd_linf(m, x, y, 0.1, 0.02, 6, start)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    if not random_start:
        torch.testing.assert_close(ma.BIM(m, eps=0.1, alpha=0.02, steps=6)(x, y), ref,
                                   rtol=0, atol=1e-6)


def test_ffgsm_matches_the_slow_loop(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:16], digits_mlp.y[:16]
    torch.manual_seed(SEED)
    ours = ma.FFGSM(m, eps=0.1, alpha=0.12)(x, y)
    torch.manual_seed(SEED)
    start = (x + torch.randn_like(x).uniform_(-0.1, 0.1)).clamp(0, 1)
    torch.testing.assert_close(ours, _ref_pgd_linf(m, x, y, 0.1, 0.12, 1, start), rtol=0, atol=1e-6)


def test_pgdl2_matches_the_slow_loop(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:16], digits_mlp.y[:16]
    ours = ma.PGDL2(m, eps=0.5, alpha=0.1, steps=6, random_start=False)(x, y)
    torch.testing.assert_close(ours, _ref_pgd_l2(m, x, y, 0.5, 0.1, 6), rtol=0, atol=1e-5)


def test_early_stopping_freezes_each_sample_at_its_first_adversarial_iterate(digits_mlp):
    m, x, y = digits_mlp.model, digits_mlp.x[:24], digits_mlp.y[:24]
    atk = ma.PGD(m, eps=0.1, alpha=0.02, steps=8, random_start=False)
    fast = atk.run_for_evaluation(x, y)
    for i in range(24):  # slow loop: iterate one sample until it is misclassified
        xi, yi, adv = x[i:i + 1], y[i:i + 1], x[i:i + 1].clone()
        for _ in range(8):
            with torch.no_grad():
                if m(adv).argmax(1) != yi:
                    break
            adv = adv + 0.02 * _grad(m, adv, yi).sign()
            adv = torch.min(torch.max(adv, xi - 0.1), xi + 0.1).clamp(0, 1)
        torch.testing.assert_close(fast[i:i + 1], adv, rtol=0, atol=1e-6)


def test_dlr_and_margin_losses_match_their_definitions():
    gen = torch.Generator().manual_seed(SEED)
    logits = torch.randn(50, 7, generator=gen)
    y = torch.randint(0, 7, (50,), generator=gen)
    for i in range(50):
        z = logits[i].tolist()
        zs = sorted(z, reverse=True)
        other = max(v for j, v in enumerate(z) if j != int(y[i]))
        assert abs(float(dlr_loss(logits[i:i + 1], y[i:i + 1])) -
                   (-(z[int(y[i])] - other) / (zs[0] - zs[2] + 1e-12))) < 1e-5
        assert abs(float(margin_loss(logits[i:i + 1], y[i:i + 1])) - (z[int(y[i])] - other)) < 1e-5


def _ce(logits, y, t):
    return F.cross_entropy(logits, y, reduction="sum")


def _dlr(logits, y, t):
    """DLR of one sample: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)."""
    z, k = logits[0], int(y)
    zs = z.sort(descending=True).values
    return -(z[k] - torch.cat([z[:k], z[k + 1:]]).max()) / (zs[0] - zs[2] + 1e-12)


def _dlr_targeted(logits, y, t):
    """Targeted DLR of one sample: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)."""
    z, k, j = logits[0], int(y), int(t)
    zs = z.sort(descending=True).values
    return -(z[k] - z[j]) / (zs[0] - (zs[2] + zs[3]) / 2 + 1e-12)


def _ref_apgd_one(model, x, y, eps, steps, start, rho=0.75, norm="Linf", objective=_ce,
                  target=None):
    """APGD on one sample, written from the paper's Algorithm 1.

    Maximises ``objective(logits, y, target)`` with sign steps (L-inf) or
    normalised-gradient steps (L2).  Returns (point, fooled): the first
    misclassified iterate if any, else the highest-objective iterate.
    """
    interval = max(int(0.22 * steps), 1)
    shortest, shrink = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)

    def evaluate(z):
        z = z.clone().requires_grad_(True)
        logits = model(z)
        loss = objective(logits, y, target)
        g, = torch.autograd.grad(loss, z)
        return float(loss.detach()), g, int(logits.argmax(1)) != int(y)

    def project(z):
        if norm == "Linf":
            return torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)
        d = z - x
        if float(d.norm()) > eps:
            d = d * (eps / d.norm())
        return (x + d).clamp(0, 1)

    def ascend(z, g, step):
        if norm == "Linf":
            return project(z + step * g.sign())
        return project(z + step * g / (g.norm() + 1e-10))  # a zero gradient: no step

    adv = start.clone()
    loss, g, fooled = evaluate(adv)
    first_adv = adv if fooled else None
    best, g_best, loss_best = adv, g, loss
    step, prev, loss_prev, loss_check, reduced, n_inc, counter = 2 * eps, adv, loss, loss, True, 0, 0
    for i in range(steps):
        z = ascend(adv, g, step)
        if i > 0:
            z = project(adv + 0.75 * (z - adv) + 0.25 * (adv - prev))
        prev, adv = adv, z
        loss, g, fooled = evaluate(adv)
        if fooled and first_adv is None:
            first_adv = adv
        n_inc += loss > loss_prev
        loss_prev = loss
        if loss > loss_best:
            best, g_best, loss_best = adv, g, loss
        counter += 1
        if counter == interval:
            reduce = n_inc <= rho * interval or (not reduced and loss_check >= loss_best)
            reduced, loss_check, n_inc, counter = reduce, loss_best, 0, 0
            if reduce:
                step, adv, g = step / 2, best, g_best
            interval = max(interval - shrink, shortest)
    return (first_adv, True) if first_adv is not None else (best, False)


def _correctly_classified(model, x, y):
    # Misclassified inputs are returned untouched by the attacks: keep the attacked ones.
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep], y[keep]


def _clean_target(model, xi, k):
    """Class with the k-th largest clean logit of one sample (k = 2: the runner-up)."""
    with torch.no_grad():
        z = model(xi)[0].tolist()
    return torch.tensor([sorted(range(len(z)), key=lambda j: -z[j])[k - 1]])


def _assert_agrees(ours, ref, fooled, exact, tag):
    n, n_fooled = ref.shape[0], int(sum(fooled))
    assert 0 < n_fooled < n, f"{tag}: {n_fooled}/{n} broken, both return paths must occur"
    dist = (ours - ref).flatten(1).abs().amax(1)
    bad = (dist > 1e-5).nonzero().flatten().tolist()
    # Sign steps can flip on gradients that are zero up to rounding: allow one
    # sample there.  L2 steps are continuous in the gradient: every sample agrees.
    assert len(bad) <= (0 if exact else 1), \
        f"{tag}: samples {bad} differ from the slow loop (max {float(dist.max()):.2e})"


@pytest.mark.parametrize("norm, loss, eps, n, steps", [
    ("Linf", "ce", 0.1, 20, 10), ("L2", "ce", 0.75, 40, 10),
    ("Linf", "dlr", 0.1, 40, 10), ("L2", "dlr", 0.75, 40, 10),
    # 20 steps: the first checkpoint comes after 4, where rho * 4 = 3 is an integer,
    # so "at most rho of the steps increased" is told apart from "fewer than".
    ("L2", "ce", 0.75, 40, 20)])
def test_apgd_matches_the_slow_loop(norm, loss, eps, n, steps, digits_mlp):
    from modelsec_fast.attacks.apgd import random_start
    m = digits_mlp.model
    x, y = _correctly_classified(m, digits_mlp.x[:n], digits_mlp.y[:n])
    seed = 3
    ours = ma.APGD(m, norm=norm, eps=eps, steps=steps, seed=seed, loss=loss)(x, y)
    starts = random_start(x, eps, norm, torch.Generator().manual_seed(seed))
    objective = _ce if loss == "ce" else _dlr
    ref, fooled = zip(*[_ref_apgd_one(m, x[i:i + 1], y[i:i + 1], eps, steps, starts[i:i + 1],
                                      norm=norm, objective=objective)
                        for i in range(x.shape[0])])
    _assert_agrees(ours, torch.cat(ref), fooled, norm == "L2",
                   f"APGD {norm} {loss} eps={eps} steps={steps} seed={seed}")


@pytest.mark.parametrize("norm, eps", [("Linf", 0.1), ("L2", 0.75)])
def test_apgdt_with_one_target_matches_the_slow_loop(norm, eps, digits_mlp):
    from modelsec_fast.attacks.apgd import random_start
    m = digits_mlp.model
    x, y = _correctly_classified(m, digits_mlp.x[:40], digits_mlp.y[:40])
    ours = ma.APGDT(m, norm=norm, eps=eps, steps=10, seed=SEED, n_target_classes=1)(x, y)
    # One target, one restart: the start is drawn like APGD's.
    starts = random_start(x, eps, norm, torch.Generator().manual_seed(SEED))
    ref, fooled = zip(*[_ref_apgd_one(m, x[i:i + 1], y[i:i + 1], eps, 10, starts[i:i + 1],
                                      norm=norm, objective=_dlr_targeted,
                                      target=_clean_target(m, x[i:i + 1], 2))
                        for i in range(x.shape[0])])
    _assert_agrees(ours, torch.cat(ref), fooled, norm == "L2",
                   f"APGDT {norm} eps={eps} seed={SEED}")


def test_apgdt_with_two_targets_matches_the_slow_loop(digits_mlp):
    """The second target runs only on samples the first left unbroken.

    Its random starts continue the same generator over that subset in batch
    order, so they are drawn batch-wise as the attack draws them.  L2 only:
    its per-sample agreement is exact, so the subsets agree too.
    """
    from modelsec_fast.attacks.apgd import random_start
    m, norm, eps = digits_mlp.model, "L2", 0.6
    # The runner-up target breaks most samples; this slice has some only the third class breaks.
    x, y = _correctly_classified(m, digits_mlp.x[130:170], digits_mlp.y[130:170])
    ours = ma.APGDT(m, norm=norm, eps=eps, steps=10, seed=SEED, n_target_classes=2)(x, y)
    gen = torch.Generator().manual_seed(SEED)
    ref, fooled, broken_by = x.clone(), [False] * x.shape[0], [0, 0]
    for k in (2, 3):
        todo = [i for i in range(x.shape[0]) if not fooled[i]]
        starts = random_start(x[todo], eps, norm, gen)
        for j, i in enumerate(todo):
            # Unbroken samples end at the latest target's highest-loss point.
            ref[i:i + 1], fooled[i] = _ref_apgd_one(
                m, x[i:i + 1], y[i:i + 1], eps, 10, starts[j:j + 1], norm=norm,
                objective=_dlr_targeted, target=_clean_target(m, x[i:i + 1], k))
            broken_by[k - 2] += fooled[i]
    assert broken_by[1] > 0, f"seed={SEED}: the second target broke nothing, {broken_by}"
    _assert_agrees(ours, ref, fooled, True, f"APGDT two targets {norm} eps={eps} seed={SEED}")
