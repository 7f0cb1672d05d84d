"""What the DP accountant certifies for each DP-SGD model, and epsilon against steps."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..report.document import Block, BulletList, Figure

__all__ = ["AccountantSection"]


@dataclass
class AccountantSection:
    """``privacy``: model label -> the DP facts of its run
    (:attr:`~modelsec_fast.app.training.TrainedModel.privacy`: epsilon, delta,
    accountant, noise_multiplier, sample_rate, steps, max_grad_norm, epsilon_curve)."""

    privacy: dict[str, dict]
    key = "accountant"
    title = "Privacy: the accountant"

    def to_json(self) -> dict:
        return {"models": {label: dict(p) for label, p in self.privacy.items()}}

    def blocks(self, figure_dir: str) -> list[Block]:
        from ..report.plots import plot_epsilon_vs_steps

        lines = [f"{label}: epsilon = {p['epsilon']:.3f} at delta = {p['delta']:g} "
                 f"({p['accountant']} accountant; noise multiplier "
                 f"{p['noise_multiplier']:.3f}, sample rate {p['sample_rate']:.4f}, "
                 f"{p['steps']} steps, clipping bound {p['max_grad_norm']:g})"
                 for label, p in self.privacy.items()]
        figure = plot_epsilon_vs_steps(
            {label: p.get("epsilon_curve", []) for label, p in self.privacy.items()},
            os.path.join(figure_dir, "epsilon_vs_steps.png"))
        return [BulletList(lines), Figure(figure, "epsilon vs steps")]
