"""``modelsec-fast evaluate``: clean and robust accuracy of a checkpoint (FGSM, PGD,
APGD over L-inf radii), optionally saving the worst-case adversarial examples."""

from __future__ import annotations

import os

from ..console import UsageError, log

__all__ = ["run"]


def run(args) -> int:
    import torch

    from ..checkpoint import dataset_from_spec, load_checkpoint
    from ..jsonio import write_json
    from ..robustness import robust_curve

    ckpt = load_checkpoint(args.checkpoint)
    if args.model is not None and args.model != ckpt.recipe.model:
        raise UsageError(f"checkpoint {args.checkpoint} holds model {ckpt.recipe.model!r}, "
                         f"not {args.model!r}")
    spec = dict(ckpt.data)
    if args.data is not None:
        spec = {"source": args.data, "train_size": None, "test_size": None, "seed": 0}
    if args.test_size is not None:
        spec["test_size"] = args.test_size
    ds = dataset_from_spec(spec)
    if tuple(ds.in_shape) != tuple(ckpt.in_shape):
        raise UsageError(f"checkpoint {args.checkpoint} is for inputs "
                         f"{'x'.join(map(str, ckpt.in_shape))}, the data has "
                         f"{'x'.join(map(str, ds.in_shape))}")
    model = ckpt.build_model(args.device)
    eps_grid = args.eps or [ckpt.recipe.adv_eps if ckpt.recipe.adv else 0.1]
    x, y = ds.x_test.to(args.device), ds.y_test.to(args.device)
    curve = robust_curve(model, x, y, eps_grid, attacks=args.attacks, steps=args.steps,
                         seed=args.seed, batch_size=args.batch_size,
                         keep_adversarial=args.save_adversarial is not None)
    result = {"checkpoint": args.checkpoint, "data": ds.describe(), "attacks": args.attacks,
              "steps": args.steps, **curve.to_json()}
    if args.save_adversarial:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_adversarial)), exist_ok=True)
        torch.save({"labels": y.cpu(),
                    "adversarial": {str(e): a.cpu() for e, a in curve.adversarial.items()},
                    "eps": eps_grid, "attacks": args.attacks}, args.save_adversarial)
        result["adversarial_examples"] = args.save_adversarial
    if args.json:
        write_json(result, args.json)
    log(args, f"clean accuracy {100 * curve.clean_accuracy:.2f}%")
    for eps in eps_grid:
        if eps:
            per_attack = ", ".join(f"{k} {100 * v:.1f}%"
                                   for k, v in curve.per_attack[float(eps)].items())
            log(args, f"eps {eps:g}: robust accuracy "
                      f"{100 * curve.robust_accuracy[float(eps)]:.2f}% ({per_attack})")
    for w in curve.warnings:
        log(args, f"warning: {w}")
    return 0
