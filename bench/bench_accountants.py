"""Accountant benchmark: known-answer epsilons and incremental PLD timing.

Prints two small tables and optionally writes JSON:

1. epsilon at delta = 1e-5 for each known-answer case, from our RDP and PLD
   accountants side by side with Opacus 1.6 (RDP, PRV) and dp-accounting's own
   PLDAccountant composing PoissonSampled(Gaussian) events;
2. the time of ``get_epsilon`` after each epoch of a long history whose sigma
   changes every epoch (our incremental PLD), against recomposing the whole
   history from scratch once at the end (ours and dp-accounting's).

Accountants run on the CPU whatever ``--device`` says (they are numpy/scipy);
the flag exists so that ``bench/gpu_check.sh`` can call every bench alike.

    python bench/bench_accountants.py [--quick] [--epochs 100] [--json out.json]
"""

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modelsec_fast.accountants import PLDAccountant, RDPAccountant, get_noise_multiplier  # noqa: E402

DELTA = 1e-5
KNOWN_ANSWERS = [
    # (q, sigma, steps, {mechanism: expected epsilon})
    (0.04, 1.5, 2250, {"rdp": 7.32911117143}),
    (256 / 60000, 1.1, 14062, {"rdp": 2.5966, "pld": 2.3817}),
]


def canary_ms(size=512):
    """Time of one size x size matmul: a noise gauge for the machine."""
    a = torch.randn(size, size)
    start = time.perf_counter()
    a @ a
    return (time.perf_counter() - start) * 1e3


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _cpu_timed(fn):
    """(value, wall seconds, CPU seconds of this process): CPU time ignores other load."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


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


def known_answer_rows():
    rows = []
    for q, sigma, steps, expected in KNOWN_ANSWERS:
        history = [(sigma, q, steps)]
        row = {"q": q, "sigma": sigma, "steps": steps, "expected": expected}
        candidates = {
            "ours_rdp": lambda: _epsilon_with(RDPAccountant, history),
            "ours_pld": lambda: _epsilon_with(PLDAccountant, history),
            "dp_accounting_pld": lambda: _google_pld(history),
        }
        try:
            from opacus.accountants import PRVAccountant, RDPAccountant as OpacusRDP

            candidates["opacus_rdp"] = lambda: _epsilon_with(OpacusRDP, history)
            candidates["opacus_prv"] = lambda: _epsilon_with(PRVAccountant, history)
        except ImportError:
            pass
        for name, fn in candidates.items():
            eps, seconds = _timed(fn)
            row[name] = {"epsilon": eps, "seconds": seconds}
        rows.append(row)
    return rows


def incremental_history(epochs, q, sigma0=1.0, sigma_step=0.01):
    steps_per_epoch = int(round(1 / q))
    acc = PLDAccountant()
    per_epoch, per_epoch_cpu, canaries = [], [], []
    for epoch in range(epochs):
        sigma = sigma0 + sigma_step * epoch
        for _ in range(steps_per_epoch):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        canaries.append(canary_ms())
        eps, seconds, cpu = _cpu_timed(lambda: acc.get_epsilon(DELTA))
        per_epoch.append(seconds)
        per_epoch_cpu.append(cpu)
    quiet = min(canaries) * 1.5
    quiet_times = [t for t, c in zip(per_epoch, canaries) if c <= quiet] or per_epoch
    history = list(acc.history)
    scratch_ours, t_ours = _timed(lambda: _epsilon_with(PLDAccountant, history))
    scratch_google, t_google = _timed(lambda: _google_pld(history))
    return {
        "epochs": epochs, "q": q, "steps_per_epoch": steps_per_epoch, "segments": len(history),
        "final_epsilon": eps, "per_epoch_seconds_median": statistics.median(per_epoch),
        "per_epoch_seconds_max": max(per_epoch), "per_epoch_seconds_max_quiet": max(quiet_times),
        "per_epoch_cpu_seconds_median": statistics.median(per_epoch_cpu),
        "per_epoch_cpu_seconds_max": max(per_epoch_cpu),
        "incremental_total_seconds": sum(per_epoch),
        "scratch_ours_seconds": t_ours, "scratch_ours_epsilon": scratch_ours,
        "scratch_dp_accounting_seconds": t_google, "scratch_dp_accounting_epsilon": scratch_google,
    }


def noise_multiplier_rows(q, epochs, target):
    rows = []
    for mechanism in ("rdp", "pld"):
        sigma, seconds = _timed(lambda: get_noise_multiplier(
            target_epsilon=target, target_delta=DELTA, sample_rate=q, epochs=epochs,
            accountant=mechanism))
        rows.append({"accountant": mechanism, "sigma": sigma, "seconds": seconds})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="accepted for uniformity; accountants always run on the CPU")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the sigma-changing history")
    parser.add_argument("--json", help="write the results to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    epochs = 5 if args.quick else args.epochs
    q = 256 / 60000

    result = {"delta": DELTA, "device_note": "accountants run on the CPU", "quick": args.quick}
    result["known_answers"] = known_answer_rows() if not args.quick else known_answer_rows()[:1]
    print(f"epsilon at delta={DELTA}")
    names = ["ours_rdp", "opacus_rdp", "ours_pld", "dp_accounting_pld", "opacus_prv"]
    print(f"{'q':>10} {'sigma':>5} {'steps':>6} | " + " | ".join(f"{n:>17}" for n in names) + " | expected")
    for row in result["known_answers"]:
        cells = [f"{row[n]['epsilon']:>9.5f} ({row[n]['seconds']:4.1f}s)" if n in row else f"{'-':>17}"
                 for n in names]
        print(f"{row['q']:>10.6f} {row['sigma']:>5} {row['steps']:>6} | " + " | ".join(cells)
              + f" | {row['expected']}")

    inc = incremental_history(epochs, q)
    result["incremental_pld"] = inc
    print(f"\nPLD, {inc['epochs']} epochs x {inc['steps_per_epoch']} steps, sigma changes every epoch "
          f"({inc['segments']} segments), final eps {inc['final_epsilon']:.4f}")
    print(f"  get_epsilon wall time per epoch: median {inc['per_epoch_seconds_median']:.3f}s, "
          f"max {inc['per_epoch_seconds_max']:.3f}s (max over quiet epochs "
          f"{inc['per_epoch_seconds_max_quiet']:.3f}s), total {inc['incremental_total_seconds']:.1f}s")
    print(f"  CPU time per epoch: median {inc['per_epoch_cpu_seconds_median']:.3f}s, "
          f"max {inc['per_epoch_cpu_seconds_max']:.3f}s")
    print(f"  from scratch once at the end: ours {inc['scratch_ours_seconds']:.1f}s "
          f"(eps {inc['scratch_ours_epsilon']:.4f}), dp-accounting "
          f"{inc['scratch_dp_accounting_seconds']:.1f}s (eps {inc['scratch_dp_accounting_epsilon']:.4f})")

    if not args.quick:
        result["get_noise_multiplier"] = noise_multiplier_rows(q, 60, 2.0)
        print("\nget_noise_multiplier(target eps 2.0, delta 1e-5, q=256/60000, 60 epochs)")
        for row in result["get_noise_multiplier"]:
            print(f"  {row['accountant']}: sigma {row['sigma']:.4f} in {row['seconds']:.2f}s")

    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
