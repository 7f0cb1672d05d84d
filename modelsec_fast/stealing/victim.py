"""The victim of an extraction attack: a model the attacker can only query.

:class:`Victim` wraps a query function (or a model) behind an exact query counter.
Every call of :meth:`Victim.query` checks that the batch fits in what is left of
the budget *before* the victim runs, so an attack can never exceed its budget; the
counter counts inputs (one query = one input), never calls.

What a query returns depends on ``output``:

* ``"probabilities"``: (B, K) float rows in [0, 1] that sum to 1;
* ``"top_k"``: (B, K) float rows with at most ``top_k`` non-zero entries in [0, 1]
  (the victim's k largest probabilities, the rest zeroed);
* ``"labels"``: (B,) int64 labels in [0, K);
* ``"logits"``: (B, K) finite raw scores (what functionally equivalent extraction
  of a ReLU network reads; no sum rule applies).

:class:`HeldOut` is the evaluator's side: held-out inputs with their true labels
and the victim's labels, from which thief accuracy and fidelity are measured. It
is built from the model itself and never spends the attacker's queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from ..validation import check_choice, check_int

__all__ = ["OUTPUT_KINDS", "QueryBudgetExceeded", "QueryMonitor", "Victim", "HeldOut",
           "predict_labels"]

OUTPUT_KINDS = ("probabilities", "top_k", "labels", "logits")
# Tolerance of the sum-to-one check: float32 softmax rows sum to 1 within ~1e-6,
# rounded outputs (a defence) within half a unit per class.
PROBABILITY_ATOL = 1e-3


class QueryBudgetExceeded(RuntimeError):
    """A query would take the victim past its budget; nothing was queried."""


class QueryMonitor(Protocol):
    """What a :class:`Victim` tells a query monitor (e.g.
    :class:`~modelsec_fast.defenses.PradaMonitor`) about every accepted batch."""

    def observe(self, x: torch.Tensor, outputs: torch.Tensor) -> None: ...


class Victim:
    """A model behind a query function and an exact query budget.

    Args:
        query_fn: ``fn(x (B, *in_shape)) -> outputs`` as ``output`` describes.
        num_classes: K, the number of classes (>= 2).
        output: one of :data:`OUTPUT_KINDS`.
        budget: the most inputs the attacker may query (int >= 1).
        top_k: for ``output="top_k"``, how many entries a row may keep (1 <= k <= K).
        monitor: an object with ``observe(x, outputs)`` called on every accepted
            batch (query monitoring as a defence); None for none.
        batch_size: the victim answers in chunks of at most this many inputs.

    Raises:
        TypeError / ValueError: a budget that is not an int >= 1, an unknown ``output``,
            a bad ``top_k``.
    """

    def __init__(self, query_fn: Callable[[torch.Tensor], torch.Tensor], *, num_classes: int,
                 output: str = "probabilities", budget: int, top_k: int | None = None,
                 monitor: QueryMonitor | None = None, batch_size: int = 1024):
        if not callable(query_fn):
            raise TypeError(f"query_fn must be callable, got {type(query_fn).__name__}")
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.output = check_choice("output", output, OUTPUT_KINDS)
        self.budget = check_int("budget", budget, 1)
        if output == "top_k":
            self.top_k = check_int("top_k", top_k, 1, maximum=self.num_classes)
        elif top_k is not None:
            raise ValueError(f"top_k is only for output='top_k', got top_k={top_k!r} with "
                             f"output={output!r}")
        else:
            self.top_k = None
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.monitor = monitor
        self._query_fn = query_fn
        self._used = 0

    @classmethod
    def from_model(cls, model: nn.Module, *, output: str = "probabilities", budget: int,
                   num_classes: int | None = None, top_k: int | None = None,
                   postprocess: Callable[..., torch.Tensor] | None = None,
                   monitor: QueryMonitor | None = None, batch_size: int = 1024) -> "Victim":
        """A victim answering with ``model`` (logits (B, K)) in eval mode, no gradient.

        ``postprocess(probabilities (B, K), x) -> (B, K)`` (an output defence such as
        :class:`~modelsec_fast.defenses.ReverseSigmoid`) is applied to the softmax
        before ``output`` is formed. ``num_classes`` defaults to the model's output width.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device = _device_of(model)

        @torch.no_grad()
        def query_fn(x: torch.Tensor) -> torch.Tensor:
            was = model.training
            model.eval()
            try:
                logits = model(x.to(device))
            finally:
                model.train(was)
            if output == "logits":
                return logits if postprocess is None else postprocess(logits, x)
            probs = torch.softmax(logits.double(), dim=1).to(logits.dtype)
            if postprocess is not None:
                probs = postprocess(probs, x)
            if output == "labels":
                return probs.argmax(1)
            if output == "top_k":
                return _keep_top_k(probs, top_k)
            return probs

        if num_classes is None:
            num_classes = getattr(model, "num_classes", None) or _output_width(model)
        return cls(query_fn, num_classes=num_classes, output=output, budget=budget,
                   top_k=top_k, monitor=monitor, batch_size=batch_size)

    # ------------------------------------------------------------ the counter
    @property
    def queries_used(self) -> int:
        """Inputs queried so far (exact)."""
        return self._used

    @property
    def remaining(self) -> int:
        """Inputs the attacker may still query."""
        return self.budget - self._used

    @property
    def soft(self) -> bool:
        """Whether answers carry scores (probabilities, top-k or logits), not just labels."""
        return self.output != "labels"

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The victim's answers to ``x`` (B, *in_shape); counts B queries.

        Returns:
            (B, K) float for probabilities, top-k and logits; (B,) int64 for labels.
        Raises:
            QueryBudgetExceeded: B exceeds :attr:`remaining` (nothing is queried).
            ValueError: the query function answered with the wrong shape, NaN, values
                outside [0, 1], rows not summing to 1 where probabilities are promised,
                more than ``top_k`` non-zero entries, or labels outside [0, K).
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        n = int(x.shape[0]) if x.dim() else 0
        if x.dim() == 0 or n == 0:
            raise ValueError(f"x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
        if n > self.remaining:
            raise QueryBudgetExceeded(
                f"querying {n} inputs would exceed the budget: {self._used} of "
                f"{self.budget} used, {self.remaining} left")
        self._used += n
        outputs = torch.cat([self._checked(self._query_fn(x[i:i + self.batch_size]),
                                           min(self.batch_size, n - i))
                             for i in range(0, n, self.batch_size)])
        if self.monitor is not None:
            self.monitor.observe(x, outputs)
        return outputs

    def query_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`query` as (B, K) float targets for training a thief: labels become
        one-hot rows, logits their softmax; probabilities and top-k rows as answered."""
        out = self.query(x)
        if self.output == "labels":
            return nn.functional.one_hot(out, self.num_classes).float()
        if self.output == "logits":
            return torch.softmax(out.double(), 1).float()
        return out.float()

    def _checked(self, out, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the victim's query function returned "
                             f"{type(out).__name__}, not a tensor")
        k = self.num_classes
        if self.output == "labels":
            if out.shape != (n,) or out.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"the victim's query function returned shape "
                                 f"{tuple(out.shape)} {out.dtype} for {n} inputs; "
                                 f"output='labels' needs ({n},) int64 labels")
            out = out.long()
            if n and (int(out.min()) < 0 or int(out.max()) >= k):
                raise ValueError(f"the victim's labels must lie in [0, {k}), found "
                                 f"[{int(out.min())}, {int(out.max())}]")
            return out.cpu()
        if out.shape != (n, k) or not out.is_floating_point():
            raise ValueError(f"the victim's query function returned shape {tuple(out.shape)} "
                             f"{out.dtype} for {n} inputs; output={self.output!r} needs "
                             f"({n}, {k}) floats")
        out = out.detach().cpu()
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"the victim's query function returned NaN or infinite "
                             f"{self.output}")
        if self.output == "logits":
            return out
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0 + PROBABILITY_ATOL:
            raise ValueError(f"the victim's {self.output} must lie in [0, 1], found "
                             f"[{lo:.4g}, {hi:.4g}]")
        sums = out.double().sum(1)
        if self.output == "probabilities":
            worst = float((sums - 1.0).abs().max())
            if worst > PROBABILITY_ATOL:
                raise ValueError(f"the victim promised probabilities, but a row sums to "
                                 f"{float(sums[(sums - 1.0).abs().argmax()]):.6g} (off by "
                                 f"{worst:.3g} > {PROBABILITY_ATOL:g})")
        else:
            nonzero = int((out > 0).sum(1).max())
            if nonzero > self.top_k:
                raise ValueError(f"output='top_k' with k={self.top_k}, but a row has "
                                 f"{nonzero} non-zero entries")
            if float(sums.max()) > 1.0 + PROBABILITY_ATOL:
                raise ValueError(f"top-k probabilities must sum to at most 1, a row sums "
                                 f"to {float(sums.max()):.6g}")
        return out


@dataclass
class HeldOut:
    """The evaluator's held-out set: inputs ``x`` (N, ...), true labels ``y`` (N,) and
    the victim's labels ``victim_labels`` (N,), for thief accuracy and fidelity."""

    x: torch.Tensor
    y: torch.Tensor
    victim_labels: torch.Tensor

    def __post_init__(self):
        n = len(self.x)
        if n == 0 or self.y.shape != (n,) or self.victim_labels.shape != (n,):
            raise ValueError(f"HeldOut needs x (N, ...) with N >= 1, y (N,) and "
                             f"victim_labels (N,); got {tuple(self.x.shape)}, "
                             f"{tuple(self.y.shape)}, {tuple(self.victim_labels.shape)}")

    @classmethod
    @torch.no_grad()
    def from_model(cls, victim_model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   batch_size: int = 1024) -> "HeldOut":
        """Labels the held-out ``x`` with the victim model itself (not a counted query)."""
        return cls(x, y.long(), predict_labels(victim_model, x, batch_size))

    def scores(self, thief: nn.Module, batch_size: int = 1024) -> tuple[float, float]:
        """(accuracy against the true labels, fidelity = agreement with the victim)."""
        pred = predict_labels(thief, self.x, batch_size)
        return (float((pred == self.y.cpu()).double().mean()),
                float((pred == self.victim_labels.cpu()).double().mean()))


@torch.no_grad()
def predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """argmax labels (N,) int64 on the CPU of ``model`` on ``x`` (N, ...), in eval mode."""
    was = model.training
    model.eval()
    device = _device_of(model)
    try:
        return torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        model.train(was)


def _keep_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``probs`` (B, K) with all but each row's k largest entries zeroed (ties: lower index)."""
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(probs).scatter_(1, order, probs.gather(1, order))


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _output_width(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("cannot tell the model's number of classes: pass num_classes")
    return last[-1].out_features

