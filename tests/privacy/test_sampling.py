"""Poisson sampling: DPDataLoader, empty batches, resumption, BatchMemoryManager."""

import math

import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from modelsec_fast.privacy.sampling import (
    BatchMemoryManager,
    DPDataLoader,
    PoissonBatchSampler,
)

ALPHA = 1e-6  # significance level of the statistical tests


def _dataset(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 5, generator=g), torch.arange(n))


class _RecordingOptimizer:
    """Stands in for DPOptimizer: records skip signals."""

    def __init__(self):
        self.signals = []

    def signal_skip_step(self, do_skip=True):
        self.signals.append(do_skip)


def _ids(loader):
    return [y.tolist() for _, y in loader]


# ---------------------------------------------------------------- basics

@pytest.mark.parametrize("n,batch_size", [(50, 10), (37, 4), (7, 7), (1, 1)])
def test_from_data_loader_uses_one_over_len_and_keeps_epoch_length(n, batch_size):
    dl = DataLoader(_dataset(n), batch_size=batch_size)
    dp = DPDataLoader.from_data_loader(dl)
    assert dp.sample_rate == pytest.approx(1.0 / len(dl))
    assert len(dp) == len(dl)
    batches = list(dp)
    assert len(batches) == len(dl)
    assert dp.batches_yielded == len(dl)
    for x, y in batches:
        assert x.shape[1:] == (3, 5) and x.shape[0] == y.shape[0]
        assert len(set(y.tolist())) == len(y)  # no example twice in one batch


def test_batch_sizes_and_inclusions_are_poisson_with_the_sample_rate():
    seed = 2024
    torch.manual_seed(seed)
    n, q, steps = 400, 0.05, 600
    dp = DPDataLoader(_dataset(n), sample_rate=q, steps=steps)
    counts = torch.zeros(n)
    sizes = []
    for _, y in dp:
        counts[y] += 1
        sizes.append(len(y))
    sizes = torch.tensor(sizes, dtype=torch.float64)
    # batch size ~ Binomial(n, q): mean and variance
    z_mean = (sizes.mean() - n * q) / math.sqrt(n * q * (1 - q) / steps)
    assert abs(z_mean) < stats.norm.isf(ALPHA / 2), (seed, float(z_mean))
    chi2 = float(((sizes - n * q) ** 2).sum() / (n * q * (1 - q)))
    assert stats.chi2.sf(chi2, steps) > ALPHA and stats.chi2.cdf(chi2, steps) > ALPHA, (seed, chi2)
    # each example's inclusion count ~ Binomial(steps, q), the same for every index
    total = counts.sum().item()
    chi2_uniform = float(((counts - total / n) ** 2).sum() / (total / n))
    assert stats.chi2.sf(chi2_uniform, n - 1) > ALPHA, (seed, chi2_uniform)


def test_same_torch_seed_gives_same_batches_and_another_seed_does_not():
    def run(seed):
        torch.manual_seed(seed)
        return _ids(DPDataLoader(_dataset(64), sample_rate=0.1, steps=8))

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_explicit_generator_fixes_the_batches_regardless_of_global_seed():
    def run(global_seed):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(11)
        return _ids(DPDataLoader(_dataset(64), sample_rate=0.1, steps=8, generator=g))

    assert run(1) == run(2)


# ---------------------------------------------------------------- empty batches

def test_empty_batches_have_the_right_shape_and_dtype_and_count():
    dp = DPDataLoader(_dataset(5), sample_rate=1e-9, steps=4)
    batches = list(dp)
    assert len(batches) == 4 and dp.batches_yielded == 4
    for x, y in batches:
        assert x.shape == (0, 3, 5) and x.dtype == torch.float32
        assert y.shape == (0,) and y.dtype == torch.int64


class _DictDataset(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"image": torch.full((2, 4), float(i)), "label": i, "mask": torch.ones(3, dtype=torch.bool)}


def test_empty_batches_keep_dict_structure():
    dp = DPDataLoader(_DictDataset(), sample_rate=1e-9, steps=1)
    (batch,) = list(dp)
    assert set(batch) == {"image", "label", "mask"}
    assert batch["image"].shape == (0, 2, 4)
    assert batch["label"].shape == (0,) and batch["label"].dtype == torch.int64
    assert batch["mask"].shape == (0, 3) and batch["mask"].dtype == torch.bool


def test_sample_rate_one_takes_every_example():
    dp = DPDataLoader(_dataset(9), sample_rate=1.0, steps=2)
    assert _ids(dp) == [list(range(9))] * 2


# ---------------------------------------------------------------- resumption

@pytest.mark.parametrize("stop_after", [0, 3, 7, 10])
def test_state_dict_resumes_the_exact_remaining_batches(stop_after):
    torch.manual_seed(5)
    steps = 7
    ref = DPDataLoader(_dataset(40), sample_rate=0.15, steps=steps)
    two_epochs = _ids(ref) + _ids(ref)

    torch.manual_seed(5)
    first = DPDataLoader(_dataset(40), sample_rate=0.15, steps=steps)
    seen = []
    while len(seen) < stop_after:
        for _, y in first:
            seen.append(y.tolist())
            if len(seen) == stop_after:
                break
    # a checkpoint saves the loader's state and torch's generator (the next epochs'
    # base seeds come from it, as Opacus's masks do)
    state, rng = first.state_dict(), torch.get_rng_state()

    torch.manual_seed(999)
    resumed = DPDataLoader(_dataset(40), sample_rate=0.15, steps=steps)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    rest_of_epoch = _ids(resumed)
    assert seen + rest_of_epoch == two_epochs[: len(seen) + len(rest_of_epoch)]
    assert len(seen + rest_of_epoch) % steps == 0
    assert resumed.batches_yielded == len(seen) + len(rest_of_epoch)


def test_prefetching_workers_do_not_shift_the_resume_point():
    torch.manual_seed(8)
    dp = DPDataLoader(_dataset(30), sample_rate=0.2, steps=6, num_workers=1, prefetch_factor=4)
    it = iter(dp)
    got = [next(it)[1].tolist() for _ in range(2)]
    state = dp.state_dict()
    del it
    ref = _ids(DPDataLoader(_dataset(30), sample_rate=0.2, steps=6, seed=dp.batch_sampler.seed))
    assert state["batches_yielded"] == 2
    resumed = DPDataLoader(_dataset(30), sample_rate=0.2, steps=6)
    resumed.load_state_dict(state)
    assert got + _ids(resumed) == ref


def test_load_state_dict_refuses_a_state_from_another_dataset():
    state = DPDataLoader(_dataset(40), sample_rate=0.1, steps=10).state_dict()
    with pytest.raises(ValueError, match="num_samples"):
        DPDataLoader(_dataset(41), sample_rate=0.1, steps=10).load_state_dict(state)
    with pytest.raises(ValueError, match="sample_rate"):
        DPDataLoader(_dataset(40), sample_rate=0.2, steps=10).load_state_dict(state)
    with pytest.raises(ValueError, match="not a DPDataLoader state"):
        DPDataLoader(_dataset(40), sample_rate=0.1, steps=10).load_state_dict({"seed": 1})


# ---------------------------------------------------------------- shards

def test_rank_shards_cut_from_one_global_mask_reassemble_the_global_batch():
    n, q, world = 23, 0.3, 3
    whole = PoissonBatchSampler(n, q, steps=5, seed=77)
    shards = [PoissonBatchSampler(n, q, steps=5, seed=77, shard=(r, world)) for r in range(world)]
    for t in range(5):
        parts = [s.batch(t) for s in shards]
        for r, part in enumerate(parts):
            assert all(i % world == r for i in part)
        assert sorted(sum(parts, [])) == whole.batch(t)


def test_a_rank_zero_loader_state_resumes_another_rank_but_not_another_world_size():
    data = _dataset(30)
    rank0 = DPDataLoader(data, sample_rate=0.2, steps=5)
    rank0.batch_sampler.rank, rank0.batch_sampler.world_size = 0, 2
    rank0.batches_yielded = 3
    state = rank0.state_dict()
    rank1 = DPDataLoader(data, sample_rate=0.2, steps=5)
    rank1.batch_sampler.rank, rank1.batch_sampler.world_size = 1, 2
    rank1.load_state_dict(state)
    assert rank1.batch_sampler.seed == rank0.batch_sampler.seed and rank1.batches_yielded == 3
    single = DPDataLoader(data, sample_rate=0.2, steps=5)
    with pytest.raises(ValueError, match="world_size"):
        single.load_state_dict(state)


# ---------------------------------------------------------------- bad input

def test_distributed_sampler_is_refused_with_the_reason():
    ds = _dataset(10)
    dl = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, num_replicas=2, rank=0))
    with pytest.raises(ValueError, match="DistributedSampler pads"):
        DPDataLoader.from_data_loader(dl)


def test_iterable_dataset_and_conflicting_batching_arguments_are_refused():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(ValueError, match="map-style"):
        DPDataLoader(Stream(), sample_rate=0.5)
    with pytest.raises(ValueError, match="shuffle"):
        DPDataLoader(_dataset(4), sample_rate=0.5, shuffle=True)
    with pytest.raises(ValueError, match="batch_size"):
        DPDataLoader(_dataset(4), sample_rate=0.5, batch_size=2)


@pytest.mark.parametrize("q", [0.0, -0.2, 1.5])
def test_sample_rate_outside_zero_one_is_refused(q):
    with pytest.raises(ValueError, match="sample_rate"):
        DPDataLoader(_dataset(4), sample_rate=q)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match="empty dataset"):
        DPDataLoader(_dataset(0), sample_rate=0.5)


def test_distributed_without_process_group_is_refused():
    with pytest.raises(ValueError, match="torch.distributed"):
        DPDataLoader(_dataset(4), sample_rate=0.5, distributed=True)


# ---------------------------------------------------------------- BatchMemoryManager

@pytest.mark.parametrize("max_physical", [1, 3, 4, 100])
def test_batch_memory_manager_splits_logical_batches_and_signals_one_step_each(max_physical):
    # the same global seed gives the same logical batches with and without the manager
    torch.manual_seed(21)
    logical = _ids(DPDataLoader(_dataset(60), sample_rate=0.2, steps=6))
    torch.manual_seed(21)
    dp = DPDataLoader(_dataset(60), sample_rate=0.2, steps=6)
    opt = _RecordingOptimizer()
    physical, yielded_at = [], []
    with BatchMemoryManager(data_loader=dp, max_physical_batch_size=max_physical,
                            optimizer=opt) as loader:
        for x, y in loader:
            assert len(y) <= max_physical
            physical.append(y.tolist())
            yielded_at.append(dp.batches_yielded)
    signals = opt.signals[:-1]  # the last signal is the context manager's reset
    assert len(signals) == len(physical)
    # regroup the physical batches at each do_skip=False
    regrouped, current = [], []
    for ids, skip in zip(physical, signals):
        current += ids
        if not skip:
            regrouped.append(current)
            current = []
    assert current == [] and regrouped == logical
    assert dp.batches_yielded == len(logical)
    # every physical batch of logical batch k sees batches_yielded == k
    k = 0
    for at, skip in zip(yielded_at, signals):
        assert at == k + 1
        k += 0 if skip else 1


def test_batch_memory_manager_yields_an_empty_logical_batch_once_as_a_step():
    dp = DPDataLoader(_dataset(5), sample_rate=1e-9, steps=3)
    opt = _RecordingOptimizer()
    with BatchMemoryManager(data_loader=dp, max_physical_batch_size=2, optimizer=opt) as loader:
        shapes = [x.shape for x, _ in loader]
    assert shapes == [(0, 3, 5)] * 3
    assert opt.signals[:3] == [False, False, False]
    assert dp.batches_yielded == 3


def test_batch_memory_manager_splits_a_plain_loader_and_refuses_bad_input():
    # a non-Poisson loader (make_private(poisson_sampling=False)) is split as in Opacus
    opt = _RecordingOptimizer()
    with BatchMemoryManager(data_loader=DataLoader(_dataset(5), batch_size=5),
                            max_physical_batch_size=2, optimizer=opt) as loader:
        sizes = [len(x) for x, _ in loader]
    assert sizes == [2, 2, 1] and opt.signals[:3] == [True, True, False]
    with pytest.raises(TypeError, match="needs a DataLoader"):
        BatchMemoryManager(data_loader=[1, 2], max_physical_batch_size=2, optimizer=opt)
    dp = DPDataLoader(_dataset(4), sample_rate=0.5)
    with pytest.raises(ValueError, match="max_physical_batch_size"):
        BatchMemoryManager(data_loader=dp, max_physical_batch_size=0, optimizer=opt)


# ---------------------------------------------------------------- with the real PrivacyEngine

def _private(seed, n=40, batch_size=10, noise=0.0):
    from modelsec_fast import PrivacyEngine

    torch.manual_seed(seed)
    data = TensorDataset(torch.randn(n, 4), torch.randint(0, 3, (n,)))
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=DataLoader(data, batch_size=batch_size), noise_multiplier=noise,
        max_grad_norm=0.8, loss_reduction="sum")
    return engine, model, opt, loader


def _step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    opt.step()


def test_empty_poisson_batches_are_accountant_steps_with_the_engine():
    engine, model, opt, _ = _private(seed=0, noise=1.0)
    empty_loader = DPDataLoader(TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,))),
                                sample_rate=1e-12, steps=3)
    opt.logical_batch_source = empty_loader
    for x, y in empty_loader:
        assert x.shape == (0, 4)
        _step(model, opt, x, y)
    assert len(engine.accountant) == 3


def test_batch_memory_manager_with_the_engine_matches_unsplit_training_and_accounting():
    engine_a, model_a, opt_a, loader_a = _private(seed=4)
    for x, y in loader_a:
        _step(model_a, opt_a, x, y)
    engine_b, model_b, opt_b, loader_b = _private(seed=4)
    physical = 0
    with BatchMemoryManager(data_loader=loader_b, max_physical_batch_size=3, optimizer=opt_b) as pl:
        for x, y in pl:
            assert len(y) <= 3
            _step(model_b, opt_b, x, y)
            physical += 1
    assert physical > len(loader_b)  # the logical batches really were split
    assert len(engine_a.accountant) == len(engine_b.accountant) == len(loader_b)
    assert engine_a.accountant.history == engine_b.accountant.history
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
