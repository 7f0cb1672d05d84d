"""Adaptive attacks on defended models (Athalye, Carlini & Wagner 2018): EOT and BPDA wrappers.

Both wrap any gradient attack and change only what its gradient sees; the
wrapped attack keeps its arguments, its norm and eps, and the calling
convention (``adv = EOT(PGD(model, ...), samples=20)(images, labels)``).

* :class:`EOT` (expectation over transformation): for a randomised defence
  (random noise, resizing, dropout at test time) or a random ``transform`` the
  attacker applies, every model call of the attack becomes the mean of the
  logits over ``samples`` calls, so the attack follows the expected gradient
  instead of one random draw.
* :class:`BPDA` (backward-pass differentiable approximation): a
  non-differentiable preprocessing module inside the model (quantisation,
  JPEG, denoising) keeps its forward value, but the backward pass goes through
  a differentiable ``approximation`` of it (the identity by default, the
  straight-through estimator).

Both change the model only while the wrapped attack runs; the robust
evaluation re-checks every example on the model itself.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from ..validation import check_int
from .base import Attack

__all__ = ["AttackWrapper", "EOT", "BPDA", "ExpectationModel"]


class AttackWrapper(Attack):
    """An attack run as another attack (``inner``) with its model changed during the run.

    Settings live on the inner attack: the threat model (``eps``, ``norm``),
    normalisation, targeted modes and model mode read and write through to it.
    Subclasses implement :meth:`_installed`, the context in which ``inner`` runs.
    """

    def __init__(self, name: str, attack: Attack):
        if not isinstance(attack, Attack):
            raise TypeError(f"{name} wraps a modelsec_fast attack, got {type(attack).__name__}")
        self.attack = name
        self.inner = attack

    # Everything below reads through to the inner attack.
    model = property(lambda self: self.inner.model)
    device = property(lambda self: self.inner.device)
    model_name = property(lambda self: self.inner.model_name)
    norm = property(lambda self: self.inner.norm)
    eps = property(lambda self: getattr(self.inner, "eps", None))
    gradient_free = property(lambda self: self.inner.gradient_free)
    minimum_norm = property(lambda self: self.inner.minimum_norm)
    stochastic = property(lambda self: self.inner.stochastic)
    attack_mode = property(lambda self: self.inner.attack_mode)
    targeted = property(lambda self: self.inner.targeted)
    supported_mode = property(lambda self: self.inner.supported_mode)
    normalization_used = property(lambda self: self.inner.normalization_used)

    def set_model(self, model: nn.Module) -> None:
        self.inner.set_model(model)

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        yield

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._installed():
            return self.inner.forward(images, labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """The inner attack's call, with the change installed. Args as :meth:`Attack.__call__`."""
        with self._installed():
            return self.inner(images, labels)

    def run_for_evaluation(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._installed():
            return self.inner.run_for_evaluation(images, labels)

    def __repr__(self) -> str:
        return f"{self.attack}({self._settings()}, attack={self.inner!r})"

    def _settings(self) -> str:
        return ""


def _delegate(name: str):
    def method(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)
    method.__name__ = name
    method.__doc__ = f"The inner attack's ``{name}``."
    return method


for _name in ("set_normalization_used", "set_model_training_mode", "set_autocast", "get_mode",
              "set_mode_default", "set_mode_targeted_by_function", "set_mode_targeted_random",
              "set_mode_targeted_least_likely", "set_mode_targeted_by_label", "get_logits",
              "normalize", "inverse_normalize", "get_target_label"):
    setattr(AttackWrapper, _name, _delegate(_name))


class ExpectationModel(nn.Module):
    """Logits averaged over ``samples`` calls of ``model(transform(x))`` (``transform`` optional).

    ``samples`` separate forwards of the whole batch, not one of ``samples``
    times the batch: a defence may draw its randomness once per forward.
    """

    def __init__(self, model: nn.Module, samples: int, transform: Callable | None = None):
        super().__init__()
        self.model = model
        self.samples = samples
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for _ in range(self.samples):
            out = self.model(self.transform(x) if self.transform is not None else x)
            total = out if total is None else total + out
        return total / self.samples


class EOT(AttackWrapper):
    """Expectation over transformation around any attack.

    Args:
        attack: the attack to run (built on the defended model).
        samples: model calls averaged per evaluation (>= 1). Default 10.
        transform: a random ``x -> x'`` applied before each call (same shape,
            pixel space unless the attack normalises), or None to average the
            model's own randomness. Default None.

    The attack's model calls cost ``samples`` times as many passes.
    """

    stochastic = True

    def __init__(self, attack: Attack, samples: int = 10, transform: Callable | None = None):
        super().__init__("EOT", attack)
        self.samples = check_int("samples", samples, 1, allow_integral_float=True)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.transform = transform

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        model = self.inner.model
        self.inner.set_model(ExpectationModel(model, self.samples, self.transform))
        try:
            yield
        finally:
            self.inner.set_model(model)

    def _settings(self) -> str:
        return f"samples={self.samples}, transform={getattr(self.transform, '__name__', self.transform)}"


class BPDA(AttackWrapper):
    """Backward-pass differentiable approximation of a preprocessing module.

    Args:
        attack: the attack to run, built on the defended model.
        preprocess: the non-differentiable module, a submodule of the attack's
            model (found by identity).
        approximation: a differentiable ``x -> preprocess(x)`` stand-in for the
            backward pass (output shaped like ``preprocess``'s), or None for
            the identity (then input and output must have the same shape).

    Raises:
        TypeError: ``preprocess`` is not an ``nn.Module`` or ``approximation``
            not callable.
        ValueError: ``preprocess`` is not inside the attack's model.
    """

    def __init__(self, attack: Attack, preprocess: nn.Module,
                 approximation: Callable | None = None):
        super().__init__("BPDA", attack)
        if not isinstance(preprocess, nn.Module):
            raise TypeError("preprocess must be the nn.Module inside the model to approximate, "
                            f"got {type(preprocess).__name__}")
        if not isinstance(attack.model, nn.Module) or \
                not any(m is preprocess for m in attack.model.modules()):
            raise ValueError(f"preprocess ({type(preprocess).__name__}) is not a submodule of the "
                             "attack's model: BPDA replaces its backward pass there")
        if approximation is not None and not callable(approximation):
            raise TypeError(f"approximation must be callable or None, got "
                            f"{type(approximation).__name__}")
        self.preprocess = preprocess
        self.approximation = approximation

    def _hook(self, _module, args, output):
        x = args[0]
        approx = self.approximation(x) if self.approximation is not None else x
        if approx.shape != output.shape:
            raise ValueError(
                f"BPDA: the approximation gives shape {tuple(approx.shape)} but the preprocessing "
                f"{tuple(output.shape)}; pass an approximation of the same output shape")
        # Forward: the preprocessing's value; backward: the approximation's gradient.
        return approx + (output - approx).detach()

    @contextlib.contextmanager
    def _installed(self) -> Iterator[None]:
        handle = self.preprocess.register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()

    def _settings(self) -> str:
        approx = "identity" if self.approximation is None else \
            getattr(self.approximation, "__name__", repr(self.approximation))
        return f"preprocess={type(self.preprocess).__name__}, approximation={approx}"
