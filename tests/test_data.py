"""Dataset loading: embedded digits, IDX directories (gzipped or not), .npz, and errors."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from modelsec_fast.data import FASHION_MNIST_DIR, DataError, load_dataset, read_idx


def _write_idx(path, array, compress):
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    array = np.ascontiguousarray(array)
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    opener = gzip.open if compress else open
    with opener(path + (".gz" if compress else ""), "wb") as f:
        f.write(data)


def _write_mnist_dir(directory, rng, n_train=37, n_test=11, size=(5, 7), compress=True):
    splits = {"train": n_train, "t10k": n_test}
    arrays = {}
    for prefix, n in splits.items():
        x = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte"), x, compress)
        _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), y, compress)
        arrays[prefix] = (x, y)
    return arrays


def test_digits_is_offline_float_nchw_in_unit_range():
    ds = load_dataset("digits")
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.in_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert torch.equal(ds.train_indices, torch.arange(len(ds.y_train)))


def test_subset_is_deterministic_and_tracks_indices():
    full = load_dataset("digits")
    a = load_dataset("digits", train_size=101, test_size=7, seed=3)
    b = load_dataset("digits", train_size=101, test_size=7, seed=3)
    c = load_dataset("digits", train_size=101, test_size=7, seed=4)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.y_train) == 101 and len(a.y_test) == 7
    assert torch.equal(full.x_train[a.train_indices], a.x_train)
    assert a.num_classes == 10


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory_round_trip(tmp_path, compress):
    rng = np.random.default_rng(11)
    arrays = _write_mnist_dir(str(tmp_path), rng, compress=compress)
    ds = load_dataset(str(tmp_path))
    x, y = arrays["train"]
    assert ds.in_shape == (1, 5, 7)
    torch.testing.assert_close(ds.x_train[:, 0], torch.from_numpy(x).float() / 255.0)
    assert torch.equal(ds.y_test, torch.from_numpy(arrays["t10k"][1].astype(np.int64)))


def test_read_idx_big_endian_int32(tmp_path):
    a = np.random.default_rng(5).integers(-1000, 1000, size=(3, 4)).astype(">i4")
    _write_idx(str(tmp_path / "a"), a, compress=False)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a")), a)


def test_npz_channels_last_and_float(tmp_path):
    rng = np.random.default_rng(2)
    path = str(tmp_path / "d.npz")
    np.savez(path, x_train=rng.random((9, 6, 6, 3), dtype=np.float32),
             y_train=rng.integers(0, 3, 9), x_test=rng.random((4, 6, 6, 3), dtype=np.float32),
             y_test=np.array([0, 1, 2, 1]))
    ds = load_dataset(path)
    assert ds.in_shape == (3, 6, 6) and ds.num_classes == 3


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_subset():
    ds = load_dataset("fashion-mnist", train_size=50, test_size=20)
    assert ds.in_shape == (1, 28, 28) and ds.num_classes == 10 and len(ds.y_train) == 50


def _one_line(excinfo):
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def test_missing_path_is_one_line_error(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "nope"))
    assert "not found" in _one_line(e)


def test_missing_file_in_directory(tmp_path):
    _write_mnist_dir(str(tmp_path), np.random.default_rng(0))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path))
    assert "t10k-labels-idx1-ubyte" in _one_line(e)


@pytest.mark.parametrize("damage", ["truncate", "magic", "typecode", "gzip"])
def test_corrupt_idx_is_one_line_error(tmp_path, damage):
    _write_mnist_dir(str(tmp_path), np.random.default_rng(1), compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-3]
    elif damage == "magic":
        raw[0] = 7
    elif damage == "typecode":
        raw[2] = 0x42
    else:
        raw = bytearray(gzip.compress(bytes(raw)))[:40]
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path))
    assert "train-images-idx3-ubyte" in _one_line(e)


def test_label_count_mismatch(tmp_path):
    _write_mnist_dir(str(tmp_path), np.random.default_rng(4), compress=False)
    _write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(3, np.uint8), compress=False)
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path))
    assert "labels" in _one_line(e)


def test_bad_subset_size():
    with pytest.raises(DataError):
        load_dataset("digits", train_size=10**6)
    with pytest.raises(DataError):
        load_dataset("digits", test_size=0)


def test_npz_missing_keys_and_bad_float_range(tmp_path):
    path = str(tmp_path / "a.npz")
    np.savez(path, x_train=np.zeros((2, 3, 3)))
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert "y_train" in _one_line(e)
    np.savez(path, x_train=np.full((2, 3, 3), 2.0), y_train=np.array([0, 1]),
             x_test=np.zeros((1, 3, 3)), y_test=np.array([1]))
    with pytest.raises(DataError) as e:
        load_dataset(path)
    assert "[0, 1]" in _one_line(e)
