"""What adversarial training may and may not do under DP-SGD, and why.

The privacy argument
--------------------
DP-SGD's guarantee rests on one fact: in each step, the contribution of any
one record to the noised sum is a vector of norm at most ``C`` (the clipping
bound), and the records of the step are a Poisson sample.  The accountant
composes these subsampled Gaussian steps.

Adversarial training changes *what* the per-sample gradient is, not how it is
bounded.  Record ``i``'s gradient becomes ``grad_w loss(f_w(x_i'), y_i)``
where ``x_i' = A(w_t, x_i, y_i, r_i)`` is the adversarial example crafted from

* the current weights ``w_t`` (already public to the accountant: they are the
  post-processed output of the previous private steps),
* record ``i`` alone, and
* fresh randomness ``r_i`` independent of the data.

So the per-sample gradient is still a function of one record (and public
state) only, it is still clipped to norm ``C``, and the sensitivity of the sum
is unchanged: adding or removing record ``j`` changes the sum by one clipped
vector, exactly as in plain DP-SGD.  The accountant stays valid, step for step.

Two conditions make ``x_i'`` depend on record ``i`` alone, and the trainer
enforces both:

* the attack loss is summed over the batch (``reduction="sum"``), never
  averaged: a mean divides by the Poisson batch size, which the *other*
  records decide (sign attacks happen to be invariant to that scale, but
  step-size rules, early stopping and non-sign attacks are not);
* the attack runs the model in eval mode (the attacks do this), so no layer
  mixes records in the forward pass (the DP validator rejects BatchNorm anyway).

The attack's own forward and backward passes differentiate the input only
(the attacks freeze the parameters), so the DP engine ignores them: they add
nothing to the step and are not an extra step for the accountant.

What breaks the guarantee, and is refused
-----------------------------------------
* **Free AT** replays each sampled batch ``m`` times, which is ``m`` optimizer
  steps on one Poisson sample, not ``m`` independent Poisson steps; the
  accountant would under-count.  Refused with :class:`ValueError`.
* **Selecting weights with private data.**  The overfitting guard keeps the
  weights with the best robust accuracy on a validation batch and may restore
  them; ``eval_loader`` reports accuracy per epoch.  Both read data that no
  DP-SGD step covers.  Choosing among the (private) iterates with *public*
  data is post-processing and keeps the guarantee; with private data it does
  not.  So under DP the trainer requires ``validation_is_public=True`` (the
  user's statement that the validation data is public, i.e. not part of the
  private training set and not otherwise protected), or the guard turned off
  and no ``eval_loader``.  The guard's fallback to a training batch (Wong et
  al.'s choice) is refused under DP whatever the flag says.
"""

from __future__ import annotations

from torch import optim

__all__ = ["is_private_optimizer", "check_private_setup"]

# Attributes every DP-SGD optimizer exposes (ours and Opacus's).
_DP_ATTRIBUTES = ("noise_multiplier", "max_grad_norm", "expected_batch_size")


def is_private_optimizer(optimizer: optim.Optimizer) -> bool:
    """True if ``optimizer`` is a DP-SGD optimizer (``modelsec_fast`` or Opacus)."""
    return all(hasattr(optimizer, name) for name in _DP_ATTRIBUTES)


def check_private_setup(*, method: str, guard: bool, has_guard_data: bool,
                        has_eval_loader: bool, validation_is_public: bool) -> None:
    """Refuse DP configurations that would break the guarantee (see module doc).

    Raises:
        ValueError: Free AT under DP; the guard or ``eval_loader`` on data not
            declared public; the guard without explicit validation data.
    """
    if method == "free":
        raise ValueError(
            "Free adversarial training cannot run under DP-SGD: its m replays of one "
            "Poisson-sampled batch are m optimizer steps on the same sample, not m "
            "independent Poisson steps, so the privacy accountant would under-count. "
            "Use method='fgsm_rs' or 'pgd' with the PrivacyEngine.")
    if guard and not (has_guard_data or has_eval_loader):
        raise ValueError(
            "under DP-SGD the catastrophic-overfitting guard cannot fall back to a "
            "training batch: choosing weights with private data is not covered by the "
            "accountant. Pass public validation data (guard_data=(x, y) or eval_loader=) "
            "with validation_is_public=True, or turn the guard off with guard=False.")
    if (guard or has_eval_loader) and not validation_is_public:
        what = "the overfitting guard" if guard else "eval_loader"
        raise ValueError(
            f"under DP-SGD, {what} reads validation data that the privacy accountant does "
            "not cover, and the guard uses it to pick weights. Use a public validation "
            "set and say so with validation_is_public=True, or turn the guard off "
            "(guard=False) and drop eval_loader.")
