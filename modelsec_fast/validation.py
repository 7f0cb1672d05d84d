"""One set of argument checks for the whole library.

Every public entry point (ops, attacks, evaluation, trainers, accountants, DP
layers) validates its arguments through these functions, so a bad value gets
the same kind of error everywhere: ``TypeError`` for a value of the wrong kind,
``ValueError`` for a value out of range, and a message that names the argument
and the value it got. The checks return the value converted (``float``/``int``)
so callers write ``eps = check_non_negative("eps", eps)``.

Pixel-range and normalisation checks live here too: attacks, the robust
evaluation and adversarial training all work in pixel space [0, 1], and a
normalised batch passed without its (mean, std) must be refused, never attacked
with the wrong radius.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

__all__ = [
    "check_real", "check_positive", "check_non_negative", "check_in_range", "check_int",
    "check_class", "check_choice", "check_pixel_range", "check_input_pixels", "check_normalization", "to_pixels", "to_model_space",
    "PIXEL_LO", "PIXEL_HI", "NORMALIZED_RANGE_SLACK",
]

# Pixel-space bounds of every attack and trainer (torchattacks works in [0, 1] only).
PIXEL_LO = 0.0
PIXEL_HI = 1.0
# Slack for images that went through normalise -> un-normalise rounding.
NORMALIZED_RANGE_SLACK = 1e-5


def _number(name: str, value, allow_tensor: bool = False) -> float:
    """``value`` as a float; TypeError unless it is a real number (bools refused)."""
    if allow_tensor and isinstance(value, torch.Tensor) and value.numel() == 1 \
            and not value.is_complex() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_real(name: str, value, *, allow_tensor: bool = False) -> float:
    """``value`` as a finite float; TypeError for a non-number (bools included),
    ValueError for NaN or an infinity.

    ``allow_tensor`` also accepts a one-element real tensor (read with ``.item()``,
    which synchronises a CUDA tensor).
    """
    value = _number(name, value, allow_tensor)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_non_negative(name: str, value, *, allow_tensor: bool = False) -> float:
    """``value`` as a float; ValueError unless it is finite and >= 0."""
    value = check_real(name, value, allow_tensor=allow_tensor)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_positive(name: str, value, *, allow_tensor: bool = False) -> float:
    """``value`` as a float; ValueError unless it is finite and > 0."""
    value = check_real(name, value, allow_tensor=allow_tensor)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_in_range(name: str, value, low: float, high: float, *, low_open: bool = False,
                   high_open: bool = False, reason: str = "") -> float:
    """``value`` as a float; TypeError for a non-number, ValueError unless it is finite
    and lies in the interval from ``low`` to ``high`` (each end closed unless ``*_open``).

    ``reason`` follows the interval in the message (what the argument means). NaN and
    infinities get the interval in their message too, so it always says what is valid.
    """
    value = _number(name, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}{reason}, got {value:g}")
    return value


def check_int(name: str, value, minimum: int | None = None, *, maximum: int | None = None,
              allow_integral_float: bool = False) -> int:
    """``value`` as an int; TypeError for a non-integer (bools included), ValueError
    outside [minimum, maximum]. ``allow_integral_float`` accepts ``3.0``."""
    if allow_integral_float and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_class(name: str, value, num_classes: int) -> int:
    """``value`` as an int; TypeError for a non-integer, ValueError unless it is a class
    index in [0, num_classes) (a target or source label of an attack)."""
    value = check_int(name, value, 0)
    if value >= num_classes:
        raise ValueError(f"{name} must be a class in [0, {num_classes}), got {value}")
    return value


def check_choice(name: str, value, choices: Sequence):
    """``value`` unchanged; ValueError unless it is one of ``choices`` (named in the message)."""
    # Same type as well as equal: 1 is not True, and a tensor is never compared.
    if not any(type(value) is type(c) and value == c for c in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value


# ------------------------------------------------------------------ pixel space

def check_pixel_range(pixels: torch.Tensor, slack: float = 0.0, where: str = "",
                      hint: str = "") -> None:
    """ValueError, naming the range found, unless ``pixels`` lie in [0, 1] (+- slack)
    without NaN. An empty tensor passes.

    ``where`` follows the range in the message (how the pixels were obtained),
    ``hint`` ends it (what to do about normalised inputs).
    """
    if pixels.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(pixels.detach())).tolist()  # one device sync
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("images contain NaN")
    if lo < PIXEL_LO - slack or hi > PIXEL_HI + slack:
        raise ValueError(f"images must lie in [{PIXEL_LO:g}, {PIXEL_HI:g}]{where}, found values "
                         f"in [{lo:.4g}, {hi:.4g}]{hint}")


def check_input_pixels(pixels: torch.Tensor, *, unnormalised: bool, hint: str = "") -> None:
    """The pixel-range check of a batch as the caller handed it in: ValueError unless
    ``pixels`` lie in [0, 1] without NaN.

    ``pixels`` (B, ...) are the batch itself, or with ``unnormalised`` the batch
    after :func:`to_pixels`: those get ``NORMALIZED_RANGE_SLACK`` for the round
    trip's rounding and a message saying they were un-normalised.  Plain batches
    get a message ending with ``hint`` (how to declare a normalisation).
    """
    if unnormalised:
        check_pixel_range(pixels, NORMALIZED_RANGE_SLACK,
                          where=" after un-normalising with the given mean/std")
    else:
        check_pixel_range(pixels, hint=hint)


def check_normalization(normalization, name: str = "normalization"
                        ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` as two flat float32 tensors of one value per channel, or None.

    Raises:
        TypeError: not a pair.
        ValueError: empty, mean and std of different lengths, a std <= 0 or a
            non-finite value.
    """
    if normalization is None:
        return None
    try:
        mean, std = normalization
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a pair (mean, std) of per-channel values") from err
    mean = torch.as_tensor(mean, dtype=torch.float32).detach().flatten().cpu()
    std = torch.as_tensor(std, dtype=torch.float32).detach().flatten().cpu()
    if mean.numel() == 0 or mean.numel() != std.numel():
        raise ValueError(f"{name} needs one mean and one std per channel, "
                         f"got {mean.numel()} and {std.numel()}")
    if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()) \
            or not bool(torch.isfinite(mean).all()):
        raise ValueError(f"{name} std must be > 0 and finite, and mean finite, got "
                         f"mean={mean.tolist()}, std={std.tolist()}")
    return mean, std


def _channel_view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (C,) shaped (1, C, 1, ...) to broadcast over ``like`` (B, C, ...)."""
    return values.to(like.device, like.dtype).reshape((1, -1) + (1,) * max(like.dim() - 2, 0))


def to_pixels(x: torch.Tensor, normalization: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """Un-normalise ``x`` (B, C, ...) with per-channel (mean, std): ``x * std + mean``."""
    if normalization is None:
        return x
    mean, std = normalization
    return x * _channel_view(std, x) + _channel_view(mean, x)


def to_model_space(pixels: torch.Tensor, normalization: Sequence[torch.Tensor] | None
                   ) -> torch.Tensor:
    """Normalise pixel-space ``pixels`` (B, C, ...): ``(pixels - mean) / std``."""
    if normalization is None:
        return pixels
    mean, std = normalization
    return (pixels - _channel_view(mean, pixels)) / _channel_view(std, pixels)
