"""Benchmark of the fused ops against the eager sequences they replace.

For each case, interleaved round by round (``bench/_harness.py``): the native kernel,
the pure-PyTorch reference (the fallback path, left out with ``--no-reference``),
the eager Opacus sequence (norms -> clamp -> einsum -> randn -> add) or the eager
torchattacks update, or ATen's ``vecdot`` for the per-sample norms, and a plain
``copy_`` of the same number of bytes. The ratio
is to the eager sequence; GB/s counts the minimal bytes (inputs read once, outputs
written once); ``x copy_`` is the per-round ratio to the ``copy_``.

    python bench/bench_ops.py [--device cpu|cuda] [--quick] [--json out.json]
        [--threads N] [--rounds N] [--no-reference]
"""

from __future__ import annotations

import argparse
import os

import _harness as h
import torch

from modelsec_fast import ops


def _with_path(native: bool, fn):
    """Runs fn on the native path or on the reference (fallback) path."""
    def call():
        if native:
            os.environ.pop("MODELSEC_FAST_DISABLE_NATIVE", None)
        else:
            os.environ["MODELSEC_FAST_DISABLE_NATIVE"] = "1"
        try:
            return fn()
        finally:
            os.environ.pop("MODELSEC_FAST_DISABLE_NATIVE", None)
    return call


def _copy_of(nbytes, device):
    """copy_ that moves nbytes in total (half read, half written)."""
    n = max(1, nbytes // 8)
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    return lambda: dst.copy_(src)


def case_sign_step(shape, device, with_reference):
    x_orig = torch.rand(shape, device=device)
    x_adv = (x_orig + 0.01 * torch.randn(shape, device=device)).clamp(0, 1)
    grad = torch.randn(shape, device=device)
    alpha, eps = 2 / 255, 8 / 255
    work = x_adv.clone()

    def eager():  # the torchattacks PGD update
        adv = x_adv + alpha * grad.sign()
        delta = torch.clamp(adv - x_orig, min=-eps, max=eps)
        return torch.clamp(x_orig + delta, min=0, max=1).detach()

    nbytes = 4 * x_adv.numel() * x_adv.element_size()  # read 3, write 1
    contenders = {
        "native": _with_path(True, lambda: ops.sign_step(x_adv, grad, x_orig, alpha, eps)),
        "native_inplace": _with_path(True, lambda: ops.sign_step_(work, grad, x_orig, alpha, eps)),
        "eager": eager,
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops.sign_step(x_adv, grad, x_orig, alpha, eps))
    return "sign_step", "x".join(map(str, shape)), nbytes, contenders


def _mlp_param_shapes(total):
    if total > 100_000:  # 784-512-256-10 MLP: 535,818 parameters
        return [(512, 784), (512,), (256, 512), (256,), (10, 256), (10,)]
    return [(32, 784), (32,), (10, 32), (10,)]  # 784-32-10 MLP: 25,450 parameters


def case_clip_and_noise(batch, params, device, with_reference):
    grads = [torch.randn((batch,) + s, device=device) for s in _mlp_param_shapes(params)]
    n_params = sum(g[0].numel() for g in grads)
    max_norm, std = 1.0, 1.1
    gen = torch.Generator(device=device).manual_seed(0)

    def eager():  # the Opacus sequence: norms -> clamp -> einsum -> randn -> add
        norms = torch.stack([g.reshape(batch, -1).norm(2, dim=-1) for g in grads], dim=1).norm(2, dim=1)
        factors = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        out = []
        for g in grads:
            s = torch.einsum("i,i...", factors, g)
            s.add_(torch.normal(0.0, std, s.shape, device=device, generator=gen))
            out.append(s)
        return out

    nbytes = (batch + 1) * n_params * 4
    contenders = {
        "native": _with_path(True, lambda: ops._clip_and_noise(grads, max_norm, std)),
        "eager": eager,
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops._clip_and_noise(grads, max_norm, std))
    return "clip_and_noise", f"B={batch} P={n_params}", nbytes, contenders


def case_add_noise(params, device, with_reference):
    x = torch.zeros(params, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    nbytes = 2 * params * 4
    contenders = {
        "native": _with_path(True, lambda: ops.add_noise_(x, 1.0)),
        "eager": lambda: x.add_(torch.randn(params, device=device, generator=gen)),
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops.add_noise_(x, 1.0))
    return "add_noise_", f"P={params}", nbytes, contenders


def case_row_sq_norms(batch, numel, device, with_reference):
    x = torch.randn(batch, numel, device=device)
    nbytes = x.numel() * 4  # read once
    contenders = {
        "native": _with_path(True, lambda: ops._row_sq_norms(x)),
        "eager": lambda: torch.linalg.vecdot(x, x),  # writes x * x, then sums it
        "copy_": _copy_of(nbytes, device),
    }
    if with_reference:
        contenders["reference"] = _with_path(False, lambda: ops._row_sq_norms(x))
    return "_row_sq_norms", f"B={batch} n={numel}", nbytes, contenders


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="bench_ops.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-reference", action="store_true", help="skip the slow reference path")
    args = h.parse_args(ap, argv, rounds=9, quick_rounds=2)
    device = torch.device(args.device)
    report = h.Report("bench_ops", args)
    if not ops.native_available():
        report.note("warning: native library not available; 'native' rows run the reference")
    ref = not args.no_reference
    if args.quick:
        cases = [lambda: case_sign_step((64, 3, 32, 32), device, ref),
                 lambda: case_clip_and_noise(32, 25_450, device, ref),
                 lambda: case_add_noise(65_536, device, ref),
                 lambda: case_row_sq_norms(8, 8192, device, ref)]
    else:
        cases = [lambda: case_sign_step((1024, 1, 28, 28), device, ref),
                 lambda: case_sign_step((256, 3, 32, 32), device, ref),
                 lambda: case_sign_step((256, 3, 224, 224), device, ref),
                 lambda: case_clip_and_noise(256, 25_450, device, ref),
                 lambda: case_clip_and_noise(256, 535_818, device, ref),
                 lambda: case_add_noise(535_818, device, ref),
                 lambda: case_row_sq_norms(256, 784, device, ref),
                 lambda: case_row_sq_norms(16, 32_768, device, ref),
                 lambda: case_row_sq_norms(32, 65_536, device, ref)]
    section = report.section("fused ops against the eager sequences", baseline="eager",
                             note="GB/s: minimal bytes / median; x copy_: per-round ratio to a "
                                  "copy_ of the same bytes")
    for case in cases:
        op, size, nbytes, contenders = case()
        m = h.measure(contenders, device=device, rounds=args.rounds, warmup=2)
        for row in section.add(m, labels={"op": op, "size": size}):
            row.values["GB/s"] = nbytes / row.wall.median / 1e9
            to_copy = m.ratio(row.contender, "copy_")
            row.values["x copy_"] = to_copy.median if to_copy else None
        del contenders, m  # free the large buffers before the next case
    return report.finish()


if __name__ == "__main__":
    main()
