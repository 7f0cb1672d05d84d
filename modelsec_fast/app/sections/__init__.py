"""Report sections: each a typed result plus how it renders (see
:class:`modelsec_fast.app.report.Section`). One module per part of a review; a new
threat family adds its own module here and the pipelines that run it append it.

* :class:`SettingsSection`: what the run used.
* :class:`ModelsSection`: the models trained.
* :class:`RobustnessSection`: robust accuracy against the L-inf radius.
* :class:`AccountantSection`: the DP accountant's epsilon.
* :class:`MembershipSection`: membership inference (loss threshold, LiRA).
* :class:`CanaryAuditSection`: the one-run canary audit of DP-SGD.
* :class:`MinimumNormSection`: minimum-norm attacks' distances to the boundary.
* :class:`PoisoningSection`, :class:`BackdoorScanSection`: data poisoning and backdoors.
* :class:`StealingSection`: model stealing, output defences, PRADA, ownership.
* :class:`InversionSection`: gradient inversion, plain and through DP-SGD.
* :class:`ScanSummarySection` (with :class:`Verdict`, which a section's optional
  ``verdict()`` returns), :class:`ScanRobustnessSection`, :class:`ScanMembershipSection`:
  the scan's.
"""

from .accountant import AccountantSection
from .canary import CanaryAuditSection
from .inversion import InversionSection
from .membership import MembershipSection
from .minimum_norm import MinimumNormSection
from .models import ModelsSection, TrainingSummary
from .poisoning import BackdoorScanSection, PoisoningSection
from .robustness import RobustnessSection
from .scan_membership import ScanMembershipSection
from .scan_robustness import ScanRobustnessSection
from .scan_summary import ScanSummarySection, Verdict
from .settings import SettingsSection
from .stealing import DefendedExtraction, StealingSection

__all__ = ["SettingsSection", "ModelsSection", "TrainingSummary", "RobustnessSection",
           "AccountantSection", "MembershipSection", "CanaryAuditSection",
           "MinimumNormSection", "PoisoningSection", "BackdoorScanSection",
           "StealingSection", "DefendedExtraction", "InversionSection",
           "ScanSummarySection", "Verdict", "ScanRobustnessSection", "ScanMembershipSection"]
