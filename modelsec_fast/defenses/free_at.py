"""The perturbation that Free adversarial training carries across minibatches.

Shafahi et al. (2019) keep one perturbation buffer the size of a minibatch.
Each replay trains on ``x + delta``, and the *same* backward pass that gives
the weight gradient gives the input gradient, with which ``delta`` takes an
FGSM step of size ``alpha`` (= eps in the paper).  The buffer is never reset:
the next minibatch starts from where the last one left off.

Everything here is in pixel space; the trainer normalises before the model.
"""

from __future__ import annotations

import torch

__all__ = ["CarriedPerturbation"]


class CarriedPerturbation:
    """Pixel-space perturbation buffer shaped (rows, *input_shape).

    A batch of ``n`` rows uses and updates rows ``[:n]`` (Shafahi et al.'s
    ``global_noise_data[0:n]``); the buffer grows with zeros for a larger
    batch and restarts at zero when the input shape changes.
    """

    def __init__(self, eps: float, alpha: float, lo: float = 0.0, hi: float = 1.0):
        self.eps, self.alpha, self.lo, self.hi = float(eps), float(alpha), float(lo), float(hi)
        self.delta: torch.Tensor | None = None

    def adversarial_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """``clamp(x + delta[:n], lo, hi)``, a leaf that requires grad, same shape as x."""
        n = pixels.shape[0]
        if self.delta is None or self.delta.shape[1:] != pixels.shape[1:] \
                or self.delta.device != pixels.device or self.delta.dtype != pixels.dtype:
            self.delta = torch.zeros_like(pixels)
        elif self.delta.shape[0] < n:
            pad = torch.zeros((n - self.delta.shape[0], *pixels.shape[1:]),
                              dtype=pixels.dtype, device=pixels.device)
            self.delta = torch.cat([self.delta, pad])
        x_adv = (pixels + self.delta[:n]).clamp(self.lo, self.hi)
        return x_adv.detach().requires_grad_(True)

    def update(self, x_adv: torch.Tensor, pixels: torch.Tensor) -> None:
        """FGSM step on the buffer from ``x_adv.grad`` (the fused ``sign_step``)."""
        from modelsec_fast import ops

        if x_adv.grad is None:
            raise RuntimeError("Free AT: the backward pass produced no input gradient")
        stepped = ops.sign_step(x_adv.detach(), x_adv.grad, pixels, self.alpha, self.eps,
                                self.lo, self.hi)
        self.delta[: pixels.shape[0]] = stepped - pixels

    def state_dict(self) -> dict:
        return {"delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        self.delta = state["delta"]
