"""Data-parallel DP-SGD across processes with ``torch.distributed``.

Usage, on every rank after ``torch.distributed.init_process_group``::

    model, optimizer, loader = PrivacyEngine().make_private(
        module=DPDDP(model), optimizer=optimizer,
        data_loader=DataLoader(whole_dataset, batch_size=global_expected_batch_size),
        noise_multiplier=1.0, max_grad_norm=1.0)

(:func:`make_private_distributed` does the same and wraps the model itself.)

Plain ``DistributedDataParallel`` all-reduces autograd's own, unclipped
gradients during backward: a single example's influence would then leave its
rank before it is clipped. Here nothing is reduced during backward. Each rank

1. Poisson-samples its own shard of the dataset (no padding; see
   :mod:`.sampling`), with the *global* sample rate q;
2. clips per sample and sums, as in single-process training;
3. in ``optimizer.step()``, after the 1/E[B] scale, all-reduces (sums) the
   clipped sums through the optimizer's ``grad_all_reduce`` hook, so every
   rank applies the same update.

Noise is added on rank 0 only (``optimizer.adds_noise``), so the summed
gradient carries exactly one N(0, (sigma C)^2) draw per coordinate, divided by
the global expected batch size E[B] = q N. The accountant is the one of a
single-process run with the same q: the union of the ranks' Poisson samples
is one Poisson sample of the whole dataset.

The code only calls ``torch.distributed.broadcast`` / ``all_reduce`` on
tensors where they live, so it is backend-agnostic: gloo on CPU is tested
here; nccl on GPU follows the same path but cannot be tested on this
machine.
"""

from typing import Callable, List, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DifferentiallyPrivateDistributedDataParallel",
    "DPDDP",
    "attach_distributed",
    "make_private_distributed",
]


def _require_process_group() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "distributed DP-SGD needs torch.distributed.init_process_group(...) to be called first"
        )


class DifferentiallyPrivateDistributedDataParallel(nn.Module):
    """Opacus's DPDDP: syncs the model at construction, reduces nothing in backward.

    Broadcasts every parameter and buffer from rank 0 so all ranks start from
    the same model. Gradients are combined later, by the DP optimizer, after
    per-sample clipping (see :func:`attach_distributed`).

    Raises:
        ValueError: torch.distributed is not initialised.
    """

    def __init__(self, module: nn.Module, process_group=None):
        super().__init__()
        _require_process_group()
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0, group=process_group)
        self.module = module
        # The DP optimizer's all-reduce runs over this group (PrivacyEngine.make_private).
        self.process_group = process_group

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


DPDDP = DifferentiallyPrivateDistributedDataParallel


def _sum_across_ranks(process_group) -> Callable[[List[torch.Tensor]], None]:
    def all_reduce(grads: List[Optional[torch.Tensor]]) -> None:
        tensors = [g for g in grads if g is not None]
        if not tensors:
            return
        # One collective per dtype/device bucket instead of one per parameter.
        buckets = {}
        for t in tensors:
            buckets.setdefault((t.dtype, t.device), []).append(t)
        for bucket in buckets.values():
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    return all_reduce


def attach_distributed(optimizer, *, process_group=None, noise_rank: int = 0) -> None:
    """Make a DP optimizer sum clipped gradients across ranks, with noise once.

    Sets ``optimizer.adds_noise`` (True only on ``noise_rank``) and
    ``optimizer.grad_all_reduce`` (sums the scaled, noised gradients of all
    ranks before the inner step). ``optimizer.expected_batch_size`` must be
    the *global* E[B] = q N, which ``make_private`` computes from the whole
    dataset.

    Raises:
        ValueError: no process group, or an optimizer without the hooks.
    """
    _require_process_group()
    for attr in ("adds_noise", "grad_all_reduce"):
        if not hasattr(optimizer, attr):
            raise ValueError(f"optimizer has no {attr!r} attribute: pass the DPOptimizer from make_private")
    world = dist.get_world_size(group=process_group)
    if not 0 <= noise_rank < world:
        raise ValueError(f"noise_rank must lie in [0, {world}), got {noise_rank}")
    optimizer.adds_noise = dist.get_rank(group=process_group) == noise_rank
    optimizer.grad_all_reduce = _sum_across_ranks(process_group) if world > 1 else None


def make_private_distributed(
    engine,
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: torch.utils.data.DataLoader,
    generator: Optional[torch.Generator] = None,
    process_group=None,
    **make_private_kwargs,
):
    """``engine.make_private`` for data-parallel training on every rank.

    A thin alias: wraps ``module`` in :class:`DPDDP` (rank 0's weights
    everywhere) unless it already is one, then calls
    ``engine.make_private(module=DPDDP(module), ...)``, which samples this
    rank's shard with the global sample rate q = 1/len(data_loader) and
    attaches the all-reduce and rank-0 noise (see :func:`attach_distributed`).
    Call it on every rank with the same arguments, ``data_loader`` being a
    plain DataLoader over the *whole* dataset (batch_size = the global
    expected batch size).

    Args:
        engine: a PrivacyEngine.
        generator: draws the Poisson sampler's base seed on rank 0 (then
            broadcast); must be None in secure mode. Passed to make_private
            as ``sampler_generator``.
        process_group: the group of a new DPDDP wrapper (default: the world).
        **make_private_kwargs: noise_multiplier, max_grad_norm, loss_reduction, ...

    Returns:
        (module, optimizer, data_loader), as ``make_private``.

    Raises:
        ValueError: no process group, a DPDDP with another process group, a
            DistributedSampler, or bad arguments.
    """
    _require_process_group()
    if not isinstance(module, DifferentiallyPrivateDistributedDataParallel):
        module = DifferentiallyPrivateDistributedDataParallel(module, process_group)
    elif process_group is not None and module.process_group is not process_group:
        raise ValueError("module is a DPDDP over another process group than process_group")
    return engine.make_private(module=module, optimizer=optimizer, data_loader=data_loader,
                               sampler_generator=generator, **make_private_kwargs)
