"""The scan's membership-inference stage: the loss-threshold attack on the records whose
membership is known, and LiRA when a fresh copy of the model can be trained (a factory
and a training recipe)."""

from __future__ import annotations

from ..report import SkippedSection
from ..sections.scan_membership import ScanMembershipSection
from .inputs import ScanInputs

__all__ = ["run", "MODEL_LABEL"]

MODEL_LABEL = "your model"
_KEY, _TITLE = ScanMembershipSection.key, ScanMembershipSection.title


def run(inputs: ScanInputs):
    """:class:`ScanMembershipSection`, or skipped without members and non-members."""
    from modelsec_fast.audit.membership import membership_audit

    data = inputs.membership
    if data is None:
        return SkippedSection(_KEY, _TITLE, "no records of known membership: give --train-data "
                                            "(members; the test data are the non-members), "
                                            "with --members MASK for a mixed pool")
    n_members = int(data.is_member.sum())
    if n_members == 0 or n_members == len(data.is_member):
        return SkippedSection(_KEY, _TITLE, f"the {len(data.is_member)} records of known "
                              "membership need both members and non-members")
    if inputs.factory is None:
        lira_skipped = ("needs the model's architecture to train shadow models: "
                        "--model package.module:factory --weights FILE")
    elif inputs.recipe is None:
        lira_skipped = ("needs a training recipe for the shadow models: --recipe, or a "
                        "training_recipe attribute on the factory")
    else:
        lira_skipped = ""
    shadows = 0 if lira_skipped else max(2, inputs.budget.shadow_models)
    inputs.log(f"membership: {n_members} members, {len(data.is_member) - n_members} "
               f"non-members; loss threshold" + (f" and LiRA with {shadows} shadow models"
                                                 if shadows else ""))
    def train_shadow(x, y, seed):
        inputs.log(f"membership: shadow model (seed {seed})")
        return inputs.train_fresh(x, y, seed)

    audit = membership_audit(inputs.model, data.x, data.y, data.is_member,
                             train_fn=train_shadow if shadows else None,
                             num_shadow=max(2, shadows), design="split", seed=inputs.seed)
    return ScanMembershipSection({MODEL_LABEL: audit}, lira_skipped=lira_skipped)
