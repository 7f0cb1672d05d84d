"""HopSkipJump (Chen, Jordan & Wainwright 2020): a decision-based attack, L2 and L-inf, batched.

The model is only asked for its decision (adversarial or not).  Per sample:

1. initialisation: uniform random images until one is adversarial (at most
   ``init_size``; a sample that none fools starts from the nearest image of the
   batch that the model already puts in another class, or in the target class:
   their decisions are known from the clean check, so this costs no query),
   then a bisection on the segment from the image to it (threshold 0.001), then
   the projection onto the boundary below;
2. each iteration ``i`` (1-based) estimates the boundary's normal at the
   current point from ``min(init_evals * sqrt(i), max_evals)`` random probes at
   radius ``delta`` (sign of the decision, baseline-subtracted mean of the
   directions), steps along it (L2: the unit normal; L-inf: its sign) by
   ``dist / sqrt(i)`` halved until the point is adversarial, and bisects back
   to the boundary (L2: on the segment to the image; L-inf: shrinking the box
   around the image), to a threshold ``theta`` (L2: ``gamma / d^1.5``, L-inf:
   ``gamma / d^2``, with d the input size), as in the authors' reference code.

Batching: every sample takes each phase at once, in forwards of at most
``batch_rows`` rows; a sample leaves a bisection when its own interval is
small enough.  Every row of the model's input is one query of its sample,
counted in ``atk.queries`` (int64 (B,), the last call; the clean check counts
one).  ``max_queries`` is never exceeded: a probe set is cut to what is left,
and a sample with no query left stops where it is.  The current point is always
a queried adversarial point, so stopping anywhere is safe.  A zero gradient
estimate (every probe with the same decision and directions cancelling) gives
no step, never NaN.

The result per sample is the adversarial point of smallest distance found
(best-so-far, so it never grows; ``atk.history`` holds its distance after each
iteration), or the image itself where none was found.  Randomness comes from
per-sample generators, sample ``i`` seeded with ``seed + i`` (:mod:`.streams`):
each sample's result does not depend on the others in the batch.  Units: pixel
space [0, 1].
"""

from __future__ import annotations

import math

import torch

from .._forward_batch import rows_per_forward
from ..validation import check_choice, check_int, check_positive
from .minimum_norm import MinimumNormAttack, perturbation_norms
from .streams import SampleStreams

__all__ = ["HopSkipJump"]

_INIT_THRESHOLD = 1e-3    # bisection threshold of the initialisation (reference code)
_MAX_HALVINGS = 30        # step-size halvings before a step is given up
_GUARD = 1e-12


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class HopSkipJump(MinimumNormAttack):
    """HopSkipJump, untargeted or targeted (ART's argument names where they exist).

    Args:
        model: the classifier (only its argmax is read).
        norm: "L2" or "Linf". Default "L2".
        max_queries: per-sample query budget (>= 1), never exceeded. Default 5000.
        steps: maximum iterations (>= 1). Default 64.
        init_evals: probes of the first gradient estimate (>= 1). Default 100.
        max_evals: most probes of one estimate (>= 1). Default 10000.
        init_size: random images tried for an adversarial start (>= 1). Default 100.
        gamma: scales the bisection threshold theta (> 0). Default 1.
        max_batch_size: rows per model forward (>= 1). Default None: 4096 on an
            accelerator, on a CPU as many as hold 2^17 input values (see
            ``modelsec_fast._forward_batch``); resolved per call as ``batch_rows``.
        seed: seed of the private generator. Default 0.

    Raises:
        ValueError / TypeError: a value out of range (names the argument).
    """

    gradient_free = True

    def __init__(self, model, norm: str = "L2", max_queries: int = 5000, steps: int = 64,
                 init_evals: int = 100, max_evals: int = 10000, init_size: int = 100,
                 gamma: float = 1.0, max_batch_size: int | None = None, seed: int = 0):
        super().__init__("HopSkipJump", model)
        self.norm = check_choice("norm", norm, ("L2", "Linf"))
        self.max_queries = check_int("max_queries", max_queries, 1, allow_integral_float=True)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.init_evals = check_int("init_evals", init_evals, 1, allow_integral_float=True)
        self.max_evals = check_int("max_evals", max_evals, 1, allow_integral_float=True)
        self.init_size = check_int("init_size", init_size, 1, allow_integral_float=True)
        self.gamma = check_positive("gamma", gamma)
        self.max_batch_size = None if max_batch_size is None else check_int(
            "max_batch_size", max_batch_size, 1, allow_integral_float=True)
        self.batch_rows = self.max_batch_size
        self.seed = check_int("seed", seed)
        self.queries: torch.Tensor | None = None
        self.history: list[torch.Tensor] = []
        self.supported_mode = ["default", "targeted"]

    # ------------------------------------------------------------ decisions
    @torch.no_grad()
    def _decide(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Bool (n,): is each of ``points`` (n, ...) adversarial for its sample ``rows`` (n,)?

        One query per point, added to ``self.queries``.
        """
        out = []
        for part, r in zip(points.split(self.batch_rows), rows.split(self.batch_rows)):
            pred = self.get_logits(part).argmax(1)
            out.append(pred == self._cls[r] if self.targeted else pred != self._cls[r])
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=rows.device)

    def _left(self, rows: torch.Tensor) -> torch.Tensor:
        """int64 (n,): queries each of ``rows`` may still make."""
        return self.max_queries - self.queries[rows]

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return perturbation_norms(a, b, self.norm)

    # ----------------------------------------------------------- bisection
    def _bisect(self, rows, x0, point, threshold, *, blend: bool) -> torch.Tensor:
        """Move each adversarial ``point`` (n, ...) towards ``x0`` to the boundary.

        ``blend``: search alpha in [0, 1] on ``(1 - alpha) x0 + alpha point``;
        otherwise (L-inf) search the box radius alpha in [0, ||point - x0||_inf]
        and clip ``point`` to it.  Each row stops when its interval is at most
        its ``threshold`` (n,) or its budget is spent; returns the projection at
        the adversarial end of the interval.
        """
        def project(alpha, x, p):
            if blend:
                return (1 - _view(alpha, x)) * x + _view(alpha, x) * p
            return torch.min(torch.max(p, x - _view(alpha, x)), x + _view(alpha, x))

        high = torch.ones(rows.shape[0], dtype=x0.dtype, device=x0.device) if blend \
            else (point - x0).flatten(1).abs().amax(1)
        low = torch.zeros_like(high)
        while True:
            go = ((high - low) > threshold) & (self._left(rows) > 0)
            if not bool(go.any()):
                break
            sub = go.nonzero().flatten()
            mid = (high[sub] + low[sub]) / 2
            ok = self._decide(project(mid, x0[sub], point[sub]), rows[sub])
            high[sub] = torch.where(ok, mid, high[sub])
            low[sub] = torch.where(ok, low[sub], mid)
        return project(high, x0, point)

    # ------------------------------------------------------------- phases
    def _initialise(self, rows, x0, streams) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows found, their adversarial start on the boundary); random images + bisection."""
        found_rows, found_points = [], []
        todo, x_todo = rows, x0
        for _ in range(self.init_size):
            can = self._left(todo) > 0
            todo, x_todo = todo[can], x_todo[can]
            if todo.numel() == 0:
                break
            noise = streams.draw(todo, x_todo.shape[1:], "uniform", x0.dtype)
            ok = self._decide(noise, todo)
            found_rows.append(todo[ok])
            found_points.append(noise[ok])
            todo, x_todo = todo[~ok], x_todo[~ok]
        if todo.numel():
            rows_b, points_b = self._batch_starts(todo)
            found_rows.append(rows_b)
            found_points.append(points_b)
        found_rows = [r for r in found_rows if r.numel()]
        if not found_rows:
            return rows[:0], x0[:0]
        rows_f, noise = torch.cat(found_rows), torch.cat(found_points)
        order = rows_f.argsort()
        rows_f, noise = rows_f[order], noise[order]
        x_f = self._x0[rows_f]
        thr = torch.full((rows_f.numel(),), _INIT_THRESHOLD, dtype=x0.dtype, device=x0.device)
        start = self._bisect(rows_f, x_f, noise, thr, blend=True)
        return rows_f, self._bisect(rows_f, x_f, start, self._threshold(x_f, start),
                                    blend=self.norm == "L2")

    def _batch_starts(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``rows`` no random image fooled: the nearest image of the batch whose clean
        decision is already adversarial for them (another class; the target class).

        Those decisions were queried by the clean check: no new query.
        """
        flat = self._x0.flatten(1)
        cls = self._cls[rows][:, None]
        usable = self._pred[None, :] == cls if self.targeted else self._pred[None, :] != cls
        dist = torch.cdist(flat[rows], flat).masked_fill(~usable, math.inf)
        nearest = dist.argmin(1)
        has = torch.isfinite(dist.gather(1, nearest[:, None]).squeeze(1))
        return rows[has], self._x0[nearest[has]]

    def _threshold(self, x0, point) -> torch.Tensor:
        """(n,) the bisection threshold: theta (L2), min(theta * dist, theta) (L-inf)."""
        n = x0.shape[0]
        if self.norm == "L2":
            return torch.full((n,), self._theta, dtype=x0.dtype, device=x0.device)
        return torch.clamp(self._distance(point, x0) * self._theta, max=self._theta)

    @torch.no_grad()
    def _estimate(self, rows, cur, delta, n_evals, streams) -> torch.Tensor:
        """Unit-free estimate (n, ...) of the boundary normal at ``cur``; zero where undetermined."""
        grads = torch.zeros_like(cur)
        left = self._left(rows)
        per_forward = max(1, self.batch_rows // n_evals)
        for lo in range(0, rows.numel(), per_forward):
            r, c, d = rows[lo:lo + per_forward], cur[lo:lo + per_forward], delta[lo:lo + per_forward]
            shape = (r.numel(), n_evals) + c.shape[1:]
            rv = streams.draw(r, shape[1:], "normal" if self.norm == "L2" else "symmetric", c.dtype)
            rv /= rv.flatten(2).norm(dim=2).clamp_min(_GUARD).view(shape[:2] + (1,) * (c.dim() - 1))
            dd = d.view((-1, 1) + (1,) * (c.dim() - 1))
            probes = torch.clamp(c[:, None] + dd * rv, 0.0, 1.0)
            rv = (probes - c[:, None]) / dd
            # A sample short of queries uses only its first `left` probes.
            valid = torch.arange(n_evals, device=c.device)[None, :] < left[lo:lo + per_forward, None]
            fval = torch.zeros(valid.shape, dtype=c.dtype, device=c.device)
            owners = r[:, None].expand_as(valid)
            if bool(valid.all()):  # the usual case: no masked copy of every probe
                fval = self._decide(probes.flatten(0, 1), owners.flatten()).to(c.dtype)
                fval = fval.view(valid.shape)
            else:
                fval[valid] = self._decide(probes[valid], owners[valid]).to(c.dtype)
            fval = (2 * fval - 1) * valid
            count = valid.sum(1).clamp_min(1).to(c.dtype)
            mean = fval.sum(1) / count
            unanimous = (mean.abs() == 1)[:, None]
            # Baseline subtraction, unless every probe agreed (then the mean direction, signed).
            weights = torch.where(unanimous, mean[:, None].expand_as(fval), fval - mean[:, None])
            weights = weights * valid / count[:, None]
            grads[lo:lo + per_forward] = (weights.view(weights.shape + (1,) * (c.dim() - 1)) * rv).sum(1)
        if self.norm == "Linf":
            return grads.sign()
        norms = grads.flatten(1).norm(dim=1)
        return grads / _view(norms.clamp_min(_GUARD), grads)

    def _step(self, rows, cur, update, dist, it) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric step-size search: (bool (n,) moved, the new adversarial points)."""
        eps = dist / math.sqrt(it)
        moved = torch.zeros(rows.numel(), dtype=torch.bool, device=cur.device)
        new = cur.clone()
        searching = update.flatten(1).abs().amax(1) > 0
        for _ in range(_MAX_HALVINGS):
            searching &= self._left(rows) > 0
            if not bool(searching.any()):
                break
            sub = searching.nonzero().flatten()
            cand = torch.clamp(cur[sub] + _view(eps[sub], cur) * update[sub], 0.0, 1.0)
            ok = self._decide(cand, rows[sub])
            new[sub[ok]] = cand[ok]
            moved[sub[ok]] = True
            searching[sub[ok]] = False
            eps[sub[~ok]] /= 2
        return moved, new

    # --------------------------------------------------------------- main
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, dev = images.shape[0], images.device
        self.batch_rows = self.max_batch_size or rows_per_forward(images.shape[1:], dev)
        self._cls = self.get_target_label(images, labels) if self.targeted else labels
        self._x0 = images
        d = images[0].numel()
        self._theta = self.gamma / (d * math.sqrt(d)) if self.norm == "L2" else self.gamma / d ** 2
        self.queries = torch.zeros(b, dtype=torch.int64, device=dev)
        self.history = []
        streams = SampleStreams(self.seed, b, dev)
        with torch.no_grad():
            logits = self.get_logits(images)
        self.check_labels_against_logits(logits, self._cls)
        self.queries += 1
        pred = self._pred = logits.argmax(1)
        adversarial = pred == self._cls if self.targeted else pred != self._cls
        best = images.clone()
        best_dist = torch.where(adversarial, torch.zeros(b, dtype=images.dtype, device=dev),
                                torch.full((b,), math.inf, dtype=images.dtype, device=dev))
        todo = (~adversarial).nonzero().flatten()
        try:
            rows, cur = self._initialise(todo, images[todo], streams)
            if rows.numel():
                x0 = images[rows]
                dist = self._distance(cur, x0)
                best[rows], best_dist[rows] = cur, dist
                self._iterate(rows, x0, cur, dist, best, best_dist, streams)
        finally:
            del self._cls, self._x0, self._pred
        return best

    def _iterate(self, rows, x0, cur, dist, best, best_dist, streams) -> None:
        """The main loop on the samples with an adversarial start; updates best in place."""
        d = x0[0].numel()
        for it in range(1, self.steps + 1):
            alive = self._left(rows) > 0
            rows, x0, cur, dist = rows[alive], x0[alive], cur[alive], dist[alive]
            if rows.numel() == 0:
                break
            if it == 1:
                delta = torch.full_like(dist, 0.1)
            else:
                scale = math.sqrt(d) if self.norm == "L2" else d
                delta = (scale * self._theta * dist).clamp_min(_GUARD)
            n_evals = min(int(self.init_evals * math.sqrt(it)), self.max_evals)
            update = self._estimate(rows, cur, delta, n_evals, streams)
            moved, cand = self._step(rows, cur, update, dist, it)
            if bool(moved.any()):
                sub = moved.nonzero().flatten()
                x_sub = x0[sub]
                cur[sub] = self._bisect(rows[sub], x_sub, cand[sub],
                                        self._threshold(x_sub, cand[sub]),
                                        blend=self.norm == "L2")
                dist[sub] = self._distance(cur[sub], x_sub)
            better = dist < best_dist[rows]
            best[rows[better]] = cur[better]
            best_dist[rows[better]] = dist[better]
            self.history.append(best_dist.clone())
