"""ResNet-18 APGD against its floor, timed one after the other, with page faults.

Times the floor (steps + 1 forward + input-gradient passes), the floor replayed over
the attack's iterates and our APGD as contenders of ``bench/_harness.py`` (rotated
rounds), and prints each round's wall time, CPU time and minor page faults. It
showed that under glibc's default allocator a ResNet-18 pass at b=128 faults in
its activations afresh, and that the fault count differs from contender to
contender (see bench/RESULTS.md, attacks).

    python bench/diagnostics/apgd_page_faults.py [BATCH STEPS ROUNDS]
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python ...  # freed memory kept
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import _harness as h  # noqa: E402
import torch  # noqa: E402
from bench_attacks import floor_passes, replayed_floor  # noqa: E402

import modelsec_fast.attacks as ma  # noqa: E402
from modelsec_fast.models import ResNet18  # noqa: E402


def main(batch: int, steps: int, rounds: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResNet18((3, 32, 32)).eval()
    x = torch.rand(batch, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    ours = ma.APGD(model, eps=8 / 255, steps=steps)
    m = h.measure({"floor": floor_passes(model, x, y, steps + 1),
                   "replayed floor": replayed_floor(model, ours, x, y),
                   "ours": lambda: ours(x, y)}, device="cpu", rounds=rounds)
    for r, order in enumerate(m.orders):
        for name in order:
            s = m.samples[name][r]
            print(f"round {r} {name:<15} wall {s.wall:.2f} s, CPU {s.cpu:.2f} s, "
                  f"{s.faults:.0f} minor faults", flush=True)
    floor = m.wall("floor").median
    for name in m.series:
        wall = m.wall(name).median
        print(f"{name:<15} median wall {wall:.2f} s ({100 * (wall / floor - 1):+.1f}% vs floor), "
              f"median faults {m.faults(name):.0f}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]] or [128, 20, 2]
    main(*args)
