"""Attributions for a security review, on Captum.

* :mod:`.attributions`: :func:`saliency`, :func:`integrated_gradients` and
  :func:`smoothgrad` (noise relative to the input range), chunked so that no pass
  holds more than ``max_inputs`` model inputs (:mod:`.chunking`).
* :mod:`.similarity`: heatmaps, rank correlation and top-k overlap;
  :func:`attribution_shift`: clean against adversarial attributions.
* :mod:`.region`: :func:`attribution_in_region`, the share of attribution inside a
  known or reverse-engineered trigger mask.
* :mod:`.sanity`: :func:`model_randomisation_check` (Adebayo et al. 2018).
* :mod:`.infidelity`: :func:`infidelity` (Yeh et al. 2019) via ``captum.metrics``.

Captum is imported when a method runs, not when this package is imported.
"""

from .attributions import (IG_METHODS, check_attribution_inputs, integrated_gradients,
                           predicted_labels, resolve_target, saliency, smoothgrad)
from .chunking import DEFAULT_MAX_INPUTS, ChunkPlan, plan_chunks
from .infidelity import infidelity
from .region import RegionAttribution, attribution_in_region
from .sanity import (DEFAULT_MAX_SIMILARITY, METHODS, RandomisationCheck, RandomisationStage,
                     model_randomisation_check, parameter_layers)
from .similarity import (DEFAULT_TOP_K_FRACTION, AttributionShift, attribution_shift, heatmap,
                         rank_correlation, top_k_overlap)

__all__ = [
    "saliency", "integrated_gradients", "smoothgrad", "predicted_labels", "resolve_target",
    "check_attribution_inputs", "IG_METHODS",
    "ChunkPlan", "plan_chunks", "DEFAULT_MAX_INPUTS",
    "heatmap", "rank_correlation", "top_k_overlap", "AttributionShift", "attribution_shift",
    "DEFAULT_TOP_K_FRACTION",
    "RegionAttribution", "attribution_in_region",
    "RandomisationStage", "RandomisationCheck", "model_randomisation_check", "parameter_layers",
    "METHODS", "DEFAULT_MAX_SIMILARITY",
    "infidelity",
]
