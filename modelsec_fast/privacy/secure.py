"""Secure-mode randomness for sampling: Poisson masks and seeds from the OS CSPRNG.

``os.urandom`` reads the kernel's cryptographically secure generator
(getrandom(2) on Linux; ChaCha20 since Linux 4.8). It is independent of
torch's and numpy's global seeds, so ``torch.manual_seed`` can neither
reproduce nor predict a secure-mode mask. Opacus relies on torchcsprng for
this, which no longer builds against current torch; we need no extra package.

Secure-mode *noise* comes from the native ops (``modelsec_fast.ops`` with
``source="secure"``, ChaCha20 in C++ keyed from OS entropy); this module only
covers what the sampler needs.
"""

import os
import secrets
from fractions import Fraction

import numpy as np
import torch

from ..validation import check_in_range, check_int

__all__ = ["secure_seed", "secure_uniform_uint64", "secure_bernoulli_mask", "inclusion_threshold"]

_TWO_64 = 1 << 64


def secure_seed() -> int:
    """A 63-bit seed from the OS CSPRNG (fits torch.Generator.manual_seed)."""
    return secrets.randbits(63)


def secure_uniform_uint64(n: int) -> np.ndarray:
    """``n`` independent uniform 64-bit words from ``os.urandom``; shape (n,), uint64."""
    n = check_int("n", n, 0)
    return np.frombuffer(os.urandom(8 * n), dtype=np.uint64)


def inclusion_threshold(p: float) -> int:
    """floor(p * 2**64): a word u is kept iff u < threshold, so P(keep) <= p.

    Rounding down means the realised inclusion probability is within 2**-64
    below p and never above it: accounting with p stays an upper bound.
    """
    return int(Fraction(p) * _TWO_64)


def secure_bernoulli_mask(n: int, p: float) -> torch.Tensor:
    """Independent Bernoulli(p) draws from the OS CSPRNG.

    Args:
        n: number of draws (>= 0).
        p: inclusion probability in [0, 1].

    Returns:
        Bool tensor of shape (n,) on the CPU.

    Raises:
        ValueError: n < 0 or p outside [0, 1].
    """
    p = check_in_range("p", p, 0.0, 1.0)
    n = check_int("n", n, 0)
    if p == 1.0:
        return torch.ones(n, dtype=torch.bool)
    words = secure_uniform_uint64(n)
    keep = words < np.uint64(inclusion_threshold(p))
    return torch.from_numpy(keep)
