"""Small reference models shared by the benchmarks, the CLI and the tests.

Every model takes a batch whose shape is ``(B, *in_shape)`` and returns
logits shaped ``(B, num_classes)`` (float, never probabilities: the attacks
and the masking checks expect logits).  Image models take pixels in the
space their caller chose (usually [0, 1]); none of them normalises inside.

None of the models except ``resnet18`` with ``norm="batch"`` uses BatchNorm,
so they can be trained under DP-SGD as they are.

``build_model(name, in_shape, num_classes, **options)`` is the registry;
``model_names()`` lists what it knows and ``check_model_name(name)`` refuses
what it does not.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .validation import check_int

__all__ = [
    "OpacusMnistCNN", "MLP", "SmallCNN", "CifarGroupNormCNN", "ResNet18",
    "TransformerEncoderClassifier", "build_model", "check_model_name", "model_names",
]


def _image_shape(in_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """Return (C, H, W) from an image ``in_shape``; ValueError otherwise."""
    shape = tuple(in_shape)
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(
            f"{name} needs an image in_shape (C, H, W) of positive sizes, got {shape}")
    return tuple(int(s) for s in shape)


def _flat_features(layers: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Number of features ``layers`` produces for one input of ``in_shape``."""
    with torch.no_grad():
        return int(layers(torch.zeros(1, *in_shape)).flatten(1).shape[1])


class OpacusMnistCNN(nn.Module):
    """The CNN of Opacus's MNIST example (``SampleConvNet``), 26k parameters.

    Conv(16, 8x8, stride 2, pad 3) - ReLU - MaxPool(2, 1) - Conv(32, 4x4,
    stride 2) - ReLU - MaxPool(2, 1) - Linear(512 -> 32) - ReLU - Linear(32 ->
    classes).  Built for (1, 28, 28); other sizes work if the convolutions
    leave a positive spatial size (the first Linear adapts to it).
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        c, _, _ = _image_shape(in_shape, "OpacusMnistCNN")
        self.conv1 = nn.Conv2d(c, 16, 8, 2, padding=3)
        self.conv2 = nn.Conv2d(16, 32, 4, 2)
        try:
            flat = _flat_features(self._features, tuple(in_shape))
        except RuntimeError as err:
            raise ValueError(
                f"OpacusMnistCNN: in_shape {tuple(in_shape)} is too small for its "
                f"convolutions ({err})") from err
        self.fc1 = nn.Linear(flat, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 1)
        return F.max_pool2d(F.relu(self.conv2(x)), 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._features(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


class MLP(nn.Module):
    """Fully connected ReLU net; the default is 784-512-256-10 (536k parameters).

    The input is flattened, so any ``in_shape`` works.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (512, 256)):
        super().__init__()
        width = math.prod(int(s) for s in in_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """A small, fast CNN for 28x28 (MNIST-like) or 8x8 (sklearn digits) inputs.

    Conv(w, 3x3) - ReLU - Conv(2w, 3x3, stride 2) - ReLU - Conv(2w, 3x3,
    stride 2) - ReLU - Linear(-> hidden) - ReLU - Linear(-> classes).  No
    pooling and no normalisation layer, so it is cheap on CPU and DP-ready.
    With the default ``width=16`` it costs about 1.7 MFLOP-MACs per 28x28 image.
    """

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 width: int = 16, hidden: int = 128):
        super().__init__()
        c, _, _ = _image_shape(in_shape, "SmallCNN")
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        flat = _flat_features(self.features, tuple(in_shape))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CifarGroupNormCNN(nn.Module):
    """The Opacus CIFAR-10 example's convnet with GroupNorm after each conv.

    Four 3x3 conv blocks (32, 64, 64, 128 channels), each Conv - GroupNorm -
    ReLU, the first three followed by AvgPool(2); global average pool and a
    Linear head.  Works for any (C, H, W) with H, W >= 8.
    """

    def __init__(self, in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 groups: int = 16):
        super().__init__()
        c, h, w = _image_shape(in_shape, "CifarGroupNormCNN")
        if h < 8 or w < 8:
            raise ValueError(f"CifarGroupNormCNN needs H, W >= 8, got in_shape {tuple(in_shape)}")
        blocks: list[nn.Module] = []
        for i, out in enumerate((32, 64, 64, 128)):
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.GroupNorm(min(groups, out), out),
                       nn.ReLU()]
            blocks.append(nn.AvgPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1))
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {norm!r}")


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm_layer(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (3x3 stem, no max-pool), 11.2M parameters.

    ``norm="batch"`` is the usual robustness-benchmark net; ``norm="group"``
    swaps BatchNorm for GroupNorm(32) so it can be trained under DP-SGD.
    """

    def __init__(self, in_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 norm: str = "batch", width: int = 64):
        super().__init__()
        c, _, _ = _image_shape(in_shape, "ResNet18")
        self.conv1 = nn.Conv2d(c, width, 3, 1, 1, bias=False)
        self.bn1 = _norm_layer(norm, width)
        layers, cin = [], width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(_BasicBlock(cin, cout, stride, norm),
                                        _BasicBlock(cout, cout, 1, norm)))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class TransformerEncoderClassifier(nn.Module):
    """Token embedding + learned positions + ``layers`` pre-LN encoder layers,
    mean-pooled over the sequence, then a Linear head.

    Input: int64 token ids shaped (B, T) with T <= ``in_shape[0]`` and values
    in [0, vocab_size).  Output: (B, num_classes) logits.
    """

    def __init__(self, in_shape: Sequence[int] = (128,), num_classes: int = 2,
                 vocab_size: int = 10000, d_model: int = 128, nhead: int = 4,
                 layers: int = 2, dim_feedforward: int = 256, dropout: float = 0.0):
        super().__init__()
        shape = tuple(in_shape)
        if len(shape) != 1 or int(shape[0]) < 1:
            raise ValueError(f"TransformerEncoderClassifier needs in_shape (seq_len,), got {shape}")
        self.max_len = int(shape[0])
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(self.max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"expected int token ids shaped (B, T), got {tuple(tokens.shape)} {tokens.dtype}")
        t = tokens.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence length {t} exceeds the model's max_len {self.max_len}")
        # One row of positions per sample, not one broadcast over the batch: a
        # parameter broadcast over the batch has no per-sample gradient for DP-SGD.
        positions = torch.arange(t, device=tokens.device).expand(tokens.shape[0], t)
        h = self.encoder(self.embed(tokens) + self.pos(positions))
        return self.head(h.mean(dim=1))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mnist_cnn": OpacusMnistCNN,
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "cifar_cnn": CifarGroupNormCNN,
    "resnet18": ResNet18,
    "transformer": TransformerEncoderClassifier,
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def check_model_name(name) -> str:
    """``name`` unchanged; ValueError naming the known models unless :func:`build_model`
    knows it."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    return name


def build_model(name: str, in_shape: Sequence[int], num_classes: int, **options) -> nn.Module:
    """Build a reference model by name.

    Args:
        name: one of :func:`model_names` (``"mnist_cnn"``, ``"mlp"``,
            ``"small_cnn"``, ``"cifar_cnn"``, ``"resnet18"``, ``"transformer"``).
        in_shape: one input without the batch dimension: (C, H, W) for the
            image models, (seq_len,) for ``"transformer"``, anything for ``"mlp"``.
        num_classes: number of logits, >= 1.
        **options: passed to the model class (e.g. ``width=``, ``norm="group"``,
            ``vocab_size=``).

    Raises:
        ValueError: unknown name (the message lists the known ones), a bad
            ``in_shape`` or ``num_classes``.
        TypeError: an option the model does not take.
    """
    check_model_name(name)
    if isinstance(in_shape, int):
        in_shape = (in_shape,)
    try:
        in_shape = tuple(int(s) for s in in_shape)
    except TypeError as err:
        raise ValueError(f"in_shape must be a sequence of ints, got {in_shape!r}") from err
    if not in_shape or any(s < 1 for s in in_shape):
        raise ValueError(f"in_shape must be non-empty positive sizes, got {in_shape}")
    num_classes = check_int("num_classes", num_classes, 1)
    try:
        return _REGISTRY[name](in_shape=in_shape, num_classes=num_classes, **options)
    except TypeError as err:
        raise TypeError(f"build_model({name!r}): {err}") from err
