"""Detectors of poisoned training data on a layer's features, one class at a time.

* :class:`SpectralSignatures` (Tran, Li, Madry 2018): the projection on the class's
  top singular direction.
* :class:`ActivationClustering` (Chen et al. 2018): two-means per class after a
  principal-component reduction, with the relative-size and silhouette analyses.
* :class:`Spectre` (after Hayase et al. 2021): a robust mean and covariance
  (minimum-covariance-determinant concentration steps, then the usual reweighting),
  whitening, and quantum-entropy (QUE) scores.

Every ``detect(features, labels, is_poison=None)`` returns a
:class:`~.report.PoisonDetectionReport`: per-sample scores (higher = more likely
poison, comparable across classes), the samples it would remove, a per-class decision
"this class holds poison", and with the true mask AUROC and TPR at 1/5/10% FPR.
``detect_model(model, data, labels, ...)`` extracts the features first
(:func:`~.features.extract_features`: conv features whole, model mode restored).
Features may be (N, D) or conv-shaped (N, C, H, W): the latter are flattened whole,
so both forms give the same scores.

Why the scores differ from the papers' (each detector's docstring says how): at a
10% all-to-one poison rate the poisons are about half of the target class, where the
papers' "the poison is the minority" assumption decides by coin flip. Every detector
here decides which of the two groups it finds is the poison by label consistency
(see :mod:`._stats`), and standardises its scores per class.
"""

from __future__ import annotations

import math
import time

import torch
from scipy.stats import chi2

from ...validation import check_choice, check_in_range, check_int, check_positive
from . import _stats
from .features import extract_features
from .report import PoisonDetectionReport, build_report, check_features

__all__ = ["SpectralSignatures", "ActivationClustering", "Spectre", "FeatureDetector"]


def _centroids(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """(len(classes), D) class means, by one scatter-add over the rows."""
    index = torch.searchsorted(torch.tensor(classes, device=labels.device), labels)
    sums = torch.zeros(len(classes), features.shape[1], dtype=features.dtype,
                       device=features.device).index_add_(0, index, features)
    counts = torch.bincount(index, minlength=len(classes)).to(features.dtype)
    return sums / counts[:, None]


class FeatureDetector:
    """Base class: per-class scoring of (N, D) features; see the module docstring."""

    name = "detector"

    def settings(self) -> dict:
        return {}

    def _score_class(self, r: torch.Tensor, others: torch.Tensor, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, bool, dict]:
        """(scores (n,), flagged samples (n,), class flagged, statistics) of one class."""
        raise NotImplementedError

    def detect(self, features: torch.Tensor, labels: torch.Tensor, *,
               is_poison: torch.Tensor | None = None) -> PoisonDetectionReport:
        """Scores and decisions for features (N, D) or (N, C, ...) and labels (N,).

        Raises:
            TypeError / ValueError: non-float features, features with NaN or infinity,
                labels of the wrong shape, an ``is_poison`` mask of the wrong shape.
        """
        start = time.perf_counter()
        features, labels = check_features(features, labels)
        # The wide work in the features' dtype (float32 or float64), scores in float64.
        feats = features if features.dtype in (torch.float32, torch.float64) else features.float()
        classes = labels.unique().tolist()
        centroids = _centroids(feats, labels, classes)
        scores = torch.zeros(len(labels), dtype=torch.float64, device=feats.device)
        flagged = torch.zeros(len(labels), dtype=torch.bool, device=feats.device)
        class_flagged, statistics = {}, {}
        generator = torch.Generator().manual_seed(getattr(self, "seed", 0))
        for i, c in enumerate(classes):
            sel = labels == c
            others = torch.cat([centroids[:i], centroids[i + 1:]])
            s, f, decided, stats = self._score_class(feats[sel], others, generator)
            scores[sel], flagged[sel] = s, f
            class_flagged[c], statistics[c] = decided, stats
        return build_report(self.name, self.settings(), scores.float(), flagged, labels,
                            class_flagged, statistics, is_poison,
                            seconds=time.perf_counter() - start)

    def detect_model(self, model, data, labels: torch.Tensor, *, layer: str | None = None,
                     conv: str = "flatten", is_poison: torch.Tensor | None = None,
                     batch_size: int = 512) -> PoisonDetectionReport:
        """:meth:`detect` on the features of ``layer`` for ``data`` (see
        :func:`~.features.extract_features`); ``seconds`` covers both steps."""
        start = time.perf_counter()
        features = extract_features(model, data, layer=layer, conv=conv, batch_size=batch_size)
        report = self.detect(features, labels.to(features.device), is_poison=is_poison)
        report.seconds = time.perf_counter() - start
        report.settings.update(layer=layer, conv=conv)
        return report


def _removal_count(n: int, rate: float, multiplier: float) -> int:
    return int(math.floor(n * min(1.0, rate * multiplier) + 1e-9))


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    flagged = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if k > 0:
        flagged[scores.topk(k).indices] = True
    return flagged


def _oriented_split(r: torch.Tensor, others: torch.Tensor, directions: int = 1,
                    generator: torch.Generator | None = None):
    """The most bimodal of the class's top ``directions`` principal directions (the
    largest two-means separation along it), the exact 1-D split along it, the poison
    side and the projection, signed so that the poison side is high (module doc)."""
    centered = r - r.mean(0)
    vectors, _ = _stats.top_directions(centered, directions, generator)
    best = None
    for j in range(vectors.shape[1]):
        p = (centered @ vectors[:, j]).double()
        upper = _stats.split_1d(p)
        sep = _stats.separation(p, upper)
        if best is None or sep > best[3]:
            best = (vectors[:, j], p, upper, sep, j)
    v, p, upper, sep, rank = best
    upper_is_poison, evidence = _stats.poison_group(r, upper, v, others)
    poison = upper if upper_is_poison else ~upper
    if not upper_is_poison:
        p = -p
    return v, p, poison, sep, {**evidence, "direction_rank": rank}


def _standardised(p: torch.Tensor, poison: torch.Tensor) -> torch.Tensor:
    """``p`` in units of the pooled within-group deviation, 0 at the clean group's mean."""
    clean, bad = p[~poison], p[poison]
    if len(clean) < 2 or len(bad) < 1:
        spread = p.std().clamp_min(1e-30) if len(p) > 1 else torch.ones((), dtype=p.dtype)
        return (p - p.mean()) / spread
    within = ((clean - clean.mean()) ** 2).sum() + ((bad - bad.mean()) ** 2).sum()
    pooled = (within / max(len(p) - 2, 1)).sqrt().clamp_min(1e-30)
    return (p - clean.mean()) / pooled


class SpectralSignatures(FeatureDetector):
    """Spectral signatures (Tran, Li, Madry 2018), per class.

    Each class's features are centred and projected on their top right singular
    vector. Tran et al. score by the squared projection, which is symmetric: when the
    poisons are about half of the class (a 10% all-to-one attack) it cannot tell them
    from the clean half. Here the projection is split exactly in two (1-D two-means),
    the poison side is decided by label consistency (:mod:`._stats`), and the score is
    the signed projection in units of the pooled within-side deviation, 0 at the clean
    side's mean (``score="oriented"``); ``score="squared"`` gives the paper's squared
    projection over the class median instead.

    Decisions:
        samples: per class, the ``floor(eps_multiplier * expected_poison_rate * n)``
            highest scores are flagged (Tran et al.'s removal; ART's parameters), so
            at most that fraction of any data set is flagged.
        classes: a class holds poison when its two sides are separated by at least
            ``separation_threshold`` pooled deviations (a Gaussian class splits at
            about 2.7).

    Args:
        expected_poison_rate: in [0, 1]; eps_multiplier: > 0.
        separation_threshold: > 0.
        score: ``"oriented"`` or ``"squared"``.
    """

    name = "spectral_signatures"

    def __init__(self, expected_poison_rate: float = 0.1, eps_multiplier: float = 1.5,
                 separation_threshold: float = 6.0, score: str = "oriented", directions: int = 1):
        self.expected_poison_rate = check_in_range("expected_poison_rate", expected_poison_rate,
                                                   0.0, 1.0)
        self.eps_multiplier = check_positive("eps_multiplier", eps_multiplier)
        self.separation_threshold = check_positive("separation_threshold", separation_threshold)
        self.score = check_choice("score", score, ("oriented", "squared"))
        self.directions = check_int("directions", directions, 1)

    def settings(self):
        return {"expected_poison_rate": self.expected_poison_rate,
                "eps_multiplier": self.eps_multiplier,
                "separation_threshold": self.separation_threshold, "score": self.score,
                "directions": self.directions}

    def _score_class(self, r, others, generator):
        n = r.shape[0]
        if n < 3:
            return (torch.zeros(n, dtype=torch.float64, device=r.device),
                    torch.zeros(n, dtype=torch.bool, device=r.device), False, {"n": n})
        _, p, poison, sep, evidence = _oriented_split(r, others, self.directions, generator)
        if self.score == "oriented":
            scores = _standardised(p, poison)
        else:
            squared = p ** 2
            scores = squared / squared.median().clamp_min(1e-30)
        flagged = _top_k(scores, _removal_count(n, self.expected_poison_rate, self.eps_multiplier))
        stats = {"separation": sep, "poison_side_fraction": float(poison.float().mean()),
                 **evidence}
        return scores, flagged, sep >= self.separation_threshold, stats


class ActivationClustering(FeatureDetector):
    """Activation clustering (Chen et al. 2018), per class.

    The class's centred features are reduced to their top ``dims`` principal
    components (PCA, exact; the paper uses ICA) and split by two-means (Lloyd from
    the split along the first component and from ``restarts`` k-means++ seedings).
    Which cluster is the poison is decided by label consistency (:mod:`._stats`);
    Chen et al.'s "the smaller cluster" is reported as the relative-size analysis.

    Analyses (both reported per class):
        relative size: the smaller cluster holds less than ``size_threshold`` of the class;
        silhouette: the class's mean silhouette exceeds ``silhouette_threshold``.
    ``analysis`` picks the one that decides (``"silhouette"`` default, or
    ``"relative-size"``); flagged samples are the poison cluster of decided classes.

    Scores: each sample's position on the axis through the two cluster centres, in
    units of the pooled within-cluster deviation along it, 0 at the clean cluster's
    centre (so a sample's score says how far into the poison cluster it lies).
    """

    name = "activation_clustering"

    def __init__(self, dims: int = 10, analysis: str = "silhouette",
                 size_threshold: float = 0.35, silhouette_threshold: float = 0.35,
                 restarts: int = 2, max_reference: int = 4096, seed: int = 0):
        self.dims = check_int("dims", dims, 1)
        self.analysis = check_choice("analysis", analysis, ("silhouette", "relative-size"))
        self.size_threshold = check_in_range("size_threshold", size_threshold, 0.0, 0.5)
        self.silhouette_threshold = check_in_range("silhouette_threshold", silhouette_threshold,
                                                   -1.0, 1.0)
        self.restarts = check_int("restarts", restarts, 0)
        self.max_reference = check_int("max_reference", max_reference, 2)
        self.seed = check_int("seed", seed, 0)

    def settings(self):
        return {"dims": self.dims, "analysis": self.analysis, "size_threshold": self.size_threshold,
                "silhouette_threshold": self.silhouette_threshold, "restarts": self.restarts,
                "max_reference": self.max_reference, "seed": self.seed,
                "reduction": "PCA"}

    def _score_class(self, r, others, generator):
        n = r.shape[0]
        if n < 4:
            return (torch.zeros(n, dtype=torch.float64, device=r.device),
                    torch.zeros(n, dtype=torch.bool, device=r.device), False, {"n": n})
        mean = r.mean(0)
        centered = r - mean
        basis, _ = _stats.top_directions(centered, self.dims, generator)
        z = (centered @ basis).double()
        member = _stats.two_means(z, _stats.split_1d(z[:, 0]), generator, self.restarts)
        direction = basis @ (z[member].mean(0) - z[~member].mean(0)).to(basis.dtype)
        member_is_poison, evidence = _stats.poison_group(r, member, direction, others)
        poison = member if member_is_poison else ~member
        sil = _stats.silhouettes(z, poison, generator, self.max_reference)
        axis = z[poison].mean(0) - z[~poison].mean(0)
        scores = _standardised(z @ (axis / axis.norm().clamp_min(1e-30)), poison)
        relative = float(min(poison.sum(), (~poison).sum())) / n
        mean_sil = float(sil.mean())
        by_size = relative < self.size_threshold
        by_silhouette = mean_sil > self.silhouette_threshold
        decided = by_silhouette if self.analysis == "silhouette" else by_size
        stats = {"silhouette": mean_sil, "relative_size": relative,
                 "poison_cluster_fraction": float(poison.float().mean()),
                 "smaller_cluster_is_poison": bool(poison.sum() <= (~poison).sum()),
                 "relative_size_flag": by_size, "silhouette_flag": by_silhouette, **evidence}
        flagged = poison if decided else torch.zeros_like(poison)
        return scores, flagged, decided, stats


class Spectre(FeatureDetector):
    """A SPECTRE-style robust-statistics detector (after Hayase et al. 2021), per class.

    1. The class's centred features are reduced to their top ``dims`` principal
       components.
    2. Robust mean and covariance by iterative reweighting: start from the clean side
       of the spectral split (see :class:`SpectralSignatures`), fit, keep every
       sample of the class within the 97.5% chi-square quantile of the fit (after
       the consistency correction of its median), refit, until the set is stable
       (``iterations`` at most). Poisons far from the clean samples never return.
    3. Whitening by the robust estimate, and QUE scores with ``alpha`` (Hayase et
       al.'s 4): ``tau_i = x_i^T U x_i / tr U`` with
       ``U = exp(alpha (S - I) / (||S|| - 1))``, S the whitened covariance of the
       class. A clean sample scores about 1 in every class.

    Decisions:
        samples: per class, the ``floor(eps_multiplier * expected_poison_rate * n)``
            highest scores (as SPECTRE's removal of 1.5 eps n).
        classes: the top eigenvalue of S over the Marchenko-Pastur edge
            ``(1 + sqrt(dims / n))^2`` of a Gaussian class is at least ``threshold``
            (an outlying group exists) and the spectral split that started the
            estimate separates its two sides by at least ``separation_threshold``
            pooled deviations (as :class:`SpectralSignatures`). Real features are never
            quite Gaussian: a clean class with two natural styles can reach a ratio of
            hundreds, but not that separation.

    Args:
        expected_poison_rate, eps_multiplier: the removal, as SpectralSignatures.
        dims: principal components kept (at most n / 10 of each class).
        alpha: the QUE parameter (> 0).
        threshold: the eigenvalue ratio from which a class may be flagged.
        separation_threshold: the spectral split's separation it also needs.
        iterations: reweighting rounds at most.
    """

    name = "spectre"

    def __init__(self, expected_poison_rate: float = 0.1, eps_multiplier: float = 1.5,
                 dims: int = 32, alpha: float = 4.0, threshold: float = 20.0,
                 separation_threshold: float = 6.0, iterations: int = 10):
        self.expected_poison_rate = check_in_range("expected_poison_rate", expected_poison_rate,
                                                   0.0, 1.0)
        self.eps_multiplier = check_positive("eps_multiplier", eps_multiplier)
        self.dims = check_int("dims", dims, 1)
        self.alpha = check_positive("alpha", alpha)
        self.threshold = check_positive("threshold", threshold)
        self.separation_threshold = check_positive("separation_threshold", separation_threshold)
        self.iterations = check_int("iterations", iterations, 1)

    def settings(self):
        return {"expected_poison_rate": self.expected_poison_rate,
                "eps_multiplier": self.eps_multiplier, "dims": self.dims, "alpha": self.alpha,
                "threshold": self.threshold, "separation_threshold": self.separation_threshold,
                "iterations": self.iterations}

    @staticmethod
    def _fit(z: torch.Tensor, subset: torch.Tensor):
        mean = z[subset].mean(0)
        centered = z[subset] - mean
        cov = centered.T @ centered / max(int(subset.sum()) - 1, 1)
        ridge = 1e-9 * float(cov.diagonal().mean().clamp_min(1e-30))
        cov = cov + ridge * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        chol = torch.linalg.cholesky(cov)
        whitened = torch.linalg.solve_triangular(chol, (z - mean).T, upper=False).T
        return mean, chol, whitened

    def _score_class(self, r, others, generator):
        n = r.shape[0]
        # At least 5 samples per dimension in the robust subset (about half the class).
        k = min(self.dims, r.shape[1], n // 10)
        if k < 1:
            return (torch.zeros(n, dtype=torch.float64, device=r.device),
                    torch.zeros(n, dtype=torch.bool, device=r.device), False, {"n": n})
        _, _, poison_side, sep, evidence = _oriented_split(r, others, 1, generator)
        centered = r - r.mean(0)
        basis, _ = _stats.top_directions(centered, k, generator)
        z = (centered @ basis).double()
        subset = ~poison_side
        if int(subset.sum()) < k + 2:
            subset = torch.ones(n, dtype=torch.bool, device=r.device)
        cutoff = chi2.ppf(0.975, k)
        for _ in range(self.iterations):
            _, _, w = self._fit(z, subset)
            d2 = (w ** 2).sum(1)
            # Consistency: the subset's median distance is a chi-square median.
            scale = chi2.ppf(0.5, k) / float(d2[subset].median().clamp_min(1e-30))
            inliers = d2 * scale <= cutoff
            if int(inliers.sum()) < k + 2 or torch.equal(inliers, subset):
                break
            subset = inliers
        _, _, w = self._fit(z, subset)
        s = w.T @ w / n
        eig = torch.linalg.eigvalsh(s)
        top = float(eig[-1])
        if top > 1.0 + 1e-9:
            u = torch.linalg.matrix_exp(self.alpha * (s - torch.eye(k, dtype=s.dtype,
                                                                   device=s.device)) / (top - 1.0))
        else:
            u = torch.eye(k, dtype=s.dtype, device=s.device)
        u = u / u.trace()
        scores = ((w @ u) * w).sum(1)
        edge = (1.0 + math.sqrt(k / n)) ** 2
        flagged = _top_k(scores, _removal_count(n, self.expected_poison_rate, self.eps_multiplier))
        stats = {"top_eigenvalue": top, "marchenko_pastur_edge": edge,
                 "eigenvalue_gap": top / max(float(eig[-2]), 1e-30) if k > 1 else 1.0,
                 "eigenvalue_ratio": top / edge, "robust_fraction": float(subset.float().mean()),
                 "separation": sep, "dims": k, **evidence}
        decided = top / edge >= self.threshold and sep >= self.separation_threshold
        return scores, flagged, decided, stats
