"""Functionally equivalent extraction of a one-hidden-layer ReLU network
(Jagielski et al. 2020, with the critical-point search of Carlini et al. 2020).

The victim ``f(x) = W2 relu(W1 x + b1) + b2`` is piecewise linear. Along a line
``x0 + t v`` it bends exactly where a hidden unit changes state, once per unit.

1. Critical points: on every line, intervals are refined in batched rounds; an
   interval whose two end slopes meet at a point that the victim confirms holds
   exactly one bend, located where the two lines intersect (exact to rounding).
2. Each bend x* gives its unit: the jump of the Jacobian across it,
   ``J(x* + dv) - J(x* - dv) = a u^T``, is rank one; u (unit norm) is the row of
   W1 up to a positive scale, a the matching column of W2 times that scale, and
   ``-u . x*`` the bias. Bends of the same unit on other lines are merged.
3. Signs: with every unit written as ``relu(u x + beta)``, least squares on
   random queries fits ``sum_j a_j relu(u_j x + beta_j) + M x + m``; a unit whose
   true sign is negative contributes ``-a_j (u_j x + beta_j)`` to ``M x + m``, so
   ``M = -sum_j t_j a_j u_j^T`` with t_j in {0, 1} gives the signs.
4. The output layer is refitted by least squares and checked on fresh queries.

From probabilities the outputs read are the centred log-probabilities
``log p - mean(log p)`` (the logits up to a per-input constant, still piecewise
linear), so the recovered network gives the victim's probabilities. Applies to
victims answering logits or (unsaturated) probabilities; deeper networks are out
of scope. Every step is batched over lines, intervals and bends.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import nn

from ..validation import check_int, check_positive
from .results import ReLUExtractionResult
from .victim import HeldOut, Victim

__all__ = ["FunctionallyEquivalentExtraction", "ExtractedReLUNetwork"]


class ExtractedReLUNetwork(nn.Module):
    """``second(relu(first(x))) (+ skip(x))`` in float64 on flattened inputs."""

    def __init__(self, w1, b1, w2, b2, skip: torch.Tensor | None = None):
        super().__init__()
        self.first = nn.Linear(w1.shape[1], w1.shape[0], dtype=torch.float64)
        self.second = nn.Linear(w2.shape[1], w2.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.first.weight.copy_(w1)
            self.first.bias.copy_(b1)
            self.second.weight.copy_(w2)
            self.second.bias.copy_(b2)
        self.register_buffer("skip", skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1).to(torch.float64)
        out = self.second(torch.relu(self.first(x)))
        return out if self.skip is None else out + x @ self.skip.T


class FunctionallyEquivalentExtraction:
    """Recovers a one-hidden-layer ReLU victim exactly from its logits or probabilities.

    Args:
        victim: a :class:`Victim` answering ``"logits"`` or ``"probabilities"``.
        input_shape: one input's shape (the victim sees (B, *input_shape)).
        domain: ``(low, high)``: lines start, and the fit and the check sample, in
            this box (e.g. (0, 1) for images); None: in N(0, scale^2 I). Lines have
            half-length ``line_range`` and leave the box, so the victim must answer
            any real input.
        lines: random lines searched first; more (up to ``max_lines``) are added
            while the fit is not exact.
        grid: initial intervals per line.
        scale, line_range: the unbounded domain's input scale and line half-length
            (default ``20 * scale * sqrt(d)``).
        query_dtype: dtype of the inputs sent to the victim (float64 for exactness).
        max_hidden: the most hidden units expected; a line that bends more often
            means the victim is not such a network, and the attack stops.
        verify_points: fresh random queries the result is checked on.
        tol: relative tolerance of the linearity checks (float64 rounding: 1e-7).
        seed: the lines and the random fit and verification points.

    Raises:
        ValueError: a victim answering labels or top-k (no piecewise-linear output).
    """

    name = "functionally_equivalent"

    def __init__(self, victim: Victim, *, input_shape: Sequence[int],
                 domain: tuple[float, float] | None = None, lines: int = 3,
                 max_lines: int = 12, grid: int = 256, scale: float = 1.0,
                 line_range: float | None = None, query_dtype: torch.dtype = torch.float64,
                 max_hidden: int = 512, verify_points: int = 1000, tol: float = 1e-7,
                 seed: int = 0):
        if not isinstance(victim, Victim):
            raise TypeError(f"victim must be a Victim, got {type(victim).__name__}")
        if victim.output not in ("logits", "probabilities"):
            raise ValueError("functionally equivalent extraction needs a victim answering "
                             f"'logits' or 'probabilities', got output={victim.output!r}")
        self.victim = victim
        self.input_shape = tuple(check_int("input_shape", s, 1) for s in input_shape)
        self.d = math.prod(self.input_shape)
        if domain is not None:
            lo, hi = (float(v) for v in domain)
            if not lo < hi:
                raise ValueError(f"domain must be (low, high) with low < high, got {domain}")
            domain = (lo, hi)
        self.domain = domain
        self.lines = check_int("lines", lines, 1)
        self.max_lines = check_int("max_lines", max_lines, self.lines)
        self.grid = check_int("grid", grid, 2)
        self.scale = check_positive("scale", scale)
        self.line_range = (20.0 * self.scale * math.sqrt(self.d) if line_range is None
                           else check_positive("line_range", line_range))
        self.query_dtype = query_dtype
        self.max_hidden = check_int("max_hidden", max_hidden, 1)
        self.verify_points = check_int("verify_points", verify_points, 1)
        self.tol = check_positive("tol", tol)
        self.seed = check_int("seed", seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    # ------------------------------------------------------------ the oracle
    def _f(self, x: torch.Tensor) -> torch.Tensor:
        """Victim outputs (n, K') in float64 for flat inputs x (n, d): logits, or the
        centred log-probabilities."""
        out = self.victim.query(x.reshape(-1, *self.input_shape).to(self.query_dtype))
        out = out.to(torch.float64)
        if self.victim.output == "probabilities":
            out = out.log()
            if not bool(torch.isfinite(out).all()):
                raise ValueError("the victim's probabilities underflow to 0; functionally "
                                 "equivalent extraction needs logits or unsaturated "
                                 "probabilities")
            out = out - out.mean(1, keepdim=True)
        return out

    def _random_points(self, n: int) -> torch.Tensor:
        if self.domain is None:
            return self.scale * torch.randn(n, self.d, generator=self.generator,
                                            dtype=torch.float64)
        lo, hi = self.domain
        return lo + (hi - lo) * torch.rand(n, self.d, generator=self.generator,
                                           dtype=torch.float64)

    def _line(self) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        """A random line through a random domain point: (x0 (d,), v (d,) unit norm,
        -line_range, line_range). Lines leave a box domain: a hidden unit may bend
        inside the box only along lines that cross it elsewhere."""
        x0 = self._random_points(1)[0]
        v = torch.randn(self.d, generator=self.generator, dtype=torch.float64)
        return x0, v / v.norm(), -self.line_range, self.line_range

    def _fit_points(self, n: int) -> torch.Tensor:
        """``n`` points for the least-squares fits: half in the domain, half on the
        searched lines, which cross every hyperplane found (so every unit is seen
        both on and off, even one that never changes state inside the domain)."""
        on_lines = n // 2
        which = torch.randint(len(self._searched), (on_lines,), generator=self.generator)
        x0 = torch.stack([self._searched[i][0] for i in which.tolist()])
        v = torch.stack([self._searched[i][1] for i in which.tolist()])
        t = (2 * torch.rand(on_lines, 1, generator=self.generator, dtype=torch.float64) - 1)
        return torch.cat([self._random_points(n - on_lines), x0 + t * self.line_range * v])

    # ------------------------------------------------------------ step 1: bends
    def _bends(self, x0: torch.Tensor, v: torch.Tensor, tmin: float, tmax: float
               ) -> torch.Tensor:
        """Parameters t (n,) of every bend found on the line x0 + t v, sorted."""
        t = torch.linspace(tmin, tmax, self.grid + 1, dtype=torch.float64)
        a, b = t[:-1], t[1:]
        width = float(b[0] - a[0])
        eps = 1e-4 * width
        # Values at the grid points and slopes just inside each interval.
        pts = torch.cat([t, a + eps, b - eps])
        vals = self._f(x0 + pts[:, None] * v)
        n = len(t)
        f_grid, f_in_a, f_in_b = vals[:n], vals[n:2 * n - 1], vals[2 * n - 1:]
        fa, fb = f_grid[:-1], f_grid[1:]
        sa, sb = (f_in_a - fa) / eps, (fb - f_in_b) / eps
        found = []
        for _ in range(60):
            if len(a) == 0:
                break
            scale_f = 1.0 + fa.abs().amax(1) + fb.abs().amax(1)
            # Linear on [a, b]: each end's slope predicts the other end.
            linear = ((fb - fa - sa * (b - a)[:, None]).abs().amax(1) <= self.tol * scale_f) & \
                     ((fb - fa - sb * (b - a)[:, None]).abs().amax(1) <= self.tol * scale_f)
            # Where the two end lines meet, least squares over the outputs.
            ds = sa - sb
            denom = (ds * ds).sum(1)
            rhs = fb - fa + sa * a[:, None] - sb * b[:, None]
            tstar = (ds * rhs).sum(1) / torch.where(denom > 0, denom, torch.ones_like(denom))
            inside = (tstar > a) & (tstar < b) & ~linear & (denom > 0)
            tq = torch.where(inside, tstar, (a + b) / 2)
            ft = self._f(x0 + tq[:, None] * v)
            err = torch.maximum((ft - fa - sa * (tq - a)[:, None]).abs().amax(1),
                                (ft - fb - sb * (tq - b)[:, None]).abs().amax(1))
            # One bend exactly when the victim sits on both end lines where they meet.
            single = inside & (err <= 10 * self.tol * scale_f)
            found.append(tq[single])
            split = ~linear & ~single
            if not bool(split.any()):
                break
            if int(split.sum()) > 4 * self.grid:
                # A ReLU network bends once per hidden unit along a line; a victim that
                # needs ever more intervals is curved, and the search would not end.
                raise RuntimeError(
                    f"the victim is not piecewise linear along a line ({int(split.sum())} "
                    "intervals still bend after refining): not a one-hidden-layer ReLU "
                    "network")
            a, b, fa, fb, sa, sb = a[split], b[split], fa[split], fb[split], sa[split], sb[split]
            m = (a + b) / 2
            eps = 1e-4 * (b - a)
            vals = self._f(x0 + torch.cat([m, m - eps, m + eps])[:, None] * v)
            k = len(m)
            fm, fm_left, fm_right = vals[:k], vals[k:2 * k], vals[2 * k:]
            s_left, s_right = (fm - fm_left) / eps[:, None], (fm_right - fm) / eps[:, None]
            a = torch.cat([a, m])
            b = torch.cat([m, b])
            fa, fb = torch.cat([fa, fm]), torch.cat([fm, fb])
            sa, sb = torch.cat([sa, s_right]), torch.cat([s_left, sb])
        return torch.sort(torch.cat(found)).values if found else torch.empty(0, dtype=torch.float64)

    # ------------------------------------------------------------ step 2: units
    def _units(self, x0, v, ts, tmin, tmax):
        """(u (n, d) unit rows, beta (n,)): the hyperplane ``u x + beta = 0`` of the unit
        that bends at each of ``ts``, from the rank-one jump of the Jacobian."""
        edges = torch.cat([torch.tensor([tmin], dtype=torch.float64), ts,
                           torch.tensor([tmax], dtype=torch.float64)])
        gap = torch.minimum(edges[1:-1] - edges[:-2], edges[2:] - edges[1:-1])
        delta = 0.05 * gap
        xs = x0 + ts[:, None] * v
        h = 1e-3 * delta
        sides = torch.cat([xs + delta[:, None] * v, xs - delta[:, None] * v])  # (2n, d)
        hh = torch.cat([h, h])
        eye = torch.eye(self.d, dtype=torch.float64)
        probes = (sides[:, None, :] + hh[:, None, None] * eye[None]).reshape(-1, self.d)
        base = self._f(sides)                                   # (2n, K')
        moved = self._f(probes).reshape(len(sides), self.d, -1)  # (2n, d, K')
        jac = (moved - base[:, None, :]) / hh[:, None, None]     # (2n, d, K') = J^T
        n = len(ts)
        jump = (jac[:n] - jac[n:]).transpose(1, 2)               # (n, K', d)
        _, _, vh = torch.linalg.svd(jump, full_matrices=False)
        u = vh[:, 0, :]
        return u, -(u * xs).sum(1)

    # ------------------------------------------------------------ the attack
    def extract(self, *, held_out: HeldOut | None = None) -> ReLUExtractionResult:
        """Runs the extraction; see the module docstring. Spends the victim's queries.

        Raises:
            QueryBudgetExceeded: the budget ran out before the network was recovered.
            RuntimeError: no consistent network was found (the victim is not a
                one-hidden-layer ReLU network, or saturates).
        """
        started = time.perf_counter()
        used_before = self.victim.queries_used
        orient = torch.randn(self.d, generator=self.generator, dtype=torch.float64)
        units: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._searched: list[tuple[torch.Tensor, torch.Tensor]] = []
        lines_done, fit = 0, None
        while lines_done < self.max_lines:
            for _ in range(self.lines if lines_done == 0 else 1):
                x0, v, tmin, tmax = self._line()
                ts = self._bends(x0, v, tmin, tmax)
                if len(ts) > self.max_hidden:
                    raise RuntimeError(
                        f"the victim is not piecewise linear with at most max_hidden="
                        f"{self.max_hidden} pieces along a line ({len(ts)} bends found): not "
                        "a one-hidden-layer ReLU network of that size")
                if len(ts):
                    units.append(self._units(x0, v, ts, tmin, tmax))
                self._searched.append((x0, v))
                lines_done += 1
            u, beta = _merge(units, orient)
            fit = self._fit(u, beta)
            if fit is not None:
                break
        if fit is None:
            raise RuntimeError(
                f"no functionally equivalent network after {lines_done} lines: the victim "
                "is not a one-hidden-layer ReLU network (or its outputs saturate)")
        model, w1, b1, w2, b2, has_skip = fit
        check = self._random_points(self.verify_points)
        with torch.no_grad():
            max_error = float((model(check) - self._f(check)).abs().max())
        fidelity = held_out.scores(model)[1] if held_out is not None else None
        return ReLUExtractionResult(
            model=model, first_weight=w1, first_bias=b1, second_weight=w2, second_bias=b2,
            units_found=int(w1.shape[0]), max_error=max_error,
            queries_used=self.victim.queries_used - used_before, budget=self.victim.budget,
            verify_points=self.verify_points, fidelity=fidelity, has_skip=has_skip,
            seconds=time.perf_counter() - started)

    def _fit(self, u, beta):
        """Signs and output layer by least squares; None when the fit is not exact."""
        n = 2 * (len(u) + self.d + 1) + 32
        x = self._fit_points(n)
        target = self._f(x)
        z = x @ u.T + beta
        ones = torch.ones(n, 1, dtype=torch.float64)
        coef = torch.linalg.lstsq(torch.cat([torch.relu(z), x, ones], 1), target).solution
        scale = 1.0 + target.abs().max()
        # A bend that no unit makes (two close bends read as one) gets no weight: drop it.
        keep = coef[:len(u)].abs().amax(1) > 1e-6 * (1.0 + coef[:len(u)].abs().max())
        if not bool(keep.all()):
            u, beta = u[keep], beta[keep]
            z = x @ u.T + beta
            coef = torch.linalg.lstsq(torch.cat([torch.relu(z), x, ones], 1), target).solution
        h = len(u)
        a, m_lin = coef[:h], coef[h:h + self.d].T                        # (h, K'), (K', d)
        # M = -sum_j t_j a_j u_j^T: t_j = 1 marks a unit active on the side u_j x + beta_j < 0.
        basis = (a[:, :, None] * u[:, None, :]).reshape(h, -1).T             # (K'd, h)
        t = torch.linalg.lstsq(basis, -m_lin.reshape(-1, 1)).solution[:, 0] if h else \
            torch.zeros(0, dtype=torch.float64)
        sign = torch.where(t > 0.5, -1.0, 1.0).to(torch.float64)
        w1, b1 = sign[:, None] * u, sign * beta
        hidden = torch.relu(x @ w1.T + b1)
        for with_skip in (False, True):
            feats = torch.cat([hidden, x, ones] if with_skip else [hidden, ones], 1)
            sol = torch.linalg.lstsq(feats, target).solution
            residual = float((feats @ sol - target).abs().max())
            if residual <= 100 * self.tol * scale:
                w2, b2 = sol[:h].T.contiguous(), sol[-1]
                skip = sol[h:h + self.d].T.contiguous() if with_skip else None
                return (ExtractedReLUNetwork(w1, b1, w2, b2, skip).eval(), w1, b1, w2, b2,
                        with_skip)
        return None


def _merge(units, orient):
    """Merges the bends of every line into distinct units (same hyperplane)."""
    if not units:
        return torch.empty(0, len(orient), dtype=torch.float64), torch.empty(0, dtype=torch.float64)
    u = torch.cat([x[0] for x in units])
    beta = torch.cat([x[1] for x in units])
    # One orientation per hyperplane (the sign is recovered later, in _fit).
    flip = (u @ orient) < 0
    u = torch.where(flip[:, None], -u, u)
    beta = torch.where(flip, -beta, beta)
    same = ((u @ u.T) > 1 - 1e-6) & ((beta[:, None] - beta[None, :]).abs()
                                     <= 1e-4 * (1 + beta.abs()[:, None]))
    group = torch.full((len(u),), -1, dtype=torch.long)
    for i in range(len(u)):  # at most a few hundred bends
        if group[i] < 0:
            group[same[i] & (group < 0)] = i
    keys = torch.unique(group)
    pick = torch.stack([(group == k).nonzero()[0, 0] for k in keys])
    return u[pick], beta[pick]
