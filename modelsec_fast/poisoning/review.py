"""The whole poisoning review of a data set, as one typed record for a report section.

:func:`poisoning_review` trains a clean and a BadNets-backdoored model, measures
C-Acc, ASR and RA, runs the three training-data detectors (spectral signatures,
activation clustering, SPECTRE-style) against the true poison mask, STRIP at
inference, Neural Cleanse, two mitigations (Neural Cleanse unlearning and
fine-pruning) and, optionally, the ASR-against-epsilon sweep of DP-SGD with its
group-privacy bound, and returns a :class:`PoisoningReview`. Figures are returned as
data (``figures``); :func:`~modelsec_fast.poisoning.plots.save_figures` writes them as PNG.

The defender's clean data (for STRIP's overlays and threshold, Neural Cleanse and the
mitigations) is a held-out ``defender_fraction`` of the training set that the
attacker never sees; the victim trains on the rest.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..audit.metrics import roc_curve
from ..validation import check_in_range, check_int
from .dp_defence import EpsilonSweep, asr_epsilon_sweep
from .metrics import BackdoorMetrics, accuracy, backdoor_metrics
from .training import train_classifier
from .triggers import BadNets

__all__ = ["PoisoningReview", "ReviewSizes", "poisoning_review"]


@dataclass(frozen=True)
class ReviewSizes:
    """How much work :func:`poisoning_review` does: ``epochs`` per victim, STRIP's
    ``strip_copies`` overlays per input, Neural Cleanse's ``nc_epochs``, and the
    epsilon sweep's ``sweep_ks`` (poison counts), ``sweep_epsilons``, ``sweep_seeds``
    (victims per cell; at least 2 for a confidence band) and ``sweep_epochs``.
    :meth:`quick` and :meth:`full` are the presets ``quick=True``/``False`` pick."""

    epochs: int
    strip_copies: int
    nc_epochs: int
    sweep_ks: tuple[int, ...]
    sweep_epsilons: tuple[float, ...]
    sweep_seeds: int
    sweep_epochs: int

    def __post_init__(self):
        check_int("epochs", self.epochs, 1)
        check_int("strip_copies", self.strip_copies, 2)
        check_int("nc_epochs", self.nc_epochs, 1)
        check_int("sweep_seeds", self.sweep_seeds, 2)
        check_int("sweep_epochs", self.sweep_epochs, 1)
        if not self.sweep_ks or not self.sweep_epsilons:
            raise ValueError(f"sweep_ks and sweep_epsilons must be non-empty, got "
                             f"{self.sweep_ks!r} and {self.sweep_epsilons!r}")

    @classmethod
    def quick(cls) -> "ReviewSizes":
        return cls(epochs=20, strip_copies=20, nc_epochs=10, sweep_ks=(1, 10),
                   sweep_epsilons=(1.0, 8.0, math.inf), sweep_seeds=5, sweep_epochs=5)

    @classmethod
    def full(cls) -> "ReviewSizes":
        return cls(epochs=40, strip_copies=50, nc_epochs=30, sweep_ks=(1, 2, 5, 10),
                   sweep_epsilons=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf), sweep_seeds=5,
                   sweep_epochs=10)


@dataclass
class PoisoningReview:
    """Everything a report's poisoning section needs.

    Attributes:
        data: the data set's one-line description; model: the victim architecture.
        settings: the review's parameters (seed, quick, rate, target, sizes, ...).
        attack: the poisoned training set's record (``PoisonedData.to_json()``).
        clean_model_accuracy: test accuracy of the model trained without poisons.
        backdoor: C-Acc, ASR, RA of the backdoored model (:class:`BackdoorMetrics`).
        clean_accuracy_cost: clean_model_accuracy - backdoor.clean_accuracy.
        feature_layer: the layer the detectors read.
        detection: one :class:`~modelsec_fast.defenses.poison_detection.PoisonDetectionReport`
            per detector (AUROC, TPR at 1/5/10% FPR, per-class breakdown).
        strip: :class:`~modelsec_fast.defenses.strip.StripEvaluation` on the test set.
        neural_cleanse: :class:`~modelsec_fast.defenses.neural_cleanse.NeuralCleanseResult`.
        mitigations: :class:`~modelsec_fast.defenses.backdoor_repair.MitigationResult` list
            (each with C-Acc, ASR, RA before/after, deltas, DER and a verdict).
        dp_sweep: :class:`~modelsec_fast.poisoning.dp_defence.EpsilonSweep` or None.
        figures: plot data: ``detection_roc``, ``nc_anomaly``, ``asr_vs_epsilon``.
        timings: seconds per stage; notes: sentences for the report.
    """

    data: str
    model: str
    settings: dict[str, Any]
    attack: dict[str, Any]
    clean_model_accuracy: float
    backdoor: BackdoorMetrics
    clean_accuracy_cost: float
    feature_layer: str
    detection: list
    strip: Any
    neural_cleanse: Any
    mitigations: list
    dp_sweep: EpsilonSweep | None
    figures: dict[str, Any] = field(repr=False, default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Every figure and setting, JSON-ready (no tensors, no models; an infinite or
        NaN figure, e.g. the epsilon of a non-private run, becomes None)."""
        return _jsonable({
            "data": self.data, "model": self.model, "settings": dict(self.settings),
            "attack": self.attack, "clean_model_accuracy": self.clean_model_accuracy,
            "backdoor": self.backdoor.to_json(), "clean_accuracy_cost": self.clean_accuracy_cost,
            "feature_layer": self.feature_layer,
            "detection": [r.to_json() for r in self.detection],
            "strip": self.strip.to_json(), "neural_cleanse": self.neural_cleanse.to_json(),
            "mitigations": [m.to_json() for m in self.mitigations],
            "dp_sweep": self.dp_sweep.to_json() if self.dp_sweep is not None else None,
            "figures": self.figures, "timings": dict(self.timings),
            "notes": list(self.notes)})


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 200) -> dict:
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def _load(data, train_size, test_size, seed):
    from ..data import Dataset, load_dataset

    if isinstance(data, Dataset):
        return data
    return load_dataset(data, train_size=train_size, test_size=test_size, seed=seed)


def poisoning_review(data="digits", *, model: str = "small_cnn", target: int = 0,
                     rate: float = 0.1, trigger_size: int = 3, seed: int = 0, quick: bool = True,
                     device: str | torch.device = "cpu", dp_sweep: bool = True,
                     defender_fraction: float = 0.2, train_size: int | None = None,
                     test_size: int | None = None, sizes: ReviewSizes | None = None,
                     progress: Callable[[str], None] | None = None) -> PoisoningReview:
    """Runs the poisoning review (see the module docstring) and returns its record.

    Args:
        data: a :class:`~modelsec_fast.data.Dataset` or a name/path for
            :func:`~modelsec_fast.data.load_dataset` (with ``train_size``, ``test_size``).
        model: a :func:`~modelsec_fast.models.build_model` name for the victims.
        target, rate, trigger_size: the BadNets attack (all-to-one).
        seed: seeds everything (the split, the poisons, the weights, the defences).
        quick: smaller settings (seconds on the digits); False: the full review.
        sizes: the work done (:class:`ReviewSizes`); default the preset ``quick`` picks.
        device: where the models train and the defences run.
        dp_sweep: run the ASR-against-epsilon sweep (MLP victims; the slowest stage).
        defender_fraction: the held-out clean share of the training set, in (0, 0.5].
        progress: called with a line after each stage.
    """
    from ..defenses.fine_pruning import fine_pruning
    from ..defenses.neural_cleanse import NeuralCleanse, unlearn
    from ..defenses.poison_detection import (ActivationClustering, Spectre, SpectralSignatures,
                                             default_layer, extract_features)
    from ..defenses.strip import STRIP
    from ..models import build_model

    seed = check_int("seed", seed, 0)
    defender_fraction = check_in_range("defender_fraction", defender_fraction, 0.0, 0.5,
                                       low_open=True)
    say = progress or (lambda _line: None)
    timings: dict[str, float] = {}
    notes: list[str] = []
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        say(f"poisoning review: {name} ({timings[name]:.1f} s)")

    if sizes is None:
        sizes = ReviewSizes.quick() if quick else ReviewSizes.full()
    elif not isinstance(sizes, ReviewSizes):
        raise TypeError(f"sizes must be a ReviewSizes, got {type(sizes).__name__}")
    ds = _load(data, train_size, test_size, seed)
    device = torch.device(device)
    epochs = sizes.epochs
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds.y_train), generator=g)
    n_def = max(int(round(defender_fraction * len(order))), 1)
    x_def, y_def = ds.x_train[order[:n_def]].to(device), ds.y_train[order[:n_def]].to(device)
    x_tr, y_tr = ds.x_train[order[n_def:]].to(device), ds.y_train[order[n_def:]].to(device)
    x_te, y_te = ds.x_test.to(device), ds.y_test.to(device)

    def fresh(s: int):
        torch.manual_seed(s)
        return build_model(model, ds.in_shape, ds.num_classes).to(device)

    clean_model = train_classifier(fresh(seed), x_tr, y_tr, epochs=epochs, batch_size=64,
                                   seed=seed)
    clean_accuracy = accuracy(clean_model, x_te, y_te)
    attack = BadNets(target, rate, size=trigger_size, seed=seed, num_classes=ds.num_classes)
    poisoned = attack.poison(x_tr, y_tr)
    victim = train_classifier(fresh(seed), poisoned.x, poisoned.y, epochs=epochs, batch_size=64,
                              seed=seed)
    backdoor = backdoor_metrics(victim, x_te, y_te, attack)
    lap("training")

    layer, side = default_layer(victim)
    features = extract_features(victim, poisoned.x)
    detectors = [SpectralSignatures(expected_poison_rate=rate), ActivationClustering(seed=seed),
                 Spectre(expected_poison_rate=rate)]
    detection = [d.detect(features, poisoned.y, is_poison=poisoned.is_poison) for d in detectors]
    roc = {}
    for report in detection:
        if report.auroc is not None:
            mask = poisoned.is_poison.cpu()
            fpr, tpr, _ = roc_curve(report.scores[mask], report.scores[~mask])
            roc[report.detector] = {**_thin(fpr, tpr), "auroc": report.auroc}
    lap("detection")

    # Overlays and calibration from separate halves: an input blended with itself is
    # confidently classified, which would lower the clean entropies and the threshold.
    half = len(y_def) // 2
    strip = STRIP(victim, x_def[:half], n_copies=sizes.strip_copies, seed=seed,
                  frr=0.01 if len(y_def) - half >= 100 else 0.05)
    strip.calibrate(x_def[half:])
    evaluation = attack.evaluation_set(x_te, y_te)
    strip_eval = strip.evaluate(x_te, evaluation.x)
    lap("strip")

    nc = NeuralCleanse(victim, epochs=sizes.nc_epochs, seed=seed)
    nc_result = nc.reverse_engineer(x_def, y_def)
    lap("neural_cleanse")

    mitigations = [
        unlearn(victim, nc_result, x_def, y_def, seed=seed, test=(x_te, y_te), attack=attack),
        fine_pruning(victim, x_def, y_def, seed=seed, test=(x_te, y_te), attack=attack),
    ]
    if not nc_result.flagged:
        notes.append("Neural Cleanse flagged no class, so its unlearning changed nothing.")
    for m in mitigations:
        if m.destroys_clean_accuracy:
            notes.append(f"{m.method}: {m.verdict}")
    lap("mitigation")

    sweep = None
    figures: dict[str, Any] = {
        "detection_roc": roc,
        "nc_anomaly": {"l1": nc_result.l1_norms, "index": nc_result.anomaly_index,
                       "flagged": nc_result.flagged}}
    if dp_sweep:
        flat = math.prod(ds.in_shape)

        def mlp(s: int):
            torch.manual_seed(s)
            return build_model("mlp", ds.in_shape, ds.num_classes,
                               hidden=(64,) if flat <= 256 else (256,)).to(device)

        sweep = asr_epsilon_sweep(
            mlp, x_tr, y_tr, x_te, y_te, ks=sizes.sweep_ks, epsilons=sizes.sweep_epsilons,
            seeds=sizes.sweep_seeds, target=target, trigger_size=trigger_size,
            epochs=sizes.sweep_epochs)
        figures["asr_vs_epsilon"] = {
            "series": {k: sweep.series(k) for k in sweep.ks},
            "non_private": {p.k: p.asr_mean for p in sweep.points if math.isinf(p.epsilon)},
            "confidence": sweep.confidence}
        notes.extend(sweep.notes)
        if not sweep.all_consistent:
            notes.append("WARNING: a measured ASR's lower confidence bound exceeds the "
                         "group-privacy bound: the DP guarantee or its accounting is broken")
        lap("dp_sweep")

    if backdoor.asr is not None and backdoor.asr < 0.9:
        notes.append(f"the backdoor is weak (ASR {backdoor.asr:.1%}): detection figures mean less")
    settings = {"seed": seed, "quick": quick, "device": str(device), "target": target,
                "nc_epochs": sizes.nc_epochs, "strip_copies": sizes.strip_copies,
                "rate": rate, "trigger_size": trigger_size, "epochs": epochs,
                "n_train": len(y_tr), "n_defender": n_def, "n_test": len(y_te),
                "feature_side": side}
    return PoisoningReview(
        data=ds.describe(), model=model, settings=settings, attack=poisoned.to_json(),
        clean_model_accuracy=clean_accuracy, backdoor=backdoor,
        clean_accuracy_cost=clean_accuracy - backdoor.clean_accuracy, feature_layer=layer,
        detection=detection, strip=strip_eval, neural_cleanse=nc_result, mitigations=mitigations,
        dp_sweep=sweep, figures=figures, timings=timings, notes=notes)
