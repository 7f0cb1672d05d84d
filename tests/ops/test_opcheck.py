"""torch.library.opcheck on every op: schema, fake kernel, dispatch consistency."""

import pytest
import torch

from tests.ops.conftest import requires_native

pytestmark = requires_native



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
    ]


@pytest.mark.parametrize("name, args", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.modelsec_fast, name).default, args)


def test_every_declared_op_has_an_opcheck_case():
    import pathlib
    import re
    src = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "registration.cpp"
    declared = set(re.findall(r'm\.def\("(\w+)\(', src.read_text()))
    assert declared and declared == {name for name, _ in _cases()}
