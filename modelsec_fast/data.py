"""Datasets for the CLI, the examples and the benchmarks, always readable offline.

Three sources, one result type (:class:`Dataset`):

* ``"digits"`` (the default): scikit-learn's bundled 8x8 digits, 1,797 images,
  always available. Split into train/test by a fixed seeded permutation.
* ``"fashion-mnist"``: the gzipped IDX files of the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
* a path: a directory holding MNIST-format IDX files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each gzipped or not), or an ``.npz`` file with
  arrays ``x_train``, ``y_train``, ``x_test``, ``y_test`` (Keras' ``mnist.npz``
  layout).

Images are returned as float32 tensors shaped (N, C, H, W) in pixel space
[0, 1]; labels as int64 tensors shaped (N,). Every failure raises
:class:`DataError` (a ``ValueError``) with a one-line message that names the
file and the problem, so the CLI can print it and exit with status 2.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DataError",
    "Dataset",
    "FASHION_MNIST_DIR",
    "load_dataset",
    "read_idx",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist`, "
    "or pass a directory of MNIST-format IDX files with --data DIR"
)
_IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/), all stored big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DIGITS_TEST_FRACTION = 0.25


class DataError(ValueError):
    """A dataset could not be found or read; the message is one line."""


@dataclass
class Dataset:
    """A train/test image-classification dataset in pixel space.

    Attributes:
        name: where it came from ("digits", "fashion-mnist", or the path).
        x_train, x_test: float32 (N, C, H, W) with values in [0, 1].
        y_train, y_test: int64 (N,) with values in [0, num_classes).
        num_classes: number of classes (>= 2).
        train_indices: int64 (N_train,) positions of ``x_train`` rows in the
            full source training set (identity unless a subset was taken). The
            membership audit stores these to name which records were members.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    train_indices: torch.Tensor

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Per-example image shape (C, H, W)."""
        return tuple(self.x_train.shape[1:])

    def train_tensors(self) -> torch.utils.data.TensorDataset:
        """The training split as a ``TensorDataset`` of (image, label)."""
        return torch.utils.data.TensorDataset(self.x_train, self.y_train)

    def test_tensors(self) -> torch.utils.data.TensorDataset:
        """The test split as a ``TensorDataset`` of (image, label)."""
        return torch.utils.data.TensorDataset(self.x_test, self.y_test)

    def describe(self) -> str:
        """One line: source, split sizes, image shape, classes."""
        c, h, w = self.in_shape
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test "
                f"images of {c}x{h}x{w}, {self.num_classes} classes")


def load_dataset(
    source: str = "digits",
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name or path, optionally as a fixed random subset.

    Args:
        source: "digits", "fashion-mnist", a directory of IDX files, or an
            ``.npz`` file.
        train_size, test_size: if given, keep this many examples of each split,
            chosen by a permutation seeded with ``seed`` (the same call always
            returns the same subset). Must not exceed the split's size.
        seed: seed of the subset permutations (the test subset uses ``seed + 1``).
            The digits train/test split itself is fixed and does not depend on it.

    Returns:
        A :class:`Dataset`: images float32 (N, C, H, W) in [0, 1], labels int64 (N,).

    Raises:
        DataError: missing path or package, corrupt or inconsistent files,
            bad subset sizes.
    """
    if not isinstance(source, str) or not source:
        raise DataError(f"dataset must be a name or a path, got {source!r}")
    if source == "digits":
        arrays = _digits_arrays()
    elif source in ("fashion-mnist", "fashion_mnist", "fmnist"):
        if not os.path.isdir(FASHION_MNIST_DIR):
            raise DataError(f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: {_FASHION_HINT}")
        arrays = _idx_dir_arrays(FASHION_MNIST_DIR)
        source = "fashion-mnist"
    elif os.path.isdir(source):
        arrays = _idx_dir_arrays(source)
    elif os.path.isfile(source):
        if not source.endswith(".npz"):
            raise DataError(f"{source}: expected a directory of IDX files or an .npz file")
        arrays = _npz_arrays(source)
    else:
        raise DataError(
            f"dataset {source!r} not found: use 'digits', 'fashion-mnist', "
            "a directory of IDX files, or an .npz file")
    return _to_dataset(source, arrays, train_size, test_size, seed)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (gzipped or not, detected by content) into a numpy array.

    Raises:
        DataError: unreadable file, bad magic number, unknown type code, or a
            payload whose length does not match the header's dimensions.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: corrupt IDX header (unknown type code 0x{code:02x})")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: corrupt IDX header (truncated dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise DataError(
            f"{path}: corrupt IDX file (header says {dims} = {expected} bytes of data, "
            f"found {payload})")
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)


def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # values 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    # Fixed split, independent of the subset seed, so "the test set" never moves.
    order = np.random.default_rng(12345).permutation(len(labels))
    n_test = int(round(len(labels) * _DIGITS_TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return {"x_train": images[train], "y_train": labels[train],
            "x_test": images[test], "y_test": labels[test]}


def _idx_dir_arrays(directory: str) -> dict[str, np.ndarray]:
    arrays = {}
    for key, stem in _IDX_NAMES.items():
        candidates = [os.path.join(directory, stem + ext) for ext in (".gz", "")]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise DataError(f"{directory}: missing {stem} (or {stem}.gz)")
        arrays[key] = read_idx(path)
    return arrays


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _IDX_NAMES if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing arrays {', '.join(missing)} "
                                f"(found {', '.join(f.files) or 'none'})")
            return {k: f[k] for k in _IDX_NAMES}
    except DataError:
        raise
    except (OSError, ValueError, zlib.error, EOFError) as e:
        raise DataError(f"{path}: cannot read .npz ({str(e).splitlines()[0]})") from None


def _images_to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
            return x
        if x.shape[-1] in (1, 3):
            return np.transpose(x, (0, 3, 1, 2))
    raise DataError(f"{where}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C) "
                    f"with C in (1, 3), got shape {x.shape}")


def _images_to_unit_range(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], got {x.dtype}")
    x = x.astype(np.float32)
    if x.size and (not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0):
        raise DataError(f"{where}: float images must lie in [0, 1], found "
                        f"[{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]")
    return x


def _choose(n: int, size: int | None, seed: int, what: str) -> np.ndarray:
    if size is None:
        return np.arange(n)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise DataError(f"{what} size must be a positive integer, got {size!r}")
    if size > n:
        raise DataError(f"{what} size {size} exceeds the {n} available examples")
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def _to_dataset(name, arrays, train_size, test_size, seed) -> Dataset:
    out = {}
    for split, salt in (("train", 0), ("test", 1)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        where = f"{name} ({split})"
        if y.ndim != 1:
            raise DataError(f"{where}: labels must be 1-D, got shape {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"{where}: split is empty")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise DataError(f"{where}: labels must be non-negative integers")
        x = _images_to_nchw(x, where)
        size = train_size if split == "train" else test_size
        keep = _choose(len(y), size, seed + salt, split)
        out[f"x_{split}"] = torch.from_numpy(
            np.ascontiguousarray(_images_to_unit_range(x[keep], where)))
        out[f"y_{split}"] = torch.from_numpy(y[keep].astype(np.int64))
        if split == "train":
            out["train_indices"] = torch.from_numpy(keep.astype(np.int64))
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(f"{name}: train images {tuple(out['x_train'].shape[1:])} and test "
                        f"images {tuple(out['x_test'].shape[1:])} differ in shape")
    # From the full label arrays: a small subset may miss a class.
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if num_classes < 2:
        raise DataError(f"{name}: need at least 2 classes, found labels only of class 0")
    return Dataset(name=name, num_classes=num_classes, **out)
