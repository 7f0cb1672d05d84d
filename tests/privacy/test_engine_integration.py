"""Integration of the engine with the distributed and accounting parts.

* ``PrivacyEngine.make_private(module=DPDDP(model), ...)`` on 2 gloo processes
  builds the sharded Poisson loader and attaches the all-reduce and rank-0
  noise itself; with noise 0 the parameters equal single-process training.
* ``get_epsilon(delta)`` and ``make_private_with_epsilon(target_delta=...)``
  refuse delta outside (0, 1) and warn when delta >= 1/N.
"""

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy.distributed import DPDDP
from modelsec_fast.privacy.sampling import DPDataLoader
from tests.privacy.tiny import tiny_dataset, tiny_mlp, train_steps

WORLD = 2
STEPS = 5
N, BATCH = 40, 8
CLIP = 0.5
SAMPLER_SEED = 11


def _data():
    return tiny_dataset(N, 4, seed=5)


def _model(seed):
    return tiny_mlp(4, 6, seed)


def _train(model, optimizer, loader):
    return train_steps(model, optimizer, loader, STEPS)


def _error(fn):
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None


def _worker(rank, store_dir, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank,
                            world_size=WORLD)
    try:
        result = {}
        # plain make_private on a DPDDP; different init per rank (DPDDP syncs rank 0's)
        engine = PrivacyEngine(accountant="rdp")
        base = _model(seed=200 + rank)
        model, opt, loader = engine.make_private(
            module=DPDDP(base), optimizer=torch.optim.SGD(base.parameters(), lr=0.5),
            data_loader=DataLoader(_data(), batch_size=BATCH),
            sampler_generator=torch.Generator().manual_seed(SAMPLER_SEED),
            noise_multiplier=0.0, max_grad_norm=CLIP)
        result.update(
            sizes=_train(model, opt, loader),
            params=[p.detach() for p in model.parameters()],
            history=engine.accountant.history,
            adds_noise=opt.adds_noise,
            all_reduce=opt.grad_all_reduce is not None,
            loader_is_sharded=isinstance(loader, DPDataLoader) and loader.distributed,
            sample_rate=loader.sample_rate,
            expected_batch_size=opt.expected_batch_size,
        )

        # make_private_with_epsilon takes the same path
        engine = PrivacyEngine(accountant="rdp")
        base = _model(seed=0)
        _, opt, loader = engine.make_private_with_epsilon(
            module=DPDDP(base), optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH),
            target_epsilon=4.0, target_delta=1e-3, epochs=1, max_grad_norm=CLIP)
        result["eps_adds_noise"] = opt.adds_noise
        result["eps_all_reduce"] = opt.grad_all_reduce is not None
        result["eps_loader_is_sharded"] = loader.distributed

        # refusals, raised before any collective so no rank is left waiting
        result["ddp_error"] = _torch_ddp_error()
        base = _model(seed=2)
        wrapped = DPDDP(base)
        result["shuffled_error"] = _error(lambda: PrivacyEngine(accountant="rdp").make_private(
            module=wrapped, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH), poisson_sampling=False,
            noise_multiplier=1.0, max_grad_norm=CLIP))
        subgroup = dist.new_group([0])  # collective: every rank creates it
        if rank == 0:
            base = _model(seed=3)
            sub_wrapped = DPDDP(base, process_group=subgroup)
            result["subgroup_error"] = _error(lambda: PrivacyEngine(accountant="rdp").make_private(
                module=sub_wrapped, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
                data_loader=DataLoader(_data(), batch_size=BATCH),
                noise_multiplier=1.0, max_grad_norm=CLIP))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        # No rank tears gloo down while the other still talks to it: a process group
        # destroyed under a live peer (or under a live DDP reducer) aborts the process.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _torch_ddp_error():
    # A function of its own so that the DDP object, whose reducer holds the process
    # group, is freed before the group is destroyed.
    ddp = nn.parallel.DistributedDataParallel(_model(seed=1))
    return _error(lambda: PrivacyEngine(accountant="rdp").make_private(
        module=ddp, optimizer=torch.optim.SGD(ddp.parameters(), lr=0.1),
        data_loader=DataLoader(_data(), batch_size=BATCH),
        noise_multiplier=1.0, max_grad_norm=CLIP))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    out = tmp_path_factory.mktemp("out")
    mp.spawn(_worker, args=(str(store), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_make_private_on_dpddp_matches_single_process_without_noise(ranks):
    engine = PrivacyEngine(accountant="rdp")
    base = _model(seed=200)  # rank 0's initial weights
    model, opt, loader = engine.make_private(
        module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.5),
        data_loader=DataLoader(_data(), batch_size=BATCH),
        sampler_generator=torch.Generator().manual_seed(SAMPLER_SEED),
        noise_multiplier=0.0, max_grad_norm=CLIP)
    sizes = _train(model, opt, loader)

    assert [a + b for a, b in zip(ranks[0]["sizes"], ranks[1]["sizes"])] == sizes
    assert ranks[0]["adds_noise"] and not ranks[1]["adds_noise"]
    for r in ranks:
        assert r["all_reduce"] and r["loader_is_sharded"]
        assert r["history"] == engine.accountant.history  # global q, one step per batch
        assert r["sample_rate"] == pytest.approx(BATCH / N)
        assert r["expected_batch_size"] == opt.expected_batch_size == BATCH  # global E[B]
        for got, want in zip(r["params"], model.parameters()):
            torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)


def test_make_private_with_epsilon_on_dpddp_is_distributed(ranks):
    assert ranks[0]["eps_adds_noise"] and not ranks[1]["eps_adds_noise"]
    assert all(r["eps_all_reduce"] and r["eps_loader_is_sharded"] for r in ranks)


def test_unsound_distributed_setups_are_refused(ranks):
    for r in ranks:
        assert r["ddp_error"] is not None and "DPDDP" in r["ddp_error"]
        assert r["shuffled_error"] is not None and "poisson_sampling=True" in r["shuffled_error"]
    assert ranks[0]["subgroup_error"] is not None and "subgroup" in ranks[0]["subgroup_error"]


# ---------------------------------------------------------------- single process
def _trained_engine(n=N, accountant="rdp"):
    g = torch.Generator().manual_seed(17)
    data = TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    engine = PrivacyEngine(accountant=accountant)
    base = _model(seed=4)
    model, opt, loader = engine.make_private(
        module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=max(1, n // 5)),
        noise_multiplier=1.0, max_grad_norm=1.0)
    for _, (x, y) in zip(range(2), loader):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y, reduction="mean").backward()
        opt.step()
    return engine


def _one_over_n_warnings(record):
    return [w for w in record if "1/N" in str(w.message)]


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 1.5, float("nan")])
def test_get_epsilon_refuses_delta_outside_open_unit_interval(delta):
    engine = _trained_engine()
    with pytest.raises(ValueError, match="delta"):
        engine.get_epsilon(delta)


def test_get_epsilon_refuses_non_numeric_delta():
    with pytest.raises(TypeError, match="delta"):
        _trained_engine().get_epsilon("1e-5")


@pytest.mark.parametrize("n", [2, 7, 40])
def test_get_epsilon_warns_when_delta_is_at_least_one_over_n(n):
    engine = _trained_engine(n=n)
    with pytest.warns(UserWarning, match=f"1/N = 1/{n}"):
        eps_at_bound = engine.get_epsilon(1.0 / n)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        eps_small = engine.get_epsilon(0.5 / (n * n + 1))
    assert not _one_over_n_warnings(record)
    assert eps_at_bound < eps_small  # the check passes delta on to the accountant


def test_get_epsilon_matches_the_accountant_for_a_valid_delta():
    engine = _trained_engine(accountant="pld")
    assert engine.get_epsilon(1e-5) == engine.accountant.get_epsilon(delta=1e-5)


def test_get_epsilon_before_make_private_checks_delta_without_n():
    engine = PrivacyEngine(accountant="rdp")
    with pytest.raises(ValueError, match="delta"):
        engine.get_epsilon(0.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        engine.get_epsilon(0.5)
    assert not _one_over_n_warnings(record)


class _NoLenDataset(Dataset):
    """Map-style dataset without __len__ (its size is unknown to the engine)."""

    def __init__(self):
        g = torch.Generator().manual_seed(23)
        self.x, self.y = torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _no_len_loader():
    return DataLoader(_NoLenDataset(), batch_sampler=[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])


def test_get_epsilon_with_a_dataset_without_len():
    engine = PrivacyEngine(accountant="rdp")
    base = _model(seed=5)
    with pytest.warns(UserWarning, match="poisson_sampling=False"):
        engine.make_private(module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
                            data_loader=_no_len_loader(), poisson_sampling=False,
                            expected_batch_size=4, noise_multiplier=1.0, max_grad_norm=1.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert engine.get_epsilon(0.9) == 0.0  # no step taken yet
    assert not _one_over_n_warnings(record)
    with pytest.raises(ValueError, match="delta"):
        engine.get_epsilon(1.0)


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.5, 2.0])
def test_make_private_with_epsilon_refuses_bad_target_delta_before_touching_the_model(delta):
    base = _model(seed=6)
    before = [p.detach().clone() for p in base.parameters()]
    engine = PrivacyEngine(accountant="rdp")
    with pytest.raises(ValueError, match="delta"):
        engine.make_private_with_epsilon(
            module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH), target_epsilon=2.0,
            target_delta=delta, epochs=1, max_grad_norm=1.0)
    assert engine.dataset is None
    assert all(torch.equal(a, b) for a, b in zip(before, base.parameters()))
    # the model is still plain: an ordinary backward fills .grad as usual
    nn.functional.cross_entropy(base(torch.randn(3, 4)), torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None for p in base.parameters())


def test_make_private_with_epsilon_warns_when_target_delta_is_at_least_one_over_n():
    base = _model(seed=7)
    engine = PrivacyEngine(accountant="rdp")
    with pytest.warns(UserWarning, match=f"1/N = 1/{N}") as record:
        engine.make_private_with_epsilon(
            module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH), target_epsilon=2.0,
            target_delta=1.0 / N, epochs=1, max_grad_norm=1.0)
    assert len(_one_over_n_warnings(record)) == 1
    assert record[0].filename == __file__  # points at the caller, not the library


def test_make_private_with_epsilon_with_a_dataset_without_len():
    base = _model(seed=8)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, opt, _ = engine.make_private_with_epsilon(
            module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=_no_len_loader(), poisson_sampling=False, expected_batch_size=4,
            target_epsilon=5.0, target_delta=0.9, epochs=1, max_grad_norm=1.0)
    assert not _one_over_n_warnings(record)
    assert opt.noise_multiplier > 0


def test_sampler_generator_makes_the_poisson_batches_reproducible():
    def batches(seed):
        base = _model(seed=9)
        _, _, loader = PrivacyEngine(accountant="rdp").make_private(
            module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=BATCH),
            sampler_generator=torch.Generator().manual_seed(seed),
            noise_multiplier=1.0, max_grad_norm=1.0)
        return [y.tolist() for _, y in loader]

    first = batches(3)
    assert batches(3) == first
    assert batches(4) != first  # 5 batches of ~8 of 40 examples: equal by chance ~never


def test_sampler_generator_is_refused_where_it_would_be_ignored_or_unsafe():
    base = _model(seed=10)
    kwargs = dict(module=base, optimizer=torch.optim.SGD(base.parameters(), lr=0.1),
                  data_loader=DataLoader(_data(), batch_size=BATCH),
                  sampler_generator=torch.Generator().manual_seed(0),
                  noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="poisson_sampling=True"):
        PrivacyEngine(accountant="rdp").make_private(poisson_sampling=False, **kwargs)
    with pytest.raises(ValueError, match="secure_mode"):
        PrivacyEngine(accountant="rdp", secure_mode=True).make_private(**kwargs)
