"""``modelsec-fast scan``: a security review of the user's own model and data.

:class:`ScanInputs` is what every scan stage receives; a stage is a function
``(ScanInputs) -> Section`` (see :mod:`modelsec_fast.app.report`), so each
threat family adds its stage without touching the others.
"""

from .inputs import BUDGETS, Budget, MembershipData, ScanInputs, ScanStage

__all__ = ["BUDGETS", "Budget", "MembershipData", "ScanInputs", "ScanStage"]
