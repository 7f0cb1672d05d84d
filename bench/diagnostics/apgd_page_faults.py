"""ResNet-18 APGD against its floor, timed one after the other, with page faults.

Each round times the floor (steps + 1 forward + input-gradient passes), the
floor replayed over the attack's iterates and our APGD, in an order rotated
from round to round, and prints each one's wall time, CPU time and minor page
faults. It showed that under glibc's default allocator a ResNet-18 pass at
b=128 faults in about 1.3 GB of fresh pages, and that the fault count differs
from contender to contender (see bench/RESULTS.md, session 3).

    python bench/diagnostics/apgd_page_faults.py [BATCH STEPS ROUNDS]
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python ...  # freed memory kept
"""

import os
import resource
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "..")]

from bench_attacks import _floor, _replayed_floor  # noqa: E402

import modelsec_fast.attacks as ma  # noqa: E402
from modelsec_fast.models import ResNet18  # noqa: E402


def _measure(fn):
    """(wall s, CPU s, minor faults) of one call."""
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def main(batch: int, steps: int, rounds: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResNet18((3, 32, 32)).eval()
    x = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = ma.APGD(model, eps=8 / 255, steps=steps)
    contenders = {"floor": _floor(model, x, y, steps + 1),
                  "replayed floor": _replayed_floor(model, ours, x, y),
                  "ours": lambda: ours(x, y)}
    for fn in contenders.values():  # warm-up
        fn()
    results = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(_measure(contenders[name]))
            wall, cpu, faults = results[name][-1]
            print(f"round {r} {name:<15} wall {wall:.2f} s, CPU {cpu:.2f} s, "
                  f"{faults} minor faults", flush=True)
    floor = statistics.median(w for w, _, _ in results["floor"])
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        faults = statistics.median(f for _, _, f in runs)
        print(f"{name:<15} median wall {wall:.2f} s ({100 * (wall / floor - 1):+.1f}% vs floor), "
              f"median faults {faults:.0f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]] or [128, 20, 2]
    main(*args)
