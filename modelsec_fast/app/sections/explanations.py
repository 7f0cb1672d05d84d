"""Explanations of the most vulnerable examples: where the model looks, clean and
under attack, and whether its maps mean anything (the randomisation sanity check)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from modelsec_fast.explain import (DEFAULT_MAX_SIMILARITY, AttributionShift, RandomisationCheck,
                                   RegionAttribution, heatmap)

from ..report.document import Block, BulletList, Failed, Figure, Paragraph, Subheading, Table

__all__ = ["ExplainedExample", "ExplanationsSection", "FRAGILE_OVERLAP"]

# Rows of the attribution-map figure: enough to see a pattern, small enough to read.
MAX_FIGURE_ROWS = 6
# Mean top-k overlap of clean and attacked maps, on examples whose decision the attack did
# not change, below which the maps count as fragile (Ghorbani et al. 2019 measure top-k
# intersection; they give no cut): under half, most of the top features moved.
FRAGILE_OVERLAP = 0.5


@dataclass(frozen=True)
class ExplainedExample:
    """One explained test example: its ``index`` in the scanned test set, true
    ``label``, predictions on the clean and the adversarial input, and the clean
    logit ``margin`` (true logit minus the largest other; small means vulnerable)."""

    index: int
    label: int
    clean_prediction: int
    adversarial_prediction: int
    margin: float

    def to_json(self) -> dict:
        return {"index": self.index, "label": self.label,
                "clean_prediction": self.clean_prediction,
                "adversarial_prediction": self.adversarial_prediction, "margin": self.margin}


@dataclass
class ExplanationsSection:
    """Attributions of ``examples`` (k) explained for their true label by ``method``
    (with ``settings``), on the clean inputs and on adversarial ones found by
    ``attack`` (a one-line description).

    ``clean_inputs``/``adversarial_inputs``: (k, C, H, W) in ``input_range``;
    ``shift``: both attribution maps and how far they moved; ``infidelity_clean`` and
    ``infidelity_adversarial``: (k,) Yeh et al. 2019; ``sanity``: the cascading model
    randomisation check, one per method checked (empty if not run, ``sanity_error``
    saying why); ``trigger``: the share of attribution in a
    trigger mask, with ``trigger_source`` saying where the mask came from.
    """

    method: str
    settings: dict
    attack: str
    examples: list[ExplainedExample]
    clean_inputs: torch.Tensor
    adversarial_inputs: torch.Tensor
    input_range: tuple[float, float]
    shift: AttributionShift
    infidelity_clean: torch.Tensor
    infidelity_adversarial: torch.Tensor
    sanity: list[RandomisationCheck] = field(default_factory=list)
    sanity_error: str = ""
    trigger: Optional[RegionAttribution] = None
    trigger_source: str = ""
    key = "explanations"
    title = "Explanations: where the model looks"

    def to_json(self) -> dict:
        doc = {"method": self.method, "settings": dict(self.settings), "attack": self.attack,
               "examples": [e.to_json() for e in self.examples],
               "attribution_shift": self.shift.to_json(),
               "infidelity": {"clean": self.infidelity_clean.tolist(),
                              "adversarial": self.infidelity_adversarial.tolist()},
               "sanity_checks": [check.to_json() for check in self.sanity],
               "sanity_check_error": self.sanity_error or None}
        if self.trigger is not None:
            doc["trigger"] = {"source": self.trigger_source, **self.trigger.to_json()}
        return doc

    def unchanged_decisions(self) -> list[int]:
        """Positions of the examples whose prediction the attack did not change."""
        return [i for i, e in enumerate(self.examples)
                if e.adversarial_prediction == e.clean_prediction]

    def verdict(self):
        """Whether the maps can be trusted: at risk when the maps of the method shown
        fail the model-randomisation check (they barely change when the weights are
        noise), or when they are fragile: on the examples whose decision the attack
        left unchanged, the mean top-k overlap of clean and attacked maps is below
        :data:`FRAGILE_OVERLAP`. Inconclusive when the check could not run."""
        from .scan_summary import AT_RISK, INCONCLUSIVE, NO_FINDING, Verdict

        check = next((c for c in self.sanity if c.method == self.method), None)
        max_similarity = check.max_similarity if check else DEFAULT_MAX_SIMILARITY
        top = f"top-{100 * self.shift.top_k_fraction:g}%"
        threshold = (f"at risk when the maps' rank correlation with those of the fully "
                     f"randomised model is at least {max_similarity:g}, or when an attack that "
                     f"leaves the decision unchanged keeps under {FRAGILE_OVERLAP:.0%} of the "
                     f"{top} features")
        source = ("Adebayo et al. 2018 (model-randomisation test: maps that survive random "
                  "weights describe the input, not the model) and Ghorbani et al. 2019 (top-k "
                  "intersection of maps under perturbations that keep the label); both cuts "
                  "are this tool's, as the papers give curves, not numbers")
        name = _METHOD_NAMES.get(self.method, self.method).split(" (")[0]
        unchanged = self.unchanged_decisions()
        overlap = (sum(float(self.shift.top_k_overlap[i]) for i in unchanged) / len(unchanged)
                   if unchanged else None)
        k = len(self.examples)
        shift = (f"{top} overlap of clean and attacked maps {self.shift.mean_top_k_overlap:.2f}"
                 + (f", {overlap:.2f} on the {len(unchanged)} of {k} examples the attack did "
                    "not flip" if unchanged else
                    f"; the attack flipped all {k} examples, so fragility is not measured"))
        if check is None:
            why = f"sanity check failed to run ({self.sanity_error})" if self.sanity_error \
                else "sanity check not run"
            return Verdict(INCONCLUSIVE, f"{name}: {why}; {shift}", threshold, source)
        others = [f"{_METHOD_NAMES.get(c.method, c.method).split(' (')[0]} "
                  f"{c.final_rank_correlation:.3f}, {'passes' if c.passed else 'fails'}"
                  for c in self.sanity if c is not check]
        sanity = (f"{name} maps: rank correlation {check.final_rank_correlation:.3f} with "
                  f"every layer random, {'passes' if check.passed else 'fails'} the check"
                  + (f" ({', '.join(others)})" if others else ""))
        fragile = overlap is not None and overlap < FRAGILE_OVERLAP
        return Verdict(AT_RISK if not check.passed or fragile else NO_FINDING,
                       f"{sanity}; {shift}", threshold, source)

    def blocks(self, figure_dir: str) -> list[Block]:
        k = len(self.examples)
        flipped = sum(e.adversarial_prediction != e.label for e in self.examples)
        blocks: list[Block] = [
            Paragraph(f"The {k} test examples with the smallest clean margin, explained for "
                      f"their true label by {_METHOD_NAMES.get(self.method, self.method)} "
                      f"({_settings_text(self.settings)}), on the clean input and on an "
                      f"adversarial one ({self.attack}; {flipped} of {k} misclassified). "
                      "Low rank correlation or top-k overlap between the two maps means the "
                      "attack moved the evidence the model uses"
                      + (_IG_NOTE if self.method == "integrated_gradients" else "")
                      + "; infidelity (Yeh et al. 2019, lower is better) says how well a map "
                      "predicts the model's response to small noise."),
            _table(self),
            Figure(_plot_maps(self, os.path.join(figure_dir, "explanations_maps.png")),
                   "clean and adversarial inputs with their attribution maps"),
            Figure(_plot_shift(self, os.path.join(figure_dir, "explanations_shift.png")),
                   "how far the attribution moved under attack, per example"),
        ]
        blocks += _sanity_blocks(self.sanity, self.sanity_error, figure_dir)
        if self.trigger is not None:
            t = self.trigger
            blocks += [Subheading("Trigger region"),
                       Paragraph(f"Share of attribution inside the trigger mask "
                                 f"({self.trigger_source}): {100 * t.mean_share:.1f}% on average, "
                                 f"against {100 * t.mean_area:.1f}% for a map spread evenly "
                                 f"(lift {float(t.lift.mean()):.2f}; well above 1 means the "
                                 "model looks at the trigger).")]
        return blocks


_METHOD_NAMES = {"integrated_gradients": "Integrated Gradients (Sundararajan et al. 2017)",
                 "saliency": "saliency (input gradient)",
                 "smoothgrad": "SmoothGrad (Smilkov et al. 2017)"}


_IG_NOTE = (" (Integrated Gradients multiplies by the input minus the baseline, so pixels at "
            "the baseline get no attribution in either map)")


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in settings.items())


def _table(section: ExplanationsSection) -> Table:
    shift = section.shift
    rows = [(str(e.index), str(e.label), str(e.clean_prediction), str(e.adversarial_prediction),
             f"{e.margin:.3f}", f"{float(shift.rank_correlation[i]):.3f}",
             f"{float(shift.top_k_overlap[i]):.2f}",
             f"{float(section.infidelity_clean[i]):.3g}",
             f"{float(section.infidelity_adversarial[i]):.3g}")
            for i, e in enumerate(section.examples)]
    top = f"top-{100 * shift.top_k_fraction:g}% overlap"
    return Table(("example", "label", "clean pred.", "adv. pred.", "clean margin",
                  "rank corr. clean/adv", top, "infidelity clean", "infidelity adv."), rows,
                 align="lrrrrrrrr")


def _sanity_blocks(checks: list[RandomisationCheck], error: str,
                   figure_dir: str) -> list[Block]:
    blocks: list[Block] = [Subheading("Sanity check: model randomisation")]
    if not checks:
        return blocks + [Failed(error) if error else Paragraph("Not run.")]
    first = checks[0]
    blocks.append(Paragraph(
        f"Adebayo et al. 2018: the layers with parameters were replaced by noise of their own "
        f"scale, top layer first, in {len(first.stages)} stages, and the maps of "
        f"{first.n_examples} examples recomputed. A method passes when the rank correlation of "
        f"its maps with the original ones, once every layer is random, is below "
        f"{first.max_similarity:g} (our threshold: above it the random model's maps keep most of "
        "the original order of importance). A method that fails describes the input more than "
        "the model: do not read its maps as the model's reasons."))
    for check in checks:
        verdict = "PASSED" if check.passed else "FAILED"
        blocks.append(Paragraph(f"{_METHOD_NAMES.get(check.method, check.method)}: {verdict}, "
                                f"rank correlation {check.final_rank_correlation:.3f} with "
                                "every layer random."))
        blocks.append(BulletList(
            [f"after randomising {len(s.randomised)} layer(s) down to {s.randomised[-1]}: "
               f"rank correlation {s.rank_correlation:.3f}, "
               f"top-{100 * check.top_k_fraction:g}% overlap {s.top_k_overlap:.2f}"
               for s in check.stages]))
    figure = _plot_sanity(checks, os.path.join(figure_dir, "explanations_sanity.png"))
    return blocks + [Figure(figure, "similarity of the maps as the model is randomised from "
                                    "the top")]


# ------------------------------------------------------------------ figures
def _rgb(x: torch.Tensor, input_range: tuple[float, float]) -> torch.Tensor:
    """(C, H, W) in ``input_range`` -> (H, W, 3) in [0, 1]; not 3 channels: grey."""
    lo, hi = input_range
    x = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (x if x.shape[0] == 3 else x.mean(0, keepdim=True).expand(3, -1, -1)).permute(1, 2, 0)


def _plot_maps(section: ExplanationsSection, path: str) -> str:
    """One row per example: clean input, its map, adversarial input, its map (both maps
    on one colour scale), drawn as one image per row (a few axes, not dozens)."""
    from matplotlib import colormaps

    from modelsec_fast._plotting import agg_pyplot, save_figure

    plt = agg_pyplot()
    colour = colormaps["inferno"]
    rows = min(len(section.examples), MAX_FIGURE_ROWS)
    maps_clean, maps_adv = heatmap(section.shift.clean), heatmap(section.shift.adversarial)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.9 * rows), dpi=110, squeeze=False)
    for r, ax in enumerate(axes[:, 0]):
        e = section.examples[r]
        scale = float(torch.maximum(maps_clean[r].max(), maps_adv[r].max())) or 1.0
        clean_map, adv_map = (torch.as_tensor(colour((m[r] / scale).cpu().numpy())[..., :3])
                              for m in (maps_clean, maps_adv))
        panels = [_rgb(section.clean_inputs[r], section.input_range), clean_map.float(),
                  _rgb(section.adversarial_inputs[r], section.input_range), adv_map.float()]
        gap = torch.ones(panels[0].shape[0], max(1, panels[0].shape[1] // 8), 3)
        row = torch.cat([p for panel in panels for p in (panel, gap)][:-1], dim=1)
        ax.imshow(row.numpy(), interpolation="nearest")
        ax.set_title(f"#{e.index}, label {e.label}:  clean (pred {e.clean_prediction}) | map | "
                     f"adversarial (pred {e.adversarial_prediction}) | map, rank corr. "
                     f"{float(section.shift.rank_correlation[r]):.2f}", fontsize=8)
        ax.axis("off")
    return save_figure(fig, path)


def _plot_shift(section: ExplanationsSection, path: str) -> str:
    from modelsec_fast._plotting import agg_pyplot, save_figure

    plt = agg_pyplot()
    k = len(section.examples)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * k + 2), 3.2), dpi=110)
    positions = torch.arange(k).float()
    ax.bar(positions - 0.2, section.shift.rank_correlation.tolist(), width=0.4,
           label="rank correlation")
    ax.bar(positions + 0.2, section.shift.top_k_overlap.tolist(), width=0.4,
           label=f"top-{100 * section.shift.top_k_fraction:g}% overlap")
    ax.set_xticks(positions.tolist(), [f"#{e.index}" for e in section.examples], fontsize=8)
    ax.set_ylim(min(0.0, float(section.shift.rank_correlation.min())), 1.0)
    ax.set_ylabel("clean vs adversarial map")
    ax.set_title("Attribution moved by the attack (1: unchanged)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _plot_sanity(checks: list[RandomisationCheck], path: str) -> str:
    from modelsec_fast._plotting import agg_pyplot, save_figure

    plt = agg_pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for check in checks:
        layers = [0] + [len(s.randomised) for s in check.stages]
        ax.plot(layers, [1.0] + [s.rank_correlation for s in check.stages], marker="o",
                label=f"{check.method}: rank correlation")
    ax.axhline(checks[0].max_similarity, color="k", ls="--", lw=0.8, label="pass threshold")
    ax.set_xlabel("layers randomised (from the top)")
    ax.set_ylabel("similarity to the original maps")
    ax.set_ylim(-0.2, 1.05)
    ax.set_title("Model randomisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
