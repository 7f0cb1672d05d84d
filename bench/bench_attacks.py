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

The minimum-norm, score- and decision-based sections share one SmallCNN trained
on 10,000 Fashion-MNIST images (2 epochs; digits if Fashion-MNIST is missing)
and attack its first test images, the same images, budgets and seeds for every
contender; each row reports its time, ratio to ours, and its strength:

5. cw: ``CW`` (binary search over c) against torchattacks ``CW`` (one c, chosen
   for 100% success) and ART ``CarliniL2Method`` (the same c, steps and binary
   steps as ours): success rate and median L2 of the examples found.
6. deepfool: ``DeepFool`` against torchattacks ``DeepFool`` and ART ``DeepFool``
   (top 10 classes): success rate, median L2, and the median L2 over the samples
   both ours and the contender broke ("equal L2").
7. spsa: ``SPSA`` against CleverHans 4 ``spsa`` (its per-sample loop), the same
   eps, iterations, perturbation samples, learning rate and delta: robust
   accuracy and queries per sample.
8. hsj: ``HopSkipJump`` against ART ``HopSkipJump`` (L2, its per-sample loop).
   ART has no query budget: it runs first, its model queries are counted, and
   ours gets their mean per sample as its budget; median L2 and queries. The two
   are timed in separate measurements (the ratio is of their medians). The floor,
   timed interleaved with ours, is the rows our run queried as forwards alone in
   full batches of its ``batch_rows``; at 10 and 50 images (``--hsj-n``).
9. floor: ``robust_accuracy`` with PGD-20 x 5 restarts on 2,000 test images at an
   eps where about a quarter stay robust (default batch_size 500, so the data
   comes in chunks) against torchattacks running each restart on every point and
   its ``MultiAttack``; the floor is the gradient sample-passes our run needed
   (``result.floor_passes``) made as full-batch passes alone; ``x floor`` is our
   ratio to it.

Sections 5-9 run when named (``--sections cw,deepfool,spsa,hsj,floor``; about 10
minutes on 2 quiet cores), so the default run and bench/gpu_check.sh's stage keep
their sizes.  torchattacks, ART and CleverHans are optional: without one its
contenders are left out, with a message.

    python bench/bench_attacks.py [--device cpu|cuda] [--quick] [--json out.json]
        [--sections single,paired,update,eval,cw,deepfool,spsa,hsj,floor]
        [--threads N] [--rounds N]
"""

from __future__ import annotations

import argparse
import math

import _harness as h
import torch
import torch.nn.functional as F
from torch import nn

import modelsec_fast.attacks as ma
from modelsec_fast import ops
from modelsec_fast.attacks.base import frozen_parameters
from modelsec_fast.attacks.minimum_norm import perturbation_norms
from modelsec_fast.evaluate import robust_accuracy
from modelsec_fast.models import OpacusMnistCNN, ResNet18, SmallCNN


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


def _trained_small_cnn(args, device, report, train_size: int, test_size: int):
    """(model, data, source, training time): a SmallCNN trained for 2 epochs (1 with
    --quick) on Fashion-MNIST, or on sklearn digits when that is not installed."""
    from modelsec_fast.data import DataError, load_dataset
    try:
        data = load_dataset("fashion-mnist", train_size=2000 if args.quick else train_size,
                            test_size=test_size, seed=0)
        source = "fashion-mnist"
    except DataError as err:
        report.note(f"Fashion-MNIST missing ({err}); falling back to sklearn digits")
        data = load_dataset("digits", seed=0)
        source = "digits (Fashion-MNIST missing)"
    torch.manual_seed(0)
    model = SmallCNN(data.in_shape, data.num_classes).to(device)
    trained, _ = h.timed(lambda: _train(model, data.x_train, data.y_train,
                                        1 if args.quick else 2, device), device)
    return model, data, source, trained


def bench_eval(args, device, ta, report):
    model, data, source, trained = _trained_small_cnn(args, device, report, 20000, args.eval_n)
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


# ------------------------------------------------------------ minimum norm, queries
_SHARED: dict = {}


def shared_model(args, device, report):
    """(model, test images, test labels, data name): one SmallCNN for sections 5-9, trained once."""
    if "model" not in _SHARED:
        model, data, source, trained = _trained_small_cnn(args, device, report, 10000, 2000)
        report.note(f"sections cw..floor: SmallCNN on {source}, trained in {trained.wall:.1f} s")
        _SHARED.update(model=model, x=data.x_test.to(device), y=data.y_test.to(device),
                       source=source, shape=tuple(data.in_shape), classes=data.num_classes)
    return _SHARED["model"], _SHARED["x"], _SHARED["y"], _SHARED["source"]


def art_classifier(model):
    """ART's PyTorchClassifier on ``model`` (inputs cast to float32: ART mixes in float64)."""
    from art.estimators.classification import PyTorchClassifier

    class Float32(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.float())

    device = next(model.parameters()).device
    return PyTorchClassifier(Float32(model), nn.CrossEntropyLoss(), input_shape=_SHARED["shape"],
                             nb_classes=_SHARED["classes"], clip_values=(0.0, 1.0),
                             device_type="gpu" if device.type == "cuda" else "cpu")


def distances(model, adv, x, y, norm="L2"):
    """Per-sample distances (inf where the example does not fool the model), clean-correct mask."""
    adv = torch.as_tensor(adv, device=x.device, dtype=x.dtype)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(adv).argmax(1) != y
    d = perturbation_norms(adv, x, norm).double()
    return torch.where(fooled, d, torch.full_like(d, math.inf)), correct


def strength(d, correct, reference=None) -> dict:
    """Success rate and median distance over the clean-correct samples (and over those the
    reference also broke)."""
    found = d[correct & torch.isfinite(d)]
    out = {"success": float(torch.isfinite(d[correct]).double().mean()),
           "median": float(found.median()) if found.numel() else math.nan}
    if reference is not None:
        both = correct & torch.isfinite(d) & torch.isfinite(reference)
        out["median, both found"] = float(d[both].median()) if bool(both.any()) else math.nan
    return out


def _add_strength_rows(section, m, labels, figures):
    for row in section.add(m, labels=labels):
        row.values.update(figures.get(row.contender, {}))


def bench_cw(args, device, ta, has_art, report):
    model, x, y, source = shared_model(args, device, report)
    x, y = x[:args.cw_n], y[:args.cw_n]
    steps, bss, lr, c = args.cw_steps, args.cw_binary_steps, 0.01, 1.0
    contenders = {"ours": lambda: ma.CW(model, c=c, steps=steps, lr=lr,
                                        binary_search_steps=bss)(x, y)}
    if ta is not None:
        contenders["torchattacks"] = lambda: ta.CW(model, c=args.cw_ta_c, steps=steps, lr=lr)(x, y)
    if has_art:
        from art.attacks.evasion import CarliniL2Method
        art = CarliniL2Method(art_classifier(model), learning_rate=lr, binary_search_steps=bss,
                              max_iter=steps, initial_const=c, batch_size=len(y), verbose=False)
        contenders["ART"] = lambda: torch.as_tensor(art.generate(x.cpu().numpy()))
    m = h.measure(contenders, device=device, rounds=args.slow_rounds, warmup=0)
    figures = {name: strength(*distances(model, adv, x, y)) for name, adv in m.results.items()}
    section = report.section(
        "CW (L2): median L2 at its success rate", baseline="ours",
        note=f"{source}, first {len(y)} test images; ours and ART: c from {c:g}, {bss} binary "
             f"steps of {steps} Adam steps (lr {lr}); torchattacks: one c = {args.cw_ta_c:g}, "
             f"{steps} steps (no binary search); median over the examples each found")
    _add_strength_rows(section, m, {"images": len(y)}, figures)
    print("  cw: done", flush=True)


def bench_deepfool(args, device, ta, has_art, report):
    model, x, y, source = shared_model(args, device, report)
    x, y = x[:args.deepfool_n], y[:args.deepfool_n]
    contenders = {"ours": lambda: ma.DeepFool(model, steps=50, overshoot=0.02)(x, y)}
    if ta is not None:
        contenders["torchattacks"] = lambda: ta.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    if has_art:
        from art.attacks.evasion import DeepFool as ArtDeepFool
        art = ArtDeepFool(art_classifier(model), max_iter=50, epsilon=0.02, nb_grads=10,
                          batch_size=len(y), verbose=False)
        contenders["ART"] = lambda: torch.as_tensor(art.generate(x.cpu().numpy()))
    m = h.measure(contenders, device=device, rounds=args.rounds_mn, warmup=0)
    ours_d, _ = distances(model, m.results["ours"], x, y)
    figures = {name: strength(*distances(model, adv, x, y), reference=ours_d)
               for name, adv in m.results.items()}
    section = report.section(
        "DeepFool (L2): time and median L2", baseline="ours",
        note=f"{source}, first {len(y)} test images, 50 steps, overshoot 0.02, every contender; "
             "'median, both found': over the samples both ours and the contender broke")
    _add_strength_rows(section, m, {"images": len(y)}, figures)
    print("  deepfool: done", flush=True)


def bench_spsa(args, device, report):
    model, x, y, source = shared_model(args, device, report)
    x, y = x[:args.spsa_n], y[:args.spsa_n]
    eps, it, n, lr, delta = args.spsa_eps, args.spsa_iter, args.spsa_samples, 0.01, 0.01
    ours = ma.SPSA(model, eps=eps, nb_iter=it, nb_sample=n, lr=lr, delta=delta, seed=0)
    contenders = {"ours": lambda: ours(x, y)}
    try:
        from cleverhans.torch.attacks.spsa import spsa
    except ImportError as err:
        report.skip("CleverHans spsa", f"cleverhans is not installed ({err})")
    else:
        def cleverhans():
            torch.manual_seed(0)
            return spsa(model, x, eps, it, clip_min=0.0, clip_max=1.0, y=y, learning_rate=lr,
                        delta=delta, spsa_samples=n, spsa_iters=1, sanity_checks=False)
        contenders["CleverHans"] = cleverhans
    m = h.measure(contenders, device=device, rounds=args.rounds_mn, warmup=0)
    section = report.section(
        f"SPSA (L-inf eps {eps:g}): robust accuracy at equal queries", baseline="ours",
        note=f"{source}, first {len(y)} test images; {it} iterations of {n} +-delta probe "
             f"pairs, Adam lr {lr}, delta {delta}; queries per sample: CleverHans "
             f"{it} x {2 * n + 1} (each iteration ends with a loss query), ours at most "
             f"1 + {it} x {2 * n + 1} (a sample stops once adversarial). CleverHans 4's torch "
             "spsa passes x, not x + perturbation, to its gradient estimate: every estimate is "
             "taken at model(2x + delta v)")
    for row in section.add(m, labels={"images": len(y)}):
        with torch.no_grad():
            row.values["robust accuracy"] = float((model(m.results[row.contender]).argmax(1) == y)
                                                  .double().mean())
        row.values["queries/sample"] = (float(ours.queries.double().mean())
                                        if row.contender == "ours" else it * (2 * n + 1))
    print("  spsa: done", flush=True)


def hsj_floor(model, x, rows: int, batch: int):
    """The forwards alone: ``rows`` model rows (the queries of a run) in forwards of ``batch``."""
    full = x.repeat((math.ceil(batch / len(x)),) + (1,) * (x.dim() - 1))[:batch]

    def run():
        with torch.no_grad():
            for lo in range(0, rows, batch):
                model(full[:min(batch, rows - lo)])
    return run


def bench_hsj(args, device, has_art, report):
    model, x_all, y_all, source = shared_model(args, device, report)
    section = report.section(
        "HopSkipJump (L2): median L2 at equal queries", baseline=None,
        note=f"{source}, first test images; ART: {args.hsj_iter} iterations, "
             "init_eval 100, max_eval 1000, its queries counted; ours: max_queries = ART's mean "
             "queries per sample; floor: the model rows our run queried, as forwards of "
             "batch_rows rows alone, interleaved with ours ('x floor': ours / floor "
             "per round); ART in separate measurements, 'x ours' is the ratio of medians")
    for n in (int(v) for v in str(args.hsj_n).split(",")):
        x, y = x_all[:n], y_all[:n]
        queries = args.hsj_queries
        art_row = None
        if has_art:
            from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
            art = ArtHopSkipJump(art_classifier(model), norm=2, max_iter=args.hsj_iter,
                                 max_eval=1000, init_eval=100, init_size=100, batch_size=64,
                                 verbose=False)
            rows = [0]

            def count(_module, a):
                rows[0] += a[0].shape[0]

            def art_call():
                rows[0] = 0
                handle = model.register_forward_pre_hook(count)
                try:
                    return torch.as_tensor(art.generate(x.cpu().numpy(), y=y.cpu().numpy()))
                finally:
                    handle.remove()
            m_art = h.measure({"ART": art_call}, device=device, rounds=args.slow_rounds, warmup=0)
            queries = max(1, round(rows[0] / len(y)))
            art_row, = section.add(m_art, labels={"images": len(y)})
            art_row.values.update(strength(*distances(model, m_art.results["ART"], x, y)))
            art_row.values["queries/sample"] = rows[0] / len(y)
        ours = ma.HopSkipJump(model, norm="L2", max_queries=queries, seed=0)
        ours(x, y)  # the rows it queries (the same seed, the same run)
        spent = int(ours.queries.sum())
        m = h.measure({"ours": lambda: ours(x, y),
                       "floor": hsj_floor(model, x, spent, ours.batch_rows)},
                      device=device, rounds=args.rounds_mn, warmup=0)
        ours_row, floor_row = section.add(m, labels={"images": len(y)}, series=["ours", "floor"])
        ours_row.values.update(strength(*distances(model, m.results["ours"], x, y)))
        ours_row.values["queries/sample"] = float(ours.queries.double().mean())
        ours_row.values["x floor"] = m.ratio("ours", "floor").median
        ours_row.values["CPU x floor"] = m.ratio("ours", "floor", "cpu").median
        floor_row.values["queries/sample"] = spent / len(y)
        if art_row is not None:
            art_row.values["x ours"] = art_row.wall.median / ours_row.wall.median
            art_row.values["x floor"] = art_row.wall.median / floor_row.wall.median
            section.rows.remove(art_row)
            section.rows.append(art_row)
    print("  hsj: done", flush=True)


def bench_floor(args, device, ta, report):
    model, x, y, source = shared_model(args, device, report)
    x, y = x[:args.floor_n], y[:args.floor_n]
    eps, restarts, steps, batch = args.floor_eps, args.floor_restarts, 20, args.floor_batch

    def ours():
        torch.manual_seed(1)
        return robust_accuracy(model, (x, y), [ma.PGD(model, eps=eps, alpha=eps / 4, steps=steps)],
                               restarts=restarts, batch_size=batch, progress=False,
                               check_masking=False)

    first = ours()  # the passes and the floor of the timed calls (the same seed, the same run)
    full = min(batch, len(y))
    floor_calls = math.ceil(first.floor_passes / full)
    contenders = {"ours": ours,
                  "floor": floor_passes(model, x[:full], y[:full], floor_calls)}
    if ta is not None:
        def every_point():
            torch.manual_seed(1)
            with torch.no_grad():
                robust = model(x).argmax(1) == y
            for _ in range(restarts):
                adv = ta.PGD(model, eps=eps, alpha=eps / 4, steps=steps)(x, y)
                with torch.no_grad():
                    robust &= model(adv).argmax(1) == y
            return float(robust.double().mean())

        def multi():
            torch.manual_seed(1)
            attack = ta.MultiAttack([ta.PGD(model, eps=eps, alpha=eps / 4, steps=steps)
                                     for _ in range(restarts)])
            with torch.no_grad():
                clean = model(x).argmax(1) == y
            adv = attack(x, y)
            with torch.no_grad():
                return float(((model(adv).argmax(1) == y) & clean).double().mean())
        contenders["torchattacks (every point)"] = every_point
        contenders["torchattacks MultiAttack"] = multi
    m = h.measure(contenders, device=device, rounds=args.floor_rounds, warmup=0)
    baseline = "torchattacks (every point)" if ta is not None else "ours"
    section = report.section(
        f"robust accuracy at its floor: PGD-{steps} x {restarts} restarts, eps {eps:g}",
        baseline=baseline,
        note=f"{source}, {len(y)} test images, batch_size {batch}; floor: the "
             f"{first.floor_passes} gradient sample-passes our run needed, as {floor_calls} "
             f"passes of {full}; torchattacks (every point): each restart a PGD call on all "
             "images, then the per-sample worst case; passes: gradient sample-passes spent")
    for row in section.add(m, labels={"images": len(y)}):
        result = m.results[row.contender]
        if row.contender == "ours":
            row.values.update({"robust accuracy": result.robust_accuracy,
                               "passes": result.sample_passes, "floor passes": result.floor_passes,
                               "forward-only rows": result.forward_passes,
                               "x floor": m.ratio("ours", "floor").median,
                               "CPU x floor": m.ratio("ours", "floor", "cpu").median})
        elif row.contender == "floor":
            row.values["passes"] = floor_calls * full
        else:
            row.values["robust accuracy"] = result
            if row.contender == "torchattacks (every point)":
                row.values["passes"] = restarts * steps * len(y)
    print("  floor: done", flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bench_attacks.py", description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=None,
                   help="default single,update,eval (--quick: and paired); the others "
                        "(cw,deepfool,spsa,hsj,floor) run when named")
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
    p.add_argument("--rounds-mn", type=int, default=3,
                   help="deepfool, spsa, hsj (ours): timed rounds")
    p.add_argument("--slow-rounds", type=int, default=1,
                   help="cw, hsj (ART): timed rounds of the sections whose anchors take minutes")
    p.add_argument("--cw-n", type=int, default=10)
    p.add_argument("--cw-steps", type=int, default=50)
    p.add_argument("--cw-binary-steps", type=int, default=5)
    p.add_argument("--cw-ta-c", type=float, default=10.0,
                   help="torchattacks' c (its CW has no binary search: one that reaches 100%%)")
    p.add_argument("--deepfool-n", type=int, default=20)
    p.add_argument("--spsa-n", type=int, default=32)
    p.add_argument("--spsa-eps", type=float, default=0.05)
    p.add_argument("--spsa-iter", type=int, default=20)
    p.add_argument("--spsa-samples", type=int, default=64)
    p.add_argument("--hsj-n", default="10,50", help="hsj: image counts, comma-separated")
    p.add_argument("--hsj-iter", type=int, default=10, help="ART's max_iter")
    p.add_argument("--hsj-queries", type=int, default=2000,
                   help="ours' budget when ART is missing")
    p.add_argument("--floor-n", type=int, default=2000)
    p.add_argument("--floor-eps", type=float, default=0.06)
    p.add_argument("--floor-restarts", type=int, default=5)
    p.add_argument("--floor-batch", type=int, default=500)
    p.add_argument("--floor-rounds", type=int, default=3)
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
        args.cw_n, args.cw_steps, args.cw_binary_steps = 2, 2, 1
        args.deepfool_n, args.spsa_n, args.spsa_iter, args.spsa_samples = 3, 3, 2, 8
        args.hsj_n, args.hsj_iter = "2", 1
        args.floor_n, args.floor_restarts, args.floor_batch = 100, 2, 50
        args.rounds_mn, args.slow_rounds, args.floor_rounds = 1, 1, 1
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
    has_art = h.optional_import("art", report, "the ART contenders") is not None \
        if {"cw", "deepfool", "hsj"} & set(sections) else False
    if "cw" in sections:
        bench_cw(args, device, ta, has_art, report)
    if "deepfool" in sections:
        bench_deepfool(args, device, ta, has_art, report)
    if "spsa" in sections:
        bench_spsa(args, device, report)
    if "hsj" in sections:
        bench_hsj(args, device, has_art, report)
    if "floor" in sections:
        bench_floor(args, device, ta, report)
    return report.finish()


if __name__ == "__main__":
    main()
