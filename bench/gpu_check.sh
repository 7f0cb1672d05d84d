#!/usr/bin/env bash
# GPU check: builds the native library with CUDA against the machine's own
# torch, runs the CUDA parity tests, then the benchmarks with --device cuda.
# Everything is logged to the folder given as $1; the whole run stays under
# 10 minutes (each stage has its own time limit).
#
#   bash bench/gpu_check.sh LOGDIR
#
# Made for the lent GPU machine (Python 3.12, torch 2.11 + CUDA 13, nvcc, no
# network). Packages its image lacks (opacus, torchattacks, dp-accounting and
# their missing dependencies) are installed from carried wheels in .whl/ when
# present. Environment: PYTHON (default python3), CUDAARCHS (default 90).
set -uo pipefail

LOG=${1:?usage: bash bench/gpu_check.sh LOGDIR}
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
SUMMARY="$LOG/summary.txt"
: >"$SUMMARY"
status=0

TOTAL_S=${GPU_CHECK_TOTAL_S:-570}  # the whole script ends inside 10 minutes

stage() {  # stage NAME LIMIT_S COMMAND...: runs, logs to $LOG/NAME.log, records the outcome
  local name=$1 limit=$2
  shift 2
  local left=$((TOTAL_S - SECONDS))
  if [ "$left" -lt 10 ]; then
    printf '%-16s skipped: out of time\n' "$name" | tee -a "$SUMMARY"
    status=1
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$LOG/$name.log"
  printf '%-16s rc=%-4s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$SUMMARY"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available())"
  nvcc --version | tail -n 2; } >"$LOG/machine.txt" 2>&1
cat "$LOG/machine.txt"

# 1. Carried wheels (no network there).
if compgen -G ".whl/*.whl" >/dev/null; then
  stage wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# 2. Build with CUDA (ON: a CPU-only torch or a missing nvcc is an error, not a silent CPU build).
export MODELSEC_FAST_CUDA=ON CUDAARCHS=${CUDAARCHS:-90}
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
if ! stage build 330 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .; then
  # Fallback: plain CMake build, loaded through MODELSEC_FAST_NATIVE_LIB.
  stage build_cmake 330 bash -c "cmake -S . -B build/gpu -G Ninja -DPython_EXECUTABLE=$(command -v "$PY") \
      -DMODELSEC_FAST_CUDA=ON && cmake --build build/gpu"
  lib=$(ls build/gpu/_C*.so 2>/dev/null | head -n 1)
  [ -n "$lib" ] && export MODELSEC_FAST_NATIVE_LIB=$PWD/$lib
fi
stage native 60 "$PY" -c "import modelsec_fast as m; info = m._native.build_info(); print(info); \
assert m.ops.native_available() and info['cuda'], 'native CUDA build not loaded'"

# 3. CUDA parity tests (and the stream tests they build on).
stage tests_cuda 240 "$PY" -m pytest -q -p no:cacheprovider tests/ops/test_cuda.py tests/ops/test_rng.py \
  tests/ops/test_opcheck.py tests/attacks/test_attacks_cuda.py tests/poisoning/test_poison_cuda_parity.py \
  tests/stealing/test_stealing_cuda.py tests/inversion/test_inversion_cuda.py \
  tests/explain/test_explain_cuda.py tests/app/scan/test_scan_cuda.py
stage tests_cuda_dp 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda \
  tests/privacy/test_engine_parity.py tests/privacy/test_dp_rnn.py \
  tests/privacy/test_real_models.py

# 4. Benchmarks with --device cuda, each if present, sized to fit its stage. The flags are the
# shared ones of bench/_harness.py; a bench that skipped (no CUDA in this torch) or wrote no
# rows fails its stage. The anchors must be importable: without them a bench would time
# nothing to compare against.
for anchor in opacus torchattacks; do
  "$PY" -c "import $anchor" 2>/dev/null ||
    printf '%-16s missing: carry its wheel in .whl/ (see the header)\n' "$anchor" | tee -a "$SUMMARY"
done
CHECK_JSON='import json, sys; d = json.load(open(sys.argv[1])); sys.exit(
    ("skipped: " + d["skipped"]) if "skipped" in d else 0 if d["rows"] else "no rows")'
bench_stage() {  # bench_stage NAME LIMIT_S ARGS...: runs bench/NAME.py --device cuda, checks its JSON
  local name=$1 limit=$2
  shift 2
  [ -f "bench/$name.py" ] || return 0
  stage "$name" "$limit" bash -c '"$0" "bench/$1.py" --device cuda --json "$2" "${@:4}" &&
    "$0" -c "$3" "$2"' "$PY" "$name" "$LOG/$name.json" "$CHECK_JSON" "$@"
}
bench_stage bench_ops 120 --rounds 5
bench_stage bench_dpsgd 120 --rounds 3
bench_stage bench_attacks 120 --rounds 3 --eval-rounds 1
bench_stage bench_add_noise 30 --rounds 5
bench_stage bench_conv_norms 30 --rounds 5
# Last, and only its smoke size: it trains models, and whatever time is left goes to it.
bench_stage bench_adv_training 90 --quick

echo "== summary"
cat "$SUMMARY"
exit "$status"
