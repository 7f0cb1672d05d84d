"""The one-run canary audit of a DP-SGD run: does the accountant's claim hold?"""

from __future__ import annotations

from dataclasses import dataclass

from modelsec_fast.audit.canary import CanaryAuditResult

from ..report.document import Block, Paragraph

__all__ = ["CanaryAuditSection"]


@dataclass
class CanaryAuditSection:
    """``result``: the audit of a replay of model ``label``'s DP-SGD recipe."""

    result: CanaryAuditResult
    label: str
    key = "canary_audit"
    title = "One-run canary audit of DP-SGD"

    def to_json(self) -> dict:
        return {"model": self.label, **self.result.to_dict(), "summary": self.result.summary()}

    def blocks(self, figure_dir: str) -> list[Block]:
        c = self.result
        verdict = ("The bound EXCEEDS the claim: the DP-SGD implementation is broken."
                   if c.detected else
                   "The bound stays below the claim, as it must for a correct implementation.")
        return [
            Paragraph(f"Steinke, Nasr and Jagielski (2023): the DP-SGD recipe of {self.label} "
                      f"replayed with its noise multiplier {c.noise_multiplier:.3f}, clipping "
                      f"bound {c.max_grad_norm:g} and {c.steps} steps, plus m = {c.m} "
                      "white-box Dirac gradient canaries, each included by a fair coin; "
                      f"r = {c.r} guesses, {c.correct} correct; beta = {c.beta:g}."),
            Paragraph(f"Certified lower bound: epsilon >= {c.epsilon_lower_bound:.3f}; the "
                      f"accountant claims {c.claimed_epsilon:.3f} (delta {c.delta:g}). "
                      + verdict),
        ]
