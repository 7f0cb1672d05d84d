"""CUDA code must compile even where no GPU exists.

Every csrc/cuda/*.cu is compiled with nvcc for sm_80 and sm_90, and the CUDA
host registration is compile-checked against this torch's headers (a CPU
wheel's headers suffice by design) for the stable-ABI target version, as
CMakeLists.txt builds them. Skips only when nvcc is absent.
"""

import os
import pathlib
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch.utils.cpp_extension as cpp_ext

ROOT = pathlib.Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path=os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin")))

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit absent)")


def _python_constant(path: pathlib.Path, name: str) -> str:
    """The literal of ``NAME = value`` in a Python file, read as CMakeLists.txt reads it."""
    (value,) = re.findall(rf'^{name} = "?([^" #\n]+)"?', path.read_text(), flags=re.M)
    return value


def _build_defines() -> list[str]:
    """The -D flags CMakeLists.txt passes: the specification's constants, the ABI target."""
    ref = ROOT / "modelsec_fast" / "reference.py"
    flags = [f"-DMSF_{name}={_python_constant(ref, name)}"
             for name in ("CLIP_EPS", "L2_GRAD_EPS", "NOISE_DOMAIN")]
    pin = ROOT / "csrc" / "metadata" / "torch_pin.py"
    major, minor = _python_constant(pin, "MIN_TORCH").split(".")
    return flags + [f"-DTORCH_TARGET_VERSION={(int(major) << 56) | (int(minor) << 48):#x}"]


def _run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, res.returncode, res.stderr[-4000:]


def test_every_cu_file_and_the_cuda_registration_compile(tmp_path):
    cu_files = sorted(CUDA_DIR.glob("*.cu"))
    assert cu_files, "no .cu files found"
    defines = _build_defines()
    jobs = [[NVCC, "-std=c++20", "-O1", *defines, "-gencode", "arch=compute_80,code=sm_80",
             "-gencode", "arch=compute_90,code=sm_90", "-c", str(f), "-o", str(tmp_path / (f.stem + ".o"))]
            for f in cu_files]
    includes = [f"-I{p}" for p in cpp_ext.include_paths()]
    cxx = os.environ.get("CXX", "c++")
    jobs.append([cxx, "-std=c++20", "-fsyntax-only", "-D_GLIBCXX_USE_CXX11_ABI=1", *defines,
                 *includes, str(CUDA_DIR / "register_cuda.cpp")])
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(_run, jobs))
    failures = [f"{' '.join(cmd[-3:])}\n{err}" for cmd, rc, err in results if rc != 0]
    assert not failures, "\n\n".join(failures)
