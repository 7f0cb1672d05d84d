"""The shared reference models in modelsec_fast.models and their registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsec_fast.models import build_model, model_names


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,in_shape,options", [
    ("mnist_cnn", (1, 28, 28), {}),
    ("mlp", (1, 28, 28), {}),
    ("small_cnn", (1, 28, 28), {}),
    ("small_cnn", (1, 8, 8), {}),
    ("cifar_cnn", (3, 32, 32), {}),
    ("resnet18", (3, 32, 32), {"norm": "group"}),
    ("transformer", (16,), {"vocab_size": 50, "d_model": 32, "nhead": 2}),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_models_return_logits_of_the_right_shape(name, in_shape, options, batch):
    torch.manual_seed(0)
    model = build_model(name, in_shape, 7, **options).eval()
    if name == "transformer":
        x = torch.randint(0, 50, (batch, in_shape[0]))
    else:
        x = torch.rand(batch, *in_shape)
    out = model(x)
    assert out.shape == (batch, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_mlp_is_784_512_256_10():
    model = build_model("mlp", (1, 28, 28), 10)
    assert _count(model) == (784 * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)


def test_mnist_cnn_has_the_opacus_example_layers():
    model = build_model("mnist_cnn", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == \
        [(16, (8, 8), (2, 2)), (32, (4, 4), (2, 2))]
    assert model.fc1.in_features == 32 * 4 * 4 and model.fc2.in_features == 32


def test_only_resnet_batch_norm_uses_batch_norm():
    for name, shape in [("mnist_cnn", (1, 28, 28)), ("mlp", (1, 28, 28)),
                        ("small_cnn", (1, 28, 28)), ("cifar_cnn", (3, 32, 32))]:
        model = build_model(name, shape, 10)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_model("resnet18", (3, 32, 32), 10).modules())
    group = build_model("resnet18", (3, 32, 32), 10, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in group.modules())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*" + ", ".join(model_names())):
        build_model("vgg", (3, 32, 32), 10)


@pytest.mark.parametrize("in_shape,num_classes,error,match", [
    ((1, 28), 10, ValueError, "in_shape"), ((0, 8, 8), 10, ValueError, "positive"),
    ((1, 8, 8), 0, ValueError, "num_classes"), ((1, 8, 8), 2.5, TypeError, "num_classes"),
])
def test_bad_shapes_and_class_counts(in_shape, num_classes, error, match):
    with pytest.raises(error, match=match):
        build_model("small_cnn", in_shape, num_classes)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="build_model\\('mlp'\\)"):
        build_model("mlp", (1, 8, 8), 10, depth=3)


def test_transformer_rejects_float_input_and_long_sequences():
    model = build_model("transformer", (8,), 2, vocab_size=20, d_model=16, nhead=2)
    with pytest.raises(ValueError, match="int token ids"):
        model(torch.rand(2, 8))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(2, 9, dtype=torch.long))


@pytest.mark.parametrize("name,in_shape,options", [
    ("mlp", (1, 8, 8), {"hidden": (16,)}),
    ("small_cnn", (1, 8, 8), {"width": 4}),
    ("cifar_cnn", (3, 32, 32), {}),
    ("transformer", (6,), {"vocab_size": 20, "d_model": 8, "nhead": 2, "dim_feedforward": 16}),
])
def test_registry_models_get_exact_private_gradients(name, in_shape, options):
    # Every model the CLI and benchmarks offer for DP-SGD must have a per-sample
    # gradient for each parameter (the transformer's positions are per sample).
    from modelsec_fast.privacy.validate import ModuleValidator
    from tests.privacy.parity import check_parity

    torch.manual_seed(0)
    if name == "transformer":
        x = torch.randint(0, 20, (5, in_shape[0]))
    else:
        x = torch.rand(5, *in_shape, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))

    def make_model():
        torch.manual_seed(1)
        return ModuleValidator.fix(build_model(name, in_shape, 3, **options)).double()

    check_parity(make_model, x, y, rtol=1e-9, atol=1e-12)
