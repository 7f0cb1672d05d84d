"""``modelsec-fast epsilon``: the accountant as a calculator, epsilon from a noise
multiplier or the noise multiplier for a target epsilon."""

from __future__ import annotations

import math

from ..console import UsageError

__all__ = ["run"]


def run(args) -> int:
    from modelsec_fast.accountants import create_accountant, get_noise_multiplier

    from ..jsonio import write_json

    if (args.steps is None) == (args.epochs is None):
        raise UsageError("give exactly one of --steps or --epochs")
    steps = args.steps if args.steps is not None else math.ceil(args.epochs / args.sample_rate)
    if (args.noise_multiplier is None) == (args.epsilon is None):
        raise UsageError("give exactly one of --noise-multiplier (-> epsilon) or "
                         "--epsilon (-> noise multiplier)")
    accountants = ["rdp", "pld"] if args.accountant == "all" else [args.accountant]
    rows = []
    for name in accountants:
        if args.noise_multiplier is not None:
            acct = create_accountant(name)
            acct.history = [(args.noise_multiplier, args.sample_rate, steps)]
            rows.append({"accountant": name, "noise_multiplier": args.noise_multiplier,
                         "epsilon": float(acct.get_epsilon(args.delta))})
        else:
            sigma = get_noise_multiplier(target_epsilon=args.epsilon, target_delta=args.delta,
                                         sample_rate=args.sample_rate, steps=steps,
                                         accountant=name)
            rows.append({"accountant": name, "epsilon": args.epsilon,
                         "noise_multiplier": float(sigma)})
    result = {"sample_rate": args.sample_rate, "steps": steps, "delta": args.delta,
              "results": rows}
    if args.json:
        write_json(result, "-")
        return 0
    print(f"q = {args.sample_rate:g}, {steps} steps, delta = {args.delta:g}")
    for r in rows:
        print(f"  {r['accountant']:>4}: sigma = {r['noise_multiplier']:.4f} -> "
              f"epsilon = {r['epsilon']:.4f}")
    return 0
