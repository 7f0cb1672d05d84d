"""Split PGD-10 calls on the MNIST CNN (b=1024) into parts, ours and torchattacks'.

``PairedFloor`` (bench_attacks.py) runs one floor pass before each of the
attack's gradient passes. The interval from the end of one floor pass to the
start of the next is the attack's own pass plus its update; this prints its
median against the median floor pass, and the ratio of their sums. Under
glibc's default allocator the page-fault cost moves between the attack's
passes and the floor's; with freed memory kept the two agree (see
bench/RESULTS.md, attacks).

    python bench/diagnostics/pgd_intervals.py [CALLS]
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 python bench/diagnostics/pgd_intervals.py
"""

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import _harness  # noqa: E402,F401  (puts the checkout on sys.path)
import torch  # noqa: E402
import torchattacks as ta  # noqa: E402
from bench_attacks import PairedFloor, floor_passes  # noqa: E402

import modelsec_fast.attacks as ma  # noqa: E402
from modelsec_fast.models import OpacusMnistCNN  # noqa: E402


def main(calls: int) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = OpacusMnistCNN((1, 28, 28)).eval()
    x = torch.rand(1024, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    floor_passes(model, x, y, 2)()  # warm-up
    paired = PairedFloor(model, torch.device("cpu"))
    for name, atk in (("ours", ma.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)),
                      ("torchattacks", ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10))):
        intervals, floors = [], []
        for _ in range(calls):
            paired.call(name, lambda: atk(x, y))
            marks = paired.marks
            for (_, before_end), (after_start, after_end) in zip(marks, marks[1:]):
                intervals.append(after_start - before_end)  # attack pass between two floor passes
                floors.append(after_end - after_start)
        total_interval = sum(s.wall for s in intervals)
        total_floor = sum(s.wall for s in floors)
        interval_ms = statistics.median(s.wall for s in intervals) * 1e3
        print(f"{name}: attack pass + update {interval_ms:.1f} ms "
              f"({statistics.median(s.faults for s in intervals):.0f} minor faults), floor pass "
              f"{statistics.median(s.wall for s in floors) * 1e3:.1f} ms "
              f"({statistics.median(s.faults for s in floors):.0f} faults), medians; sums "
              f"{100 * (total_interval / total_floor - 1):+.2f}%", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
