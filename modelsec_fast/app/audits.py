"""The privacy-audit pieces that ``train``, ``audit`` and the demo share: who is a
member, and the one-run canary audit of a DP-SGD run as it was trained."""

from __future__ import annotations

import torch

from modelsec_fast.validation import check_choice, check_int, check_positive

__all__ = ["MEMBERSHIP_MODES", "membership_split", "whole_batches_rate", "replay_canary_audit"]

MEMBERSHIP_MODES = ("coin", "all")


def membership_split(num: int, mode: str, seed: int) -> torch.Tensor:
    """bool ``(num,)`` member mask: an independent fair coin per record ("coin"), or
    everyone ("all"). A coin split of ``num >= 2`` records always has at least one
    member and one non-member.

    Raises:
        ValueError: an unknown ``mode`` or a negative ``num``.
    """
    num = check_int("num", num, 0)
    check_choice("membership", mode, MEMBERSHIP_MODES)
    if mode == "all":
        return torch.ones(num, dtype=torch.bool)
    gen = torch.Generator().manual_seed(10_007 + seed)
    mask = torch.rand(num, generator=gen) < 0.5
    if num and (mask.all() or not mask.any()):  # only possible for tiny pools
        mask[0] = not mask[0]
    return mask


def whole_batches_rate(sample_rate: float) -> float:
    """The canary audit replays a recipe with a whole number of batches per epoch:
    ``1 / round(1 / q)`` (at least one batch)."""
    sample_rate = check_positive("sample_rate", sample_rate)
    return 1.0 / max(1, round(1.0 / sample_rate))


def replay_canary_audit(privacy: dict, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                        model: str, model_options: dict | None = None, seed: int = 0,
                        **options):
    """The one-run canary audit (:func:`modelsec_fast.audit.canary_audit_dp_sgd`) of a
    DP-SGD run with the run's noise multiplier, clipping bound, steps, delta and
    accountant (``privacy``: :attr:`TrainedModel.privacy`), at a whole number of
    batches per epoch. ``options`` go to the audit (``m=``, ``r=``, ...).

    Returns:
        a :class:`~modelsec_fast.audit.CanaryAuditResult`.
    """
    from modelsec_fast.audit.canary import canary_audit_dp_sgd

    return canary_audit_dp_sgd(
        x=x, y=y, num_classes=num_classes, noise_multiplier=privacy["noise_multiplier"],
        max_grad_norm=privacy["max_grad_norm"],
        sample_rate=whole_batches_rate(privacy["sample_rate"]), steps=privacy["steps"],
        delta=privacy["delta"], accountant=privacy["accountant"], model=model,
        model_options=model_options or {}, seed=seed, **options)
