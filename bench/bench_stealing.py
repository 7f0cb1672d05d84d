"""Model stealing benchmark, side by side with ART 1.20, and PRADA's detection delay.

Part 1, extraction: a victim MLP is trained on one half of the training data; the
attacker's pool is the other half, the held-out set the test data. At each query
budget, a fresh thief (the victim's architecture, one init seed for all) is stolen
by our ``Copycat`` (labels) and ``KnockoffNets`` (random sampling, probabilities),
and by ART's ``CopycatCNN`` and ``KnockoffNets`` (random, ``use_probability=True``;
ART's victim ends in a softmax, so that it answers probabilities as ours does).
Contenders: ours with its defaults (``ThiefTraining()``: 30 epochs, at least 300
steps of 64) against ART with its defaults (10 epochs, batch size 1 to query and
to fit), then both at equal settings (``--epochs`` epochs, 256 to query, 64 to fit).
Reported: the thief's accuracy and fidelity (agreement with the victim) on the
held-out set, wall and CPU time; ratios: ART's defaults to ours with its defaults,
equal settings to ours at equal settings.

Part 2, PRADA (Juuti et al. 2019): its threshold delta is calibrated on the benign
held-out stream (the victim's labels); then one client per row queries up to
``--prada-queries`` with a monitor watching: Jacobian augmentation from 10 seeds per
class (synthetic inputs, the attack PRADA was made for), KnockoffNets' random sampling
of the natural pool (known to evade PRADA: measured, not assumed), and a benign client
of natural images. Reported: detected or not, the detection delay in queries, the last
Shapiro-Wilk W. Gradient and class inversion are in bench_inversion.py.

    python bench/bench_stealing.py [--quick] [--data fashion-mnist|digits]
        [--budgets 250,1000,5000] [--epochs 10] [--prada-queries 2000]
        [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os

import _harness as h
import numpy as np
import torch
from torch import nn

from modelsec_fast.data import FASHION_MNIST_DIR, load_dataset
from modelsec_fast.models import build_model


def _data(args):
    if args.data == "digits":
        ds = load_dataset("digits", seed=0)
    else:
        ds = load_dataset(args.data, train_size=20000, test_size=2000, seed=0)
    order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(0))
    half = len(order) // 2
    return ds, order[:half], order[half:]


def _mlp(shape, seed):
    torch.manual_seed(seed)
    return build_model("mlp", shape, 10, hidden=(256,))


def extraction_part(args, report) -> None:
    from modelsec_fast.stealing import (Copycat, HeldOut, KnockoffNets, ThiefTraining, Victim,
                                        fit_thief)

    ds, private, pool_idx = _data(args)
    shape = tuple(ds.x_train.shape[1:])
    victim = fit_thief(_mlp(shape, 0), ds.x_train[private],
                       nn.functional.one_hot(ds.y_train[private], 10).float(),
                       ThiefTraining(epochs=args.victim_epochs, min_steps=0), seed=0)
    held = HeldOut.from_model(victim, ds.x_test, ds.y_test)
    victim_acc = held.scores(victim)[0]
    pool = ds.x_train[pool_idx]
    budgets = [b for b in args.budgets if b <= len(pool)]
    art = h.optional_import("art", report, "ART's extraction attacks")
    equal = ThiefTraining(epochs=args.epochs, batch_size=64, min_steps=0)

    def ours(kind, budget, training):
        def run():
            v = Victim.from_model(victim, budget=budget,
                                  output="labels" if kind == "copycat" else "probabilities")
            attack = (Copycat(v, _mlp(shape, 1), training=training, query_batch=256, seed=0)
                      if kind == "copycat" else
                      KnockoffNets(v, _mlp(shape, 1), training=training, query_batch=256,
                                   seed=0))
            result = attack.extract(pool, budgets=[budget], held_out=held)
            return result.accuracy, result.fidelity
        return run

    def theirs(kind, budget, query_batch, fit_batch, epochs):
        from art.attacks.extraction import CopycatCNN
        from art.attacks.extraction import KnockoffNets as ArtKnockoff
        from art.estimators.classification import PyTorchClassifier

        def classifier(model):
            return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(),
                                     optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                                     input_shape=shape, nb_classes=10, clip_values=(0.0, 1.0),
                                     device_type="cpu")

        def run():
            np.random.seed(0)
            victim_art = classifier(nn.Sequential(victim, nn.Softmax(dim=1)))
            thief = _mlp(shape, 1)
            if kind == "copycat":
                attack = CopycatCNN(victim_art, batch_size_fit=fit_batch,
                                    batch_size_query=query_batch, nb_epochs=epochs,
                                    nb_stolen=budget)
            else:
                attack = ArtKnockoff(victim_art, batch_size_fit=fit_batch,
                                     batch_size_query=query_batch, nb_epochs=epochs,
                                     nb_stolen=budget, sampling_strategy="random",
                                     use_probability=True, verbose=False)
            attack.extract(pool.numpy(), thieved_classifier=classifier(thief))
            return held.scores(thief.eval())
        return run

    for kind, title in (("copycat", "Copycat (labels)"),
                        ("knockoff", "KnockoffNets (random, probabilities)")):
        mine = f"ours ({args.epochs} epochs)"
        baseline = {"ours": "ours", "ART (defaults)": "ours", mine: mine,
                    f"ART ({args.epochs} epochs, batch 256/64)": mine}
        section = report.section(
            f"{title} against ART 1.20", baseline=baseline,
            note=f"{ds.describe()}; victim MLP (256 hidden) on {len(private)} images, "
                 f"held-out accuracy {100 * victim_acc:.1f}%; pool {len(pool)} images; ours "
                 "queries 256 per batch")
        for budget in budgets:
            contenders = {"ours": ours(kind, budget, ThiefTraining())}
            if art is not None and budget <= args.art_default_max:
                contenders["ART (defaults)"] = theirs(kind, budget, 1, 1, 10)
            contenders[mine] = ours(kind, budget, equal)
            if art is not None:
                contenders[f"ART ({args.epochs} epochs, batch 256/64)"] = theirs(
                    kind, budget, 256, 64, args.epochs)
            measured = h.measure(contenders, device="cpu", rounds=args.rounds, warmup=0)
            for row in section.add(measured, labels={"queries": budget}):
                acc, fid = measured.results[row.contender]
                row.values.update({"accuracy": acc, "fidelity": fid})
        if art is not None and any(b > args.art_default_max for b in budgets):
            report.note(f"ART with its default batch size of 1 ran only up to "
                        f"{args.art_default_max} queries (--art-default-max)")


def prada_part(args, report) -> None:
    from modelsec_fast.defenses import PradaMonitor
    from modelsec_fast.stealing import (JacobianAugmentation, KnockoffNets, ThiefTraining,
                                        Victim, fit_thief)

    ds, private, pool_idx = _data(args)
    shape = tuple(ds.x_train.shape[1:])
    victim = fit_thief(_mlp(shape, 0), ds.x_train[private],
                       nn.functional.one_hot(ds.y_train[private], 10).float(),
                       ThiefTraining(epochs=args.victim_epochs, min_steps=0), seed=0)
    with torch.no_grad():
        held_labels = victim(ds.x_test).argmax(1)
    # delta just below the lowest W of the benign held-out stream (the victim's labels)
    delta = PradaMonitor().calibrate(ds.x_test, held_labels)
    pool = ds.x_train[pool_idx]
    budget = min(args.prada_queries, len(pool))
    seeds = torch.cat([ds.x_test[ds.y_test == c][:10] for c in range(10)])
    rounds = max(1, math.ceil(math.log2(budget / len(seeds)))) + 1

    def stream(kind):
        def run():
            monitor = PradaMonitor(delta=delta)
            output = "labels" if kind == "jacobian" else "probabilities"
            v = Victim.from_model(victim, budget=budget, output=output, monitor=monitor)
            if kind == "jacobian":
                JacobianAugmentation(v, _mlp(shape, 1), rounds=rounds, seed=0,
                                     training=ThiefTraining(epochs=5, min_steps=50)
                                     ).extract(seeds, budget=budget)
            elif kind == "knockoff":
                KnockoffNets(v, _mlp(shape, 1), training=ThiefTraining(epochs=1, min_steps=0),
                             query_batch=256, seed=0).extract(pool, budgets=[budget])
            else:  # a benign client: natural images never seen by the calibration
                v.query(pool[-budget:])
            return monitor.result()
        return run

    contenders = {f"Jacobian augmentation ({len(seeds)} seeds, {rounds} rounds)":
                  stream("jacobian"),
                  "KnockoffNets (random, natural images)": stream("knockoff"),
                  "benign client (natural images)": stream("benign")}
    measured = h.measure(contenders, device="cpu", rounds=1, warmup=0)
    section = report.section(
        "PRADA: detection delay in queries",
        note=f"{ds.describe()}; delta {delta:.4f} calibrated on the {len(ds.x_test)} held-out "
             f"images (benign); up to {budget} queries per client; time: the attack with "
             "PRADA watching every query (KnockoffNets' thief trains 1 epoch)")
    for row in section.add(measured):
        r = measured.results[row.contender]
        row.values.update({"detected": r.detected, "delay (queries)": r.detection_delay,
                           "queries": r.queries, "last W": r.last_w})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="bench_stealing.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="fashion-mnist (default if installed) or digits (--quick)")
    parser.add_argument("--budgets", default=None,
                        help="query budgets, comma-separated (default 250,1000,5000; "
                             "quick 100,400)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="thief epochs at equal settings (default 10, ART's; quick 5)")
    parser.add_argument("--victim-epochs", type=int, default=None, help="default 20 (quick 10)")
    parser.add_argument("--art-default-max", type=int, default=None,
                        help="largest budget ART runs at batch size 1 (default 1000; quick 400)")
    parser.add_argument("--prada-queries", type=int, default=None,
                        help="queries per client PRADA watches (default 2000; quick 600)")
    args = h.parse_args(parser, argv, rounds=3, quick_rounds=1, threads=1)
    if args.data is None:
        args.data = "fashion-mnist" if os.path.isdir(FASHION_MNIST_DIR) and not args.quick \
            else "digits"
    args.budgets = [int(b) for b in (args.budgets or ("100,400" if args.quick
                                                      else "250,1000,5000")).split(",")]
    args.epochs = args.epochs or (5 if args.quick else 10)
    args.victim_epochs = args.victim_epochs or (10 if args.quick else 20)
    args.art_default_max = args.art_default_max or (400 if args.quick else 1000)
    args.prada_queries = args.prada_queries or (600 if args.quick else 2000)
    report = h.Report("bench_stealing", args)
    extraction_part(args, report)
    prada_part(args, report)
    return report.finish()


if __name__ == "__main__":
    main()
