"""Accountant benchmark: known-answer epsilons and incremental PLD timing.

Three tables (``bench/_harness.py`` rounds, ratios, JSON):

1. epsilon at delta = 1e-5 for each known-answer case, from our RDP and PLD
   accountants side by side with Opacus 1.6 (RDP, PRV; optional) and
   dp-accounting's own PLDAccountant composing PoissonSampled(Gaussian) events;
   ratios: ours_rdp to opacus_rdp, ours_pld and opacus_prv to dp_accounting_pld;
2. the time of ``get_epsilon`` after each epoch of a long history whose sigma
   changes every epoch (our incremental PLD; each epoch is a round of the harness,
   so the canary rule applies to it), against recomposing the whole history from
   scratch once at the end (ours and dp-accounting's);
3. ``get_noise_multiplier`` for a target epsilon, RDP and PLD (not with --quick).

Accountants run on the CPU whatever ``--device`` says (they are numpy/scipy);
the flag exists so that every bench takes the same flags.

    python bench/bench_accountants.py [--quick] [--epochs 100] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import warnings

import _harness as h

from modelsec_fast.accountants import PLDAccountant, RDPAccountant, get_noise_multiplier

DELTA = 1e-5
Q = 256 / 60000
KNOWN_ANSWERS = [
    # (q, sigma, steps, {mechanism: expected epsilon})
    (0.04, 1.5, 2250, {"rdp": 7.32911117143}),
    (Q, 1.1, 14062, {"rdp": 2.5966, "pld": 2.3817}),
]
KNOWN_BASELINES = {"ours_rdp": "opacus_rdp", "ours_pld": "dp_accounting_pld",
                   "opacus_prv": "dp_accounting_pld"}


def _epsilon_with(factory, history):
    acc = factory()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return acc.get_epsilon(DELTA)


def _google_pld(history):
    import dp_accounting
    from dp_accounting.pld import PLDAccountant as GooglePLD

    acc = GooglePLD(value_discretization_interval=1e-4)
    for sigma, q, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(DELTA)


def known_answers(args, report, opacus_accountants):
    section = report.section(f"epsilon at delta={DELTA}, known answers", baseline=KNOWN_BASELINES,
                             note="ratio: ours_rdp to opacus_rdp; ours_pld and opacus_prv to "
                                  "dp_accounting_pld")
    cases = KNOWN_ANSWERS[:1] if args.quick else KNOWN_ANSWERS
    for q, sigma, steps, expected in cases:
        history = [(sigma, q, steps)]
        contenders = {
            "ours_rdp": lambda: _epsilon_with(RDPAccountant, history),
            "ours_pld": lambda: _epsilon_with(PLDAccountant, history),
            "dp_accounting_pld": lambda: _google_pld(history),
        }
        if opacus_accountants is not None:
            opacus_rdp, opacus_prv = opacus_accountants
            contenders["opacus_rdp"] = lambda: _epsilon_with(opacus_rdp, history)
            contenders["opacus_prv"] = lambda: _epsilon_with(opacus_prv, history)
        m = h.measure(contenders, device="cpu", rounds=args.rounds, warmup=0 if args.quick else 1)
        for row in section.add(m, labels={"q": f"{q:.6g}", "sigma": sigma, "steps": steps}):
            row.values["epsilon"] = m.results[row.contender]
            mechanism = "rdp" if row.contender.endswith("rdp") else "pld"
            row.values["expected"] = expected.get(mechanism)


def incremental_pld(args, report):
    steps_per_epoch = int(round(1 / Q))
    acc = PLDAccountant()
    epoch = [0]

    def next_epoch():  # one round: an epoch of steps (untimed), then get_epsilon (timed)
        sigma = 1.0 + 0.01 * epoch[0]
        epoch[0] += 1
        for _ in range(steps_per_epoch):
            acc.step(noise_multiplier=sigma, sample_rate=Q)
        sample, eps = h.timed(lambda: acc.get_epsilon(DELTA), "cpu")
        next_epoch.epsilon = eps
        return h.Parts({"get_epsilon after each epoch (incremental)": sample})

    per_epoch = h.measure({"incremental": next_epoch}, device="cpu", rounds=args.epochs, warmup=0)
    history = list(acc.history)
    scratch = h.measure({"from scratch, ours": lambda: _epsilon_with(PLDAccountant, history),
                         "from scratch, dp-accounting": lambda: _google_pld(history)},
                        device="cpu", rounds=args.rounds, warmup=0)
    section = report.section(
        f"incremental PLD: {args.epochs} epochs x {steps_per_epoch} steps, sigma changes every "
        f"epoch ({len(history)} segments)",
        baseline={"from scratch, ours": "from scratch, dp-accounting"},
        note="the incremental row's rounds are the epochs; max: the slowest kept epoch")
    (row,) = section.add(per_epoch)
    kept = per_epoch.samples[row.contender]
    row.values["max"] = h.format_seconds(max(kept[i].wall for i in per_epoch.kept))
    row.values["CPU max"] = h.format_seconds(max(kept[i].cpu for i in per_epoch.kept))
    row.values["epsilon"] = next_epoch.epsilon
    for row in section.add(scratch):
        row.values["epsilon"] = scratch.results[row.contender]


def noise_multiplier(args, report):
    def solve(accountant):
        return lambda: get_noise_multiplier(target_epsilon=2.0, target_delta=DELTA, sample_rate=Q,
                                            epochs=60, accountant=accountant)
    m = h.measure({"rdp": solve("rdp"), "pld": solve("pld")}, device="cpu", rounds=args.rounds,
                  warmup=0)
    section = report.section(f"get_noise_multiplier(target eps 2.0, delta {DELTA}, q=256/60000, "
                             "60 epochs)", baseline="rdp")
    for row in section.add(m):
        row.values["sigma"] = m.results[row.contender]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="bench_accountants.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100,
                        help="epochs of the sigma-changing history")
    args = h.parse_args(parser, argv, rounds=3, quick_rounds=1, threads=1)
    if args.quick:
        args.epochs = 2
    report = h.Report("bench_accountants", args)
    report.note("accountants run on the CPU whatever --device says")
    opacus = h.optional_import("opacus", report, "the Opacus RDP and PRV accountants")
    accountants = None
    if opacus is not None:
        from opacus.accountants import PRVAccountant, RDPAccountant as OpacusRDP
        accountants = (OpacusRDP, PRVAccountant)
    known_answers(args, report, accountants)
    incremental_pld(args, report)
    if not args.quick:
        noise_multiplier(args, report)
    return report.finish()


if __name__ == "__main__":
    main()
