"""The DP step with the engine's per-sample norms by the native kernel or by ``vecdot``.

One process, one private step per model (``bench_dpsgd.make_step("ours", ...)``);
each round times one step with each variant, in alternating order, and the
median of the per-round ratios is printed. ``row_sq_norms`` is swapped in every
per-sample rule module that imported it. Alone, ``vecdot`` reuses its freed
temporary; in the step its ``x * x`` lands on fresh pages (see bench/RESULTS.md,
fused ops and the DP-SGD step's session-8 part).

    python bench/diagnostics/row_norms_ab.py MODEL [ROUNDS]    # e.g. gpt2 16
"""

import os
import statistics
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import bench_dpsgd as b  # noqa: E402
from modelsec_fast.privacy.per_sample import base, clipping, conv, embedding, linear, norms  # noqa: E402


def vecdot(t):
    flat = base.flat_rows(t)
    return torch.linalg.vecdot(flat, flat).to(base.opmath(t.dtype))


def main(argv):
    name, rounds = argv[0], int(argv[1]) if len(argv) > 1 else 16
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    modules = [m for m in (base, linear, conv, clipping, norms, embedding)
               if hasattr(m, "row_sq_norms")]
    variants = {"vecdot": vecdot, "native": base.row_sq_norms}
    step = b.make_step("ours", name, torch.device("cpu"), b.BATCH[name])

    def timed(variant):
        for m in modules:
            m.row_sq_norms = variants[variant]
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    names = list(variants)
    times = {k: [] for k in names}
    for k in names:  # warm-up
        timed(k), timed(k)
    for r in range(rounds):
        for k in (names if r % 2 else names[::-1]):
            times[k].append(timed(k))
    ratio = statistics.median(n / v for n, v in zip(times["native"], times["vecdot"]))
    print(f"{name}: vecdot {statistics.median(times['vecdot']) * 1e3:.2f} ms, native "
          f"{statistics.median(times['native']) * 1e3:.2f} ms, native / vecdot {ratio:.3f} "
          f"(median of {rounds} per-round ratios)")


if __name__ == "__main__":
    main(sys.argv[1:])
