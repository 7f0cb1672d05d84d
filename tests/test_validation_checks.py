"""modelsec_fast.validation: the one set of argument checks, and its use across the library.

(Named apart from tests/ops/test_validation.py, the op layer's checks: pytest needs
unique basenames in this tree.)
"""

import math
import pathlib
import re

import numpy as np
import pytest
import torch
from torch import nn

from modelsec_fast.validation import (NORMALIZED_RANGE_SLACK, check_choice, check_in_range,
                                      check_input_pixels, check_int, check_non_negative,
                                      check_normalization, check_pixel_range, check_positive,
                                      check_real, to_model_space, to_pixels)


# ------------------------------------------------------------------- scalars

@pytest.mark.parametrize("value", [3, 2.5, np.float32(0.25), np.int64(7)])
def test_check_real_returns_a_python_float(value):
    out = check_real("lr", value)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", [True, "0.1", None, [1.0], torch.tensor(1.0), 1j])
def test_check_real_refuses_non_numbers_with_a_type_error_naming_both(value):
    with pytest.raises(TypeError, match=r"^lr must be a number, got " + type(value).__name__):
        check_real("lr", value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_check_real_refuses_non_finite_values(value):
    with pytest.raises(ValueError, match=rf"^lr must be finite, got {value}$"):
        check_real("lr", value)


def test_check_real_takes_a_one_element_tensor_only_when_allowed():
    assert check_real("scale", torch.tensor([0.5]), allow_tensor=True) == 0.5
    with pytest.raises(TypeError, match="scale must be a number"):
        check_real("scale", torch.tensor([0.5, 1.0]), allow_tensor=True)
    with pytest.raises(TypeError, match="scale must be a number"):
        check_real("scale", torch.tensor(True), allow_tensor=True)


def test_non_negative_and_positive_differ_exactly_at_zero():
    assert check_non_negative("sigma", 0) == 0.0
    with pytest.raises(ValueError, match=r"^sigma must be >= 0, got -0.5$"):
        check_non_negative("sigma", -0.5)
    assert check_positive("C", 1e-300) == 1e-300
    with pytest.raises(ValueError, match=r"^C must be > 0, got 0.0$"):
        check_positive("C", 0)
    with pytest.raises(ValueError, match="C must be finite"):
        check_positive("C", math.inf)


@pytest.mark.parametrize("low_open,high_open,inside,outside", [
    (False, False, [0.0, 1.0], [-1e-12, 1.0 + 1e-12]),
    (True, False, [1e-12, 1.0], [0.0]),
    (False, True, [0.0, 1.0 - 1e-12], [1.0]),
    (True, True, [0.5], [0.0, 1.0]),
])
def test_check_in_range_honours_open_and_closed_ends(low_open, high_open, inside, outside):
    for v in inside:
        assert check_in_range("q", v, 0.0, 1.0, low_open=low_open, high_open=high_open) == v
    interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
    for v in outside:
        with pytest.raises(ValueError, match=re.escape(f"q must lie in {interval}, got {v:g}")):
            check_in_range("q", v, 0.0, 1.0, low_open=low_open, high_open=high_open)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_check_in_range_names_the_interval_for_non_finite_values(value):
    # Even where the interval is unbounded: a closed end at inf does not admit inf.
    with pytest.raises(ValueError, match=re.escape("eps must lie in (0, inf], got")):
        check_in_range("eps", value, 0.0, math.inf, low_open=True)


def test_check_in_range_appends_the_reason_and_refuses_strings():
    with pytest.raises(ValueError, match=re.escape("q must lie in (0, 1] (a rate), got 2")):
        check_in_range("q", 2, 0.0, 1.0, low_open=True, reason=" (a rate)")
    with pytest.raises(TypeError, match="q must be a number"):
        check_in_range("q", "0.5", 0.0, 1.0)


def test_check_int_bounds_and_kinds():
    assert check_int("steps", np.int64(3), 1) == 3 and type(check_int("steps", 3)) is int
    assert check_int("steps", -4) == -4  # no bound unless asked
    with pytest.raises(ValueError, match=r"^steps must be >= 1, got 0$"):
        check_int("steps", 0, 1)
    with pytest.raises(ValueError, match=r"^k must be <= 9, got 10$"):
        check_int("k", 10, 0, maximum=9)
    for bad in (True, 2.5, "3", None):
        with pytest.raises(TypeError, match="steps must be an integer"):
            check_int("steps", bad, 1)


def test_check_int_takes_integral_floats_only_when_allowed():
    assert check_int("steps", 4.0, 1, allow_integral_float=True) == 4
    with pytest.raises(TypeError, match="steps must be an integer"):
        check_int("steps", 4.0, 1)
    with pytest.raises(TypeError, match="steps must be an integer"):
        check_int("steps", 4.5, 1, allow_integral_float=True)


def test_check_choice_lists_the_choices_and_compares_types():
    assert check_choice("norm", "L2", ("Linf", "L2")) == "L2"
    with pytest.raises(ValueError, match=r"^norm must be one of 'Linf', 'L2', got 'L1'$"):
        check_choice("norm", "L1", ("Linf", "L2"))
    with pytest.raises(ValueError, match="got True"):
        check_choice("level", True, (1, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        check_choice("mode", torch.tensor(1), (1, 2))


# --------------------------------------------------------------- pixel space

def test_check_pixel_range_names_the_range_found():
    check_pixel_range(torch.rand(4, 3, 5, 5))
    check_pixel_range(torch.empty(0, 3))
    x = torch.rand(4, 3) * 0.5
    x[1, 2] = 1.75
    x[2, 0] = -0.25
    with pytest.raises(ValueError, match=re.escape("images must lie in [0, 1], found values in "
                                                   "[-0.25, 1.75]")):
        check_pixel_range(x)


def test_check_pixel_range_slack_where_and_hint():
    x = torch.tensor([[0.0, 1.0 + 5e-6]])
    with pytest.raises(ValueError):
        check_pixel_range(x)
    check_pixel_range(x, slack=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\] after scaling, found values in "
                                         r"\[0, 1\.5\]; hint\.$"):
        check_pixel_range(torch.tensor([0.0, 1.5]), where=" after scaling", hint="; hint.")


def test_check_pixel_range_refuses_nan_even_among_valid_values():
    x = torch.rand(3, 4)
    x[2, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        check_pixel_range(x)


def test_check_input_pixels_gives_unnormalised_batches_slack_and_says_so():
    x = torch.tensor([[0.0, 1.0 + NORMALIZED_RANGE_SLACK / 2]])
    check_input_pixels(x, unnormalised=True)
    with pytest.raises(ValueError, match=r"\]; declare it\.$"):
        check_input_pixels(x, unnormalised=False, hint="; declare it.")
    with pytest.raises(ValueError, match="after un-normalising with the given mean/std"):
        check_input_pixels(x + 0.1, unnormalised=True)


def test_check_normalization_returns_flat_float32_cpu_tensors():
    assert check_normalization(None) is None
    mean, std = check_normalization(([[0.5, 0.4]], np.array([0.2, 0.3], dtype=np.float64)))
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == std.shape == (2,)
    assert mean.tolist() == pytest.approx([0.5, 0.4]) and std.tolist() == pytest.approx([0.2, 0.3])


@pytest.mark.parametrize("normalization,error,match", [
    (0.5, TypeError, "norm must be a pair"),
    (([0.5, 0.5], [0.2]), ValueError, "one mean and one std per channel, got 2 and 1"),
    (([], []), ValueError, "got 0 and 0"),
    (([0.5], [0.0]), ValueError, r"norm std must be > 0.*std=\[0\.0\]"),
    (([0.5], [-1.0]), ValueError, "std must be > 0"),
    (([0.5], [math.inf]), ValueError, "std must be > 0 and finite"),
    (([math.nan], [0.2]), ValueError, "mean finite"),
])
def test_check_normalization_refuses_bad_pairs(normalization, error, match):
    with pytest.raises(error, match=match):
        check_normalization(normalization, name="norm")


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 7), (5, 3, 4, 4)])
def test_to_pixels_and_back_broadcast_per_channel(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    norm = check_normalization(([0.1, 0.2, 0.3], [0.5, 2.0, 4.0]))
    pixels = to_pixels(x, norm)
    assert pixels.dtype == torch.float64 and pixels.shape == x.shape
    for c, (m, s) in enumerate(zip([0.1, 0.2, 0.3], [0.5, 2.0, 4.0])):
        torch.testing.assert_close(pixels[:, c], x[:, c] * s + m, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(to_model_space(pixels, norm), x)
    assert to_pixels(x, None) is x and to_model_space(x, None) is x


# ------------------------------------------------ the library uses these checks

def _pgd(**kw):
    from modelsec_fast.attacks import PGD
    return PGD(nn.Linear(2, 2), **kw)


def _apgd(**kw):
    from modelsec_fast.attacks import APGD
    return APGD(nn.Linear(2, 4), **kw)


def _square(**kw):
    from modelsec_fast.attacks import Square
    return Square(nn.Linear(2, 4), **kw)


def _accountant_step(**kw):
    from modelsec_fast.accountants import RDPAccountant
    RDPAccountant().step(**{"noise_multiplier": 1.0, "sample_rate": 0.1, **kw})


def _dp_optimizer(**kw):
    from modelsec_fast.privacy.optimizer import DPOptimizer
    model = nn.Linear(2, 2)
    args = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 8, **kw}
    DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), **args)


def _lstm(**kw):
    from modelsec_fast.privacy.layers import DPLSTM
    DPLSTM(**{"input_size": 3, "hidden_size": 4, **kw})


def _trainer(**kw):
    from modelsec_fast.defenses.adversarial_training import AdversarialTrainer
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                       **{"method": "pgd", "eps": 0.1, "progress": False, **kw})


@pytest.mark.parametrize("build,kwargs,error,message", [
    (_pgd, {"eps": math.nan}, ValueError, "eps must be finite, got nan"),
    (_pgd, {"steps": 0}, ValueError, "steps must be >= 1, got 0"),
    (_apgd, {"norm": "L1"}, ValueError, "norm must be one of 'Linf', 'L2', got 'L1'"),
    (_apgd, {"rho": "0.75"}, TypeError, "rho must be a number, got str '0.75'"),
    (_square, {"p_init": 1.5}, ValueError, "p_init must lie in (0, 1], got 1.5"),
    (_accountant_step, {"noise_multiplier": -1.0}, ValueError,
     "noise_multiplier must be >= 0, got -1.0"),
    (_accountant_step, {"sample_rate": 0.0}, ValueError, "sample_rate must lie in (0, 1]"),
    (_dp_optimizer, {"max_grad_norm": 0.0}, ValueError, "max_grad_norm must be > 0, got 0.0"),
    (_dp_optimizer, {"expected_batch_size": math.nan}, ValueError,
     "expected_batch_size must be finite, got nan"),
    (_lstm, {"hidden_size": 0}, ValueError, "hidden_size must be >= 1, got 0"),
    (_lstm, {"dropout": 1.5}, ValueError, "dropout must lie in [0, 1], got 1.5"),
    (_trainer, {"eps": 2.0}, ValueError, "eps must lie in (0, 1], got 2"),
    (_trainer, {"normalization": ([0.5], [0.0])}, ValueError, "normalization std must be > 0"),
])
def test_library_entry_points_raise_the_shared_messages(build, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        build(**kwargs)


def test_pixel_range_and_normalisation_checks_are_defined_only_in_validation():
    package = pathlib.Path(__file__).resolve().parents[1] / "modelsec_fast"
    pattern = re.compile(r"^\s*def (_?\w*(pixel_range|image_range|check_normali[sz]ation|"
                         r"to_pixels|to_model)\w*)\(", re.M)
    found = {}
    for path in package.rglob("*.py"):
        if path.name != "validation.py" or path.parent != package:
            for match in pattern.finditer(path.read_text(encoding="utf-8")):
                found.setdefault(str(path.relative_to(package)), []).append(match.group(1))
    assert found == {}, f"pixel-range / normalisation checkers outside validation.py: {found}"
