"""``modelsec-fast audit``: membership inference (loss threshold, LiRA with shadow
models) on a checkpoint; ``--canary`` adds the one-run canary audit of its DP-SGD
recipe; ``--out`` writes the report with the ROC plot."""

from __future__ import annotations

import os
import sys
import time

from ..console import PROG, UsageError, log, progress_enabled

__all__ = ["run"]


def _population(ckpt, ds):
    """(x, y, member_mask, design) over which membership is attacked."""
    import torch

    if ckpt.membership == "coin":
        return ds.x_train, ds.y_train, ckpt.member_mask, "coin_flip"
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    mask = torch.cat([torch.ones(len(ds.y_train), dtype=torch.bool),
                      torch.zeros(len(ds.y_test), dtype=torch.bool)])
    return x, y, mask, "split"


def run(args) -> int:
    from modelsec_fast.audit.membership import membership_audit

    from ..checkpoint import dataset_from_spec, load_checkpoint
    from ..jsonio import write_json
    from ..training import shadow_trainer

    if args.shadows < 16:
        log(args, f"warning: {args.shadows} shadow models; LiRA's per-example statistics "
                  "need >= 16 (Carlini et al. use 64-256) for a reliable audit")
    ckpt = load_checkpoint(args.checkpoint)
    if args.canary and (not ckpt.recipe.dp or not ckpt.privacy):
        raise UsageError("--canary audits a DP-SGD run: the checkpoint was not trained with --dp")
    model = ckpt.build_model(args.device)
    ds = dataset_from_spec(ckpt.data)
    if len(ckpt.member_mask) != len(ds.y_train):
        raise UsageError(f"checkpoint's member mask covers {len(ckpt.member_mask)} records but "
                         f"its data now has {len(ds.y_train)}")
    x, y, mask, design = _population(ckpt, ds)
    log(args, f"auditing {args.checkpoint}: {int(mask.sum())} members, "
              f"{int((~mask).sum())} non-members, {args.shadows} shadow models "
              f"({ckpt.recipe.describe()})")
    started = time.perf_counter()
    audit = membership_audit(model, x, y, mask,
                             train_fn=shadow_trainer(ckpt.recipe, ckpt.privacy, ds.num_classes,
                                                     args.device),
                             num_shadow=args.shadows, design=design,
                             delta=ckpt.recipe.delta, seed=args.seed,
                             progress=progress_enabled(args))
    result = {"checkpoint": args.checkpoint, "recipe": ckpt.recipe.to_dict(),
              "audit_time_s": time.perf_counter() - started, "membership": audit.to_dict(),
              "privacy": ckpt.privacy}
    canary = None
    if args.canary:
        from ..audits import replay_canary_audit

        canary = replay_canary_audit(ckpt.privacy, ds.x_train, ds.y_train,
                                     num_classes=ds.num_classes, model=ckpt.recipe.model,
                                     model_options=ckpt.recipe.model_options, seed=args.seed)
        result["canary_audit"] = canary.to_dict() | {"summary": canary.summary()}
    if args.out:
        files = _write_report(args, audit, canary)
        result["report"] = files.markdown
        result["roc_plot"] = os.path.join(args.out, "mi_roc.png")
    if args.json:
        write_json(result, args.json)
    human = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON
    print(audit.table(), file=human)
    for note in audit.notes:
        print(f"note: {note}", file=human)
    if canary is not None:
        print(canary.summary(), file=human)
    return 0


def _write_report(args, audit, canary):
    """The audit's report in ``--out``: the membership section and, with ``--canary``,
    the canary audit's."""
    from ..report import ReportMeta, write_report
    from ..sections import CanaryAuditSection, MembershipSection

    label = os.path.basename(args.checkpoint)
    sections = [MembershipSection({label: audit})]
    if canary is not None:
        sections.append(CanaryAuditSection(canary, label))
    return write_report(args.out, f"{PROG} audit of {label}", ReportMeta.now(args.command_line),
                        sections)
