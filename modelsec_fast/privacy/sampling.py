"""Poisson sampling for DP-SGD: ``DPDataLoader`` and ``BatchMemoryManager``.

Every privacy accountant here assumes Poisson sampling: at each step every
example is included independently with probability q, so the batch size is
random and may be zero. This module provides exactly that, in the Opacus 1.6
API:

* ``DPDataLoader.from_data_loader(loader)`` samples with q = 1/len(loader),
  yields empty batches as correctly shaped empty tensors (they still count as
  a step), and yields ``len(loader)`` batches per epoch.
* ``BatchMemoryManager`` splits each logical batch into physical batches of at
  most ``max_physical_batch_size`` and tells the optimizer to skip the step on
  all but the last, so the accountant sees one step per logical batch.

Reproducibility and resumption. Outside secure mode, the mask of the t-th
logical batch of the stream is drawn from a fresh ``torch.Generator`` seeded
with a hash of (base seed, t). Without an explicit ``seed``, each epoch's base
seed is drawn when the epoch starts, from the loader's ``generator`` or else
torch's global one, so ``torch.manual_seed`` before an epoch reproduces it, as
in Opacus (which draws every mask from that generator as the epoch runs). The
sampler's state is (this epoch's base seed, number of batches handed out),
which checkpoints save with the global generators, and a resumed run draws
bit-identical masks. Prefetching by worker processes does not matter: the
count is of batches the training loop received.

Secure mode draws every mask from the OS CSPRNG (:mod:`.secure`); nothing
about it can be reproduced, by design.

Distributed. With ``distributed=True`` rank r keeps only the examples
i = r (mod world_size) of the dataset. Outside secure mode all ranks share
one base seed for the whole run (rank 0's, broadcast once, since a per-epoch draw
would need a collective in every iteration) and cut their masks from the same
global mask, so the union over ranks is exactly one Poisson sample of the
whole dataset, identical to a single-process run with the same seed. In
secure mode each rank draws its own shard's mask from its own OS entropy,
which has the same distribution. There is no padding: ``DistributedSampler``
pads shards with duplicates, which doubles a duplicated example's inclusion
probability, so it is refused.
"""

import collections
import collections.abc
import hashlib
import math
import struct
from typing import Any, Deque, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..validation import check_in_range, check_int
from .secure import secure_bernoulli_mask

__all__ = ["PoissonBatchSampler", "EmptyBatchCollate", "DPDataLoader", "BatchMemoryManager"]

_SEED_MASK = (1 << 63) - 1


def _batch_seed(base_seed: int, batch_index: int) -> int:
    """Seed of the t-th batch's generator: a hash, so nearby t give unrelated streams."""
    digest = hashlib.blake2b(struct.pack("<QQ", base_seed, batch_index), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK


class PoissonBatchSampler(Sampler[List[int]]):
    """Yields lists of dataset indices, each index kept independently with prob q.

    Args:
        num_samples: dataset size N (> 0).
        sample_rate: q in (0, 1].
        steps: batches per epoch (``len(self)``); default round(1 / q).
        seed: base seed of every epoch (non-secure mode). Default: a new base
            seed per epoch, drawn from ``generator`` (torch's global generator
            when that is None) when the epoch starts.
        generator: torch.Generator used only to draw the epochs' base seeds.
        secure_mode: draw masks from the OS CSPRNG; ``seed``/``generator`` must be None.
        shard: (rank, world_size): keep only indices i = rank (mod world_size).

    The sampler yields the window of batches set by :meth:`set_window`
    (default: ``steps`` batches starting at batch 0).
    """

    def __init__(
        self,
        num_samples: int,
        sample_rate: float,
        *,
        steps: Optional[int] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        secure_mode: bool = False,
        shard: Optional[Tuple[int, int]] = None,
    ):
        num_samples = check_int("num_samples", num_samples, 1)
        sample_rate = check_in_range("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
        if steps is None:
            steps = max(1, round(1.0 / sample_rate))
        steps = check_int("steps", steps, 1)
        if secure_mode:
            _refuse_seed_in_secure_mode(seed, generator)
        rank, world = shard if shard is not None else (0, 1)
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
        self.num_samples = num_samples
        self.sample_rate = float(sample_rate)
        self.steps = steps
        self.secure_mode = bool(secure_mode)
        self.rank, self.world_size = rank, world
        #: the epoch's base seed: fixed when ``seed`` is given, else drawn per epoch
        #: by :meth:`start_epoch` (None before the first epoch and in secure mode)
        self.seed = None if secure_mode or seed is None else int(seed) & _SEED_MASK
        self.reseeds = not secure_mode and seed is None
        #: the generator the base seeds come from (None: torch's global one)
        self.generator = generator if self.reseeds else None
        self._window = (0, steps)
        self._fresh_epoch = True
        #: batch index -> sample count, for batches iterated but not yet handed out
        self.batch_sizes: dict[int, int] = {}

    def __len__(self) -> int:
        return self.steps

    def start_window(self) -> None:
        """The window's first batch is about to be drawn: a fresh epoch (marked by
        :meth:`set_window`) draws its base seed, unless the seed is fixed.

        Called when the batches are first needed, after the DataLoader iterator
        has drawn its workers' seed, so plain and ``BatchMemoryManager``
        iteration take the same draws from the generator in the same order.
        """
        if self._fresh_epoch and self.reseeds:
            self.seed = int(torch.randint(0, _SEED_MASK, (1,), generator=self.generator).item())
        self._fresh_epoch = False

    def set_window(self, first_batch: int, count: int, *, fresh_epoch: bool = True) -> None:
        """Make the next iteration yield batches first_batch, ..., first_batch + count - 1
        (``fresh_epoch``: they start an epoch, rather than finish a resumed one)."""
        if first_batch < 0 or count < 0:
            raise ValueError(f"invalid window ({first_batch}, {count})")
        self._window = (int(first_batch), int(count))
        self._fresh_epoch = fresh_epoch

    def shard_indices(self) -> torch.Tensor:
        """Dataset indices this rank samples from; int64, shape (ceil((N - rank) / world),)."""
        return torch.arange(self.rank, self.num_samples, self.world_size, dtype=torch.int64)

    def mask(self, batch_index: int) -> torch.Tensor:
        """Bool inclusion mask of batch ``batch_index`` over this rank's shard."""
        shard_size = len(range(self.rank, self.num_samples, self.world_size))
        if self.secure_mode:
            return secure_bernoulli_mask(shard_size, self.sample_rate)
        gen = torch.Generator().manual_seed(_batch_seed(self.seed, batch_index))
        global_mask = torch.rand(self.num_samples, generator=gen) < self.sample_rate
        return global_mask[self.rank::self.world_size]

    def batch(self, batch_index: int) -> List[int]:
        """Indices (into the dataset) of batch ``batch_index``; possibly empty."""
        local = self.mask(batch_index).nonzero().reshape(-1)
        if self.world_size > 1:
            local = local * self.world_size + self.rank
        return local.tolist()

    def __iter__(self) -> Iterator[List[int]]:
        first, count = self._window
        self.start_window()
        self.batch_sizes.clear()
        for t in range(first, first + count):
            indices = self.batch(t)
            self.batch_sizes[t] = len(indices)
            yield indices


class EmptyBatchCollate:
    """Wraps a collate function so that an empty index list gives an empty batch.

    The empty batch has the structure, dtypes and trailing shapes of a real
    one: it is ``collate_fn([dataset[0]])`` with every tensor sliced to
    length 0 along dim 0. Picklable, so it works in worker processes.

    Raises:
        TypeError: (on an empty batch) a batch leaf that is neither a tensor nor
            a list/tuple/dict of them, which could not be emptied safely.
    """

    def __init__(self, collate_fn, dataset: Dataset):
        self.collate_fn = collate_fn
        self.dataset = dataset

    def __call__(self, samples: List[Any]):
        if len(samples) > 0:
            return self.collate_fn(samples)
        return _empty_like(self.collate_fn([self.dataset[0]]))


def _empty_like(batch):
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise TypeError("cannot build an empty batch from a 0-d tensor leaf")
        return batch[:0]
    if isinstance(batch, collections.abc.Mapping):
        return type(batch)({k: _empty_like(v) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_empty_like(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        if batch and not isinstance(batch[0], (torch.Tensor, collections.abc.Mapping, list, tuple)):
            return type(batch)()  # a list of per-example non-tensor values (e.g. strings)
        return type(batch)(_empty_like(v) for v in batch)
    raise TypeError(
        f"cannot build an empty batch containing a {type(batch).__name__}; return tensors, "
        f"or lists/tuples/dicts of tensors, from the collate function"
    )


def _refuse_unsound_loader(data_loader: DataLoader) -> None:
    if isinstance(data_loader.dataset, IterableDataset):
        raise ValueError("Poisson sampling needs a map-style dataset, not an IterableDataset")
    sampler = getattr(data_loader, "sampler", None)
    batch_sampler = getattr(data_loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, DistributedSampler) or isinstance(inner, DistributedSampler):
        raise ValueError(
            "DistributedSampler pads each shard with duplicated examples, and a duplicated "
            "example has twice the inclusion probability, which the accountant does not "
            "know. Pass a plain DataLoader over the whole dataset and use "
            "DPDataLoader.from_data_loader(loader, distributed=True): every rank then "
            "Poisson-samples its own shard without padding."
        )


def _worker_options(data_loader: DataLoader) -> dict:
    """The DataLoader arguments that say how batches are loaded, not which: workers,
    pinning, timeout, worker init and prefetching (kept when sampling is replaced)."""
    options = dict(
        num_workers=data_loader.num_workers,
        pin_memory=data_loader.pin_memory,
        timeout=data_loader.timeout,
        worker_init_fn=data_loader.worker_init_fn,
        multiprocessing_context=data_loader.multiprocessing_context,
        persistent_workers=data_loader.persistent_workers,
    )
    if data_loader.num_workers > 0:  # DataLoader refuses prefetch_factor without workers
        options["prefetch_factor"] = data_loader.prefetch_factor
    return options


def _refuse_seed_in_secure_mode(seed, generator) -> None:
    if seed is not None or generator is not None:
        raise ValueError(
            "secure_mode draws Poisson masks from the OS CSPRNG; a seed or generator "
            "would make them reproducible, so neither may be given"
        )


def _distributed_shard_and_seed(seed: Optional[int], secure_mode: bool):
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs torch.distributed to be initialised first")
    rank, world = dist.get_rank(), dist.get_world_size()
    if not secure_mode:
        # All ranks must cut their masks from the same global mask.
        buf = torch.tensor([seed if seed is not None else 0], dtype=torch.int64)
        dist.broadcast(buf, src=0)
        seed = int(buf.item())
    return (rank, world), seed


class DPDataLoader(DataLoader):
    """A DataLoader with Poisson sampling and empty-batch support (Opacus-compatible).

    Args:
        dataset: a map-style dataset with at least one example.
        sample_rate: q in (0, 1].
        collate_fn: collate function (default ``default_collate``), wrapped by
            :class:`EmptyBatchCollate`.
        generator: torch.Generator that draws each epoch's base seed when the
            epoch starts (default torch's global generator).
        secure_mode: Poisson masks from the OS CSPRNG (no generator allowed).
        steps: batches per epoch (default round(1/q)).
        distributed: sample only this rank's shard (needs torch.distributed).
        seed: one base seed for every epoch, instead of drawing them (in
            distributed mode rank 0's seed, drawn once here when not given, is
            broadcast to all ranks and fixed).
        **kwargs: other DataLoader arguments (num_workers, pin_memory, ...);
            ``batch_size``, ``shuffle``, ``sampler``, ``batch_sampler`` and
            ``drop_last`` are refused, because they would replace Poisson sampling.

    Attributes:
        sample_rate: q, the per-example inclusion probability per step.
        batches_yielded: logical batches handed to the training loop so far
            (across epochs); incremented before each batch is yielded.
        logical_batch_samples: number of samples in the batch last handed out
            (the DP optimizer checks that each step clips exactly that many).
        expected_batch_size: q * N, N the whole dataset (also in distributed mode).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        sample_rate: float,
        collate_fn=None,
        generator: Optional[torch.Generator] = None,
        secure_mode: bool = False,
        steps: Optional[int] = None,
        distributed: bool = False,
        seed: Optional[int] = None,
        **kwargs,
    ):
        for key in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if kwargs.get(key) not in (None, False) and not (key == "batch_size" and kwargs[key] == 1):
                raise ValueError(f"DPDataLoader chooses batches by Poisson sampling; {key}= is not allowed")
            kwargs.pop(key, None)
        if isinstance(dataset, IterableDataset):
            raise ValueError("Poisson sampling needs a map-style dataset, not an IterableDataset")
        num_samples = len(dataset)
        if num_samples == 0:
            raise ValueError("cannot Poisson-sample from an empty dataset")
        if secure_mode:
            _refuse_seed_in_secure_mode(seed, generator)
        shard = None
        if distributed:
            if seed is None and not secure_mode:
                seed = int(torch.randint(0, _SEED_MASK, (1,), generator=generator).item())
            shard, seed = _distributed_shard_and_seed(seed, secure_mode)
            generator_for_seed = None
        else:
            generator_for_seed = generator
        sampler = PoissonBatchSampler(
            num_samples, sample_rate, steps=steps, seed=seed,
            generator=generator_for_seed,
            secure_mode=secure_mode, shard=shard,
        )
        if collate_fn is None:
            collate_fn = torch.utils.data.default_collate
        if not isinstance(collate_fn, EmptyBatchCollate):
            collate_fn = EmptyBatchCollate(collate_fn, dataset)
        super().__init__(dataset, batch_sampler=sampler, collate_fn=collate_fn, **kwargs)
        self.sample_rate = sampler.sample_rate
        self.secure_mode = sampler.secure_mode
        self.distributed = bool(distributed)
        self.batches_yielded = 0
        self.logical_batch_samples: Optional[int] = None
        self._epoch_start = 0
        self._resume_offset = 0

    @classmethod
    def from_data_loader(
        cls,
        data_loader: DataLoader,
        *,
        generator: Optional[torch.Generator] = None,
        secure_mode: bool = False,
        distributed: bool = False,
    ) -> "DPDataLoader":
        """A DPDataLoader over ``data_loader``'s dataset with q = 1 / len(data_loader).

        Keeps the loader's collate_fn, workers, pin_memory, timeout, worker
        init and prefetching; replaces its sampling. An epoch has
        ``len(data_loader)`` batches, of expected size q * N.

        Raises:
            ValueError: an IterableDataset, a DistributedSampler, or an empty loader.
        """
        if not isinstance(data_loader, DataLoader):
            raise TypeError(f"data_loader must be a torch DataLoader, got {type(data_loader).__name__}")
        _refuse_unsound_loader(data_loader)
        steps = len(data_loader)
        if steps == 0:
            raise ValueError("data_loader has no batches")
        kwargs = _worker_options(data_loader)
        collate = data_loader.collate_fn
        if isinstance(collate, EmptyBatchCollate):
            collate = collate.collate_fn
        return cls(
            data_loader.dataset,
            sample_rate=1.0 / steps,
            collate_fn=collate,
            generator=generator,
            secure_mode=secure_mode,
            steps=steps,
            distributed=distributed,
            **kwargs,
        )

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * len(self.dataset)

    def _next_window(self) -> Tuple[int, int]:
        """Set the sampler to the epoch that starts now (or the rest of a resumed one);
        returns its (first batch, count)."""
        steps = self.batch_sampler.steps
        offset = self._resume_offset if self._resume_offset < steps else 0
        self._resume_offset = 0
        self._epoch_start = self.batches_yielded - offset
        self.batch_sampler.set_window(self.batches_yielded, steps - offset,
                                      fresh_epoch=offset == 0)
        return self.batches_yielded, steps - offset

    def _resuming(self) -> bool:
        """The next epoch finishes one a checkpoint interrupted."""
        return 0 < self._resume_offset < self.batch_sampler.steps

    def __iter__(self):
        resuming = self._resuming()
        self._next_window()
        batches = _iterator(super().__iter__, keep_global_rng=resuming)
        for batch in batches:
            self.logical_batch_samples = self.batch_sampler.batch_sizes.pop(self.batches_yielded)
            self.batches_yielded += 1
            yield batch

    def __len__(self) -> int:
        return self.batch_sampler.steps

    def state_dict(self) -> dict:
        """Sampler state for checkpoints: the epoch's base seed and batches handed out.

        Epochs not yet started draw their seeds from the loader's generator or
        torch's global one: a checkpoint saves those too (``capture_state``)."""
        sampler = self.batch_sampler
        return {
            "kind": "poisson",
            "seed": sampler.seed,
            "secure_mode": sampler.secure_mode,
            "batches_yielded": self.batches_yielded,
            "epoch_offset": self.batches_yielded - self._epoch_start,
            "steps_per_epoch": sampler.steps,
            "num_samples": sampler.num_samples,
            "sample_rate": sampler.sample_rate,
            "shard": (sampler.rank, sampler.world_size),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the next epoch first finishes the saved one.

        Raises:
            ValueError: a state from another dataset size, sample rate, epoch
                length, world size or sampling mode.
        """
        if not isinstance(state, dict) or state.get("kind") != "poisson":
            raise ValueError("not a DPDataLoader state_dict")
        sampler = self.batch_sampler
        # Any rank's state fits every rank (seed and batch count are global), so a
        # checkpoint written by rank 0 resumes all ranks; the world size must match.
        for key, mine in (("num_samples", sampler.num_samples), ("sample_rate", sampler.sample_rate),
                          ("steps_per_epoch", sampler.steps), ("secure_mode", sampler.secure_mode),
                          ("world_size", sampler.world_size)):
            theirs = state["shard"][1] if key == "world_size" else state.get(key)
            if theirs != mine:
                raise ValueError(
                    f"data loader state was saved with {key}={theirs!r}, this loader has {mine!r}"
                )
        if not sampler.secure_mode:
            sampler.seed = None if state["seed"] is None else int(state["seed"])
        self.batches_yielded = int(state["batches_yielded"])
        self._resume_offset = int(state["epoch_offset"])
        self._epoch_start = self.batches_yielded - self._resume_offset


def _iterator(make, *, keep_global_rng: bool):
    """``make()``, a DataLoader iterator, with torch's global generator left as it was
    when ``keep_global_rng``.

    Making an iterator draws the workers' base seed from that generator. An
    uninterrupted run made the interrupted epoch's iterator before its
    checkpoint, so a resumed run must not draw again: the next epochs' base
    seeds come from the same generator.
    """
    if not keep_global_rng:
        return make()
    state = torch.get_rng_state()
    iterator = make()
    torch.set_rng_state(state)
    return iterator


class _PhysicalBatchSampler(Sampler[List[int]]):
    """Splits the logical batches of a DPDataLoader into chunks; records their positions."""

    def __init__(self, loader: DPDataLoader, max_batch_size: int,
                 flags: Deque[Tuple[bool, bool, int]]):
        self.loader = loader
        self.max_batch_size = max_batch_size
        self.flags = flags

    def __iter__(self):
        sampler = self.loader.batch_sampler
        first, count = self.loader._next_window()
        sampler.start_window()
        for t in range(first, first + count):
            indices = sampler.batch(t)
            chunks = max(1, math.ceil(len(indices) / self.max_batch_size))
            bounds = [round(i * len(indices) / chunks) for i in range(chunks + 1)]
            for c in range(chunks):
                self.flags.append((c == 0, c == chunks - 1, len(indices)))
                yield indices[bounds[c]:bounds[c + 1]]

    def __len__(self) -> int:
        expected = self.loader.expected_batch_size
        return math.ceil(len(self.loader) * max(1.0, expected / self.max_batch_size))


class BatchMemoryManager:
    """Context manager that caps the physical batch size of a Poisson loader.

    Each logical (Poisson) batch is split into near-equal physical batches of
    at most ``max_physical_batch_size`` examples. Before each physical batch
    is handed out, the optimizer is told ``signal_skip_step(do_skip=True)``
    unless it is the last of its logical batch, so ``optimizer.step()``
    performs one private step, and the accountant records one step, per
    logical batch. An empty logical batch is one (empty) physical batch and
    one step. The flags travel with the batches in the main process, so they
    stay right when worker processes prefetch.

    Example:
        >>> with BatchMemoryManager(data_loader=loader, max_physical_batch_size=64,
        ...                         optimizer=optimizer) as physical_loader:
        ...     for x, y in physical_loader:
        ...         criterion(model(x), y).backward()
        ...         optimizer.step()
        ...         optimizer.zero_grad()

    Any other DataLoader (``make_private(poisson_sampling=False)`` returns the
    user's own) works too, as in Opacus: each batch it yields is cut along
    dim 0 into near-equal physical batches of at most
    ``max_physical_batch_size``, with the same skip signals.

    Raises:
        TypeError: ``data_loader`` is not a DataLoader.
        ValueError: ``max_physical_batch_size`` < 1.
    """

    def __init__(self, data_loader: DataLoader, max_physical_batch_size: int, optimizer):
        if not isinstance(data_loader, DataLoader):
            raise TypeError(
                f"BatchMemoryManager needs a DataLoader, got {type(data_loader).__name__}")
        max_physical_batch_size = check_int("max_physical_batch_size", max_physical_batch_size, 1)
        if not hasattr(optimizer, "signal_skip_step"):
            raise TypeError("optimizer must be a DP optimizer with signal_skip_step()")
        self.data_loader = data_loader
        self.max_physical_batch_size = max_physical_batch_size
        self.optimizer = optimizer

    def __enter__(self):
        if not isinstance(self.data_loader, DPDataLoader):
            return _SplitBatchLoader(self.data_loader, self.max_physical_batch_size,
                                     self.optimizer)
        return _PhysicalBatchLoader(self.data_loader, self.max_physical_batch_size, self.optimizer)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.optimizer.signal_skip_step(do_skip=False)


class _PhysicalBatchLoader:
    """Iterable of physical batches; one pass is one epoch of the logical loader."""

    def __init__(self, loader: DPDataLoader, max_batch_size: int, optimizer):
        self.loader = loader
        self.optimizer = optimizer
        self.flags: Deque[Tuple[bool, bool, int]] = collections.deque()
        self.sampler = _PhysicalBatchSampler(loader, max_batch_size, self.flags)
        self._physical = DataLoader(
            loader.dataset, batch_sampler=self.sampler, collate_fn=loader.collate_fn,
            **_worker_options(loader)
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        self.flags.clear()
        batches = _iterator(self._physical.__iter__, keep_global_rng=self.loader._resuming())
        for batch in batches:
            is_first, is_last, logical_samples = self.flags.popleft()
            if is_first:
                self.loader.logical_batch_samples = logical_samples
                self.loader.batches_yielded += 1
            self.optimizer.signal_skip_step(do_skip=not is_last)
            yield batch


def _split(batch, chunks: int) -> list:
    """A batch (tensors, or lists/tuples/dicts of them) cut into ``chunks`` along dim 0."""
    if isinstance(batch, torch.Tensor):
        return list(batch.tensor_split(chunks))
    if isinstance(batch, collections.abc.Mapping):
        parts = {k: _split(v, chunks) for k, v in batch.items()}
        return [type(batch)({k: v[i] for k, v in parts.items()}) for i in range(chunks)]
    if isinstance(batch, (list, tuple)):
        parts = [_split(v, chunks) for v in batch]
        rows = [[p[i] for p in parts] for i in range(chunks)]
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):
            return [type(batch)(*r) for r in rows]
        return [type(batch)(r) for r in rows]
    raise TypeError(f"BatchMemoryManager cannot split a batch leaf of type {type(batch).__name__}")


def _batch_length(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, collections.abc.Mapping):
        return _batch_length(next(iter(batch.values())))
    return _batch_length(batch[0])


class _SplitBatchLoader:
    """Physical batches of a plain DataLoader: each of its batches cut into chunks."""

    def __init__(self, loader: DataLoader, max_batch_size: int, optimizer):
        self.loader = loader
        self.max_batch_size = max_batch_size
        self.optimizer = optimizer

    def __len__(self) -> int:
        size = self.loader.batch_size or self.max_batch_size
        return len(self.loader) * math.ceil(size / self.max_batch_size)

    def __iter__(self):
        for batch in self.loader:
            chunks = max(1, math.ceil(_batch_length(batch) / self.max_batch_size))
            for c, part in enumerate(_split(batch, chunks)):
                self.optimizer.signal_skip_step(do_skip=c < chunks - 1)
                yield part
