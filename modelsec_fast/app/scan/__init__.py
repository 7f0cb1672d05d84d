"""``modelsec-fast scan``: a security review of the user's own model and data.

:class:`ScanInputs` is what every scan stage receives; a stage is a function
``(ScanInputs) -> Section`` (see :mod:`modelsec_fast.app.report`), so each
threat family adds its stage without touching the others.

* :mod:`.model_loading` and :mod:`.data_loading`: the user's model and data.
* :mod:`.stages`: the stages in report order; :mod:`.robustness` and
  :mod:`.membership` are two of them (each family adds its own module).
* :mod:`.pipeline`: :func:`~.pipeline.run_scan`, behind ``modelsec-fast scan``.
* :mod:`.example`: a small digits CNN and its files, for the README's commands.
"""

from .inputs import BUDGETS, Budget, FitRecipe, MembershipData, ScanInputs, ScanStage

__all__ = ["BUDGETS", "Budget", "FitRecipe", "MembershipData", "ScanInputs", "ScanStage"]
