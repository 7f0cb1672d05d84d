"""PrivacyEngine / DPOptimizer behaviour: Opacus API, accounting hooks, noise, AMP."""

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule
from parity import ground_truth


def small_model():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def private(model=None, *, noise=0.0, clip=1.0, batch=10, n=40, opt_cls=torch.optim.SGD,
            accountant="rdp", **kw):
    torch.manual_seed(0)
    model = model or small_model()
    x, y = data(n)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    opt = opt_cls(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant=accountant)
    out = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                              noise_multiplier=noise, max_grad_norm=clip, **kw)
    return engine, out, (x, y)


def test_make_private_returns_opacus_triple_and_expected_batch_size():
    engine, (m, o, dl), _ = private(batch=10, n=40)
    assert isinstance(m, PrivateModule) and isinstance(o, DPOptimizer)
    assert dl.sample_rate == pytest.approx(0.25)
    assert o.expected_batch_size == 10  # int(N * q) as Opacus
    assert all(k.startswith("_module.") for k in m.state_dict())


def test_ghost_mode_returns_four_tuple_with_criterion_passed_through():
    crit = nn.CrossEntropyLoss()
    _, out, _ = private(criterion=crit, grad_sample_mode="ghost")
    assert len(out) == 4 and out[2] is crit


def test_public_expected_batch_size_is_the_divisor():
    grads = {}
    for ebs in (5, 20):
        _, (m, o, _), (x, y) = private(expected_batch_size=ebs)
        o.zero_grad()
        nn.functional.cross_entropy(m(x[:7]), y[:7]).backward()
        o.step()
        grads[ebs] = [p.grad.clone() for p in m.parameters()]
    for a, b in zip(grads[5], grads[20]):
        torch.testing.assert_close(a, 4 * b)


def test_step_counts_in_accountant_and_epsilon_grows():
    engine, (m, o, dl), _ = private(noise=1.0)
    eps = []
    for k, (x, y) in enumerate(dl):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
        eps.append(engine.get_epsilon(1e-5))
    assert len(engine.accountant) == len(dl) == k + 1
    assert all(b > a for a, b in zip(eps, eps[1:]))


def test_skipped_steps_are_not_counted():
    engine, (m, o, _), (x, y) = private(noise=1.0)
    o.zero_grad()
    nn.functional.cross_entropy(m(x[:5]), y[:5]).backward()
    o.signal_skip_step(True)
    assert o.step() is None
    o.zero_grad()
    nn.functional.cross_entropy(m(x[5:9]), y[5:9]).backward()
    o.step()
    assert len(engine.accountant) == 1


def test_make_private_with_epsilon_meets_target():
    torch.manual_seed(0)
    x, y = data(200)
    loader = DataLoader(TensorDataset(x, y), batch_size=20)
    engine = PrivacyEngine(accountant="rdp")
    model = small_model()
    m, o, dl = engine.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
        target_epsilon=3.0, target_delta=1e-5, epochs=2, max_grad_norm=1.0)
    for _ in range(2):
        for xb, yb in dl:
            o.zero_grad()
            nn.functional.cross_entropy(m(xb), yb).backward()
            o.step()
    eps = engine.get_epsilon(1e-5)
    assert eps <= 3.0 and eps > 2.5
    assert o.noise_multiplier > 0


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
                                     torch.optim.RMSprop])
def test_any_torch_optimizer_steps_on_the_private_gradient(opt_cls):
    _, (m, o, _), (x, y) = private(opt_cls=opt_cls, clip=0.3)
    truth = ground_truth(copy.deepcopy(m._module), x[:9], y[:9],
                         nn.functional.cross_entropy, max_grad_norm=0.3, reduction="mean",
                         expected_batch_size=10)
    before = [p.detach().clone() for p in m.parameters()]
    o.zero_grad()
    nn.functional.cross_entropy(m(x[:9]), y[:9]).backward()
    o.step()
    for p, t, b in zip(m.parameters(), truth, before):
        torch.testing.assert_close(p.grad, t, rtol=1e-4, atol=1e-6)
        assert not torch.equal(p.detach(), b)


def test_step_without_backward_raises():
    _, (m, o, _), _ = private()
    o.zero_grad()
    with pytest.raises(ValueError, match="without a backward"):
        o.step()


def test_missing_zero_grad_raises():
    _, (m, o, _), (x, y) = private()
    o.zero_grad()
    nn.functional.cross_entropy(m(x[:4]), y[:4]).backward()
    o.step()
    with pytest.raises(ValueError, match="zero_grad"):
        nn.functional.cross_entropy(m(x[4:8]), y[4:8]).backward()
    with pytest.raises(ValueError, match="zero_grad"):
        o.step()


def _grads_after(m, o, x, y, attack=None):
    o.zero_grad()
    if attack:
        attack(m, x, y)
    nn.functional.cross_entropy(m(x), y).backward()
    o.step()
    return [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("kind", ["autograd_grad", "backward_inputs", "frozen_params"])
def test_input_gradient_passes_do_not_touch_the_step(kind):
    def attack(m, x, y):
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(m(xa), y)
        if kind == "autograd_grad":
            (g,) = torch.autograd.grad(loss, xa)
        elif kind == "backward_inputs":
            loss.backward(inputs=[xa])
            g = xa.grad
        else:
            for p in m.parameters():
                p.requires_grad_(False)
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(m(xa), y), xa)
            for p in m.parameters():
                p.requires_grad_(True)
        assert g is not None and g.abs().sum() > 0

    _, (m1, o1, _), (x, y) = private(clip=0.2)
    _, (m2, o2, _), _ = private(clip=0.2)
    plain = _grads_after(m1, o1, x[:8], y[:8])
    attacked = _grads_after(m2, o2, x[:8], y[:8], attack)
    for a, b in zip(plain, attacked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_frozen_layer_is_skipped():
    model = small_model()
    model[0].requires_grad_(False)
    _, (m, o, _), (x, y) = private(model, clip=0.2)
    truth = ground_truth(copy.deepcopy(model), x[:6], y[:6], nn.functional.cross_entropy,
                         max_grad_norm=0.2, reduction="mean", expected_batch_size=10)
    o.zero_grad()
    nn.functional.cross_entropy(m(x[:6]), y[:6]).backward()
    o.step()
    assert model[0].weight.grad is None
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p, t in zip(trainable, truth):
        torch.testing.assert_close(p.grad, t, rtol=1e-4, atol=1e-7)


def test_noise_statistics_and_generator_reproducibility():
    # sum reduction, one sample: grad = c*g + N(0, (sigma*C)^2); check mean/std of the noise
    model = nn.Sequential(nn.Linear(300, 300))
    sigma, clip = 1.3, 0.7
    x, y = torch.randn(1, 300), torch.randn(1, 300)

    def noised(seed):
        torch.manual_seed(0)
        m = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(TensorDataset(torch.randn(4, 300), torch.randn(4, 300)), batch_size=1)
        pm, o, _ = PrivacyEngine(accountant="rdp").make_private(
            module=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.0), data_loader=loader,
            noise_multiplier=sigma, max_grad_norm=clip, loss_reduction="sum",
            noise_generator=gen)
        o.zero_grad()
        nn.functional.mse_loss(pm(x), y, reduction="sum").backward()
        clean = [p.grad.clone() for p in m.parameters()]
        o.step()
        return torch.cat([(p.grad - c).flatten() for p, c in zip(m.parameters(), clean)])

    z = noised(1234)  # 90300 draws, seed logged in the call
    n = z.numel()
    assert abs(z.mean().item()) < 5 * sigma * clip / math.sqrt(n)
    assert z.std().item() == pytest.approx(sigma * clip, rel=6 / math.sqrt(2 * n) + 1e-3)
    torch.testing.assert_close(noised(1234), z, rtol=0, atol=0)
    assert not torch.equal(noised(99), z)


def test_distributed_hooks_and_multiple_step_hooks():
    _, (m, o, _), (x, y) = private(noise=5.0)
    seen, calls = [], []
    o.grad_all_reduce = lambda grads: seen.append([g.clone() for g in grads])
    o.adds_noise = False  # a non-zero rank
    o.attach_step_hook(lambda opt: calls.append("a"))
    o.attach_step_hook(lambda opt: calls.append("b"))
    o.zero_grad()
    nn.functional.cross_entropy(m(x[:6]), y[:6]).backward()
    clipped = [p.grad.clone() for p in m.parameters()]
    o.step()
    assert calls == ["a", "b"]
    for g, c in zip(seen[0], clipped):  # no noise on this rank, scaled by 1/E[B]
        torch.testing.assert_close(g, c / o.expected_batch_size)


def test_folding_two_logical_batches_into_one_step_raises():
    _, (m, o, dl), _ = private()
    it = iter(dl)
    o.zero_grad()
    xb, yb = next(it)
    nn.functional.cross_entropy(m(xb), yb).backward()
    xb, yb = next(it)
    with pytest.raises(ValueError, match="several logical Poisson batches"):
        nn.functional.cross_entropy(m(xb), yb).backward()  # Opacus raises here too
    with pytest.raises(ValueError, match="several logical Poisson batches"):
        o.step()


def test_grad_scaler_unscales_before_clipping_and_skips_inf_steps():
    _, (m1, o1, _), (x, y) = private(clip=0.2)
    ref = _grads_after(m1, o1, x[:8], y[:8])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    engine, (m, o, _), _ = private(clip=0.2, grad_scaler=scaler)
    o.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m(x[:8]), y[:8])).backward()
    scaler.step(o)
    scaler.update()
    for a, b in zip(ref, [p.grad for p in m.parameters()]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
    assert len(engine.accountant) == 1
    # an inf in one sample: the scaler skips the step, nothing is counted
    xb = x[:8].clone()
    xb[3] = float("inf")
    params = [p.detach().clone() for p in m.parameters()]
    o.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m(xb), y[:8])).backward()
    scaler.step(o)
    scaler.update()
    assert len(engine.accountant) == 1
    assert scaler.get_scale() < 2.0 ** 12
    assert all(torch.equal(a, p) for a, p in zip(params, m.parameters()))
    o.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m(x[:8]), y[:8])).backward()
    scaler.step(o)
    assert len(engine.accountant) == 2


def test_bf16_autocast_close_to_fp32_with_fp32_grads():
    _, (m1, o1, _), (x, y) = private(clip=0.2)
    ref = _grads_after(m1, o1, x[:8], y[:8])
    _, (m, o, _), _ = private(clip=0.2)
    o.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(m(x[:8]), y[:8])
    loss.backward()
    o.step()
    for a, p in zip(ref, m.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, a, rtol=0.1, atol=2e-3)


def test_cleanup_restores_the_plain_model():
    _, (m, o, _), (x, y) = private()
    model = m.cleanup()
    assert "forward" not in model[0].__dict__
    nn.functional.cross_entropy(model(x[:4]), y[:4]).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_poisson_sampling_false_warns_that_epsilon_does_not_hold():
    with pytest.warns(UserWarning, match="does NOT hold"):
        private(poisson_sampling=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_opacus_hooks_mode():
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(5)
    model = small_model()
    x, y = data(12, seed=5)
    loader = DataLoader(TensorDataset(x, y), batch_size=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        om = copy.deepcopy(model)
        gm, oo, _ = opacus.PrivacyEngine(accountant="rdp").make_private(
            module=om, optimizer=torch.optim.SGD(om.parameters(), lr=0.0), data_loader=loader,
            noise_multiplier=0.0, max_grad_norm=0.3, poisson_sampling=False)
    oo.zero_grad()
    nn.functional.cross_entropy(gm(x), y).backward()
    oo.step()
    pm, o, _ = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data_loader=loader,
        noise_multiplier=0.0, max_grad_norm=0.3, poisson_sampling=False)
    o.zero_grad()
    nn.functional.cross_entropy(pm(x), y).backward()
    o.step()
    for a, b in zip(om.parameters(), model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)


def test_secure_mode_draws_from_the_secure_source_and_refuses_a_seed():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    engine = PrivacyEngine(accountant="rdp", secure_mode=True)
    with pytest.raises(ValueError, match="seed"):
        engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
                            noise_generator=torch.Generator().manual_seed(1))
    m, o, _ = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(),
                                                                          lr=0.0),
                                  data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
    assert o.noise_source == "secure"
    grads = []
    for _ in range(2):
        torch.manual_seed(0)  # the global seed must not determine secure noise
        o.zero_grad()
        nn.functional.cross_entropy(m(x[:4]), y[:4]).backward()
        o.step()
        grads.append(model.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1])


def test_wrap_model_false_trains_the_original_module():
    model = small_model()
    _, (hooks, o, _), (x, y) = private(model, clip=0.2, wrap_model=False)
    truth = ground_truth(copy.deepcopy(model), x[:6], y[:6], nn.functional.cross_entropy,
                         max_grad_norm=0.2, reduction="mean", expected_batch_size=10)
    o.zero_grad()
    nn.functional.cross_entropy(model(x[:6]), y[:6]).backward()
    o.step()
    for p, t in zip(model.parameters(), truth):
        torch.testing.assert_close(p.grad, t, rtol=1e-4, atol=1e-7)
    assert hooks.cleanup() is model


def test_batch_memory_manager_equals_one_logical_batch():
    from modelsec_fast.privacy.sampling import BatchMemoryManager
    engine, (m, o, dl), _ = private(clip=0.3, n=40, batch=20)  # E[B] = 20
    xb, yb = next(iter(dl))  # the DPDataLoader's first logical batch, as a reference
    truth = ground_truth(copy.deepcopy(m._module), xb, yb, nn.functional.cross_entropy,
                         max_grad_norm=0.3, reduction="mean", expected_batch_size=20)
    engine2, (m2, o2, dl2), _ = private(clip=0.3, n=40, batch=20)
    assert len(yb) > 3  # non-trivial split (seeded: same first logical batch in dl2)
    with BatchMemoryManager(data_loader=dl2, max_physical_batch_size=3, optimizer=o2) as mem:
        for k, (x, y) in enumerate(mem):
            o2.zero_grad()
            nn.functional.cross_entropy(m2(x), y).backward()
            o2.step()
            if len(engine2.accountant) == 1:
                break
    assert k + 1 == max(1, math.ceil(len(yb) / 3))
    for p, t in zip(m2.parameters(), truth):
        torch.testing.assert_close(p.grad, t, rtol=1e-4, atol=1e-7)
