"""Square Attack (Andriushchenko et al. 2020): score-based random search, L-inf and L2.

Gradient-free: it only reads the model's logits, so masked or obfuscated
gradients do not stop it.  Each query proposes a change inside a random
square window and keeps it if the margin loss decreases (or the sample
becomes adversarial).  The window's area is a fraction ``p`` of the image
that shrinks on the paper's schedule (rescaled to ``n_queries`` when
``resc_schedule``).

Differences from torchattacks 3.5.1, none of which weakens the attack:

* L-inf windows are drawn per sample (torchattacks shares one window across
  the batch), every position including the last row/column can be drawn, and
  a proposal that would leave the window unchanged flips its signs instead of
  wasting the query (as in the paper's reference code);
* the L2 start tiles the whole image with s = h // 5 squares, centred
  (the paper's code starts at (h - 5s) // 2: the same whenever h // s == 5,
  as at 28, 32 and 224 pixels, while on small images such as 8x8 it leaves
  a border empty);
* randomness comes from a private ``torch.Generator`` seeded with ``seed``:
  reproducible per call, torch's global RNG untouched;
* samples that stay robust get the lowest-loss point found, not the clean image.

Images must be (B, C, H, W) in pixel space [0, 1]; ``eps`` in that space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..validation import check_choice, check_in_range, check_int, check_non_negative
from .base import Attack
from .restarts import RestartRun, restart_on_unbroken

__all__ = ["Square"]

_GUARD = 1e-12


def p_schedule(p_init: float, it: int, n_queries: int, rescale: bool) -> float:
    """Fraction of pixels changed at iteration ``it`` (the paper's schedule)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                           (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _pyramid(h: int, w: int, device) -> torch.Tensor:
    """(h, w) nested squares around the centre, weight 1/(k+1)^2 per ring k."""
    ci, cj = h // 2, w // 2
    rings = max(ci + 1, cj + 1)
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    ring = torch.maximum((i - ci).abs(), (j - cj).abs())
    weights = 1.0 / torch.arange(1, rings + 1, device=device, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{m >= k} weights[m]
    return tail[ring.clamp_max(rings - 1)]


def square_pattern(s: int, device, gen: torch.Generator) -> torch.Tensor:
    """The L2 proposal of size (s, s): +pyramid on top, -pyramid below, unit norm."""
    top = _pyramid(s // 2, s, device)
    bottom = -_pyramid(s - s // 2, s, device)
    top = top / top.norm().clamp_min(_GUARD) if top.numel() else top
    bottom = bottom / bottom.norm().clamp_min(_GUARD)
    eta = torch.cat([top, bottom], 0)
    eta = eta / eta.norm().clamp_min(_GUARD)
    if bool(torch.rand((), generator=gen, device=device) > 0.5):
        eta = eta.t()
    return eta


def _random_signs(shape, gen, device, dtype) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype).mul_(2).sub_(1)


class Square(Attack):
    """Square Attack, L-inf or L2, untargeted or targeted (torchattacks API).

    Args:
        model: the classifier (returns logits).
        norm: "Linf" or "L2". Default "Linf".
        eps: budget in pixel space (>= 0). Default 8/255.
        n_queries: queries per restart (>= 1). Default 5000.
        n_restarts: restarts on the samples not yet broken. Default 1.
        p_init: initial fraction of pixels per window, in (0, 1]. Default 0.8.
        loss: "margin" or "ce" (the value accepted proposals must decrease). Default "margin".
        resc_schedule: rescale the p schedule to ``n_queries``. Default True.
        seed: seed of the private generator. Default 0.
        verbose: accepted for torchattacks compatibility (prints nothing).
    """

    gradient_free = True

    def __init__(self, model, norm: str = "Linf", eps: float = 8 / 255, n_queries: int = 5000,
                 n_restarts: int = 1, p_init: float = 0.8, loss: str = "margin",
                 resc_schedule: bool = True, seed: int = 0, verbose: bool = False):
        super().__init__("Square", model)
        self.norm = check_choice("norm", norm, ("Linf", "L2"))
        self.loss = check_choice("loss", loss, ("margin", "ce"))
        self.eps = check_non_negative("eps", eps)
        self.n_queries = check_int("n_queries", n_queries, 1, allow_integral_float=True)
        self.n_restarts = check_int("n_restarts", n_restarts, 1, allow_integral_float=True)
        self.p_init = check_in_range("p_init", p_init, 0.0, 1.0, low_open=True)
        self.rescale_schedule = bool(resc_schedule)
        self.seed = check_int("seed", seed)
        self.verbose = verbose
        self.supported_mode = ["default", "targeted"]

    # ------------------------------------------------------------ objective
    @torch.no_grad()
    def margin_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(margin, loss), both (B,): margin <= 0 iff success; proposals must lower loss.

        ``y`` holds the true labels (untargeted) or the targets (targeted).
        """
        logits = self.get_logits(x).float()
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        z_other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        margin = z_other - z_y if self.targeted else z_y - z_other
        if self.loss == "margin":
            return margin, margin
        xent = F.cross_entropy(logits, y, reduction="none")
        return margin, (xent if self.targeted else -xent)

    # ----------------------------------------------------------------- runs
    def _linf_init(self, x, gen):
        b, c, _, w = x.shape
        return (x + self.eps * _random_signs((b, c, 1, w), gen, x.device, x.dtype)).clamp_(0, 1)

    def _linf_proposal(self, x, best, s, gen):
        b, c, h, w = x.shape
        dev = x.device
        vh = torch.randint(0, h - s + 1, (b, 1, 1, 1), generator=gen, device=dev)
        vw = torch.randint(0, w - s + 1, (b, 1, 1, 1), generator=gen, device=dev)
        rows = torch.arange(h, device=dev).reshape(1, 1, h, 1)
        cols = torch.arange(w, device=dev).reshape(1, 1, 1, w)
        mask = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        signs = _random_signs((b, c, 1, 1), gen, dev, x.dtype)
        new = torch.where(mask, (x + self.eps * signs).clamp(0, 1), best)
        # A proposal equal to the current window wastes a query: flip it.
        unchanged = ((new - best).abs() * mask).flatten(1).amax(1) < 1e-7
        if bool(unchanged.any()):
            flipped = torch.where(mask, (x - self.eps * signs).clamp(0, 1), best)
            new = torch.where(unchanged.reshape(-1, 1, 1, 1), flipped, new)
        return new

    def _l2_init(self, x, gen):
        b, c, h, w = x.shape
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start_h, start_w = (h - s * (h // s)) // 2, (w - s * (w // s)) // 2
        for vh in range(start_h, start_h + s * (h // s), s):
            for vw in range(start_w, start_w + s * (w // s), s):
                eta = square_pattern(s, x.device, gen).to(x.dtype)
                delta[:, :, vh:vh + s, vw:vw + s] += eta * _random_signs(
                    (b, c, 1, 1), gen, x.device, x.dtype)
        return self._l2_place(x, delta)

    def _l2_place(self, x, delta):
        norms = delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        return (x + delta / (norms + _GUARD) * self.eps).clamp_(0, 1)

    def _l2_proposal(self, x, best, s, gen):
        b, c, h, w = x.shape
        dev = x.device
        delta = best - x
        vh, vw, vh2, vw2 = (int(v) for v in torch.randint(
            0, max(min(h, w) - s, 0) + 1, (4,), generator=gen, device=dev))
        window = delta[:, :, vh:vh + s, vw:vw + s]
        norm_w1 = window.pow(2).sum((-2, -1), keepdim=True).sqrt()
        mask = torch.zeros((1, 1, h, w), dtype=torch.bool, device=dev)
        mask[..., vh:vh + s, vw:vw + s] = True
        mask[..., vh2:vh2 + s, vw2:vw2 + s] = True
        norm_image = delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        norm_windows = (delta * mask).flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        proposal = square_pattern(s, dev, gen).to(x.dtype) * _random_signs(
            (b, c, 1, 1), gen, dev, x.dtype)
        proposal = proposal + window / (norm_w1 + _GUARD)
        budget = ((self.eps ** 2 - norm_image ** 2).clamp_min(0) / c + norm_windows ** 2).sqrt()
        proposal = proposal / (proposal.pow(2).sum((-2, -1), keepdim=True).sqrt() + _GUARD) * budget
        delta = delta.clone()
        delta[:, :, vh2:vh2 + s, vw2:vw2 + s] = 0.0
        delta[:, :, vh:vh + s, vw:vw + s] = proposal
        return self._l2_place(x, delta)

    def _window_size(self, it: int, n_features: int, c: int, h: int, w: int) -> int:
        p = p_schedule(self.p_init, it, self.n_queries, self.rescale_schedule)
        s = int(round(math.sqrt(p * n_features / c)))
        if self.norm == "Linf":
            return min(max(s, 1), h, w)
        s = max(s, 3)
        if s % 2 == 0:
            s += 1
        return min(s, h, w)

    def _single_run(self, x, y, gen, out, out_loss, out_done):
        """One random search on (x, y); results go into ``out``/``out_loss``/``out_done``."""
        _, c, h, w = x.shape
        n_features = c * h * w
        index = torch.arange(x.shape[0], device=x.device)
        best = self._linf_init(x, gen) if self.norm == "Linf" else self._l2_init(x, gen)
        margin, loss = self.margin_and_loss(best, y)
        for it in range(self.n_queries):
            done = margin <= 0
            if bool(done.any()):
                out[index[done]] = best[done]
                out_done[index[done]] = True
                keep = ~done
                index, x, y, best, margin, loss = (
                    index[keep], x[keep], y[keep], best[keep], margin[keep], loss[keep])
            if index.numel() == 0:
                return
            s = self._window_size(it, n_features, c, h, w)
            if self.norm == "Linf":
                new = self._linf_proposal(x, best, s, gen)
            else:
                new = self._l2_proposal(x, best, s, gen)
            new_margin, new_loss = self.margin_and_loss(new, y)
            accept = (new_loss < loss) | (new_margin <= 0)
            loss = torch.where(new_loss < loss, new_loss, loss)
            margin = torch.where(accept, new_margin, margin)
            best = torch.where(accept.reshape(-1, 1, 1, 1), new, best)
        done = margin <= 0
        out_done[index[done]] = True
        better = done | (loss < out_loss[index])
        out[index[better]] = best[better]
        out_loss[index[better]] = loss[better]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"Square needs images shaped (B, C, H, W), got {tuple(images.shape)}")
        y = self.get_target_label(images, labels) if self.targeted else labels
        with torch.no_grad():
            logits = self.get_logits(images)
        self.check_labels_against_logits(logits, y)
        pred = logits.argmax(1)
        out_done = (pred == y) if self.targeted else (pred != labels)
        out = images.clone()
        out_loss = torch.full((images.shape[0],), math.inf, device=images.device)

        def run(r: RestartRun) -> None:
            self._single_run(images[r.index], y[r.index], r.generator, *r.results)

        restart_on_unbroken([out, out_loss, out_done], lambda: ~out_done, run,
                            n_restarts=self.n_restarts, seed=self.seed)
        return out
