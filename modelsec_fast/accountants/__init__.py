"""Privacy accountants for Poisson-subsampled Gaussian DP-SGD.

Mirrors ``opacus.accountants``: ``RDPAccountant``, ``PLDAccountant`` (the
default; ``"prv"`` maps to it, see :mod:`.registry`), ``create_accountant`` and
``get_noise_multiplier``. Code written against Opacus ports by changing the
import.
"""

from .base import Accountant
from .gdp import GaussianAccountant
from .noise_multiplier import get_noise_multiplier
from .pld import PLDAccountant
from .rdp import RDPAccountant
from .registry import create_accountant, register_accountant
from .validation import InfiniteEpsilonError, check_delta

# Opacus's names: the interface, and the class behind "prv" (our PLD accountant).
IAccountant = Accountant
PRVAccountant = PLDAccountant

__all__ = [
    "Accountant",
    "IAccountant",
    "RDPAccountant",
    "PLDAccountant",
    "PRVAccountant",
    "GaussianAccountant",
    "create_accountant",
    "register_accountant",
    "get_noise_multiplier",
    "InfiniteEpsilonError",
    "check_delta",
]
