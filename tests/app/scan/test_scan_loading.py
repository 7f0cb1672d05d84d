"""The scan's loaders: every model format loads the same model to the same outputs, the
exported-program adapter handles any batch size, the user's normalisation goes inside
the model, and every data format gives the same records."""

import os

import numpy as np
import pytest
import torch

from modelsec_fast.app.scan.data_loading import DataLoadError, load_data, load_member_mask
from modelsec_fast.app.scan.model_loading import (ExportedProgramModel, ModelLoadError,
                                                  detect_format, load_model)
from tests.app.scan.conftest import EXPORT_BATCH, FACTORY


@pytest.fixture(scope="module")
def x(scan_assets):
    return torch.from_numpy(scan_assets["x_test"][:37])  # not a multiple of EXPORT_BATCH


def test_every_model_format_gives_the_same_outputs(scan_assets, x):
    p = scan_assets["paths"]
    with torch.no_grad():
        expected = scan_assets["model"](x)
        outputs = {
            "factory": load_model(FACTORY, weights=p["weights.pt"]),
            "torch.export": load_model(p["model.pt2"], trust_model=True),
            "torchscript": load_model(p["model.ts"], trust_model=True),
        }
        for kind, loaded in outputs.items():
            assert loaded.format == kind
            torch.testing.assert_close(loaded.model(x), expected, msg=kind)
    assert outputs["factory"].factory is not None  # only the factory can retrain
    assert outputs["torch.export"].factory is None


def test_onnx_through_onnx2torch_gives_the_same_outputs(scan_assets, x, tmp_path):
    pytest.importorskip("onnx")
    from tests.privacy.real_models import import_torchvision
    import_torchvision()  # onnx2torch imports torchvision (see real_models' docstring)
    pytest.importorskip("onnx2torch")
    path = str(tmp_path / "model.onnx")
    # the TorchScript-based exporter: the dynamo one needs onnxscript
    torch.onnx.export(scan_assets["model"], (x[:4],), path, dynamic_axes={"x": {0: "n"}},
                      input_names=["x"], dynamo=False)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path).model(x), scan_assets["model"](x))


def test_exported_adapter_splits_batches_and_ignores_mode_switches(scan_assets, x):
    loaded = load_model(scan_assets["paths"]["model.pt2"], trust_model=True)
    adapter = loaded.model
    assert isinstance(adapter, ExportedProgramModel) and adapter.batch_size == EXPORT_BATCH
    adapter.train()  # a no-op: an exported graph cannot switch modes
    with torch.no_grad():
        for n in (1, 5, EXPORT_BATCH, 37):
            torch.testing.assert_close(adapter(x[:n]), scan_assets["model"](x[:n]))
    xg = x[:5].clone().requires_grad_(True)
    adapter(xg).sum().backward()  # the attacks need input gradients through the padding
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_normalisation_goes_inside_the_model(scan_assets, x):
    loaded = load_model(FACTORY, weights=scan_assets["paths"]["weights.pt"], mean=[0.25],
                        std=[0.5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), scan_assets["model"]((x - 0.25) / 0.5))
        torch.testing.assert_close(loaded.factory()(x).shape, torch.Size([37, 10]))


def test_model_format_is_recognised_without_unpickling(scan_assets):
    p = scan_assets["paths"]
    assert detect_format(p["model.pt2"]) == "torch.export"
    assert detect_format(p["model.ts"]) == "torchscript"
    assert detect_format(p["weights.pt"]) == "state_dict"
    with pytest.raises(ModelLoadError, match="a state dict, not a model"):
        load_model(p["weights.pt"])
    with pytest.raises(ModelLoadError, match="TorchScript file; loading one unpickles"):
        load_model(p["model.ts"])


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def records(scan_assets, tmp_path_factory):
    """The same 40 uint8 images and labels written in every format -> spec."""
    out = tmp_path_factory.mktemp("formats")
    images = np.round(scan_assets["x_test"][:40, 0] * 255).astype(np.uint8)  # (40, 8, 8)
    labels = scan_assets["y_test"][:40].astype(np.int64)
    np.save(out / "x.npy", images[:, None])
    np.save(out / "y.npy", labels)
    np.savez(out / "d.npz", x=images[:, None], y=labels)
    _write_idx(out / "t10k-images-idx3-ubyte", images)
    _write_idx(out / "t10k-labels-idx1-ubyte", labels.astype(np.uint8))
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        os.makedirs(out / "folder" / f"{label}", exist_ok=True)
        Image.fromarray(image).save(out / "folder" / f"{label}" / f"{i:03d}.png")
    specs = {"npy": f"{out / 'x.npy'},{out / 'y.npy'}", "npz": str(out / "d.npz"),
             "idx": f"{out / 't10k-images-idx3-ubyte'},{out / 't10k-labels-idx1-ubyte'}",
             "idx folder": str(out), "image folder": str(out / "folder")}
    return images, labels, specs


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


@pytest.mark.parametrize("kind", ["npy", "npz", "idx", "idx folder", "image folder"])
def test_every_data_format_gives_the_same_records(records, kind):
    images, labels, specs = records
    data = load_data(specs[kind], input_range=(0.0, 1.0))
    expected_x = torch.from_numpy(images[:, None].astype(np.float32) / 255)
    order = np.argsort(labels, kind="stable") if kind == "image folder" else np.arange(40)
    # the folder lists images by class, so its order is the labels' stable sort
    # IDX holds (N, H, W): the scan adds the channel axis when the model asks for one
    assert data.x.shape == ((40, 8, 8) if kind.startswith("idx") else (40, 1, 8, 8))
    assert data.uint8
    torch.testing.assert_close(data.x.reshape(40, 1, 8, 8), expected_x[order])
    assert torch.equal(data.y, torch.from_numpy(labels[order]))


def test_uint8_records_map_onto_the_input_range(records):
    images, _, specs = records
    data = load_data(specs["npz"], input_range=(-1.0, 1.0))
    torch.testing.assert_close(data.x, torch.from_numpy(images[:, None] / 127.5 - 1).float())


def test_float_records_outside_the_input_range_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((3, 4), 2.0, np.float32), y=np.zeros(3, np.int64))
    with pytest.raises(DataLoadError, match=r"values lie in \[2, 2\], outside --input-range 0,1"):
        load_data(str(path), input_range=(0.0, 1.0))


def test_a_limit_reads_a_seeded_subset_of_a_memory_mapped_npy(records):
    images, labels, specs = records
    data = load_data(specs["npy"], input_range=(0.0, 1.0), limit=7, seed=3)
    again = load_data(specs["npy"], input_range=(0.0, 1.0), limit=7, seed=3)
    assert len(data.y) == 7 and data.total == 40 and torch.equal(data.x, again.x)
    assert "memory-mapped .npy" in data.notes
    rows = [int(np.flatnonzero((images[:, None] == np.round(r.numpy() * 255)).all((1, 2, 3)))[0])
            for r in data.x]
    assert rows == sorted(rows)  # file order


def test_csv_takes_the_label_column_by_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label,b\n1.5,0,10\n2.5,1,30\n3.5,1,20\n")
    data = load_data(str(path), input_range=(0.0, 1.0))
    assert not data.is_image and data.format == "csv"
    torch.testing.assert_close(data.x, torch.tensor([[1.5, 10], [2.5, 30], [3.5, 20]]))
    assert data.y.tolist() == [0, 1, 1]


def test_npz_member_mask_and_a_mask_file(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((4, 2), np.float32), y=np.arange(4), member=[1, 0, 1, 0])
    assert load_data(str(path), input_range=(0.0, 1.0)).member.tolist() == [True, False,
                                                                            True, False]
    mask = tmp_path / "m.npy"
    np.save(mask, np.array([True, False]))
    with pytest.raises(DataLoadError, match="membership mask has 2 entries but pool has 4"):
        load_member_mask(str(mask), 4, "pool")
