"""Accountant registry: ``create_accountant("rdp" | "pld" | "prv" | "gdp")``.

``"prv"`` is an alias of ``"pld"``. Opacus's PRV accountant (Gopi et al. 2021)
and dp-accounting's privacy-loss-distribution accountant are two
implementations of the same numerical method: discretise the privacy loss of
one Poisson-subsampled Gaussian step and compose by FFT convolution. Both give
tight epsilons that agree to within their discretisation error, so a second
implementation would add code and no accuracy. ``create_accountant("prv")``
therefore returns a :class:`PLDAccountant` (``mechanism()`` is ``"pld"``), and
says so in its docstring rather than pretending to be Opacus's class.
"""

import logging
from typing import Dict, Type

from .base import Accountant
from .gdp import GaussianAccountant
from .pld import PLDAccountant
from .rdp import RDPAccountant

__all__ = ["create_accountant", "register_accountant", "ACCOUNTANT_ALIASES"]

logger = logging.getLogger(__name__)

_ACCOUNTANTS: Dict[str, Type[Accountant]] = {
    "rdp": RDPAccountant,
    "pld": PLDAccountant,
    "gdp": GaussianAccountant,  # approximate, warns; never a default
}

# Names accepted for Opacus compatibility, mapped to the accountant that implements them.
ACCOUNTANT_ALIASES: Dict[str, str] = {"prv": "pld"}


def register_accountant(mechanism: str, accountant: Type[Accountant], force: bool = False) -> None:
    """Register ``accountant`` under ``mechanism``.

    Raises:
        ValueError: the name is taken (pass ``force=True`` to replace it).
        TypeError: ``accountant`` is not an :class:`Accountant` subclass.
    """
    if not (isinstance(accountant, type) and issubclass(accountant, Accountant)):
        raise TypeError(f"accountant must be an Accountant subclass, got {accountant!r}")
    if (mechanism in _ACCOUNTANTS or mechanism in ACCOUNTANT_ALIASES) and not force:
        raise ValueError(f"an accountant is already registered for {mechanism!r}")
    ACCOUNTANT_ALIASES.pop(mechanism, None)
    _ACCOUNTANTS[mechanism] = accountant


def create_accountant(mechanism: str = "pld") -> Accountant:
    """A fresh accountant for ``mechanism``: "rdp", "pld", "prv" (= "pld") or "gdp".

    Raises:
        ValueError: unknown mechanism (the message lists the known ones).
    """
    if not isinstance(mechanism, str):
        raise TypeError(f"mechanism must be a string, got {type(mechanism).__name__}")
    name = ACCOUNTANT_ALIASES.get(mechanism, mechanism)
    if name != mechanism:
        logger.info("accountant %r is served by the %r accountant (same numerical method)",
                    mechanism, name)
    if name not in _ACCOUNTANTS:
        known = sorted(set(_ACCOUNTANTS) | set(ACCOUNTANT_ALIASES))
        raise ValueError(f"unknown accounting mechanism {mechanism!r}; expected one of {known}")
    return _ACCOUNTANTS[name]()
