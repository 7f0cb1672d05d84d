"""Model inversion: recovering inputs from a model's outputs or from its gradients.

* :class:`ClassInversion`: Fredrikson et al. 2015's class inversion (MI-Face),
  with a total-variation prior and Algorithm 1's stopping rule, batched over classes.
* Gradient inversion against one training step: :class:`DLG`, :class:`IDLG`
  (:func:`idlg_labels`: exact labels at batch size 1), :class:`InvertingGradients`
  and :class:`AnalyticLinearRecovery` (:func:`recover_linear_input`).
* The update attacked: :func:`plain_gradient`, or :func:`dp_gradient`, the update
  the DP engine releases; :func:`dp_protection` measures both in one call.
* Metrics: :func:`psnr`, :func:`ssim`, :func:`label_accuracy`; LPIPS only where
  its weights are on disk (:func:`lpips_status`).
"""

from .class_inversion import ClassInversion, ClassInversionResult, total_variation
from .gradient_inversion import (DLG, IDLG, AnalyticLinearRecovery, GradientInversionResult,
                                 InvertingGradients, ReconstructionScores, idlg_labels,
                                 recover_linear_input)
from .gradients import check_gradients, dp_gradient, plain_gradient
from .metrics import MAX_PSNR_DB, label_accuracy, lpips, lpips_status, psnr, ssim
from .protection import DPProtectionResult, DPProtectionRow, dp_protection

__all__ = [
    "ClassInversion", "ClassInversionResult", "total_variation",
    "DLG", "IDLG", "InvertingGradients", "AnalyticLinearRecovery", "GradientInversionResult",
    "ReconstructionScores", "idlg_labels", "recover_linear_input",
    "plain_gradient", "dp_gradient", "check_gradients",
    "dp_protection", "DPProtectionResult", "DPProtectionRow",
    "psnr", "ssim", "label_accuracy", "lpips", "lpips_status", "MAX_PSNR_DB",
]
