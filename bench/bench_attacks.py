"""Benchmark of modelsec_fast.attacks against torchattacks 3.5.1, side by side.

Four sections, all in one process, timed by ``bench/_harness.py``:

1. single: PGD-10, PGDL2-10 and APGD-100 on the Opacus MNIST CNN (batch 1024)
   and a CIFAR ResNet-18 (batch 128), random weights; labels are the model's own
   predictions so every sample is attacked by both libraries. The baseline, the
   floor, is the same number of forward + input-gradient passes with the
   parameters frozen (what any attack must pay); ratio - 1 is the overhead. A
   second floor replays the iterates our attack actually visits (see
   ``replayed_floor``); ``x floor_replay`` is our ratio to it.
2. paired: the same attacks with the floor interleaved pass by pass
   (``PairedFloor``), so that the host's drift cannot favour either side; it is
   the measure to use where one call takes minutes (ResNet-18 APGD-100 at b=128).
   Each library's ratio is to its own interleaved floor. Calls repeat until each
   library's calls (attack and floor) add up to ``--paired-seconds``.
3. update: the L-inf PGD update alone at 256x3x224x224: torchattacks' eager
   three lines against ``ops.sign_step_``, and a ``copy_`` of the same tensor.
4. eval: robust accuracy (clean, then PGD-20 with 5 restarts, eps 0.1) on 2,000
   Fashion-MNIST test images with a freshly trained CNN: ``robust_accuracy``
   against torchattacks' ``MultiAttack`` of 5 PGDs. Falls back to sklearn digits
   (and says so) if Fashion-MNIST is missing.

torchattacks is optional: without it its contenders are left out, with a message.

    python bench/bench_attacks.py [--device cpu|cuda] [--quick] [--json out.json]
        [--sections single,paired,update,eval] [--threads N] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib

import _harness as h
import torch
import torch.nn.functional as F
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast import ops
from modelsec_fast.evaluate import robust_accuracy
from modelsec_fast.models import OpacusMnistCNN, ResNet18, SmallCNN


@contextlib.contextmanager
def frozen_parameters(model: nn.Module):
    """Parameters' requires_grad off, restored on exit: a pass then builds no weight gradients."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def gradient_pass(model, x, y):
    """One floor pass: forward and input gradient at ``x`` (a leaf that requires grad)."""
    torch.autograd.grad(F.cross_entropy(model(x), y), x)


def is_attack_pass(inp) -> bool:
    """Whether a model input is one of an attack's gradient passes (seen from a pre-hook)."""
    return torch.is_grad_enabled() and inp.requires_grad


def floor_passes(model, x, y, passes):
    """``passes`` forward + input-gradient passes, parameters frozen."""
    def run():
        with frozen_parameters(model):
            for _ in range(passes):
                gradient_pass(model, x.detach().requires_grad_(True), y)
    return run


def replayed_floor(model, attack, x, y):
    """The same forward + input-gradient passes, over the very iterates ``attack`` visits.

    The plain floor repeats the clean batch; the attack's inputs are fresh tensors each
    step, with their own allocations and activation values. Replaying them isolates what
    the attack adds on top of its passes (update, projection, bookkeeping).
    """
    iterates = []

    def record(_module, args):
        if is_attack_pass(args[0]):
            iterates.append(args[0].detach().clone())

    handle = model.register_forward_pre_hook(record)
    try:
        attack(x, y)
    finally:
        handle.remove()

    def run():
        with frozen_parameters(model):
            for xi in iterates:
                gradient_pass(model, xi.clone().requires_grad_(True), y)
    return run


class PairedFloor:
    """Interleave one floor pass before each of an attack's gradient passes.

    A forward pre-hook catches every grad-enabled forward whose input requires
    grad (the attack's gradient passes) and first runs one floor pass, frozen
    parameters, on a copy of that very iterate. Floor and attack then alternate
    pass by pass, so the host's drift hits both alike, which timing the two one
    after the other cannot promise when each takes minutes. The attack's own time
    is its call's time minus the inserted passes; everything it does besides its
    passes (the clean forward, the random start, the updates, the bookkeeping)
    counts as overhead. ``marks`` holds each floor pass's (start, end) clock
    readings (:class:`_harness.Sample`) of the last call.
    """

    def __init__(self, model, device):
        self.model, self.device = model, device
        self._inside = False
        self.marks: list[tuple[h.Sample, h.Sample]] = []
        self.passes: dict[str, int] = {}  # label -> gradient passes in its last call

    def _floor_pass(self, _module, args):
        inp = args[0]
        if self._inside or not is_attack_pass(inp):
            return
        self._inside = True
        try:
            h.sync(self.device)
            start = h.Sample.now()
            with frozen_parameters(self.model):
                labels = torch.zeros(inp.shape[0], dtype=torch.long, device=inp.device)
                gradient_pass(self.model, inp.detach().clone().requires_grad_(True), labels)
            h.sync(self.device)
            self.marks.append((start, h.Sample.now()))
        finally:
            self._inside = False

    def call(self, label: str, attack_call) -> h.Parts:
        """Times one ``attack_call()``: parts ``label`` (the attack's own) and ``label floor``."""
        self.marks = []
        handle = self.model.register_forward_pre_hook(self._floor_pass)
        try:
            total, _ = h.timed(attack_call, self.device)
        finally:
            handle.remove()
        floor = sum((end - start for start, end in self.marks), h.Sample.zero())
        self.passes[label] = len(self.marks)
        return h.Parts({label: total - floor, f"{label} floor": floor})


def single_cases(args, device, ta):
    """(net name, model, batch, x, y, cases) for the single-attack sections.

    A case is (name, passes, our attack factory, torchattacks' factory or None).
    """
    steps = 2 if args.quick else 10
    steps_apgd = 2 if args.quick else args.apgd_steps
    nets = {"mnist": ("MNIST CNN", OpacusMnistCNN((1, 28, 28)), (1, 28, 28), args.mnist_batch),
            "resnet": ("ResNet-18", ResNet18((3, 32, 32)), (3, 32, 32), args.resnet_batch)}
    for key in args.nets.split(","):
        net_name, model, shape, batch = nets[key]
        model = model.to(device).eval()
        torch.manual_seed(0)
        x = torch.rand(batch, *shape, device=device)
        with torch.no_grad():
            y = model(x).argmax(1)  # every sample "correct": both libraries attack all
        cases = {
            "pgd": (f"PGD-{steps}", steps,
                    lambda: ma.PGD(model, eps=8 / 255, alpha=2 / 255, steps=steps),
                    ta and (lambda: ta.PGD(model, eps=8 / 255, alpha=2 / 255, steps=steps))),
            "pgdl2": (f"PGDL2-{steps}", steps,
                      lambda: ma.PGDL2(model, eps=1.0, alpha=0.2, steps=steps),
                      ta and (lambda: ta.PGDL2(model, eps=1.0, alpha=0.2, steps=steps))),
            "apgd": (f"APGD-{steps_apgd}", steps_apgd + 1,
                     lambda: ma.APGD(model, eps=8 / 255, steps=steps_apgd),
                     ta and (lambda: ta.APGD(model, eps=8 / 255, steps=steps_apgd))),
        }
        yield net_name, model, batch, x, y, [cases[k] for k in args.attacks.split(",")]


def bench_single(args, device, ta, report):
    section = report.section(
        "single attacks against the floor", baseline="floor",
        note="floor: the same forward + input-gradient passes on the clean batch; floor_replay: "
             "the passes over our attack's own iterates; x floor_replay: ours against it")
    for net_name, model, batch, x, y, cases in single_cases(args, device, ta):
        for name, passes, ours_atk, theirs_atk in cases:
            ours = ours_atk()
            contenders = {"floor": floor_passes(model, x, y, passes),
                          "floor_replay": replayed_floor(model, ours, x, y),
                          "ours": lambda: ours(x, y)}
            if theirs_atk is not None:
                theirs = theirs_atk()
                contenders["torchattacks"] = lambda: theirs(x, y)
            m = h.measure(contenders, device=device, rounds=args.rounds, warmup=args.warmup)
            for row in section.add(m, labels={"model": net_name, "batch": batch, "attack": name}):
                if row.contender == "ours":
                    row.values["x floor_replay"] = m.ratio("ours", "floor_replay").median
            print(f"  single {net_name} {name}: done", flush=True)


def bench_paired(args, device, ta, report):
    section = report.section(
        "single attacks against their interleaved floor",
        baseline={"ours": "ours floor", "torchattacks": "torchattacks floor"},
        note="each library's ratio is to its own floor passes, interleaved pass by pass "
             "(PairedFloor); a round is one call")
    for net_name, model, batch, x, y, cases in single_cases(args, device, ta):
        paired = PairedFloor(model, device)
        floor_passes(model, x, y, 1)()  # warm-up; each attack pass follows a floor pass anyway
        for name, _passes, ours_atk, theirs_atk in cases:
            attacks = {"ours": ours_atk()}
            if theirs_atk is not None:
                attacks["torchattacks"] = theirs_atk()
            contenders = {
                label: (lambda label=label, atk=atk: paired.call(label, lambda: atk(x, y)))
                for label, atk in attacks.items()}
            m = h.measure(contenders, device=device, rounds=1, warmup=0,
                          min_time_s=args.paired_seconds)
            for row in section.add(m, labels={"model": net_name, "batch": batch, "attack": name}):
                row.values["passes"] = paired.passes[row.contender.removesuffix(" floor")]
            print(f"  paired {net_name} {name}: done", flush=True)


def bench_update(args, device, report):
    shape = (16, 3, 224, 224) if args.quick else (256, 3, 224, 224)
    torch.manual_seed(0)
    images = torch.rand(shape, device=device)
    grad = torch.randn(shape, device=device)
    adv = images.clone()
    eps, alpha = 8 / 255, 2 / 255

    def eager():  # torchattacks PGD's update, verbatim semantics
        a = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(a - images, min=-eps, max=eps)
        return torch.clamp(images + delta, min=0, max=1).detach()

    m = h.measure({"ours": lambda: ops.sign_step_(adv, grad, images, alpha, eps),
                   "torchattacks": eager, "copy_": lambda: adv.copy_(images)},
                  device=device, rounds=args.rounds, warmup=args.warmup)
    section = report.section(
        "L-inf PGD update alone", baseline="torchattacks",
        note=f"ops.sign_step_ (native={ops.native_available()}) against torchattacks' eager "
             "three lines (no package needed) and a copy_ of the tensor")
    for row in section.add(m, labels={"shape": "x".join(map(str, shape))}):
        row.values["x copy_"] = m.ratio(row.contender, "copy_").median


def _train(model, x, y, epochs, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 128):
            idx = order[i:i + 128]
            opt.zero_grad()
            loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
    return model.eval()


def bench_eval(args, device, ta, report):
    from modelsec_fast.data import DataError, load_dataset
    try:
        data = load_dataset("fashion-mnist", train_size=2000 if args.quick else 20000,
                            test_size=args.eval_n, seed=0)
        source = "fashion-mnist"
    except DataError as err:
        report.note(f"Fashion-MNIST missing ({err}); falling back to sklearn digits")
        data = load_dataset("digits", seed=0)
        source = "digits (Fashion-MNIST missing)"
    torch.manual_seed(0)
    model = SmallCNN(data.in_shape, data.num_classes).to(device)
    trained, _ = h.timed(lambda: _train(model, data.x_train, data.y_train,
                                        1 if args.quick else 2, device), device)
    x, y = data.x_test[:args.eval_n].to(device), data.y_test[:args.eval_n].to(device)
    restarts, eps = args.eval_restarts, 0.1

    def ours():
        torch.manual_seed(1)
        r = robust_accuracy(model, (x, y), [ma.PGD(model, eps=eps, alpha=eps / 4, steps=20)],
                            restarts=restarts, batch_size=len(y), progress=False,
                            check_masking=False)
        return r.robust_accuracy

    def theirs():
        torch.manual_seed(1)
        multi = ta.MultiAttack([ta.PGD(model, eps=eps, alpha=eps / 4, steps=20)
                                for _ in range(restarts)])
        with torch.no_grad():
            clean = model(x).argmax(1) == y  # clean pass, as robust_accuracy does
        adv = multi(x, y)
        with torch.no_grad():
            return float(((model(adv).argmax(1) == y) & clean).float().mean())

    contenders = {"ours": ours}
    if ta is not None:
        contenders["torchattacks"] = theirs
    m = h.measure(contenders, device=device, rounds=args.eval_rounds, warmup=0)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    section = report.section(
        f"robust accuracy, clean + PGD-20 x {restarts} restarts, eps {eps}",
        baseline="torchattacks",
        note=f"{source}, {len(y)} test images, SmallCNN trained in {trained.wall:.1f} s, "
             f"clean accuracy {clean:.3f}; torchattacks: MultiAttack of {restarts} PGDs")
    for row in section.add(m, labels={"data": source, "n": len(y)}):
        row.values["robust accuracy"] = m.results[row.contender]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench_attacks.py", description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=None,
                   help="default single,update,eval (--quick: all four)")
    p.add_argument("--mnist-batch", type=int, default=None)
    p.add_argument("--resnet-batch", type=int, default=None)
    p.add_argument("--apgd-steps", type=int, default=100)
    p.add_argument("--nets", default="mnist,resnet", help="single, paired: mnist, resnet or both")
    p.add_argument("--attacks", default="pgd,pgdl2,apgd", help="single, paired: which attacks")
    p.add_argument("--paired-seconds", type=float, default=40.0,
                   help="paired: repeat the calls until each library's add up to this")
    p.add_argument("--warmup", type=int, default=1, help="single, update: untimed calls first")
    p.add_argument("--eval-n", type=int, default=None)
    p.add_argument("--eval-restarts", type=int, default=5)
    p.add_argument("--eval-rounds", type=int, default=2)
    args = h.parse_args(p, argv, rounds=5, quick_rounds=1)
    device = torch.device(args.device)
    args.sections = args.sections or ("single,paired,update,eval" if args.quick
                                      else "single,update,eval")
    args.mnist_batch = args.mnist_batch or (16 if args.quick else 1024)
    args.resnet_batch = args.resnet_batch or (1 if args.quick else 128)
    args.eval_n = args.eval_n or (100 if args.quick else 2000)
    if args.quick:
        args.eval_restarts, args.eval_rounds = min(args.eval_restarts, 2), 1
        args.paired_seconds, args.warmup = 0.0, 0
    report = h.Report("bench_attacks", args)
    ta = h.optional_import("torchattacks", report, "the torchattacks contenders")
    sections = args.sections.split(",")
    if "single" in sections:
        bench_single(args, device, ta, report)
    if "paired" in sections:
        bench_paired(args, device, ta, report)
    if "update" in sections:
        bench_update(args, device, report)
    if "eval" in sections:
        bench_eval(args, device, ta, report)
    return report.finish()


if __name__ == "__main__":
    main()
