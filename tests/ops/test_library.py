"""torch.ops.modelsec_fast called directly: the op layer under ops.py.

Runs here, where torch.ops dispatches to the native kernels when the library is
loaded, and again from test_opcheck.py in a process that never loads it, where
the registered reference kernels serve every call. Each bad call must fail with
a message naming the argument: a RuntimeError from the C++ checks
(csrc/op_common.cpp; the stable ABI's STD_TORCH_CHECK throws std::runtime_error),
a TypeError/ValueError from the reference kernels' checks (modelsec_fast/_native.py).
"""

import pytest
import torch

from modelsec_fast import _native, ops, reference

NATIVE = ops.native_available()
OP = torch.ops.modelsec_fast
CPU_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _g():
    return [torch.randn(4, 3), torch.randn(4, 2, 2)]


def _x():
    return torch.rand(2, 3)


def _int(*shape):
    return torch.ones(*shape, dtype=torch.int64)


def _meta(*shape):
    return torch.empty(*shape, device="meta")


# (id, call, Python exception type, message fragment shared by the C++ and Python checks)
BAD_CALLS = [
    ("grads-dtype", lambda: OP.clip_and_noise([_int(4, 3)], 1.0, 1.0, 1.0, 0, 0, 0),
     TypeError, r"grads\[0\] has dtype"),
    ("grads-0d", lambda: OP.clip_and_noise([torch.tensor(1.0)], 1.0, 1.0, 1.0, 0, 0, 0),
     ValueError, r"grads\[0\] must be shaped \(B, \*param_shape\)"),
    ("grads-batch", lambda: OP.clip_and_noise([torch.randn(4, 3), torch.randn(5, 3)], 1.0, 1.0,
                                              1.0, 0, 0, 0),
     ValueError, "mismatched batch size: grads\\[0\\] has B=4, grads\\[1\\] has B=5"),
    ("grads-dtypes", lambda: OP.clip_and_noise([torch.randn(4, 3), torch.randn(4, 3).double()],
                                               1.0, 1.0, 1.0, 0, 0, 0),
     TypeError, r"mixed dtypes: grads\[0\] is"),
    ("max_norm-zero", lambda: OP.clip_and_noise(_g(), 0.0, 1.0, 1.0, 0, 0, 0),
     ValueError, "max_norm must be > 0"),
    ("max_norm-negative", lambda: OP.clip_and_noise(_g(), -1.0, 1.0, 1.0, 0, 0, 0),
     ValueError, "max_norm must be > 0"),
    ("max_norm-nan", lambda: OP.clip_and_noise(_g(), float("nan"), 1.0, 1.0, 0, 0, 0),
     ValueError, "max_norm must be finite"),
    ("noise_std-negative", lambda: OP.clip_and_noise(_g(), 1.0, -1.0, 1.0, 0, 0, 0),
     ValueError, "noise_std must be >= 0"),
    ("noise_std-inf", lambda: OP.clip_and_noise(_g(), 1.0, float("inf"), 1.0, 0, 0, 0),
     ValueError, "noise_std must be finite"),
    ("scale-inf", lambda: OP.clip_and_noise(_g(), 1.0, 1.0, float("inf"), 0, 0, 0),
     ValueError, "scale must be finite"),
    ("source-unknown", lambda: OP.clip_and_noise(_g(), 1.0, 1.0, 1.0, 0, 0, 7),
     ValueError, "source must be 0"),
    ("factors-shape", lambda: OP.accumulate_and_noise(_g(), torch.ones(3), 1.0, 1.0, 0, 0, 0),
     ValueError, r"factors must have shape \(4,\), got \(3,\)"),
    ("factors-dtype", lambda: OP.accumulate_and_noise(_g(), _int(4), 1.0, 1.0, 0, 0, 0),
     TypeError, "factors has dtype"),
    ("accumulate-noise_std", lambda: OP.accumulate_and_noise(_g(), torch.ones(4), -1.0, 1.0, 0,
                                                             0, 0),
     ValueError, "noise_std must be >= 0"),
    ("accumulate-source", lambda: OP.accumulate_and_noise(_g(), torch.ones(4), 1.0, 1.0, 0, 0, -1),
     ValueError, "source must be 0"),
    ("add_noise-dtype", lambda: OP.add_noise_([torch.zeros(3), _int(3)], 1.0, 1.0, 0, 0, 0),
     TypeError, r"tensors\[1\] has dtype"),
    ("add_noise-noise_std", lambda: OP.add_noise_([torch.zeros(3)], float("nan"), 1.0, 0, 0, 0),
     ValueError, "noise_std must be finite"),
    ("add_noise-scale", lambda: OP.add_noise_([torch.zeros(3)], 1.0, float("-inf"), 0, 0, 0),
     ValueError, "scale must be finite"),
    ("add_noise-source", lambda: OP.add_noise_([torch.zeros(3)], 1.0, 1.0, 0, 0, 2),
     ValueError, "source must be 0"),
    ("step-dtype", lambda: OP.sign_step(_int(2, 3), _int(2, 3), _int(2, 3), 0.1, 0.1, 0.0, 1.0),
     TypeError, "x_adv has dtype"),
    ("step-grad-shape", lambda: OP.sign_step(_x(), torch.rand(2, 4), _x(), 0.1, 0.1, 0.0, 1.0),
     ValueError, r"grad has shape \(2, 4\), x_adv has \(2, 3\)"),
    ("step-x_orig-shape", lambda: OP.sign_step(_x(), _x(), torch.rand(3), 0.1, 0.1, 0.0, 1.0),
     ValueError, r"x_orig has shape \(3,\), x_adv has \(2, 3\)"),
    ("step-grad-dtype", lambda: OP.sign_step(_x(), _x().double(), _x(), 0.1, 0.1, 0.0, 1.0),
     TypeError, "mixed dtypes: grad is"),
    ("step-lo-above-hi", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, 0.1, 1.0, 0.0),
     ValueError, r"lo \(1(\.0)?\) > hi \(0(\.0)?\)"),
    ("step-lo-nan", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, 0.1, float("nan"), 1.0),
     ValueError, "lo must be finite"),
    ("step-hi-inf", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, 0.1, 0.0, float("inf")),
     ValueError, "hi must be finite"),
    ("step-alpha-negative", lambda: OP.sign_step(_x(), _x(), _x(), -0.1, 0.1, 0.0, 1.0),
     ValueError, "alpha must be >= 0"),
    ("step-eps-nan", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, float("nan"), 0.0, 1.0),
     ValueError, "eps must be finite"),
    ("step-per-sample-shape", lambda: OP.sign_step(_x(), _x(), _x(), 0.0, 0.1, 0.0, 1.0,
                                                   torch.ones(3)),
     ValueError, "per-sample alpha must have shape"),
    ("step-per-sample-dtype", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, 0.0, 0.0, 1.0, None,
                                                   _int(2)),
     TypeError, "eps has dtype"),
    ("step-per-sample-negative", lambda: OP.sign_step(_x(), _x(), _x(), 0.0, 0.1, 0.0, 1.0,
                                                      torch.tensor([0.1, -0.1])),
     ValueError, "alpha has negative entries"),
    ("step-per-sample-nan", lambda: OP.sign_step(_x(), _x(), _x(), 0.1, 0.0, 0.0, 1.0, None,
                                                 torch.tensor([0.1, float("nan")])),
     ValueError, "eps has non-finite entries"),
    ("step_-lo-above-hi", lambda: OP.sign_step_(_x(), _x(), _x(), 0.1, 0.1, 1.0, 0.0),
     ValueError, r"lo \(1(\.0)?\) > hi"),
    ("step_-per-sample-negative", lambda: OP.sign_step_(_x(), _x(), _x(), 0.1, 0.0, 0.0, 1.0,
                                                        None, torch.tensor([-1.0, 0.1])),
     ValueError, "eps has negative entries"),
    ("l2-0d", lambda: OP.l2_step(torch.tensor(0.5), torch.tensor(1.0), torch.tensor(0.5), 0.1,
                                 0.1, 0.0, 1.0),
     ValueError, r"x_adv must be shaped \(B, \.\.\.\)"),
    ("l2-eps-inf", lambda: OP.l2_step(_x(), _x(), _x(), 0.1, float("inf"), 0.0, 1.0),
     ValueError, "eps must be finite"),
    ("l2-per-sample-negative", lambda: OP.l2_step(_x(), _x(), _x(), 0.0, 0.1, 0.0, 1.0,
                                                  torch.tensor([0.1, -0.1])),
     ValueError, "alpha has negative entries"),
    ("fill-dtype", lambda: OP._fill_normals_(torch.empty(8, dtype=torch.float64), 0, 0, 0, 0, []),
     TypeError, "contiguous 1-D float32"),
    ("fill-2d", lambda: OP._fill_normals_(torch.empty(2, 4), 0, 0, 0, 0, []),
     TypeError, "contiguous 1-D float32"),
    ("fill-key", lambda: OP._fill_normals_(torch.empty(8), 0, 0, 0, 1, [1, 2, 3]),
     ValueError, "8-word key"),
    ("fill-source", lambda: OP._fill_normals_(torch.empty(8), 0, 0, 0, 5, []),
     ValueError, "8-word key"),
    ("conv-dtype", lambda: _conv(torch.rand(2, 3, 5, 5).double(), torch.rand(2, 4, 3, 3)),
     TypeError, "x has dtype"),
    ("conv-3d", lambda: _conv(torch.rand(2, 3, 5), torch.rand(2, 4, 3, 3)),
     ValueError, r"x must be 4-D \(B, C, H, W\)"),
    ("conv-batch", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(3, 4, 3, 3)),
     ValueError, "x has B=2, grad_out has B=3"),
    ("conv-kernel-length", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(2, 4, 3, 3),
                                         kernel=[3]),
     ValueError, "kernel must have 2 entries, got 1"),
    ("conv-stride-zero", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(2, 4, 3, 3),
                                       stride=[0, 1]),
     ValueError, "stride must be >= 1"),
    ("conv-padding-negative", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(2, 4, 3, 3),
                                            padding=[-1, 0]),
     ValueError, "padding must be >= 0"),
    ("conv-groups", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(2, 4, 3, 3), groups=2),
     ValueError, "groups=2 must divide x's 3 and grad_out's 4 channels"),
    ("row-norms-dtype", lambda: OP._row_sq_norms(_int(4, 3)), TypeError, "x has dtype"),
    ("row-norms-0d", lambda: OP._row_sq_norms(torch.tensor(1.0)), ValueError,
     r"x must be shaped \(B, \.\.\.\)"),
    ("conv-output-size", lambda: _conv(torch.rand(2, 3, 5, 5), torch.rand(2, 4, 4, 3)),
     ValueError, r"grad_out's spatial size \(4, 3\) is not the convolution's output size "
                 r"\(3, 3\)"),
]


def _conv(x, g, kernel=(3, 3), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
          keep=False):
    return OP._conv_weight_grad_norms(x, g, list(kernel), list(stride), list(padding),
                                      list(dilation), groups, keep)


def _cpu(name, *args):
    """Straight into the CPU kernel: the dispatcher would send a call with no
    tensor, or with a meta tensor, to the reference or the fake kernel."""
    return getattr(OP, name).default.redispatch(CPU_ONLY, *args)


# Checks only a C++ caller (or a redispatch) can reach.
CPU_KERNEL_CALLS = [
    ("grads-empty", lambda: _cpu("clip_and_noise", [], 1.0, 1.0, 1.0, 0, 0, 0),
     "grads is empty"),
    ("accumulate-grads-empty", lambda: _cpu("accumulate_and_noise", [], torch.ones(0), 1.0, 1.0,
                                            0, 0, 0),
     "grads is empty"),
    ("grads-devices", lambda: _cpu("clip_and_noise", [torch.randn(4, 3), _meta(4, 3)], 1.0, 1.0,
                                   1.0, 0, 0, 0),
     r"mixed devices: grads\[0\] on cpu, grads\[1\] on meta"),
    ("factors-device", lambda: _cpu("accumulate_and_noise", _g(), _meta(4), 1.0, 1.0, 0, 0, 0),
     "factors on meta, grads on cpu"),
    ("add_noise-devices", lambda: _cpu("add_noise_", [torch.zeros(3), _meta(3)], 1.0, 1.0, 0, 0,
                                       0),
     r"mixed devices: tensors\[0\] on cpu, tensors\[1\] on meta"),
    ("step-grad-device", lambda: _cpu("sign_step", _x(), _meta(2, 3), _x(), 0.1, 0.1, 0.0, 1.0,
                                      None, None),
     "mixed devices: grad on meta, x_adv on cpu"),
    ("conv-device", lambda: _cpu("_conv_weight_grad_norms", torch.rand(2, 3, 5, 5),
                                 _meta(2, 4, 3, 3), [3, 3], [1, 1], [0, 0], [1, 1], 1, False),
     "x on cpu, grad_out on meta"),
    ("step-per-sample-device", lambda: _cpu("l2_step", _x(), _x(), _x(), 0.0, 0.1, 0.0, 1.0,
                                            _meta(2), None),
     "alpha on meta, x_adv on cpu"),
]


@pytest.mark.parametrize("call, python_exc, match", [c[1:] for c in BAD_CALLS],
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_direct_call_names_the_argument(call, python_exc, match):
    with pytest.raises(RuntimeError if NATIVE else python_exc, match=match):
        call()


@pytest.mark.skipif(not NATIVE, reason="native library not built or disabled")
@pytest.mark.parametrize("call, match", [c[1:] for c in CPU_KERNEL_CALLS],
                         ids=[c[0] for c in CPU_KERNEL_CALLS])
def test_cpu_kernel_checks_what_the_dispatcher_never_sends_it(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_empty_or_meta_arguments_get_the_python_checks():
    with pytest.raises(ValueError, match="grads is empty"):
        OP.clip_and_noise([], 1.0, 1.0, 1.0, 0, 0, 0)
    with pytest.raises(ValueError, match="mixed devices"):
        OP.clip_and_noise([torch.randn(4, 3), _meta(4, 3)], 1.0, 1.0, 1.0, 0, 0, 0)


def test_direct_calls_refuse_non_finite_sums():
    grads = _g()
    grads[0][1, 2] = float("nan")
    with pytest.raises(RuntimeError if NATIVE else ValueError,
                       match="sample 1 has a non-finite norm"):
        OP.clip_and_noise(grads, 1.0, 1.0, 1.0, 0, 0, 0)
    with pytest.raises(RuntimeError if NATIVE else ValueError,
                       match="weighted sum of tensor 0 is not finite"):
        OP.accumulate_and_noise(grads, torch.ones(4), 1.0, 1.0, 0, 0, 0)


def test_direct_calls_compute_the_reference():
    grads = _g()
    summed, norms = OP.clip_and_noise(grads, 1.0, 0.5, 0.25, 11, 3, 0)
    want, want_norms = reference.clip_and_noise(grads, 1.0, 0.5, scale=0.25, seed=11, offset=3)
    torch.testing.assert_close(norms, want_norms)
    for got, ref in zip(summed, want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    x = torch.rand(3, 5)
    g = torch.randn(3, 5)
    x_adv = x.clone()
    OP.sign_step_(x_adv, g, x, 0.1, 0.05, 0.0, 1.0)
    assert torch.equal(x_adv, reference.sign_step(x, g, x, 0.1, 0.05))
    out = torch.empty(9)
    OP._fill_normals_(out, 5, 2, 1, 0, [])
    torch.testing.assert_close(out, reference.philox_normal(9, 5, 2, 1), rtol=2e-6, atol=2e-6)


def test_clip_eps_is_the_one_in_reference():
    """A tiny norm makes the clip factor depend on CLIP_EPS: C / (n + CLIP_EPS)."""
    assert ops.CLIP_EPS is reference.CLIP_EPS == 1e-6
    if NATIVE:
        assert _native.build_info()["clip_eps"] == reference.CLIP_EPS
    g = torch.zeros(1, 4, dtype=torch.float64)
    g[0, 0] = 2e-6
    summed, _ = OP.clip_and_noise([g], 1e-6, 0.0, 1.0, 0, 0, 0)
    factor = 1e-6 / (2e-6 + reference.CLIP_EPS)
    torch.testing.assert_close(summed[0], g[0] * factor, rtol=1e-6, atol=0)
