"""Opacus 1.6's semantics where users rely on them, each against Opacus itself.

Every test runs the same repro through Opacus's PrivacyEngine and ours.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modelsec_fast
from modelsec_fast.accountants import create_accountant, get_noise_multiplier
from modelsec_fast.privacy import BatchMemoryManager

opacus = pytest.importorskip("opacus")


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g))


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def _private(lib, model, loader, **kw):
    engine = lib.PrivacyEngine(accountant="rdp")
    args = dict(noise_multiplier=0.0, max_grad_norm=0.5)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return engine, *engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader, **args)


def _run(lib, seed, steps=3, loader_seed=None, noise=1.0, seed_after_make_private=False):
    model = _model()
    if not seed_after_make_private:
        torch.manual_seed(seed)  # the user's one seed, before make_private...
    gen = None if loader_seed is None else torch.Generator().manual_seed(loader_seed)
    loader = DataLoader(_data(), batch_size=6, generator=gen)
    _, m, o, dl = _private(lib, model, loader, noise_multiplier=noise)
    if seed_after_make_private:  # ...or after it (Opacus's test_global_seed)
        torch.manual_seed(seed)
    seen = []
    for x, y in dl:
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
        seen.append(len(y))
        if len(seen) == steps:
            break
    return [p.detach().clone() for p in model.parameters()], seen


@pytest.mark.parametrize("after", [False, True], ids=["seed_before", "seed_after"])
@pytest.mark.parametrize("lib", [opacus, modelsec_fast], ids=["opacus", "ours"])
def test_torch_manual_seed_reproduces_a_run(lib, after):
    # seeding after make_private must reproduce too: the noise and the epoch's
    # Poisson masks are drawn from torch's generator when the run uses them
    a, _ = _run(lib, 1, steps=6, seed_after_make_private=after)
    torch.randn(7)  # the generator's state between runs must not matter
    b, _ = _run(lib, 1, steps=6, seed_after_make_private=after)
    c, _ = _run(lib, 2, steps=6, seed_after_make_private=after)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("lib", [opacus, modelsec_fast], ids=["opacus", "ours"])
def test_the_data_loaders_generator_drives_poisson_sampling(lib):
    # global seeds differ (so does the noise); the loader's generator alone fixes the batches
    torch.manual_seed(5)
    _, sizes_a = _run(lib, 10, steps=6, loader_seed=7)
    _, sizes_b = _run(lib, 20, steps=6, loader_seed=7)
    _, sizes_c = _run(lib, 10, steps=6, loader_seed=8)
    assert sizes_a == sizes_b and sizes_a != sizes_c


def _accumulated_update(lib, passes, **kw):
    model = _model()
    loader = DataLoader(_data(), batch_size=6)
    _, m, o, dl = _private(lib, model, loader, poisson_sampling=False, **kw)
    o.zero_grad()
    for k, (x, y) in enumerate(dl):
        F.cross_entropy(m(x), y).backward()
        if k + 1 == passes:
            break
    o.step()
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_without_poisson_sampling_is_scaled_as_opacus():
    ours = _accumulated_update(modelsec_fast, 2)
    theirs = _accumulated_update(opacus, 2)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_per_layer_clipping_matches_opacus():
    bounds = [0.3, 0.2, 0.4, 0.1]
    ours = _accumulated_update(modelsec_fast, 1, clipping="per_layer", max_grad_norm=bounds)
    theirs = _accumulated_update(opacus, 1, clipping="per_layer", max_grad_norm=bounds)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_grad_sample_on_request_matches_opacus():
    def per_sample(lib, **kw):
        model = _model()
        _, m, o, dl = _private(lib, model, DataLoader(_data(), batch_size=6),
                               poisson_sampling=False, **kw)
        x, y = next(iter(dl))
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        out = [p.grad_sample.clone() for p in model.parameters()]
        assert [g.shape for g in o.grad_samples] == [g.shape for g in out]
        return out

    for a, b in zip(per_sample(modelsec_fast, keep_grad_sample=True), per_sample(opacus)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_grad_samples_are_opt_in():
    model = _model()
    _, m, o, _ = _private(modelsec_fast, model, DataLoader(_data(), batch_size=6))
    assert not hasattr(model[0].weight, "grad_sample") or model[0].weight.grad_sample is None
    with pytest.raises(AttributeError, match="keep_grad_sample=True"):
        o.grad_samples


def test_batch_memory_manager_over_a_non_poisson_loader_matches_opacus():
    def update(lib, bmm):
        model = _model()
        _, m, o, dl = _private(lib, model, DataLoader(_data(), batch_size=6),
                               poisson_sampling=False)
        with bmm(data_loader=dl, max_physical_batch_size=4, optimizer=o) as physical:
            for k, (x, y) in enumerate(physical):
                o.zero_grad()
                F.cross_entropy(m(x), y).backward()
                o.step()
                if k == 1:  # one logical batch of 6: physical 3 + 3
                    break
        return [p.detach().clone() for p in model.parameters()]

    from opacus.utils.batch_memory_manager import BatchMemoryManager as OpacusBMM
    for a, b in zip(update(modelsec_fast, BatchMemoryManager), update(opacus, OpacusBMM)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_get_noise_multiplier_defaults_to_opacus_accountant_and_half_its_tolerance():
    from opacus.accountants.utils import get_noise_multiplier as opacus_sigma
    args = dict(target_epsilon=2.0, target_delta=1e-5, sample_rate=0.02, epochs=3)
    theirs = opacus_sigma(**args)
    ours = get_noise_multiplier(**args)
    assert abs(ours - theirs) / theirs < 0.01
    for tol in (0.01, 0.2):
        sigma = get_noise_multiplier(**args, epsilon_tolerance=tol)
        acc = create_accountant("rdp")
        acc.history = [(sigma, 0.02, int(3 / 0.02))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps = acc.get_epsilon(1e-5)
        assert 2.0 - tol / 2 <= eps <= 2.0


def test_gdp_accountant_equals_opacus_and_warns():
    from opacus.accountants import GaussianAccountant as OpacusGDP
    with pytest.warns(UserWarning, match="can underestimate"):
        ours = create_accountant("gdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = OpacusGDP()
    for _ in range(300):
        ours.step(noise_multiplier=1.2, sample_rate=0.01)
        theirs.step(noise_multiplier=1.2, sample_rate=0.01)
    assert ours.get_epsilon(1e-5) == pytest.approx(theirs.get_epsilon(1e-5), rel=1e-9)
    assert modelsec_fast.PrivacyEngine().accountant.mechanism() == "pld"


def test_adaptive_clipping_moves_c_towards_the_quantile_and_accounts_sigma():
    model = _model()
    engine, m, o, dl = _private(
        modelsec_fast, model, DataLoader(_data(), batch_size=6), noise_multiplier=1.0,
        max_grad_norm=10.0, clipping="adaptive", target_unclipped_quantile=0.5,
        clipbound_learning_rate=0.5, max_clipbound=100.0, min_clipbound=1e-3,
        unclipped_num_std=2.0)
    assert o.gradient_noise_multiplier == pytest.approx((1.0 - 1 / 16) ** -0.5)
    bounds = [o.max_grad_norm]
    for k, (x, y) in enumerate(dl):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
        bounds.append(o.max_grad_norm)
        if k == 3:
            break
    # C = 10 leaves every sample unclipped (fraction ~1 > 0.5): C shrinks
    assert bounds[-1] < bounds[0]
    assert engine.accountant.history[0][0] == 1.0  # charged sigma, not sigma_g


def test_adaptive_clipping_refuses_too_little_count_noise():
    with pytest.raises(ValueError, match="unclipped_num_std"):
        _private(modelsec_fast, _model(), DataLoader(_data(), batch_size=6),
                 noise_multiplier=1.0, clipping="adaptive", target_unclipped_quantile=0.5,
                 clipbound_learning_rate=0.2, max_clipbound=10.0, min_clipbound=0.1,
                 unclipped_num_std=0.4)


def test_checkpoint_with_schedulers_and_reading_an_opacus_checkpoint(tmp_path):
    from opacus.schedulers import ExponentialNoise, StepGradClip
    # ours: schedulers round-trip
    model = _model()
    engine, m, o, dl = _private(modelsec_fast, model, DataLoader(_data(), batch_size=6),
                                noise_multiplier=1.0)
    noise, clip = ExponentialNoise(o, gamma=0.5), StepGradClip(o, step_size=1, gamma=0.5)
    noise.step()
    clip.step()
    engine.save_checkpoint(path=tmp_path / "ours.pt", module=m, optimizer=o,
                           noise_scheduler=noise, grad_clip_scheduler=clip)
    engine2, m2, o2, _ = _private(modelsec_fast, _model(1), DataLoader(_data(), batch_size=6),
                                  noise_multiplier=1.0)
    noise2, clip2 = ExponentialNoise(o2, gamma=0.9), StepGradClip(o2, step_size=1, gamma=0.9)
    engine2.load_checkpoint(path=tmp_path / "ours.pt", module=m2, optimizer=o2,
                            noise_scheduler=noise2, grad_clip_scheduler=clip2)
    assert noise2.state_dict() == noise.state_dict() and clip2.state_dict() == clip.state_dict()
    # an Opacus 1.6 checkpoint loads into our engine (weights_only, its accountant too)
    omodel = _model(3)
    oengine, om, oo, odl = _private(opacus, omodel, DataLoader(_data(), batch_size=6),
                                    noise_multiplier=1.0)
    for x, y in odl:
        oo.zero_grad()
        F.cross_entropy(om(x), y).backward()
        oo.step()
        break
    oengine.save_checkpoint(path=tmp_path / "opacus.pt", module=om, optimizer=oo,
                            checkpoint_dict={"epoch": 4})
    engine3, m3, o3, _ = _private(modelsec_fast, _model(), DataLoader(_data(), batch_size=6),
                                  noise_multiplier=1.0)
    extra = engine3.load_checkpoint(path=tmp_path / "opacus.pt", module=m3, optimizer=o3)
    assert extra == {"epoch": 4}
    for a, b in zip(m3.parameters(), omodel.parameters()):
        assert torch.equal(a, b)
    assert engine3.accountant.history == oengine.accountant.history
    assert o3.state_dict()["param_groups"][0]["lr"] == 0.1


def test_an_opacus_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    import os
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"module_state_dict": {}, "privacy_accountant_state_dict": Payload()},
               tmp_path / "evil.pt")
    engine, m, o, _ = _private(modelsec_fast, _model(), DataLoader(_data(), batch_size=6))
    from modelsec_fast.state import CheckpointError
    with pytest.raises(CheckpointError, match="evil.pt"):
        engine.load_checkpoint(path=tmp_path / "evil.pt", module=m, optimizer=o)
    assert not marker.exists()
