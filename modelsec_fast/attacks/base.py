"""The ``Attack`` base class: torchattacks 3.5.1's calling convention.

An attack is built on a model and called on a batch::

    atk = PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    adv = atk(images, labels)          # same shape, dtype and device as images

What every call does, in order (torchattacks' sequence, plus validation):

1. validate the batch (floating images, integer labels of shape (B,), same
   device as the model); an empty batch returns an empty clone at once;
2. switch the model to eval mode (or the mode chosen with
   :meth:`Attack.set_model_training_mode`) and turn every parameter's
   ``requires_grad`` off, so gradients are taken with respect to the input
   only and no parameter ``.grad`` is ever touched;
3. if :meth:`Attack.set_normalization_used` was called, un-normalise the
   images (``x * std + mean``), attack in pixel space [0, 1] (the model sees
   ``(x - mean) / std``), and normalise the result again;
4. restore each module's training flag and each parameter's
   ``requires_grad`` exactly as they were, even when the attack raises.

Units: ``eps`` and ``alpha`` are always in pixel space [0, 1] (un-normalised),
in the attack's norm (L-inf unless the class says otherwise).
"""

from __future__ import annotations

import abc
import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from . import saving
from ..validation import (check_input_pixels, check_int, check_normalization, to_model_space,
                          to_pixels)

__all__ = ["Attack", "frozen_parameters"]


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def _is_layer(module: nn.Module, torch_type: type, name: str) -> bool:
    """A torch layer of ``torch_type``, or a custom leaf module named like one.

    (A container whose class name merely contains "Dropout" is not a layer.)
    """
    if isinstance(module, torch_type):
        return True
    return name in module.__class__.__name__ and next(module.children(), None) is None


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn every parameter's ``requires_grad`` off; restore it on exit.

    Autograd then builds no graph towards the weights: the backward pass
    computes the input gradient only, which is all an attack needs.
    """
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class Attack(abc.ABC):
    """Base class of every attack (torchattacks 3.5.1 conventions).

    Subclasses implement :meth:`forward` on pixel-space images in [0, 1] and
    call :meth:`get_logits` for every model evaluation.  Users call the
    instance: ``adv = atk(images, labels)``.

    Attributes kept with torchattacks' names: ``attack`` (the name),
    ``model``, ``device``, ``attack_mode``, ``supported_mode``, ``targeted``,
    ``normalization_used``.
    """

    #: norm of the threat model, used by ``robust_accuracy``'s ball check.
    norm = "Linf"
    #: True for attacks whose result depends on fresh randomness each call.
    stochastic = False
    #: True for attacks that never look at gradients (Square).
    gradient_free = False
    #: True for attacks that minimise the perturbation and take no eps (CW, DeepFool).
    minimum_norm = False

    def __init__(self, name: str, model: nn.Module):
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.attack = name
        self.set_model(model)
        self.attack_mode = "default"
        self.supported_mode = ["default"]
        self.targeted = False
        self._target_map_function: Callable | None = None
        self._kth_min = 1
        self.normalization_used: dict[str, torch.Tensor] | None = None
        self._normalization_applied: bool | None = None
        self._model_training = False
        self._batchnorm_training = False
        self._dropout_training = False

    # ----------------------------------------------------------------- model
    def set_model(self, model: nn.Module) -> None:
        """Attack ``model`` from now on (e.g. the current model in a training loop)."""
        self.model = model
        self.model_name = model.__class__.__name__
        self.device = _model_device(model) if isinstance(model, nn.Module) else None

    def set_device(self, device) -> None:
        """Set the device explicitly (only needed for a model without parameters)."""
        self.device = torch.device(device) if device is not None else None

    def set_model_training_mode(self, model_training: bool = False,
                                batchnorm_training: bool = False,
                                dropout_training: bool = False) -> None:
        """Choose the model's mode during the attack (default: eval).

        With ``model_training=True`` the model runs in train mode, except
        BatchNorm and Dropout layers, which stay in eval mode unless their
        own flag is set (torchattacks semantics; RNNs need train mode).
        """
        self._model_training = bool(model_training)
        self._batchnorm_training = bool(batchnorm_training)
        self._dropout_training = bool(dropout_training)

    def _apply_attack_mode(self) -> None:
        if not isinstance(self.model, nn.Module):
            return
        if not self._model_training:
            self.model.eval()
            return
        self.model.train()
        for module in self.model.modules():
            if _is_layer(module, _BatchNorm, "BatchNorm") and not self._batchnorm_training:
                module.eval()
            if _is_layer(module, _DropoutNd, "Dropout") and not self._dropout_training:
                module.eval()

    @contextlib.contextmanager
    def _attack_context(self) -> Iterator[None]:
        """Model in attack mode with frozen parameters; everything restored after."""
        if not isinstance(self.model, nn.Module):
            yield
            return
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            with frozen_parameters(self.model):
                self._apply_attack_mode()
                yield
        finally:
            for module, flag in modes:
                module.training = flag

    @torch.no_grad()
    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's logits for ``inputs`` (in the caller's space), in eval mode, no grad."""
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            return self.get_logits(inputs)
        finally:
            for module, flag in modes:
                module.training = flag

    # --------------------------------------------------------------- saving
    def save(self, data_loader, save_path=None, verbose=True, return_verbose=False,
             save_predictions=False, save_clean_inputs=False, save_type="float"):
        """Attack every batch of ``data_loader``; optionally write the results to a file.

        torchattacks' method and file format (see :mod:`.saving`). Prints the
        running robust accuracy and the mean L2 size of the successful
        perturbations if ``verbose``; returns ``(robust accuracy in %, mean L2,
        seconds of the last batch)`` if ``return_verbose``.
        """
        return saving.save_adversarial(self, data_loader, save_path, verbose, return_verbose,
                                       save_predictions, save_clean_inputs, save_type)

    load = staticmethod(saving.load_adversarial)
    to_type = staticmethod(saving.to_type)

    # --------------------------------------------------------- normalisation
    def set_normalization_used(self, mean, std) -> None:
        """Declare that the model takes ``(x - mean) / std`` inputs.

        Then the attack takes and returns normalised images, attacks in pixel
        space [0, 1] and normalises inside :meth:`get_logits`.

        Args:
            mean, std: one value per channel (sequence, array or tensor).
        Raises:
            ValueError: lengths differ, a std is not > 0, or a value is not finite.
        """
        mean, std = check_normalization((mean, std), name="mean/std")
        n = mean.numel()
        self.normalization_used = {"mean": mean.reshape(1, n, 1, 1),
                                   "std": std.reshape(1, n, 1, 1)}
        self._normalization_applied = True

    def _normalization(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) per channel as ``validation.to_pixels`` takes them; None when undeclared."""
        if self.normalization_used is None:
            return None
        return self.normalization_used["mean"].flatten(), self.normalization_used["std"].flatten()

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pixel space -> model space: ``(x - mean) / std``."""
        return to_model_space(inputs, self._normalization())

    def inverse_normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model space -> pixel space: ``x * std + mean``."""
        return to_pixels(inputs, self._normalization())

    def set_autocast(self, dtype: torch.dtype | None = torch.bfloat16) -> None:
        """Run the model's forward passes under ``torch.autocast(dtype)`` (None: off).

        Faster on hardware with fast low-precision matmuls; the attack's own
        arithmetic (steps, projections, losses) stays in the images' dtype.
        Only for models whose robustness is meant at that precision.
        """
        if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {dtype}")
        self._autocast_dtype = dtype

    def get_logits(self, inputs: torch.Tensor, labels=None, *args, **kwargs) -> torch.Tensor:
        """Model output for pixel-space ``inputs`` (normalised first if declared)."""
        if self._normalization_applied is False:
            inputs = self.normalize(inputs)
        dtype = getattr(self, "_autocast_dtype", None)
        if dtype is None:
            return self.model(inputs)
        with torch.autocast(inputs.device.type, dtype=dtype):
            logits = self.model(inputs)
        return logits.to(inputs.dtype)

    # ------------------------------------------------------------- targeting
    def get_mode(self) -> str:
        return self.attack_mode

    def set_mode_default(self, quiet: bool = True) -> None:
        """Untargeted mode (the default)."""
        self.attack_mode = "default"
        self.targeted = False
        self._target_map_function = None

    def _set_mode_targeted(self, mode: str) -> None:
        if "targeted" not in self.supported_mode:
            raise ValueError(f"{self.attack} does not support targeted mode.")
        self.targeted = True
        self.attack_mode = mode

    def set_mode_targeted_by_function(self, target_map_function: Callable,
                                      quiet: bool = True) -> None:
        """Targets are ``target_map_function(images, labels)`` (int64 (B,))."""
        if not callable(target_map_function):
            raise TypeError("target_map_function must be callable (images, labels) -> targets")
        self._set_mode_targeted("targeted(custom)")
        self._target_map_function = target_map_function

    def set_mode_targeted_random(self, quiet: bool = True) -> None:
        """Each target is drawn uniformly among the classes other than the label."""
        self._set_mode_targeted("targeted(random)")
        self._target_map_function = self.get_random_target_label

    def set_mode_targeted_least_likely(self, kth_min: int = 1, quiet: bool = True) -> None:
        """Target the class with the ``kth_min``-th smallest logit (label excluded)."""
        self._kth_min = check_int("kth_min", kth_min, 1, allow_integral_float=True)
        self._set_mode_targeted("targeted(least-likely)")
        self._target_map_function = self.get_least_likely_label

    def set_mode_targeted_by_label(self, quiet: bool = True) -> None:
        """The ``labels`` passed to the call are the targets."""
        self._set_mode_targeted("targeted(label)")
        self._target_map_function = None

    def get_target_label(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Targets for this batch according to the targeted mode (int64 (B,))."""
        if self.attack_mode == "targeted(label)":
            return labels
        if self._target_map_function is None:
            raise ValueError("no target mode is set: call one of the set_mode_targeted_* methods")
        targets = self._target_map_function(inputs, labels)
        targets = torch.as_tensor(targets, device=labels.device)
        if targets.shape != labels.shape or targets.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"the target function must return integer targets shaped {tuple(labels.shape)}, "
                f"got {targets.dtype} {tuple(targets.shape)}")
        return targets.long()

    @torch.no_grad()
    def _logits_excluding_label(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.get_logits(inputs).float()
        if labels is None:
            labels = logits.argmax(1)
        return logits.scatter(1, labels[:, None], float("inf")), labels

    @torch.no_grad()
    def get_least_likely_label(self, inputs: torch.Tensor, labels=None) -> torch.Tensor:
        logits, _ = self._logits_excluding_label(inputs, labels)
        if self._kth_min >= logits.shape[1]:
            raise ValueError(
                f"kth_min={self._kth_min} needs more than {logits.shape[1]} classes")
        return logits.kthvalue(self._kth_min, dim=1).indices

    @torch.no_grad()
    def get_random_target_label(self, inputs: torch.Tensor, labels=None) -> torch.Tensor:
        logits, labels = self._logits_excluding_label(inputs, labels)
        n_classes = logits.shape[1]
        if n_classes < 2:
            raise ValueError("random targets need at least 2 classes")
        # Uniform over the n_classes - 1 other classes: shift past the label.
        offset = torch.randint(1, n_classes, labels.shape, device=labels.device)
        return (labels + offset) % n_classes

    # ------------------------------------------------------------ validation
    def _validate(self, images, labels) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(
                f"images must be a floating tensor in [0, 1], got dtype {images.dtype}; "
                "convert uint8 images with images.float() / 255")
        if images.dim() < 2:
            raise ValueError(f"images must be batched (B, ...), got shape {tuple(images.shape)}")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.dtype in (torch.bool,) or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels must be an integer tensor (int64), got dtype {labels.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels must have shape ({images.shape[0]},) to match the images, "
                f"got {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(
                f"labels are on {labels.device} but images on {images.device}")
        if self.device is not None:
            dev, got = torch.device(self.device), images.device
            same = dev.type == got.type and (
                dev.index is None or got.index is None or dev.index == got.index)
            if not same:
                raise ValueError(
                    f"the model is on {self.device} but the images are on {images.device}; "
                    f"move them with images.to('{self.device}')")
        if images.numel() and labels.numel() and int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, found {int(labels.min())}")

    def check_labels_against_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """ValueError if ``logits`` is not (B, K) or a label is >= K."""
        if logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"the model must return logits shaped (B, num_classes) = ({labels.shape[0]}, K), "
                f"got {tuple(logits.shape)}")
        if labels.numel() and int(labels.max()) >= logits.shape[1]:
            raise ValueError(
                f"labels must be < num_classes = {logits.shape[1]}, found {int(labels.max())}")

    # ----------------------------------------------------------------- calls
    @abc.abstractmethod
    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Attack pixel-space ``images`` (B, ...) in [0, 1]; return adversarial images."""

    def _forward_eval(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The work of :meth:`run_for_evaluation`, on pixel-space ``images``.

        Attacks that can stop a sample once it is broken override this hook;
        the default is :meth:`forward`.
        """
        return self.forward(images, labels)

    @contextlib.contextmanager
    def pixel_space(self) -> Iterator[None]:
        """Inside: :meth:`get_logits` takes pixel-space inputs (normalising them if declared).

        What a call does around :meth:`forward`; for code that drives an attack's
        steps itself (the robust evaluation's pool).
        """
        if self._normalization_applied is not True:
            yield
            return
        self._normalization_applied = False
        try:
            yield
        finally:
            self._normalization_applied = True

    def _run(self, method, images, labels) -> torch.Tensor:
        self._validate(images, labels)
        if images.shape[0] == 0:
            return images.detach().clone()
        images = images.detach()
        labels = labels.detach().long()
        with self._attack_context():
            if self._normalization_applied is True:
                pixels = self.inverse_normalize(images)
                check_input_pixels(pixels, unnormalised=True)
                with self.pixel_space():
                    adv = method(pixels, labels)
                return self.normalize(adv).detach()
            check_input_pixels(images, unnormalised=False, hint="; if the images are normalised, "
                               "call set_normalization_used(mean, std)")
            return method(images, labels).detach()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Return adversarial versions of ``images`` (same shape/dtype/device).

        Args:
            images: float (B, C, H, W) (any (B, ...) for shape-agnostic attacks)
                in [0, 1], or normalised if :meth:`set_normalization_used` was called.
            labels: int64 (B,) true labels, or targets in ``targeted(label)`` mode.
        Raises:
            TypeError / ValueError: see the module docstring.
        """
        return self._run(self.forward, images, labels)

    def run_for_evaluation(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial ``images`` for a robustness evaluation: a sample may stop once broken.

        The same checks, model mode, frozen parameters and normalisation as a
        call (``atk(images, labels)``), but the attack may stop each sample at
        its first adversarial iterate (misclassified; targeted: classified as
        its target) instead of spending every step on it.  Samples it does not
        break get the full attack.  :func:`modelsec_fast.evaluate.robust_accuracy`
        runs attacks this way; a plain call keeps torchattacks' every-step semantics.

        Args and returns: as :meth:`__call__`.
        """
        return self._run(self._forward_eval, images, labels)

    def __repr__(self) -> str:
        # Per-call outputs (query counts, histories) are results, not settings.
        hidden = {"model", "attack", "supported_mode", "model_name", "queries", "history"}
        info = {k: v for k, v in self.__dict__.items()
                if not k.startswith("_") and k not in hidden and not callable(v)}
        info["attack_mode"] = self.attack_mode
        info["normalization_used"] = self.normalization_used is not None
        return f"{self.attack}(" + ", ".join(f"{k}={v}" for k, v in info.items()) + ")"
