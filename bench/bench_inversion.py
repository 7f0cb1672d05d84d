"""Model inversion benchmark: class inversion against ART 1.20's MIFace, gradient inversion
on a small ConvNet, and gradient inversion against the DP engine's noise multiplier.

Part 1, class inversion (MI-Face, Fredrikson et al. 2015): a victim MLP (256 hidden)
trained on the data; one image per class (``--classes``), each started from a black
image, ascending the victim's probability of its class with step 0.1 (ART's default)
and no image prior (ART has none: ``tv_weight=0``), so both run the same iterates.
ART's ``MIFace`` runs with its defaults (window 100, threshold 0.99, step 0.1, batch
size 1) except ``max_iter`` (``--art-iterations``; ART's default is 10,000), and at a
batch size of all the classes. Its continue condition keeps every class running while
the class's probability is above 0.01, so every class runs to ``max_iter``.

The objective compared: each class's probability ``p_k(x_k)``; its target is the
value ART reaches for that class with its defaults (an untimed run at batch size 1).
"ours (to ART's objective)" is ``ClassInversion`` with per-class thresholds
``1 - p_k + 1e-6`` (each class stops once its probability is within 1e-6 of ART's:
ART computes in float32); "classes reached" counts the classes at least that probable.
"ours (ART's iterations)" runs ART's number of steps with no early stop (the cost per
step; the same iterates as ART's). A class whose probability is below 0.01 after a
step fails ART's continue condition and stops there: the note counts them.

Part 2, gradient inversion (no ART counterpart): one-image updates (plain averaged
cross-entropy gradient) of an untrained small ConvNet (digits 8x8, width 8) for
``--images`` test images, one per class: DLG, iDLG and Inverting Gradients with their
iterations stated, and the analytic recovery of an MLP's first layer. PSNR in dB (100 =
exact), also against another test image of the same class and, in the note, the
PSNR of uniform noise and of that other image (what an attack that learnt nothing
reaches).

Part 3, PSNR against the DP noise multiplier: Inverting Gradients on the ConvNet against
the update the DP engine releases (clip 1, noise multiplier sigma), beside the plain
update.

    python bench/bench_inversion.py [--quick] [--data fashion-mnist|digits]
        [--art-iterations 1000] [--images 8] [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import os

import _harness as h
import numpy as np
import torch
from torch import nn

from modelsec_fast.data import FASHION_MNIST_DIR, load_dataset
from modelsec_fast.models import build_model

# Each class stops within this much of ART's probability (ART computes in float32).
FLOAT32_SLACK = 1e-6


def _victim(args, device):
    from modelsec_fast.stealing import ThiefTraining, fit_thief

    if args.data == "digits":
        ds = load_dataset("digits", seed=0)
    else:
        ds = load_dataset(args.data, train_size=20000, test_size=2000, seed=0)
    shape = tuple(ds.x_train.shape[1:])
    torch.manual_seed(0)
    victim = build_model("mlp", shape, 10, hidden=(256,))
    fit_thief(victim, ds.x_train, nn.functional.one_hot(ds.y_train, 10).float(),
              ThiefTraining(epochs=args.victim_epochs, min_steps=0), seed=0)
    victim = victim.to(device).eval()
    with torch.no_grad():
        accuracy = float((victim(ds.x_test.to(device)).argmax(1).cpu() == ds.y_test)
                         .double().mean())
    return ds, shape, victim, accuracy


def _class_probabilities(victim, images, classes, device):
    with torch.no_grad():
        p = torch.softmax(victim(torch.as_tensor(images).to(device)).double(), 1)
    return p.gather(1, classes.to(device)[:, None])[:, 0].cpu()


def class_inversion_part(args, report) -> None:
    from modelsec_fast.inversion import ClassInversion

    device = torch.device(args.device)
    ds, shape, victim, accuracy = _victim(args, device)
    classes = torch.arange(args.classes)
    iterations = args.art_iterations
    art = h.optional_import("art", report, "ART's MIFace")
    section_note = (f"{ds.describe()}; victim MLP (256 hidden), held-out accuracy "
                    f"{100 * accuracy:.1f}%; {args.classes} classes from black images, step 0.1, "
                    f"no prior; ART max_iter={iterations} (its default: 10000)")
    ours_same = ClassInversion(victim, steps=iterations, lr=0.1, patience=iterations,
                               threshold=0.0)

    def run_ours(attack, thresholds=None):
        def run():
            result = attack.invert(classes, input_shape=shape, init=0.0,
                                   thresholds=thresholds)
            return result.images, result.steps.double().mean().item()
        return run

    contenders = {}
    target = None
    if art is not None:
        from art.attacks.inference.model_inversion import MIFace
        from art.estimators.classification import PyTorchClassifier

        # ART's class gradient is of the model's output: end in a softmax, so that it is
        # the probability's gradient, the one ClassInversion descends.
        classifier = PyTorchClassifier(
            nn.Sequential(victim, nn.Softmax(dim=1)), loss=nn.CrossEntropyLoss(),
            input_shape=shape, nb_classes=10, clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu")

        def run_art(batch_size):
            def run():
                attack = MIFace(classifier, max_iter=iterations, batch_size=batch_size,
                                verbose=False)
                return attack.infer(None, classes.numpy()), None  # ART does not count
            return run

        first, _ = run_art(1)()  # the objective ART reaches with its defaults
        target = _class_probabilities(victim, first, classes, device)
        ours_to_target = ClassInversion(victim, steps=iterations, lr=0.1)
        contenders["ours (to ART's objective)"] = run_ours(
            ours_to_target, thresholds=1.0 - target + FLOAT32_SLACK)
        contenders["ART MIFace (defaults, batch 1)"] = run_art(1)
        contenders[f"ART MIFace (batch {args.classes})"] = run_art(args.classes)
    contenders["ours (ART's iterations)"] = run_ours(ours_same)
    baseline = "ours (to ART's objective)" if target is not None else "ours (ART's iterations)"
    section = report.section("Class inversion (MI-Face) against ART 1.20's MIFace",
                             baseline=baseline, note=section_note)
    measured = h.measure(contenders, device=device, rounds=args.rounds, warmup=0)
    for row in section.add(measured):
        images, steps = measured.results[row.contender]
        p = _class_probabilities(victim, images, classes, device)
        row.values.update({"worst-class probability": float(p.min()),
                           "mean probability": float(p.mean()), "mean steps": steps})
        if target is not None:
            reached = int((p >= target - FLOAT32_SLACK).sum())
            row.values["classes reached"] = f"{reached}/{len(classes)}"
    if target is not None:
        stopped = int((target < 0.01).sum())
        report.note(f"class inversion: ART's probabilities per class "
                    f"{[round(float(t), 4) for t in target]}; {stopped} of {len(classes)} classes "
                    "below 0.01, where ART's continue condition stops a class")


def _digits_images(n):
    ds = load_dataset("digits", seed=0)
    x, other = [], []
    for c in range(n):
        idx = (ds.y_test == c).nonzero()[:, 0]
        x.append(ds.x_test[idx[0]])
        other.append(ds.x_test[idx[1]])
    return torch.stack(x), torch.stack(other), torch.arange(n)


def _convnet(seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", (1, 8, 8), 10, width=8, hidden=32)


def gradient_inversion_part(args, report) -> None:
    from modelsec_fast.inversion import (DLG, IDLG, AnalyticLinearRecovery, InvertingGradients,
                                         plain_gradient, psnr)

    device = torch.device(args.device)
    x, other, y = _digits_images(args.images)
    cnn = _convnet().to(device)
    torch.manual_seed(0)
    mlp = build_model("mlp", (1, 8, 8), 10, hidden=(256,)).to(device)

    def updates(model):
        return [plain_gradient(model, x[i:i + 1].to(device), y[i:i + 1].to(device))
                for i in range(len(x))]

    attacks = {
        f"DLG, ConvNet ({args.dlg_iterations} L-BFGS it.)":
            (DLG(cnn, iterations=args.dlg_iterations), cnn),
        f"iDLG, ConvNet ({args.dlg_iterations} L-BFGS it.)":
            (IDLG(cnn, iterations=args.dlg_iterations), cnn),
        f"Inverting Gradients, ConvNet ({args.ig_iterations} it., 2 restarts)":
            (InvertingGradients(cnn, iterations=args.ig_iterations, restarts=2), cnn),
        "analytic linear recovery, MLP": (AnalyticLinearRecovery(mlp), mlp),
    }
    contenders = {}
    for name, (attack, model) in attacks.items():
        ups = updates(model)
        contenders[name] = (lambda a=attack, u=ups: a.reconstruct(u, input_shape=(1, 8, 8)))
    measured = h.measure(contenders, device=device, rounds=args.rounds, warmup=0)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    section = report.section(
        "Gradient inversion of one-image updates (digits 8x8, untrained models)",
        note=f"{args.images} test images, one plain update each; ConvNet: small_cnn width 8, "
             "hidden 32; PSNR in dB (100 = exact), mean over the images; a reconstruction "
             f"that learnt nothing: uniform noise {float(psnr(noise, x).mean()):.1f} dB, "
             f"another image of the same class {float(psnr(other, x).mean()):.1f} dB")
    for row in section.add(measured):
        result = measured.results[row.contender]
        scores = result.score(x, y)
        row.values.update({"PSNR": scores.mean_psnr, "SSIM": scores.mean_ssim,
                           "PSNR vs same-class image": float(psnr(result.images, other).mean()),
                           "labels": scores.label_accuracy})


def dp_part(args, report) -> None:
    from modelsec_fast.inversion import InvertingGradients, dp_protection

    device = torch.device(args.device)
    x, other, y = _digits_images(args.images)
    cnn = _convnet().to(device)
    attack = InvertingGradients(cnn, iterations=args.ig_iterations, restarts=2)
    protection = dp_protection(attack, cnn, x.to(device), y.to(device),
                               noise_multipliers=args.sigmas, max_grad_norm=1.0,
                               other_images=other)  # scored on the CPU
    section = report.section(
        "Inverting Gradients against the DP engine's released update (ConvNet, clip 1)",
        note=f"{args.ig_iterations} iterations, 2 restarts; {args.images} images; "
             f"{protection.seconds:.1f} s for all rows; a reconstruction no closer to its "
             "image than to another of its class revealed nothing beyond the class")
    for r in protection.rows:
        section.add_row(labels={"noise multiplier": "plain" if r.noise_multiplier is None
                                else r.noise_multiplier},
                        values={"PSNR": r.mean_psnr, "PSNR vs same-class image": r.mean_psnr_other,
                                "SSIM": r.mean_ssim, "labels": r.label_accuracy})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="bench_inversion.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="class inversion's victim data: fashion-mnist (default if "
                             "installed) or digits (--quick)")
    parser.add_argument("--classes", type=int, default=10, help="classes inverted (default 10)")
    parser.add_argument("--art-iterations", type=int, default=None,
                        help="MIFace's max_iter (default 1000, quick 200; ART's own: 10000)")
    parser.add_argument("--victim-epochs", type=int, default=None, help="default 20 (quick 10)")
    parser.add_argument("--images", type=int, default=None, help="inverted images (8; quick 4)")
    parser.add_argument("--dlg-iterations", type=int, default=None,
                        help="DLG and iDLG (default 300, quick 100)")
    parser.add_argument("--ig-iterations", type=int, default=None,
                        help="Inverting Gradients (default 300, quick 100)")
    parser.add_argument("--sigmas", default=None,
                        help="DP noise multipliers, comma-separated (default 0,0.01,0.1,0.5,1; "
                             "quick 0.1,1)")
    args = h.parse_args(parser, argv, rounds=3, quick_rounds=1, threads=1)
    if args.data is None:
        args.data = "fashion-mnist" if os.path.isdir(FASHION_MNIST_DIR) and not args.quick \
            else "digits"
    if not 1 <= args.classes <= 10:
        parser.error(f"--classes must lie in [1, 10], got {args.classes}")
    if args.images is not None and not 1 <= args.images <= 10:
        parser.error(f"--images must lie in [1, 10] (one per digit class), got {args.images}")
    args.art_iterations = args.art_iterations or (200 if args.quick else 1000)
    args.victim_epochs = args.victim_epochs or (10 if args.quick else 20)
    args.images = args.images or (4 if args.quick else 8)
    args.dlg_iterations = args.dlg_iterations or (100 if args.quick else 300)
    args.ig_iterations = args.ig_iterations or (100 if args.quick else 300)
    args.sigmas = [float(s) for s in (args.sigmas or ("0.1,1" if args.quick
                                                      else "0,0.01,0.1,0.5,1")).split(",")]
    np.random.seed(0)
    report = h.Report("bench_inversion", args)
    class_inversion_part(args, report)
    gradient_inversion_part(args, report)
    dp_part(args, report)
    return report.finish()


if __name__ == "__main__":
    main()
