"""The DP-SGD floor of bench/bench_dpsgd.py (bench/_dp_floor.py): it computes the right norms.

Every candidate method of every layer must give the layer's per-sample squared gradient
norms of a torch.func ground truth, and the floor's total norms the engine's, so that the
floor times the work flat clipping needs and not just some work.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelsec_fast.ops import native_available
from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")


def _load_floor():
    spec = importlib.util.spec_from_file_location("bench_dp_floor",
                                                  os.path.join(BENCH, "_dp_floor.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


floor = _load_floor()


class TinyCNN(nn.Module):
    """Convolutions (plain and grouped, strided), GroupNorm and a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, groups=2)
        self.head = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        h = F.relu(self.norm(self.conv1(x)))
        return self.head(F.relu(self.conv2(h)).flatten(1))


class TinySequence(nn.Module):
    """Embedding, LayerNorm, a Linear layer called twice, a root additive parameter."""

    def __init__(self, vocab=20, width=8, steps=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.offset = nn.Parameter(0.1 * torch.randn(1, steps, width))
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, ids):
        h = self.norm(self.embed(ids) + self.offset)
        h = self.mix(torch.tanh(self.mix(h)))
        return self.head(h.mean(1))


def _cnn(batch, gen):
    return TinyCNN(), torch.randn(batch, 3, 8, 8, generator=gen), torch.randint(0, 5, (batch,),
                                                                                  generator=gen)


def _sequence(batch, gen):
    return TinySequence(), torch.randint(0, 20, (batch, 6), generator=gen), torch.randint(
        0, 3, (batch,), generator=gen)


def _truth_sq_norms(model, x, y):
    """name -> (B,) squared norm of each sample's own loss gradient (torch.func)."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(ps, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, ps, (xi[None],)), yi[None])

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return {n: g.double().flatten(1).square().sum(1) for n, g in grads.items()}


@pytest.mark.parametrize("build", [_cnn, _sequence], ids=["cnn", "sequence"])
def test_every_method_of_every_layer_gives_the_per_sample_norms(build, random_seed):
    batch = 5
    model, x, y = build(batch, torch.Generator().manual_seed(random_seed))
    truth = _truth_sq_norms(model, x, y)
    work = floor.capture_floor(copy.deepcopy(model), lambda m: F.cross_entropy(m(x), y),
                               choose=False)
    covered = [p for layer in work.layers for p in layer.params]
    assert sorted(covered) == sorted(truth)  # every trained parameter, once
    checked = 0
    for layer in work.layers:
        expected = sum(truth[p] for p in layer.params)
        for method in layer.candidates() or [None]:
            # the recorded output gradients carry the mean loss's 1/B
            got = layer.sq_norms(method).double() * batch ** 2
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7 * float(expected.max()),
                                       msg=lambda m: f"{layer.name} by {method}: {m}")
            checked += 1
    kinds = {layer.kind for layer in work.layers}
    if build is _cnn:
        assert kinds == {"conv", "norm", "linear"}
        conv_methods = {m for layer in work.layers if layer.kind == "conv" for m in layer.methods}
        conv_methods |= {m for layer in work.layers if layer.kind == "conv"
                         for m in layer.reuse}
        assert {"ghost", "materialised", floor.REUSE, floor.PATCH_SUM} | (
            {"fused"} if native_available() else set()) <= conv_methods
    else:
        assert kinds == {"embedding", "generic", "norm", "linear"}
        mix = next(layer for layer in work.layers if layer.name == "mix")
        # two calls: T = 2 x 6 positions
        assert mix.candidates() == ["ghost", "materialised", floor.REUSE]
    assert checked >= len(work.layers)


@pytest.mark.parametrize("build, conv_method", [(_cnn, floor.REUSE), (_cnn, floor.PATCH_SUM),
                                                (_sequence, None)],
                         ids=["cnn-reuse", "cnn-patch-sum", "sequence"])
def test_reuse_puts_the_clipped_sum_into_the_weight_whose_gradient_it_replaces(
        build, conv_method, random_seed):
    batch, clip = 5, 0.5
    model, x, y = build(batch, torch.Generator().manual_seed(random_seed))
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(ps, xi, yi):
        return F.cross_entropy(torch.func.functional_call(model, ps, (xi[None],)), yi[None])

    per = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.double().flatten(1).square().sum(1) for g in per.values()))
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    work = floor.capture_floor(copy.deepcopy(model), lambda m: F.cross_entropy(m(x), y),
                               max_grad_norm=clip, choose=False)
    reused = [layer for layer in work.layers if layer.reuse]
    for layer in reused:
        layer.method = conv_method if layer.kind == "conv" else floor.REUSE
    trained = copy.deepcopy(model)
    dropped = work.drop_weight_grads(trained)
    # the head's bias trains: its weight gradient can go; the sequence model's "mix" too,
    # and the convolutions (their biases train)
    assert "head.weight" in dropped and dropped
    if conv_method:
        assert {"conv1.weight", "conv2.weight"} <= set(dropped)
    torch.testing.assert_close(work().double(), norms, rtol=1e-4, atol=1e-8)
    for name in dropped:
        p = trained.get_parameter(name)
        assert not p.requires_grad
        expected = torch.einsum("i,i...->...", factors, per[name].double())
        torch.testing.assert_close(p.grad.double(), expected, rtol=1e-4,
                                   atol=1e-6 * float(expected.abs().max()))


def test_a_weight_whose_layer_would_lose_its_output_gradient_keeps_its_weight_gradient():
    # the first layer: no bias, and its input (the data) needs no gradient
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 2))
    x, y = torch.randn(3, 5, 4), torch.tensor([0, 1, 1])
    work = floor.capture_floor(model, lambda m: F.cross_entropy(m(x).mean(1), y), choose=False)
    first = next(layer for layer in work.layers if layer.name == "0")
    second = next(layer for layer in work.layers if layer.name == "2")
    assert not first.can_drop_weight_grad and second.can_drop_weight_grad
    for layer in work.layers:
        layer.method = floor.REUSE
    assert work.drop_weight_grads(copy.deepcopy(model)) == ["2.weight"]


def test_the_floor_norms_are_the_engines_per_sample_norms(random_seed):
    batch = 6
    model, x, y = _sequence(batch, torch.Generator().manual_seed(random_seed))
    work = floor.capture_floor(copy.deepcopy(model), lambda m: F.cross_entropy(m(x), y))
    ours = copy.deepcopy(model)
    pm = PrivateModule(ours)
    opt = DPOptimizer(torch.optim.SGD(ours.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=1.0, expected_batch_size=batch)
    seen = []
    with mock.patch.object(DPOptimizer, "observe_norms", lambda self, n: seen.append(n)):
        F.cross_entropy(pm(x), y).backward()
    assert len(seen) == 1
    torch.testing.assert_close(work().double(), seen[0].double(), rtol=1e-4, atol=1e-8)
    opt.zero_grad()


def test_a_method_far_above_the_cheapest_estimate_is_not_timed():
    # a 16x16 map: the ghost norm needs T^2 (p + d) = 256^2 x 31 multiply-adds per sample,
    # the per-sample gradient T p d = 256 x 4 x 27
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 256, 2))
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 0])
    work = floor.capture_floor(model, lambda m: F.cross_entropy(m(x), y))
    conv = work.layers[0] if work.layers[0].kind == "conv" else work.layers[1]
    assert "ghost" in conv.methods and "ghost" not in conv.seconds
    assert conv.method == min(conv.seconds, key=conv.seconds.get)
    assert conv.macs["ghost"] > floor.SELECT_FACTOR * min(conv.macs.values())


def test_bench_dpsgd_quick_has_the_floor_rows_and_the_ratio_to_the_floor(tmp_path):
    out = tmp_path / "dpsgd.json"
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, os.path.join(BENCH, "bench_dpsgd.py"), "--quick", "--threads", "1",
               "--models", "mlp,mnist_cnn", "--configs", "nonprivate,ours,floor",
               "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    for model in ("mlp", "mnist_cnn"):
        by = {r["contender"]: r for r in rows if r["labels"]["model"] == model}
        assert set(by) == {"nonprivate", "ours", "floor", "floor_clip"}
        assert by["floor"]["wall_s"]["median"] > by["floor_clip"]["wall_s"]["median"] > 0
        assert by["ours"]["values"]["x floor"] > 0
    assert "mnist_cnn floor: methods: conv" in done.stdout


def test_the_floor_step_noises_every_trained_parameter():
    """The floor's noise covers the weights whose batched gradient reuse replaces too
    (they leave requires_grad but are trained): one add_noise_ over every parameter."""
    with mock.patch.object(sys, "path", [BENCH] + sys.path):
        import _dp_floor
        import bench_dpsgd

        def reuse_where_possible(self, device):
            self.method = floor.REUSE if floor.REUSE in self.reuse else next(
                iter(self.candidates()), None)

        model, x, y = _cnn(4, torch.Generator().manual_seed(0))
        trained = sum(1 for p in model.parameters() if p.requires_grad)
        noised = []
        real = bench_dpsgd.ops.add_noise_
        with mock.patch.object(_dp_floor.LayerWork, "choose", reuse_where_possible), \
                mock.patch.object(bench_dpsgd.ops, "add_noise_",
                                  lambda ts, *a, **k: noised.append(len(ts)) or real(ts, *a, **k)):
            step = bench_dpsgd._floor_step(model, lambda m: F.cross_entropy(m(x), y),
                                           torch.device("cpu"))
            step()
    assert any(n.startswith("reuse:") for n in step.notes)  # some weights were dropped
    assert noised == [trained]
