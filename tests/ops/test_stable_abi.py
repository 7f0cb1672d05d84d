"""The built library keeps to the LibTorch stable ABI and CPython's limited API.

torch-abi-audit reads the library's symbol table: any ATen/c10 symbol (which
would tie the binary to one torch minor version) or any shim function newer
than the target in csrc/metadata/torch_pin.py fails the test.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from modelsec_fast import _native
from tests.ops.conftest import requires_native

ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = [requires_native]


def _min_torch() -> str:
    sys.path.insert(0, str(ROOT / "csrc" / "metadata"))
    try:
        import torch_pin
        return torch_pin.MIN_TORCH
    finally:
        sys.path.pop(0)


def test_library_uses_only_the_stable_abi_of_the_pinned_torch():
    pytest.importorskip("torch_abi_audit", reason="torch-abi-audit not installed (scripts/install.sh)")
    library = pathlib.Path(_native.load().__file__)
    res = subprocess.run([sys.executable, "-m", "torch_abi_audit.cli", "--json", "--check", "both",
                          str(library)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    (ext,) = json.loads(res.stdout)["extensions"]
    assert ext["torch"]["stable"] and ext["torch"]["unstable_symbols"] == []
    assert ext["torch"]["unknown_shim_symbols"] == []
    # The newest shim function it calls is no newer than the runtime pin allows.
    needs = tuple(int(p) for p in ext["torch"]["min_torch_version"].split(".")[:2])
    assert needs <= tuple(int(p) for p in _min_torch().split(".")), ext["torch"]
    assert ext["cpython"]["compliant"], ext["cpython"]["violations"]


def test_build_facts_name_the_stable_abi_target():
    assert _native.build_info()["torch_abi_target"] == _min_torch()
