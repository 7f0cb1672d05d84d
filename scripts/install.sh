#!/usr/bin/env bash
# Installs modelsec_fast and everything its tests, benchmarks and demo use, on a
# fresh machine with Python 3.11. Safe to rerun: pip skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The CPU build of torch 2.13.0. Pinned exactly: an unpinned 'torch' can pull a
# multi-GB CUDA build, and the extension's ATen ABI is tied to the minor version.
"$PY" -m pip install -q torch==2.13.0

# Build tools and runtime/test dependencies. torch is already satisfied, so none
# of these can replace it.
"$PY" -m pip install -q "numpy>=1.24" scipy pybind11 "scikit-build-core>=0.10" ninja \
    pytest hypothesis scikit-learn matplotlib tqdm

# Captum (modelsec_fast.explain); the torch pin keeps pip from replacing torch.
"$PY" -m pip install -q captum==0.9.0 torch==2.13.0

# Anchors: test and benchmark cross-checks only, never imported at run time.
"$PY" -m pip install -q opacus==1.6.0 dp-accounting==0.6.0
# torchattacks declares torchvision etc. as requirements but imports without them;
# --no-deps keeps pip from replacing torch with a CUDA build.
"$PY" -m pip install -q --no-deps torchattacks==3.5.1
# The stable-ABI audit of the built library (tests/ops/test_stable_abi.py), with
# its two dependencies pinned; --no-deps: none of them may touch torch.
"$PY" -m pip install -q --no-deps torch-abi-audit==0.3.0 abi3info==2026.9.25 pycxxfilt==1.2.0

# Model libraries for the DP drop-in parity tests and benchmark
# (tests/privacy/real_models.py), with torch held at its pin by a constraints
# file so that no dependency can replace it. PyPI's torchvision 0.28.0 wheel is
# a CUDA build: its ops library cannot load next to the CPU torch, and
# real_models.import_torchvision() defines the two op schemas its import needs.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
"$PY" -m pip install -q -c "$constraints" transformers==5.25.0 timm==1.0.31 peft==0.21.2 \
    torchvision==0.28.0

# ONNX models for `scan` (through onnx2torch; tests/app/scan/test_scan_loading.py skips
# without them). --no-deps: onnx2torch declares torch and torchvision; onnx's own
# dependencies are pure data libraries, installed under the torch constraint.
"$PY" -m pip install -q -c "$constraints" onnx==1.23.2 "protobuf>=6.31.1" "ml_dtypes>=0.5.4"
"$PY" -m pip install -q --no-deps onnx2torch==1.5.15

# The extension, built against the torch installed above: --no-build-isolation
# stops pip from fetching a second torch into a throwaway build environment.
"$PY" -m pip install -q --no-build-isolation -e .

# Headless Chromium for the HTML-report tests (tests/app/scan/test_scan_html.py; they skip
# without it). Debian's package; only where apt-get can install it.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
