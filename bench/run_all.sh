#!/usr/bin/env bash
# Reruns every benchmark at its documented full size, one after the other, with the one
# harness (bench/_harness.py). Each run writes one JSON document (machine, torch, threads,
# date, command line, every row) and its log into OUTDIR (default bench/out/, gitignored);
# bench/RESULTS.md's tables are filled from them.
#
#   bash bench/run_all.sh [OUTDIR [NAME...]]     # NAMEs: a subset of the runs below
#   QUICK=1 bash bench/run_all.sh /tmp/out       # every run with --quick: checks this script
#
# Run it on a quiet host: on 2 cores, any other process stalls 2-thread torch code (see
# RESULTS.md). The durations below are estimates for the 2-vCPU host of RESULTS.md, quiet;
# about 56 minutes in all, 22 of them the interleaved-floor run. Fashion-MNIST
# (/usr/share/datasets/fashion-mnist) should be installed: without it the attacks'
# evaluation, the adversarial training and the audit fall back to sklearn digits (and say so).
# To repeat a run with freed memory kept in the process (RESULTS.md, attacks), put
# MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 before the command; the JSON records it.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-bench/out}
shift $(($# > 0 ? 1 : 0))
ONLY=" $* "
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
failed=()

run() {  # run NAME SCRIPT ARGS...: one benchmark run -> OUT/NAME.json and OUT/NAME.log
  local name=$1
  shift
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "== $name: $PY $* --json $OUT/$name.json ${QUICK:+--quick}"
  # shellcheck disable=SC2086  # QUICK's flag is meant to vanish when unset
  if ! "$PY" "$@" --json "$OUT/$name.json" ${QUICK:+--quick} >"$OUT/$name.log" 2>&1; then
    failed+=("$name")
  fi
  tail -n 40 "$OUT/$name.log"
  echo "== $name: $((SECONDS - t0)) s"
}

# Fused ops against their eager sequences, the reference path included. About 1 minute.
run ops bench/bench_ops.py --threads 2 --rounds 9
# add_noise_ in its steady state (the same buffer, 30 calls in a row). About 15 s.
run add_noise bench/bench_add_noise.py --threads 2 --rounds 9
# DP-SGD step, non-private / Opacus ghost and ew / ours, 2 threads then 1. About 1 minute each.
run dpsgd_t2 bench/bench_dpsgd.py --threads 2 --rounds 7 --steps 2 \
  --configs nonprivate,opacus_ghost,opacus_ew,ours
run dpsgd_t1 bench/bench_dpsgd.py --threads 1 --rounds 7 --steps 2 \
  --configs nonprivate,opacus_ghost,opacus_ew,ours
# The real models (torchvision ResNet-18, timm ViT, Hugging Face BERT and GPT-2, GPT-2 with
# peft LoRA, an LSTM), every configuration that runs them, 2 threads.
run dpsgd_real bench/bench_dpsgd.py --threads 2 --rounds 7 --steps 2 \
  --models resnet18,vit,bert,gpt2,gpt2_lora,lstm_text
# Per-sample conv weight-gradient norms: the fused kernel against the materialised methods
# and the batched weight gradient, on the benchmark CNNs' layers. About 1 minute.
run conv_norms bench/bench_conv_norms.py --threads 2 --rounds 7
# Peak-RSS increase, one subprocess per model and configuration, Opacus hooks included.
# About 3 minutes.
run dpsgd_memory bench/bench_dpsgd.py --threads 2 --rounds 1 --steps 1 --memory \
  --configs nonprivate,opacus_hooks,opacus_ghost,opacus_ew,ours
# Attacks against the floor and the replayed floor, MNIST CNN b=1024, APGD-100. About 4 minutes.
# (ResNet-18 b=128 is timed by the paired run below: this one would take 40 minutes for it.)
run attacks_single bench/bench_attacks.py --sections single --nets mnist --rounds 5 --threads 2
# Attacks against their interleaved floor, MNIST CNN b=1024 and ResNet-18 b=128, APGD-100;
# each library's calls add up to 40 s at least (one call of ResNet-18 APGD-100 takes 6 minutes
# with its floor). About 22 minutes.
run attacks_paired bench/bench_attacks.py --sections paired --paired-seconds 40 --threads 2
# The PGD update alone at 256x3x224x224, and robust accuracy on 2,000 test images against
# MultiAttack (trains a SmallCNN first). About 2 minutes.
run attacks_update_eval bench/bench_attacks.py --sections update,eval --rounds 5 --eval-rounds 2 \
  --threads 2
# Minimum-norm, score- and decision-based attacks against torchattacks, ART and CleverHans
# (CW, DeepFool, SPSA, HopSkipJump; ART's CW and HopSkipJump take minutes). About 6 minutes.
run attacks_minimum_norm bench/bench_attacks.py --sections cw,deepfool,spsa,hsj --threads 2
# robust_accuracy at its floor: PGD-20 x 5 restarts on 2,000 test images against torchattacks
# on every point and its MultiAttack, with the floor passes alone. About 3 minutes.
run attacks_floor bench/bench_attacks.py --sections floor --floor-rounds 3 --threads 2
# Adversarial training: four runs of 4 epochs, evaluation, step-time ratios. About 1 minute.
run adv_training bench/bench_adv_training.py --threads 2 --test-size 500
# Accountants: known answers, 100-epoch incremental PLD, get_noise_multiplier. About 3 minutes.
run accountants bench/bench_accountants.py --rounds 3
# Membership inference with 16 shadow models, one-run canary audit. About 3 minutes.
run audit bench/bench_audit.py --no-progress
# Attributions: IG and SmoothGrad (50 steps/samples) on ResNet-18, 64 images, ours against
# Captum chunked and unchunked, peak RSS per subprocess. Without a working torchvision it
# runs the CIFAR ResNet-18 and leaves Captum unchunked out (tens of GB); then about 45 minutes.
run explain bench/bench_explain.py --threads 2
# Poisoning against ART 1.20: detectors (precomputed features and end to end), STRIP, BadNets,
# Witches' Brew over 10 retrained victims, Neural Cleanse and mitigations on Fashion-MNIST,
# the DP-SGD ASR-vs-epsilon sweep with its plot. About 15 minutes.
run poisoning bench/bench_poisoning.py --threads 1 --plot bench/poisoning_asr_vs_epsilon.png
# Stealing against ART 1.20: Copycat and KnockoffNets at 250, 1,000 and 5,000 queries (ART's
# batch size 1 up to 1,000), PRADA's detection delay. About 15 minutes.
run stealing bench/bench_stealing.py --threads 1
# Inversion: class inversion against ART's MIFace (1,000 iterations), DLG, iDLG and Inverting
# Gradients on a small ConvNet, PSNR against the DP noise multiplier. About 6 minutes.
run inversion bench/bench_inversion.py --threads 1
# modelsec-fast scan at --budget standard on a Fashion-MNIST CNN (a factory, its state dict,
# .npz test data and a training pool with its membership mask): wall time per stage.
run scan bench/bench_scan.py --threads 2

if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all runs done; JSON in $OUT"
