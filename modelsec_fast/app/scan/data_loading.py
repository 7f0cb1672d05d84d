"""Loading the user's data for ``scan``: records (x, y) and, optionally, who was a member.

Formats (``spec`` is a path, or two paths joined by a comma):

* an image folder: one subfolder per class (sorted names are classes 0, 1, ...),
  read with Pillow one file at a time; every image must have the first one's
  size and mode (grey -> 1 channel, anything else -> RGB).
* ``IMAGES.npy,LABELS.npy``: memory-mapped, so only the rows used are read.
* MNIST-format IDX: ``IMAGES,LABELS`` files, or a folder with the standard names
  (``t10k-*`` for the test data, ``train-*`` for ``--train-data``); uncompressed
  files are memory-mapped, gzipped ones are read whole.
* ``.npz`` with ``x``, ``y`` and optionally ``member`` (a membership mask): loaded
  whole, with ``allow_pickle=False``.
* ``.csv``: numeric features and an integer label (the column named ``label``,
  ``y``, ``class`` or ``target``, else the last one); a header row is optional.
  Tabular data: the scan scales each feature to [0, 1] and records the scaling.

uint8 values (image files, IDX, uint8 arrays) are mapped from [0, 255] onto the
input range; float values must already lie in it. At most ``limit`` records
are read: a seeded subset in file order. Every failure raises
:class:`DataLoadError` (a ``ValueError``) with one line naming the file.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..console import one_line

__all__ = ["DataLoadError", "ScanData", "load_data", "load_member_mask", "subset_rows",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")
_LABEL_COLUMNS = ("label", "y", "class", "target")
_IDX_STEMS = {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
              "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Float data may stray this far outside the input range (rounding in the user's pipeline).
_RANGE_SLACK = 1e-4


class DataLoadError(ValueError):
    """The data could not be loaded; the message is one line naming the file."""


@dataclass
class ScanData:
    """Records for the scan.

    ``x``: float32 (N, ...) in the input range (tabular: raw features, scaled later);
    ``y``: int64 (N,); ``uint8``: ``x`` held 0..255 values (mapped onto the input
    range by :func:`load_data`); ``member``: bool (N,) or None; ``format``: "image folder",
    "npy", "idx", "npz" or "csv"; ``notes``: how it was read, for the report.
    """

    x: torch.Tensor
    y: torch.Tensor
    source: str
    format: str
    is_image: bool = True
    member: Optional[torch.Tensor] = None
    total: int = 0
    uint8: bool = False
    notes: list[str] = field(default_factory=list)


def load_data(spec: str, *, input_range: tuple[float, float], limit: Optional[int] = None,
              seed: int = 0, split: str = "test") -> ScanData:
    """The records ``spec`` names (see the module docstring).

    Args:
        input_range: (lo, hi) the model's inputs take; uint8 data is mapped onto it.
        limit: read at most this many records (a seeded subset, in file order).
        split: "test" or "train": which IDX files a folder of them gives.
    Raises:
        DataLoadError: a missing or unreadable file, mismatched lengths, labels that
            are not non-negative integers, float values outside ``input_range``.
    """
    paths = [p.strip() for p in spec.split(",")] if "," in spec else [spec]
    for path in paths:
        if not os.path.exists(path):
            raise DataLoadError(f"{path}: data not found")
    if len(paths) == 2:
        data = _pair(paths[0], paths[1], limit, seed)
    elif len(paths) != 1:
        raise DataLoadError(f"{spec}: give one data path, or IMAGES,LABELS")
    elif os.path.isdir(spec):
        stems = _IDX_STEMS[split]
        found = [_idx_file(spec, s) for s in stems]
        if all(found):
            data = _pair(found[0], found[1], limit, seed)
        else:
            data = _image_folder(spec, limit, seed)
    elif spec.endswith(".npz"):
        data = _npz(spec, limit, seed)
    elif spec.endswith(".csv"):
        data = _csv(spec, limit, seed)
    else:
        raise DataLoadError(f"{spec}: not a data format this scan reads (an image folder, "
                            "IMAGES.npy,LABELS.npy, IDX files, .npz or .csv)")
    _check_labels(data)
    if data.is_image:
        _check_range(data, input_range)
    return data


def load_member_mask(path: str, n: int, what: str) -> torch.Tensor:
    """bool (n,) from a ``.npy`` of bools or 0/1 integers (``allow_pickle=False``).

    Raises:
        DataLoadError: unreadable, not 1-D 0/1 values, or not ``n`` entries
            (``what`` names the records it should cover).
    """
    if not os.path.isfile(path):
        raise DataLoadError(f"{path}: membership mask not found")
    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataLoadError(f"{path}: cannot read the membership mask ({one_line(e)})") from None
    return _mask(mask, n, path, what)


def _mask(mask: np.ndarray, n: int, where: str, what: str) -> torch.Tensor:
    if mask.ndim != 1 or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)) \
            or (mask.size and not np.isin(mask, (0, 1)).all()):
        raise DataLoadError(f"{where}: a membership mask must be 1-D bools or 0/1, got "
                            f"{mask.dtype} of shape {mask.shape}")
    if len(mask) != n:
        raise DataLoadError(f"{where}: membership mask has {len(mask)} entries but {what} has "
                            f"{n} records")
    return torch.from_numpy(mask.astype(bool))


# ----------------------------------------------------------------------------- formats
def subset_rows(n: int, limit: Optional[int], seed: int) -> np.ndarray:
    """Rows read of ``n`` records: all, or a seeded ``limit`` of them in file order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _tensor(x: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, bool]:
    """(rows of ``x`` as float32, whether they were uint8 0..255); a memory map is read
    only at those rows."""
    part = np.asarray(x[rows])
    if not (np.issubdtype(part.dtype, np.floating) or np.issubdtype(part.dtype, np.integer)):
        raise ValueError(f"values must be numbers, got {part.dtype}")
    return torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)), part.dtype == np.uint8


def _labels(y: np.ndarray, rows: np.ndarray, where: str) -> torch.Tensor:
    part = np.asarray(y[rows])
    if part.ndim != 1:
        raise DataLoadError(f"{where}: labels must be 1-D, got shape {part.shape}")
    if not np.issubdtype(part.dtype, np.integer):
        if np.issubdtype(part.dtype, np.floating) and np.all(np.mod(part, 1) == 0):
            part = part.astype(np.int64)
        else:
            raise DataLoadError(f"{where}: labels must be integers, got {part.dtype}")
    return torch.from_numpy(part.astype(np.int64))


def _pair(x_path: str, y_path: str, limit, seed) -> ScanData:
    x, x_notes = _array(x_path)
    y, _ = _array(y_path)
    if len(x) != len(y):
        raise DataLoadError(f"{x_path}: {len(x)} records but {y_path} has {len(y)} labels")
    rows = subset_rows(len(y), limit, seed)
    try:
        xt, uint8 = _tensor(x, rows)
    except ValueError as e:
        raise DataLoadError(f"{x_path}: {e}") from None
    kind = "npy" if x_path.endswith(".npy") else "idx"
    return ScanData(x=xt, y=_labels(y, rows, y_path), source=f"{x_path},{y_path}", format=kind,
                    total=len(y), notes=x_notes, uint8=uint8)


def _array(path: str) -> tuple[np.ndarray, list[str]]:
    """A .npy or IDX file as an array, memory-mapped where possible."""
    if path.endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), ["memory-mapped .npy"]
        except (OSError, ValueError, EOFError) as e:
            raise DataLoadError(f"{path}: cannot read .npy ({one_line(e)})") from None
    return _read_idx(path)


def _idx_file(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _read_idx(path: str) -> tuple[np.ndarray, list[str]]:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise DataLoadError(f"{path}: cannot read ({e.strerror})") from None
    if head[:2] == b"\x1f\x8b":  # gzip: cannot be memory-mapped
        try:
            raw = gzip.open(path).read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataLoadError(f"{path}: corrupt gzip data ({one_line(e)})") from None
        return _parse_idx(path, np.frombuffer(raw, dtype=np.uint8)), ["gzipped IDX read whole"]
    return _parse_idx(path, np.memmap(path, dtype=np.uint8, mode="r")), ["memory-mapped IDX"]


def _parse_idx(path: str, raw: np.ndarray) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or int(raw[2]) not in _IDX_DTYPES:
        raise DataLoadError(f"{path}: not an .npy or IDX file (bad magic number)")
    dtype, ndim = np.dtype(_IDX_DTYPES[int(raw[2])]), int(raw[3])
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataLoadError(f"{path}: corrupt IDX header (truncated dimensions)")
    dims = tuple(int(d) for d in raw[4:4 + 4 * ndim].view(">u4"))
    size = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - 4 - 4 * ndim != size:
        raise DataLoadError(f"{path}: corrupt IDX file (header says {dims}, {size} bytes; found "
                            f"{len(raw) - 4 - 4 * ndim})")
    return raw[4 + 4 * ndim:].view(dtype).reshape(dims)


def _npz(path: str, limit, seed) -> ScanData:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y", "member") if k in f.files}
            files = f.files
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataLoadError(f"{path}: cannot read .npz with allow_pickle=False "
                            f"({one_line(e)[:200]})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataLoadError(f"{path}: needs arrays x and y (found {', '.join(files) or 'none'})")
    x, y = arrays["x"], arrays["y"]
    if len(x) != len(y):
        raise DataLoadError(f"{path}: {len(x)} records in x but {len(y)} labels in y")
    rows = subset_rows(len(y), limit, seed)
    notes = ["loaded whole (.npz, allow_pickle=False)"]
    try:
        xt, uint8 = _tensor(x, rows)
    except ValueError as e:
        raise DataLoadError(f"{path}: x: {e}") from None
    member = None
    if "member" in arrays:
        member = _mask(arrays["member"], len(y), f"{path} (member)", "x")[torch.from_numpy(rows)]
    return ScanData(x=xt, y=_labels(y, rows, path), source=path, format="npz", member=member,
                    total=len(y), notes=notes, uint8=uint8)


def _csv(path: str, limit, seed) -> ScanData:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError) as e:
        raise DataLoadError(f"{path}: cannot read CSV ({one_line(e)})") from None
    if not rows:
        raise DataLoadError(f"{path}: empty CSV")
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip().lower() for c in rows[0]], rows[1:]
    label_col = len(rows[0]) - 1 if rows else 0
    if header is not None:
        label_col = next((header.index(n) for n in _LABEL_COLUMNS if n in header), label_col)
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise DataLoadError(f"{path}: every cell must be a number ({one_line(e)})") from None
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] < 2:
        raise DataLoadError(f"{path}: need a header-optional table of features and a label "
                            "column, at least one row")
    y = table[:, label_col]
    x = np.delete(table, label_col, axis=1).astype(np.float32)
    if not np.isfinite(x).all():
        raise DataLoadError(f"{path}: features contain NaN or infinity")
    keep = subset_rows(len(y), limit, seed)
    name = header[label_col] if header else f"column {label_col}"
    return ScanData(x=torch.from_numpy(x[keep]), y=_labels(y, keep, path), source=path,
                    format="csv", is_image=False, total=len(y),
                    notes=[f"tabular: {x.shape[1]} features, label from {name}"])


def _image_folder(folder: str, limit, seed) -> ScanData:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files = [(os.path.join(folder, c, name), label) for label, c in enumerate(classes)
             for name in sorted(os.listdir(os.path.join(folder, c)))
             if name.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise DataLoadError(f"{folder}: no images found (expected one subfolder of images per "
                            "class, or IDX files)")
    rows = subset_rows(len(files), limit, seed)
    images, shape = None, None
    for i, index in enumerate(rows):  # streamed: one file open at a time
        path = files[index][0]
        try:
            with Image.open(path) as image:
                mode = "L" if image.mode in ("1", "L", "I;16", "I") else "RGB"
                pixels = np.asarray(image.convert(mode if shape is None else shape[0]))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise DataLoadError(f"{path}: unreadable image ({one_line(e)[:150]})") from None
        if shape is None:
            shape = (mode, pixels.shape)
            images = np.empty((len(rows), *pixels.shape), dtype=np.uint8)
        if pixels.shape != shape[1]:
            raise DataLoadError(f"{path}: image of shape {pixels.shape}, but "
                                f"{files[rows[0]][0]} has {shape[1]}: all images need one size")
        images[i] = pixels
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = np.array([files[i][1] for i in rows], dtype=np.int64)
    notes = [f"image folder: classes {', '.join(classes)} (0..{len(classes) - 1})"]
    return ScanData(x=torch.from_numpy(images.astype(np.float32)), y=torch.from_numpy(labels),
                    source=folder, format="image folder", total=len(files), notes=notes,
                    uint8=True)


# ----------------------------------------------------------------------------- checks
def _check_labels(data: ScanData) -> None:
    if len(data.y) == 0:
        raise DataLoadError(f"{data.source}: no records")
    if int(data.y.min()) < 0:
        raise DataLoadError(f"{data.source}: labels must be >= 0, found {int(data.y.min())}")


def _check_range(data: ScanData, input_range: tuple[float, float]) -> None:
    """Map uint8 data onto ``input_range``; refuse float data outside it."""
    lo, hi = input_range
    if data.uint8:
        data.x = lo + data.x * ((hi - lo) / 255.0)
        data.notes.append("uint8 values mapped from [0, 255] onto the input range")
        return
    low, high = float(data.x.min()), float(data.x.max())
    slack = _RANGE_SLACK * (hi - lo)
    if not (np.isfinite(low) and np.isfinite(high)) or low < lo - slack or high > hi + slack:
        raise DataLoadError(f"{data.source}: values lie in [{low:.4g}, {high:.4g}], outside "
                            f"--input-range {lo:g},{hi:g}")
    data.x = data.x.clamp_(lo, hi)
