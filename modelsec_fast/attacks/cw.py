"""Carlini-Wagner L2 (Carlini & Wagner 2017), batched, with the per-sample binary search over c.

The attack minimises ``||x' - x||_2^2 + c * f(x')`` over ``x' = (tanh(w) + 1) / 2``
(so ``x'`` stays in [0, 1]) with Adam, where ``f`` is the hinge on the logit
margin, ``max(z_y - max_{j != y} z_j + kappa, 0)`` (targeted:
``max(max_{j != t} z_j - z_t + kappa, 0)``).  As in Carlini's reference
implementation (nn_robust_attacks, ``l2_attack.py``):

* ``binary_search_steps`` outer steps, each restarting Adam and ``w`` from the
  image; per sample, c is halved towards the largest c that failed after a
  success and multiplied by 10 while no success is known;
* every iteration records, per sample, the smallest-L2 point that is adversarial
  with margin ``kappa`` (checked on the iterate the model just saw);
* with ``abort_early``, every ``steps // 10`` iterations a sample whose loss did
  not fall by 0.01% stops its outer step (per sample here; the reference stops
  the whole batch on the batch's summed loss).  Stopped samples leave the batch.

``compat="torchattacks"`` reproduces torchattacks 3.5.1's ``CW`` instead (one
fixed c; the whole batch stops when the summed cost rose at a check; the "other
class" maximum counts 0 for the true class, so it is wrong when every other
logit is negative; ``atanh(2x - 1)`` is infinite at pixels exactly 0 or 1, which
then never move).  It exists for an equality test; the default is the correct one.

Units: pixel space [0, 1]; the returned examples are the smallest adversarial
ones found, or the image itself where none was found.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_choice, check_int, check_non_negative, check_positive
from .minimum_norm import MinimumNormAttack, warn_if_probabilities

__all__ = ["CW"]

# Carlini's reference maps x to atanh((2x - 1) * 0.999999): finite at x = 0 and 1.
_TANH_SHRINK = 1.0 - 1e-6
# c above this means "no success known yet" (the reference's 1e9 test on an upper bound of 1e10).
_NO_UPPER_BOUND = 1e10
_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (like.dim() - 1))


class CW(MinimumNormAttack):
    """Carlini-Wagner L2 attack, torchattacks' arguments plus the binary search.

    Args:
        model: the classifier (returns logits; probabilities get a warning).
        c: the initial trade-off constant (> 0). Default 1.
        kappa: confidence margin (>= 0): success needs the margin beyond kappa. Default 0.
        steps: Adam iterations per binary-search step (>= 1). Default 50.
        lr: Adam's learning rate (> 0). Default 0.01.
        binary_search_steps: outer steps of the per-sample search over c (>= 1).
            Default 9 (Carlini's); must be 1 (its default there) with ``compat``.
        abort_early: stop a sample's outer step when its loss stalls. Default True.
        compat: None (Carlini's semantics) or "torchattacks" (torchattacks 3.5.1's CW).

    Raises:
        ValueError: kappa < 0, c <= 0, steps or binary_search_steps < 1, lr <= 0,
            an unknown compat, or binary_search_steps != 1 with compat.
    """

    norm = "L2"

    def __init__(self, model, c: float = 1.0, kappa: float = 0.0, steps: int = 50,
                 lr: float = 0.01, binary_search_steps: int | None = None,
                 abort_early: bool = True, compat: str | None = None):
        super().__init__("CW", model)
        self.c = check_positive("c", c)
        self.kappa = check_non_negative("kappa", kappa)
        self.steps = check_int("steps", steps, 1, allow_integral_float=True)
        self.lr = check_positive("lr", lr)
        self.compat = None if compat is None else check_choice("compat", compat, ("torchattacks",))
        if binary_search_steps is None:
            binary_search_steps = 1 if self.compat else 9
        self.binary_search_steps = check_int("binary_search_steps", binary_search_steps, 1,
                                             allow_integral_float=True)
        if self.compat and self.binary_search_steps != 1:
            raise ValueError("compat='torchattacks' has no binary search: binary_search_steps "
                             f"must be 1, got {self.binary_search_steps}")
        self.abort_early = bool(abort_early)
        self.supported_mode = ["default", "targeted"]

    # ------------------------------------------------------------ objective
    def _margin(self, logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """(B,): how far the decision is from success (<= 0 once past it)."""
        real = logits.gather(1, cls[:, None]).squeeze(1)
        other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
        return other - real if self.targeted else real - other

    def _succeeded(self, logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Bool (B,): adversarial with margin kappa (the reference's ``compare``)."""
        shift = -self.kappa if self.targeted else self.kappa
        adjusted = logits.scatter_add(1, cls[:, None], torch.full_like(logits[:, :1], shift))
        pred = adjusted.argmax(1)
        return pred == cls if self.targeted else pred != cls

    # -------------------------------------------------------------- default
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.compat == "torchattacks":
            return self._forward_torchattacks(images, labels)
        cls = self.get_target_label(images, labels) if self.targeted else labels
        b = images.shape[0]
        w0 = torch.atanh((2 * images - 1) * _TANH_SHRINK)
        dev = images.device
        const = torch.full((b,), self.c, dtype=torch.float64, device=dev)
        lower = torch.zeros(b, dtype=torch.float64, device=dev)
        upper = torch.full((b,), _NO_UPPER_BOUND, dtype=torch.float64, device=dev)
        best_l2 = torch.full((b,), math.inf, dtype=images.dtype, device=dev)
        best_adv = images.clone()
        repeat = self.binary_search_steps >= 10  # the reference's last step retries the upper bound
        for outer in range(self.binary_search_steps):
            if repeat and outer == self.binary_search_steps - 1:
                const = upper.clone()
            found = self._optimise(images, w0, cls, const.to(images.dtype), best_l2, best_adv,
                                   check=outer == 0)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            known = upper < _NO_UPPER_BOUND / 10
            const = torch.where(known, (lower + upper) / 2, torch.where(found, const, const * 10))
        return best_adv

    def _optimise(self, x, w0, cls, const, best_l2, best_adv, check: bool) -> torch.Tensor:
        """One outer step at per-sample ``const``: Adam from w0; improves ``best_l2`` and
        ``best_adv`` in place; returns bool (B,): an adversarial point was found."""
        b = x.shape[0]
        found = torch.zeros(b, dtype=torch.bool, device=x.device)
        rows = torch.arange(b, device=x.device)
        xr, w0r, clsr, cr = x, w0, cls, const
        mod = torch.zeros_like(x)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        prev = torch.full((b,), math.inf, dtype=x.dtype, device=x.device)
        every = max(self.steps // 10, 1)
        beta1, beta2 = _ADAM_BETAS
        for it in range(self.steps):
            mod.requires_grad_(True)
            with torch.enable_grad():
                adv = (torch.tanh(w0r + mod) + 1) / 2
                logits = self.get_logits(adv)
                if check and it == 0:
                    self.check_labels_against_logits(logits, clsr)
                    warn_if_probabilities(logits, self.attack)
                l2 = (adv - xr).flatten(1).pow(2).sum(1)
                loss = l2 + cr * (self._margin(logits, clsr) + self.kappa).clamp_min(0)
            grad, = torch.autograd.grad(loss.sum(), mod)
            adv, logits, l2, loss = adv.detach(), logits.detach(), l2.detach(), loss.detach()
            success = self._succeeded(logits, clsr)
            found[rows] = found[rows] | success
            better = success & (l2 < best_l2[rows])
            best_l2[rows] = torch.where(better, l2, best_l2[rows])
            best_adv[rows] = torch.where(_view(better, adv), adv, best_adv[rows])
            t = it + 1
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(_ADAM_EPS)
            mod = mod.detach().addcdiv_(m, denom, value=-self.lr / (1 - beta1 ** t))
            if self.abort_early and it % every == 0:
                stalled = loss > prev * 0.9999
                prev = loss
                if bool(stalled.any()):
                    keep = ~stalled
                    rows, xr, w0r, clsr, cr = rows[keep], xr[keep], w0r[keep], clsr[keep], cr[keep]
                    mod, m, v, prev = mod[keep], m[keep], v[keep], prev[keep]
                    if rows.numel() == 0:
                        break
        return found

    # --------------------------------------------------------- torchattacks
    def _forward_torchattacks(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """torchattacks 3.5.1's CW, step for step (see the module docstring)."""
        cls = self.get_target_label(images, labels) if self.targeted else labels
        u = torch.clamp(images * 2 - 1, min=-1, max=1)
        w = (0.5 * torch.log((1 + u) / (1 - u))).detach().requires_grad_(True)
        best_adv = images.clone()
        best_l2 = 1e10 * torch.ones(images.shape[0], device=images.device)
        prev_cost = 1e10
        optimizer = torch.optim.Adam([w], lr=self.lr)
        for step in range(self.steps):
            with torch.enable_grad():
                adv = 0.5 * (torch.tanh(w) + 1)
                current_l2 = (adv.flatten(1) - images.flatten(1)).pow(2).sum(dim=1)
                logits = self.get_logits(adv)
                if step == 0:
                    self.check_labels_against_logits(logits, cls)
                    warn_if_probabilities(logits, self.attack)
                one_hot = torch.eye(logits.shape[1], device=logits.device)[cls]
                other = torch.max((1 - one_hot) * logits, dim=1)[0]
                real = torch.max(one_hot * logits, dim=1)[0]
                margin = other - real if self.targeted else real - other
                cost = current_l2.sum() + self.c * torch.clamp(margin, min=-self.kappa).sum()
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
            pred = logits.detach().argmax(1)
            condition = (pred == cls) if self.targeted else (pred != cls)
            mask = condition.float() * (best_l2 > current_l2.detach()).float()
            best_l2 = mask * current_l2.detach() + (1 - mask) * best_l2
            mask = _view(mask, images)
            best_adv = mask * adv.detach() + (1 - mask) * best_adv
            if step % max(self.steps // 10, 1) == 0:
                if cost.item() > prev_cost:
                    return best_adv
                prev_cost = cost.item()
        return best_adv
