"""Attributions: modelsec_fast.explain against Captum 0.9 on a ResNet-18.

Integrated Gradients (50 steps, Gauss-Legendre) and SmoothGrad (50 noisy samples,
noise 15% of the input range, absolute gradients) of a torchvision ResNet-18 (random
weights, 10 classes, eval mode; modelsec_fast's CIFAR ResNet-18 where torchvision does
not import, named in the output) over 64 CIFAR-sized images (3x32x32 in [0, 1]),
explained for fixed random labels. Contenders:

* ``captum_chunked``: Captum with its own chunking at its smallest, one pass per
  batch of examples (IG ``internal_batch_size=64``, NoiseTunnel
  ``nt_samples_batch_size=1``): 64 model inputs per pass.
* ``captum_unchunked``: Captum without chunking: 64 x 50 = 3,200 inputs in one pass,
  the out-of-memory case its users report (captum#245, #538).
* ``ours`` / ``ours_small``: :mod:`modelsec_fast.explain` with ``max_inputs`` 64 (the
  same passes as captum_chunked) and 16 (below the batch, which Captum cannot do).

Equal attributions: IG is compared with captum_chunked (equal to Captum unchunked up
to rounding, tests/explain); SmoothGrad with Captum's NoiseTunnel fed our noise (its
own draws come from the global generator), one sample per pass. The figure is
max |ours - Captum| / max |Captum|.

At full size, captum_unchunked runs one pass of 3,200 inputs: with the CIFAR ResNet-18
fallback that needs tens of GB, so it is left out there unless ``--unchunked``.

Memory: the peak-RSS increase of one call, each contender in a fresh subprocess
(Linux: VmHWM reset to the current RSS by ``/proc/self/clear_refs`` right before the
call, after the model and the inputs exist; torch has no CPU memory API). It counts
what the process touched, allocator caches included, for every contender alike.

    python bench/bench_explain.py --threads 2 --json bench/out/explain.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import _harness as h  # noqa: I001  (puts this checkout on sys.path)
import torch

BATCH, STEPS, SAMPLES = 64, 50, 50
QUICK_BATCH, QUICK_STEPS, QUICK_SAMPLES = 8, 10, 10
STDEV_FRACTION = 0.15
METHODS = ("ig", "smoothgrad")
CONTENDERS = ("captum_chunked", "captum_unchunked", "ours", "ours_small")


def max_inputs_of(name: str, batch: int) -> int:
    """Our contenders' limit: the batch (Captum's smallest pass), or a quarter of it."""
    return batch if name == "ours" else max(1, batch // 4)


def sizes(quick: bool) -> tuple[int, int, int]:
    return (QUICK_BATCH, QUICK_STEPS, QUICK_SAMPLES) if quick else (BATCH, STEPS, SAMPLES)


def resnet18():
    """(name, model): torchvision's ResNet-18, or where torchvision does not import
    modelsec_fast's CIFAR ResNet-18 (3x3 stem, no max-pool: 16x the activations of
    torchvision's at 32x32). PyPI's torchvision wheel is a CUDA build that imports on
    the CPU torch only through tests/privacy/real_models.py's workaround."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "privacy"))
    try:
        import real_models

        torchvision = real_models.import_torchvision()
    except (ImportError, RuntimeError, OSError):
        from modelsec_fast.models import ResNet18

        return "modelsec_fast ResNet18 (torchvision does not import)", ResNet18((3, 32, 32), 10)
    return "torchvision resnet18", torchvision.models.resnet18(num_classes=10)


def setup(device, batch: int):
    """The model's name, the model, the images and their labels (seeded: every
    process builds the same)."""
    torch.manual_seed(0)
    name, model = resnet18()
    model = model.to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return name, model, x, y


def contender(method: str, name: str, model, x, y, steps: int, samples: int):
    """A zero-argument callable computing ``method``'s attributions as ``name`` does."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    from modelsec_fast.explain import integrated_gradients, smoothgrad

    batch = x.shape[0]
    if name.startswith("ours"):
        limit = max_inputs_of(name, batch)
        if method == "ig":
            return lambda: integrated_gradients(model, x, y, n_steps=steps, max_inputs=limit)
        generator = torch.Generator(device=x.device)
        return lambda: smoothgrad(model, x, y, stdev_fraction=STDEV_FRACTION, n_samples=samples,
                                  max_inputs=limit, generator=generator.manual_seed(0))
    chunked = name == "captum_chunked"
    if method == "ig":
        ig = IntegratedGradients(model)
        return lambda: ig.attribute(x, target=y, n_steps=steps,
                                    internal_batch_size=batch if chunked else None)
    tunnel = NoiseTunnel(Saliency(model))
    return lambda: tunnel.attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                    nt_samples_batch_size=1 if chunked else None,
                                    stdevs=STDEV_FRACTION, target=y)


def smoothgrad_reference(model, x, y, samples: int) -> torch.Tensor:
    """Captum's NoiseTunnel(Saliency), one sample of every example per pass, fed the
    noise ours draws (seed 0: sample j of every example by one randn call)."""
    from captum.attr import NoiseTunnel, Saliency

    generator = torch.Generator(device=x.device).manual_seed(0)
    draws = iter([torch.randn(x.shape, generator=generator, device=x.device)
                  for _ in range(samples)])
    original = NoiseTunnel._add_noise_to_input
    NoiseTunnel._add_noise_to_input = staticmethod(
        lambda inputs, _stdev, n: inputs + STDEV_FRACTION * next(draws))
    try:
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=1,
            stdevs=STDEV_FRACTION, target=y)
    finally:
        NoiseTunnel._add_noise_to_input = original



def child_memory(method: str, name: str, device, quick: bool) -> None:
    """Prints the peak-RSS increase (MiB) of one call, measured in this fresh process."""
    batch, steps, samples = sizes(quick)
    _, model, x, y = setup(device, batch)
    fn = contender(method, name, model, x, y, steps, samples)
    with torch.no_grad():
        model(x[:1])  # first-call set-up (kernels, allocator) outside the measurement
    print(json.dumps({"peak_rss_increase_mib": h.peak_rss_increase_mib(fn)}))


def measure_memory(method: str, name: str, args) -> float | None:
    command = [sys.executable, os.path.abspath(__file__), "--child-memory", method, name,
               "--device", args.device, "--threads", str(torch.get_num_threads())]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak_rss_increase_mib"]
    print(f"memory of {method}/{name} not measured: {done.stderr.strip()[-400:]}",
          file=sys.stderr)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench_explain.py", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--unchunked", action="store_true",
                        help="run captum_unchunked even with the CIFAR ResNet-18 at full size")
    parser.add_argument("--child-memory", nargs=2, metavar=("METHOD", "CONTENDER"),
                        help=argparse.SUPPRESS)
    args = h.parse_args(parser, argv, rounds=3, quick_rounds=1)
    device = torch.device(args.device)
    warnings.simplefilter("ignore")  # Captum's notes on gradients it sets itself
    if args.child_memory:
        child_memory(*args.child_memory, device, args.quick)
        return None
    if h.optional_import("captum") is None:
        raise SystemExit("bench_explain needs captum")
    batch, steps, samples = sizes(args.quick)
    model_name, model, x, y = setup(device, batch)
    report = h.Report("bench_explain", args)
    report.note(f"model: {model_name}")
    names = list(CONTENDERS)
    if not (args.quick or args.unchunked or model_name.startswith("torchvision")):
        names.remove("captum_unchunked")
        report.skip("captum_unchunked", "one pass of every input times every step through the "
                    "CIFAR ResNet-18 needs tens of GB on the CPU; --unchunked runs it anyway")
    copies = {"ig": steps, "smoothgrad": samples}
    for method in [m for m in args.methods.split(",") if m]:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")
        section = report.section(
            f"{'Integrated Gradients' if method == 'ig' else 'SmoothGrad'}, ResNet-18",
            baseline="captum_chunked",
            note=f"{batch} images 3x32x32, {copies[method]} "
                 f"{'steps' if method == 'ig' else 'samples'}; peak RSS: one subprocess per "
                 "contender, one call")
        fns = {name: contender(method, name, model, x, y, steps, samples) for name in names}
        m = h.measure(fns, device=device, rounds=args.rounds, warmup=1)
        reference = (m.results["captum_chunked"] if method == "ig"
                     else smoothgrad_reference(model, x, y, samples))
        scale = float(reference.abs().max())
        for row in section.add(m, labels={"method": method, "model": model_name.split(" (")[0],
                                          "batch": batch}):
            row.values["inputs/pass"] = (
                batch if row.contender == "captum_chunked" else batch * copies[method]
                if row.contender == "captum_unchunked" else max_inputs_of(row.contender, batch))
            if row.contender.startswith("ours"):
                got = m.results[row.contender]
                row.values["max rel. diff"] = float((got - reference).abs().max()) / scale
            if not args.no_memory:
                row.values["peak RSS +MiB"] = measure_memory(method, row.contender, args)
        section.print()
    return report.finish()


if __name__ == "__main__":
    main()
