"""DP-SGD step time and memory: non-private vs Opacus (hooks, ghost, ew) vs ours, and the floor.

Side by side in one process, one measurement per model: every configuration's
training step is a contender of ``bench/_harness.py`` (interleaved, rotated,
canary-checked rounds; ``--steps`` steps per sample). Reports the median wall-clock
step time, its IQR and its ratio to the non-private step, the same for the process
CPU time, and (with ``--memory``) the peak-RSS increase of a short training run,
measured in one fresh subprocess per configuration (torch has no CPU memory API).
Opacus is optional: without it its configurations are skipped, with a message.

The floor (config ``floor``, ``bench/_dp_floor.py``): the non-private step of the
architecture the private run trains (after ``ModuleValidator.fix``, what
``nonprivate_fixed`` trains) plus the least per-sample work flat clipping needs there:
each trainable layer's per-sample squared gradient norms by its cheapest method (Linear:
min(ghost norm <AA^T, GG^T>, materialised per-sample gradient norm), or ||a||^2 ||g||^2
for one position; convolutions: the cheapest of the fused norms-only kernel, materialised
per-sample gradients and the ghost norm; embeddings, norm layers, biases: their rules'
formulas), the clip factors, and the weighted sums sum_i c_i g_i, per weight by the cheaper
of book-keeping (it replaces the non-private weight gradient: only the scaling of the
output gradients is extra) and reuse of kept per-sample gradients (c @ per-sample; the
non-private step then skips that weight gradient). The clipping work runs on activations
and output gradients captured once, outside the timed step; plus the Gaussian noise, one
``ops.add_noise_`` over every trainable gradient (any DP-SGD step draws it). Its row
``floor`` is the whole step, ``floor_clip`` the clipping work alone; column ``x floor``
is each private step's per-round ratio to the floor (the issue's "within 10% of its
floor" target). Approximations (generic-path layers, tied parameters) are printed per
model.

    python bench/bench_dpsgd.py --quick
    python bench/bench_dpsgd.py --memory --json bench/out/dpsgd.json
    python bench/bench_dpsgd.py --device cuda --models mlp,mnist_cnn
    python bench/bench_dpsgd.py --models resnet18,vit,bert,gpt2,gpt2_lora,lstm_text
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import warnings
from unittest import mock

import _harness as h
import torch
from torch import nn

import modelsec_fast.ops as ops

# nonprivate_fixed: the non-private step of the architecture the private runs train, after
# ModuleValidator.fix (GroupNorm for BatchNorm, DPLSTM's unrolled steps for nn.LSTM's fused
# kernel); only where fix() changes the model. ours_low_memory: the engine's low-memory mode
# (grad_sample_mode="ghost"). ours_unfused (opt in with --configs): ours with the conv rule's
# fused native kernel switched off, to show what that kernel brings.
# floor: the non-private step of the fixed model plus the least clipping work
# (bench/_dp_floor.py); it gives two series, floor and floor_clip (the clipping work alone).
CONFIGS = ("nonprivate", "nonprivate_fixed", "opacus_hooks", "opacus_ghost", "opacus_ew", "ours",
           "ours_low_memory", "floor")
FLOOR_SERIES = ("floor", "floor_clip")
# the rows compared with the floor in column "x floor"
PRIVATE_CONFIGS = ("opacus_hooks", "opacus_ghost", "opacus_ew", "ours", "ours_low_memory",
                   "ours_unfused")
OPT_IN_CONFIGS = ("ours_unfused",)
# the real models of tests/privacy/real_models.py (torchvision, timm, transformers, peft:
# scripts/install.sh); opt in with --models
REAL_MODELS = ("resnet18", "vit", "bert", "gpt2", "gpt2_lora", "lstm_text")
MODELS = ("mlp", "mnist_cnn", "cifar_gn", "transformer") + REAL_MODELS
DEFAULT_MODELS = ("mlp", "mnist_cnn", "cifar_gn", "transformer")
BATCH = {"mlp": 256, "mnist_cnn": 256, "cifar_gn": 128, "transformer": 32, "resnet18": 32,
         "vit": 16, "bert": 16, "gpt2": 16, "gpt2_lora": 16, "lstm_text": 32}
QUICK_BATCH = {"mlp": 16, "mnist_cnn": 16, "cifar_gn": 8, "transformer": 4, "resnet18": 4,
               "vit": 4, "bert": 4, "gpt2": 4, "gpt2_lora": 4, "lstm_text": 4}
# BERT / GPT-2: 2 layers of width 128 over 64 tokens (the builders' other defaults)
REAL_OPTIONS = {"bert": dict(seq=64, hidden=128), "gpt2": dict(seq=64, hidden=128),
                "gpt2_lora": dict(seq=64, hidden=128)}


def build_real(name: str, batch: int):
    """(model, batch dict, loss_fn(model, batch)) of a real model (tests/privacy/real_models.py)."""
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "privacy"))
    import real_models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return real_models.MODELS[name](batch=batch, **REAL_OPTIONS.get(name, {}))


def build_model(name: str) -> nn.Module:
    from modelsec_fast.models import (MLP, CifarGroupNormCNN, OpacusMnistCNN,
                                      TransformerEncoderClassifier)
    if name == "mlp":
        return MLP((1, 28, 28), 10, hidden=(512, 256))
    if name == "mnist_cnn":
        return OpacusMnistCNN((1, 28, 28), 10)
    if name == "cifar_gn":
        return CifarGroupNormCNN((3, 32, 32), 10)
    if name == "transformer":
        return TransformerEncoderClassifier((128,), 2)  # embedding + 2 layers, seq 128
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def make_batch(name: str, batch: int, device):
    g = torch.Generator().manual_seed(0)
    if name == "transformer":
        x = torch.randint(0, 10000, (batch, 128), generator=g)
        y = torch.randint(0, 2, (batch,), generator=g)
    else:
        shape = (1, 28, 28) if name in ("mlp", "mnist_cnn") else (3, 32, 32)
        x = torch.rand((batch,) + shape, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
    return x.to(device), y.to(device)


def _loader(x, y, batch):
    from torch.utils.data import DataLoader, TensorDataset
    return DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch)


def _without_fused_conv(step):
    from modelsec_fast.privacy.per_sample import conv

    def unfused():
        with mock.patch.object(conv, "_fused_applies", lambda *a: False):
            step()
    return unfused


def _nonprivate_step(model, run):
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        run(model).backward()
        opt.step()
    return step


def _floor_step(model, run, device):
    """The floor contender (bench/_dp_floor.py): the fixed model's non-private step, less
    the weight gradients that the floor's reuse strategy replaces, plus the clipping work
    on tensors captured once here, before the optimizer step. Returns
    :class:`_harness.Parts` (``floor``: the whole step, ``floor_clip``: the clipping work);
    ``.notes`` says which method each layer kind uses and what is approximate. The noise
    (std sigma * C = 1.0) is the engine's own op, in ``floor`` but not in ``floor_clip``."""
    import _dp_floor
    from modelsec_fast.privacy import ModuleValidator
    model = ModuleValidator.fix(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip_work = _dp_floor.capture_floor(copy.deepcopy(model), run, max_grad_norm=1.0)
    # every trained parameter gets noise, the weights whose gradient reuse replaces too
    trained = [p for p in model.parameters() if p.requires_grad]
    dropped = clip_work.drop_weight_grads(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    noise = torch.Generator().manual_seed(0)

    def step():
        h.sync(device)
        start = h.Sample.now()
        opt.zero_grad()
        run(model).backward()
        h.sync(device)
        mid = h.Sample.now()
        clip_work()  # the reuse sums land in the dropped weights' .grad
        h.sync(device)
        clipped = h.Sample.now()
        ops.add_noise_([p.grad for p in trained if p.grad is not None], 1.0, generator=noise)
        opt.step()
        h.sync(device)
        return h.Parts({"floor": h.Sample.now() - start, "floor_clip": clipped - mid})
    step.notes = [f"methods: {clip_work.summary()}"] + clip_work.notes
    if dropped:
        step.notes.append(f"reuse: {len(dropped)} batched weight gradients skipped")
    return step


def make_step(config: str, name: str, device, batch: int):
    """A zero-argument callable doing one full training step of ``config``."""
    torch.manual_seed(0)
    if name in REAL_MODELS:
        model, data, real_loss = build_real(name, batch)
        model = model.to(device)
        data = {k: v.to(device) for k, v in data.items()}
        x, y, loss_fn = data, None, nn.CrossEntropyLoss()

        def run(m):  # the model computes its loss as users call it
            return real_loss(m, data)
    else:
        model = build_model(name).to(device)
        x, y = make_batch(name, batch, device)
        loss_fn = nn.CrossEntropyLoss()

        def run(m):
            return loss_fn(m(x), y)
    if config == "nonprivate_fixed":
        from modelsec_fast.privacy import ModuleValidator
        before = [type(m) for m in model.modules()]
        model = ModuleValidator.fix(model)
        if [type(m) for m in model.modules()] == before:
            raise ValueError("ModuleValidator.fix changes nothing here: the nonprivate row")
    if config in ("nonprivate", "nonprivate_fixed"):
        return _nonprivate_step(model, run)
    if config == "floor":
        return _floor_step(model, run, device)
    loader = _loader(torch.zeros(4 * batch, 1), torch.zeros(4 * batch, dtype=torch.long), batch)
    if config in ("ours", "ours_unfused", "ours_low_memory"):
        from modelsec_fast import PrivacyEngine
        from modelsec_fast.privacy import ModuleValidator
        model = ModuleValidator.fix(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # poisson_sampling=False: epsilon not claimed here
            mode = "ghost" if config == "ours_low_memory" else None
            pm, dpo = PrivacyEngine(accountant="rdp").make_private(
                module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode)[:2]

        def step():
            dpo.zero_grad()
            run(pm).backward()
            dpo.step()
        return _without_fused_conv(step) if config == "ours_unfused" else step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import opacus
        from opacus.validators import ModuleValidator as OpacusValidator
        model = OpacusValidator.fix(model).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mode = config.split("_", 1)[1]
        engine = opacus.PrivacyEngine(accountant="rdp")
        if mode == "ghost":
            gm, dpo, crit, _ = engine.make_private(
                module=model, optimizer=opt, data_loader=loader, criterion=loss_fn,
                noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                grad_sample_mode="ghost")

            if name in REAL_MODELS:
                raise ValueError("ghost mode needs a criterion on model outputs; these "
                                 "models compute their own loss")

            def step():
                dpo.zero_grad()
                crit(gm(x), y).backward()
                dpo.step()
            return step
        gm, dpo, _ = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode)

        def step():
            dpo.zero_grad()
            run(gm).backward()
            dpo.step()
        return step


def working_steps(name, configs, device, batch, report):
    """config -> step callable, for the configurations that run on this model (one test step)."""
    steps = {}
    for c in configs:
        try:
            fn = make_step(c, name, device, batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus's backward-hook warnings, every step
                fn()
            steps[c] = fn
        except Exception as err:  # an Opacus mode may not support a model
            report.skip(f"{name} {c}", f"{type(err).__name__}: {str(err).splitlines()[0][:80]}")
    return steps


def _quiet(fn):
    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return call



def child_memory(name, config, device, steps, batch):
    """Prints the peak RSS increase (MiB) of ``steps`` training steps, in this fresh
    process (see :func:`_harness.peak_rss_increase_mib`)."""
    fn = make_step(config, name, device, batch)

    def run_steps():
        for _ in range(steps):
            fn()

    print(json.dumps({"peak_rss_increase_mib": h.peak_rss_increase_mib(run_steps)}))


def measure_memory(name, config, device, steps, batch):
    cmd = [sys.executable, __file__, "--child-memory", name, config, "--device", str(device),
           "--steps", str(steps), "--batch", str(batch), "--threads", str(torch.get_num_threads())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)["peak_rss_increase_mib"]
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench_dpsgd.py", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma list from {','.join(MODELS)}")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS per config")
    ap.add_argument("--steps", type=int, default=2, help="training steps per timed sample")
    ap.add_argument("--warmup", type=int, default=2, help="untimed samples first")
    ap.add_argument("--child-memory", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = h.parse_args(ap, argv, rounds=5, quick_rounds=2)
    device = torch.device(args.device)
    if args.child_memory:
        warnings.simplefilter("ignore")
        child_memory(*args.child_memory, device, args.steps, args.batch)
        return None
    if args.quick:
        args.steps, args.warmup = 1, 1
    batches = QUICK_BATCH if args.quick else BATCH
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS + OPT_IN_CONFIGS:
            raise SystemExit(f"unknown config {c!r}; choose from {CONFIGS + OPT_IN_CONFIGS}")
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {MODELS}")
    report = h.Report("bench_dpsgd", args)
    if any(c.startswith("opacus") for c in configs) and \
            h.optional_import("opacus", report, "the Opacus configurations") is None:
        configs = [c for c in configs if not c.startswith("opacus")]
    section = report.section("DP-SGD training step", baseline="nonprivate",
                             note=f"{args.steps} step(s) per sample; noise multiplier 1.0, C = 1.0, "
                                  "SGD, fixed batch; peak RSS: one subprocess per configuration; "
                                  "floor: non-private step of the fixed model + least clipping "
                                  "work (floor_clip: that work alone); x floor: per-round ratio "
                                  "to the floor")
    for name in models:
        steps = working_steps(name, configs, device, batches[name], report)
        if not steps:
            continue
        m = h.measure({c: _quiet(fn) for c, fn in steps.items()}, device=device,
                      rounds=args.rounds, warmup=args.warmup, repeat=args.steps)
        rows = section.add(m, labels={"model": name, "batch": batches[name]})
        for row in rows:
            ratio = (m.ratio(row.contender, "floor")
                     if "floor" in m.samples and row.contender in PRIVATE_CONFIGS else None)
            if ratio is not None:
                row.values["x floor"] = ratio.median
        for note in getattr(steps.get("floor"), "notes", ()):
            report.note(f"  {name} floor: {note}")
        if args.memory:
            for row in rows:
                if row.contender in FLOOR_SERIES:
                    continue  # the floor holds its captured tensors: its memory is no floor
                row.values["peak RSS +MiB"] = measure_memory(
                    name, row.contender, device, 3 if args.quick else 5, batches[name])
        print(f"  {name}: done", file=sys.stderr, flush=True)
    return report.finish()


if __name__ == "__main__":
    main()
