"""Detection of poisoned training data on a layer's features.

* :func:`extract_features`: a layer's features streamed from a DataLoader, on the
  model's device, conv features whole (flattened or pooled), model mode restored.
* :class:`SpectralSignatures`, :class:`ActivationClustering`, :class:`Spectre`: per-sample
  scores, per-class decisions and a :class:`PoisonDetectionReport` (AUROC and TPR at
  1/5/10% FPR against the true mask, per-class breakdown).
"""

from .detectors import ActivationClustering, FeatureDetector, Spectre, SpectralSignatures
from .features import CONV_MODES, default_layer, extract_features, flatten_features
from .report import FPR_LEVELS, ClassDetection, PoisonDetectionReport

__all__ = ["extract_features", "default_layer", "flatten_features", "CONV_MODES",
           "SpectralSignatures", "ActivationClustering", "Spectre", "FeatureDetector",
           "PoisonDetectionReport", "ClassDetection", "FPR_LEVELS"]
