"""Per-sample convolution weight-gradient norms: the fused kernel against the other methods.

For the convolution layers where the DP engine cannot use ghost norms (the
benchmark CNNs' and torchvision ResNet-18's at 32x32), times every way the conv
rule can get the per-sample squared norms, interleaved (``bench/_harness.py``):

* ``batched``: the layer's one weight gradient over the batch, what the
  non-private step computes (the baseline; it yields no per-sample norm);
* ``grouped``, ``grouped_nhwc``, ``patches``: the materialised per-sample
  gradients of ``privacy/per_sample/conv.py``, chunk by chunk, then their norms
  (on CUDA only ``grouped``, over the whole batch, as the engine runs it there);
* ``fused``: ``ops._conv_weight_grad_norms`` (the native kernel: norms only);
* ``fused_keep``: the same, also writing the per-sample gradients.

    python bench/bench_conv_norms.py [--threads 2] [--rounds 7] [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse

import _harness as h
import torch

import modelsec_fast.ops as ops
from modelsec_fast.privacy.per_sample import conv
from modelsec_fast.privacy.per_sample.base import Call

# name: (batch, C_in, C_out, input size, kernel, stride, padding)
LAYERS = {
    "mnist_cnn.conv1": (256, 1, 16, 28, 8, 2, 3),
    "mnist_cnn.conv2": (256, 16, 32, 14, 4, 2, 0),
    "cifar_gn.conv1": (128, 3, 32, 32, 3, 1, 1),
    "cifar_gn.conv2": (128, 32, 64, 16, 3, 1, 1),
    "cifar_gn.conv3": (128, 64, 64, 8, 3, 1, 1),
    "resnet18.conv1": (32, 3, 64, 32, 7, 2, 3),
    "resnet18.layer1": (32, 64, 64, 8, 3, 1, 1),
}


def contenders(batch, c_in, c_out, size, k, stride, pad, gen, device):
    x = torch.randn(batch, c_in, size, size, generator=gen).to(device)
    out = (size + 2 * pad - k) // stride + 1
    g = torch.randn(batch, c_out, out, out, generator=gen).to(device)
    shape = (c_out, c_in, k, k)
    cf = ((stride, stride), (pad, pad), (1, 1), 1)

    def materialised(method):
        chunk = batch if device.type != "cpu" else conv._chunk_size([Call((x, g), batch, {"conf": cf})], shape,
                                 torch.float32, method)

        def run():
            sq = torch.zeros(batch, device=device)
            for s in range(0, batch, chunk):
                ps = conv._per_sample_weight_grads(x[s:s + chunk], g[s:s + chunk], shape, cf,
                                                   method)
                sq[s:s + chunk] += conv.row_sq_norms(ps)
            return sq
        return run

    runs = {"batched": lambda: conv._conv_weight_grad(g, x, shape, *cf)}
    cpu_only = (conv.GROUPED_NHWC, conv.PATCHES)
    for method in (conv.GROUPED,) + (cpu_only if device.type == "cpu" else ()):
        runs[method] = materialised(method)
    runs["fused"] = lambda: ops._conv_weight_grad_norms(x, g, (k, k), *cf)[0]
    runs["fused_keep"] = lambda: ops._conv_weight_grad_norms(x, g, (k, k), *cf, keep=True)[0]
    # every per-sample contender computes the same norms
    want = runs[conv.GROUPED]()
    for name, fn in runs.items():
        if name != "batched":
            torch.testing.assert_close(fn(), want, rtol=1e-4, atol=0)
    return runs


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench_conv_norms.py", description=__doc__.splitlines()[0])
    p.add_argument("--layers", default=",".join(LAYERS), help="comma-separated subset")
    args = h.parse_args(p, argv, rounds=7, quick_rounds=2, threads=2)
    report = h.Report("bench_conv_norms", args)
    section = report.section("per-sample conv weight-gradient norms", baseline="batched",
                             note=f"native={ops.native_available()}; ratio: time / the "
                                  "batched weight gradient of the same layer")
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    for name in args.layers.split(","):
        batch, c_in, c_out, size, k, stride, pad = LAYERS[name]
        if args.quick:
            batch = 4
        runs = contenders(batch, c_in, c_out, size, k, stride, pad, gen, device)
        m = h.measure(runs, device=device, rounds=args.rounds, warmup=2)
        section.add(m, labels={"layer": name, "batch": batch})
    return report.finish()


if __name__ == "__main__":
    main()
