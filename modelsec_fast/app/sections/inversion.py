"""Gradient inversion: what one released training update reveals of its image, plain and
through DP-SGD, with the reconstructions beside the originals."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modelsec_fast.inversion import DPProtectionResult

from ..report.document import Block, BulletList, Figure, Paragraph, Table
from .formatting import percent

__all__ = ["InversionSection"]


def _setting(sigma) -> str:
    return "plain gradient" if sigma is None else f"DP-SGD, sigma {sigma:g}"


LEAK_MARGIN_DB = 3.0  # the summary's rule (see InversionSection.verdict)


@dataclass
class InversionSection:
    """``protection``: :func:`~modelsec_fast.inversion.dp_protection`'s result (one
    row per setting, the images and their reconstructions); ``model``: which model
    the updates were computed on; ``notes``: what was left out and why."""

    protection: DPProtectionResult
    model: str
    notes: list[str] = field(default_factory=list)
    key = "inversion"
    title = "Model inversion: images recovered from a training update"

    def to_json(self) -> dict:
        return {"model": self.model, "protection": self.protection.to_json(),
                "notes": list(self.notes)}

    def verdict(self):
        """At risk when reconstructions from one plain update are closer to their own
        image than to another image of its class by :data:`LEAK_MARGIN_DB`."""
        from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

        try:
            plain = self.protection.row(None)
        except KeyError:
            return Verdict(INCONCLUSIVE, "no plain-gradient run", "", "")
        if plain.mean_psnr_other is None:
            return Verdict(INCONCLUSIVE, f"PSNR {plain.mean_psnr:.1f} dB, with no other image "
                           "of the class to compare against", "", "")
        gap = plain.mean_psnr - plain.mean_psnr_other
        return Verdict(
            AT_RISK if gap > LEAK_MARGIN_DB else NO_FINDING,
            f"{self.protection.attack} from one plain update: PSNR {plain.mean_psnr:.1f} dB "
            f"to the image, {plain.mean_psnr_other:.1f} dB to another of its class",
            f"at risk when the reconstruction is closer to its own image by more than "
            f"{LEAK_MARGIN_DB:g} dB",
            "this tool's rule: the attacker then recovers that example, not a class "
            "average (relevant wherever per-example updates are shared, as in federated "
            "learning; the DP rows show what clipping and noise leave)")

    def blocks(self, figure_dir: str) -> list[Block]:
        p = self.protection
        clip = p.settings.get("max_grad_norm")
        attack = p.settings.get("attack", {})
        steps = f", {attack['iterations']} iterations" if "iterations" in attack else ""
        blocks: list[Block] = [
            Paragraph(f"Each of {len(p.images)} test images is the whole batch of one training "
                      f"step on {self.model}; an attacker who sees the update the client "
                      f"releases reconstructs the image ({p.attack}{steps}). The plain "
                      "gradient is what federated learning sends without protection; the DP "
                      f"rows are the update the DP-SGD engine releases (clipped to {clip:g}, "
                      "Gaussian noise of std sigma times the clip; each image's noise is one "
                      "draw, scaled by sigma). PSNR against another image "
                      "of the same class is the baseline: a reconstruction no closer to its "
                      "own image than to that one reveals nothing beyond the class."),
            Table(["update", "PSNR (dB)", "PSNR vs same-class image (dB)", "SSIM",
                   "labels recovered"],
                  [[_setting(r.noise_multiplier), f"{r.mean_psnr:.1f}",
                    "n/a" if r.mean_psnr_other is None else f"{r.mean_psnr_other:.1f}",
                    f"{r.mean_ssim:.3f}", percent(r.label_accuracy)] for r in p.rows],
                  align="lrrrr"),
            Figure(self._plot(os.path.join(figure_dir, "inversion_reconstructions.png")),
                   "originals (top row) and their reconstructions, one row per update"),
        ]
        if self.notes:
            blocks.append(BulletList([f"note: {n}" for n in self.notes]))
        return blocks

    def _plot(self, path: str) -> str:
        from modelsec_fast._plotting import agg_pyplot, save_figure

        p = self.protection
        rows = [("original", p.images)] + [(_setting(r.noise_multiplier),
                                            p.reconstructions[r.noise_multiplier])
                                           for r in p.rows]
        n = len(p.images)
        plt = agg_pyplot()
        fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.4, 1.15 * len(rows)),
                                 dpi=120, squeeze=False)
        for i, (label, images) in enumerate(rows):
            for j in range(n):
                ax = axes[i][j]
                image = images[j].detach().float().clamp(0, 1)
                if image.shape[0] == 1:
                    ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image[:3].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        return save_figure(fig, path)
