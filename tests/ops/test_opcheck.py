"""torch.library.opcheck on every op (schema, fake kernel, dispatch consistency),
on the kernels torch.ops dispatches to here: native when the library is loaded,
and, in a subprocess that never loads it, the registered reference kernels."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

from modelsec_fast import _native, ops


def _cases():
    g = [torch.randn(5, 3, 4), torch.randn(5, 7)]
    x, gr, xo = torch.rand(4, 3, 6, 6), torch.randn(4, 3, 6, 6), torch.rand(4, 3, 6, 6)
    return [
        ("clip_and_noise", (g, 1.0, 0.5, 0.2, 123, 0, 0)),
        ("clip_and_noise", ([t.double() for t in g], 1.0, 0.0, 1.0, 5, 2, 0)),
        ("accumulate_and_noise", (g, torch.rand(5), 0.5, 1.0, 9, 4, 0)),
        ("add_noise_", ([torch.randn(10), torch.randn(3, 3)], 0.5, 1.0, 1, 0, 0)),
        ("sign_step", (x, gr, xo, 0.01, 0.03, 0.0, 1.0)),
        ("sign_step", (x, gr, xo, 0.0, 0.0, 0.0, 1.0, torch.rand(4) / 10, torch.rand(4) / 10)),
        ("sign_step_", (x.clone(), gr, xo, 0.01, 0.03, 0.0, 1.0)),
        ("l2_step", (x, gr, xo, 0.1, 0.5, 0.0, 1.0)),
        ("l2_step", (x, gr, xo, 0.0, 0.0, 0.0, 1.0, torch.rand(4), torch.rand(4))),
        ("_fill_normals_", (torch.empty(17), 3, 1, 0, 0, [])),
        ("_conv_weight_grad_norms", (torch.randn(3, 4, 7, 6), torch.randn(3, 6, 4, 3),
                                     [3, 2], [2, 2], [1, 0], [1, 1], 2, True)),
        ("_conv_weight_grad_norms", (torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3),
                                     [3, 3], [1, 1], [0, 0], [1, 1], 1, False)),
        ("_row_sq_norms", (torch.randn(5, 3, 70001),)),
        ("_row_sq_norms", (torch.randn(4, 6, dtype=torch.float64).t(),)),
        ("_row_sq_norms", (torch.randn(3, 9, dtype=torch.bfloat16),)),
    ]


@pytest.mark.parametrize("name, args", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.modelsec_fast, name).default, args)


def test_every_declared_op_has_an_opcheck_case():
    assert set(_native.SCHEMAS) == {name for name, _ in _cases()}


def test_native_kernels_serve_cpu_when_the_library_is_loaded():
    has_cpu = [torch._C._dispatch_has_kernel_for_dispatch_key(f"modelsec_fast::{name}", "CPU")
               for name in _native.SCHEMAS]
    assert set(has_cpu) == {ops.native_available()}


@pytest.mark.skipif(os.environ.get("MODELSEC_FAST_DISABLE_NATIVE", "") not in ("", "0"),
                    reason="already running without the native library")
def test_ops_exist_and_pass_opcheck_without_the_native_library():
    """A fresh process that never loads _C: torch.ops.modelsec_fast.* run the reference."""
    env = dict(os.environ, MODELSEC_FAST_DISABLE_NATIVE="1")
    code = ("import torch, modelsec_fast.ops;"
            "assert not any(torch._C._dispatch_has_kernel_for_dispatch_key("
            "f'modelsec_fast::{n}', 'CPU') for n in modelsec_fast._native.SCHEMAS)")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          __file__, str(pathlib.Path(__file__).with_name("test_library.py"))],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
