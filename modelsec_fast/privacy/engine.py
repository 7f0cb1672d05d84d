"""PrivacyEngine: Opacus's entry point, on the book-keeping engine.

Switching from Opacus is one import::

    from modelsec_fast import PrivacyEngine      # was: from opacus import PrivacyEngine
    engine = PrivacyEngine()
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0)
    # unchanged loop: optimizer.zero_grad(); loss.backward(); optimizer.step()

Expected batch size: as in Opacus, E[B] = int(N * q) with q = 1/len(data_loader).
Passing ``expected_batch_size=`` is better practice: the divisor of the noisy
sum must be a public constant, and N (the private dataset's size) is not one
under add/remove-one adjacency; a value fixed in advance also survives a
change of dataset size across runs.

Distributed training: pass ``module=DPDDP(model)`` (from
:mod:`modelsec_fast.privacy.distributed`) on every rank, with a plain
DataLoader over the whole dataset. The engine then Poisson-samples this
rank's shard with the global q, sums the clipped gradients across ranks in
``step()`` and adds the noise on rank 0 only; E[B] and the accountant are
those of a single-process run over the whole dataset.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch.distributed as dist
from torch import nn, optim
from torch.nn.parallel import DistributedDataParallel

from ..validation import check_int, check_non_negative, check_positive
from .distributed import DifferentiallyPrivateDistributedDataParallel, attach_distributed
from .optimizer import DPOptimizer
from .per_sample.capture import PrivateModule
from .validate import ModuleValidator

# Opacus forwards these to its GradSampleModule; they tune machinery this engine
# does not have, so they are accepted (for unchanged Opacus code) and ignored.
_OPACUS_MODEL_KWARGS = frozenset({"strict", "force_functorch", "rand_on_empty"})
# Opacus's adaptive-clipping arguments (make_private(clipping="adaptive", ...))
_ADAPTIVE_KWARGS = frozenset({"target_unclipped_quantile", "clipbound_learning_rate",
                              "max_clipbound", "min_clipbound", "unclipped_num_std"})
_GRAD_SAMPLE_MODES = (None, "hooks", "ghost", "functorch", "ew", "bookkeeping")


def _dataset_size(dataset) -> Optional[int]:
    """N for the delta >= 1/N warning; None when unknown (no dataset, or no len())."""
    if dataset is None:
        return None
    try:
        return len(dataset)
    except TypeError:
        return None


class PrivacyEngine:
    """Keeps the privacy accountant and makes model/optimizer/loader private.

    Args:
        accountant: ``"pld"`` (default, tight), ``"rdp"`` or ``"prv"`` (see
            :mod:`modelsec_fast.accountants`).
        secure_mode: noise and Poisson masks from a ChaCha20 CSPRNG.
    """

    def __init__(self, *, accountant: str = "pld", secure_mode: bool = False):
        from modelsec_fast.accountants import create_accountant
        self.accountant = create_accountant(accountant)
        self.secure_mode = bool(secure_mode)
        self.dataset = None

    # -------------------------------------------------------------- helpers
    def _prepare_data_loader(self, data_loader, *, poisson_sampling: bool,
                             distributed: bool = False, generator=None):
        if not poisson_sampling and (distributed or generator is not None):
            what = "distributed training" if distributed else "sampler_generator"
            raise ValueError(
                f"{what} needs poisson_sampling=True: the engine shards the dataset across "
                "ranks and seeds the sampler only through its Poisson DPDataLoader")
        if self.dataset is None:
            self.dataset = data_loader.dataset
        elif self.dataset is not data_loader.dataset:
            warnings.warn("PrivacyEngine detected a new dataset object; accounting is per "
                          "dataset, use a new PrivacyEngine for a different dataset")
        if poisson_sampling:
            from .sampling import DPDataLoader
            return DPDataLoader.from_data_loader(data_loader, generator=generator,
                                                 secure_mode=self.secure_mode,
                                                 distributed=distributed)
        warnings.warn(
            "poisson_sampling=False: batches are not Poisson-sampled, so the epsilon this "
            "engine reports (which assumes Poisson sampling with q = 1/len(data_loader)) "
            "does NOT hold for this training run", UserWarning, stacklevel=3)
        return data_loader

    @staticmethod
    def _distributed_process_group(module):
        """(is_distributed, process group) for ``module``; refuse unsound wrappers.

        Raises:
            ValueError: torch's own DistributedDataParallel (it all-reduces the
                unclipped gradients during backward), or a DPDDP over a process
                subgroup (the Poisson shards are cut by the default group's ranks).
        """
        if isinstance(module, DistributedDataParallel):
            raise ValueError(
                "torch.nn.parallel.DistributedDataParallel all-reduces the unclipped "
                "gradients during backward, before per-sample clipping; wrap the model "
                "with modelsec_fast.privacy.distributed.DPDDP instead")
        if not isinstance(module, DifferentiallyPrivateDistributedDataParallel):
            return False, None
        group = getattr(module, "process_group", None)
        if group is not None and (dist.get_world_size(group) != dist.get_world_size()
                                  or dist.get_rank(group) != dist.get_rank()):
            raise ValueError(
                "DPDDP over a process subgroup is not supported: every rank of the default "
                "process group Poisson-samples its shard, so all of them must train")
        return True, group

    @staticmethod
    def _check_args(module, optimizer, noise_multiplier, max_grad_norm, loss_reduction,
                    clipping, grad_sample_mode):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(optimizer, optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if clipping not in ("flat", "per_layer", "adaptive"):
            raise ValueError(f"clipping must be 'flat', 'per_layer' or 'adaptive', got {clipping!r}")
        if grad_sample_mode not in _GRAD_SAMPLE_MODES:
            raise ValueError(f"unknown grad_sample_mode {grad_sample_mode!r}; accepted: "
                             f"{_GRAD_SAMPLE_MODES} (all run the book-keeping engine)")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        check_non_negative("noise_multiplier", noise_multiplier)
        if clipping != "per_layer":
            check_positive("max_grad_norm", max_grad_norm)
        model_params = {id(p) for p in module.parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in model_params:
                    raise ValueError("Module parameters are different than optimizer Parameters")

    # ----------------------------------------------------------- public API
    def make_private(self, *, module: nn.Module, optimizer: optim.Optimizer, data_loader,
                     noise_multiplier: float, max_grad_norm: float,
                     criterion=None, batch_first: bool = True, loss_reduction: str = "mean",
                     poisson_sampling: bool = True, clipping: str = "flat",
                     noise_generator=None, grad_sample_mode: Optional[str] = None,
                     expected_batch_size: Optional[int] = None, grad_scaler=None,
                     wrap_model: bool = True, sampler_generator=None,
                     keep_grad_sample: bool = False, **kwargs):
        """Make ``module``, ``optimizer`` and ``data_loader`` private (Opacus signature).

        Returns ``(module, optimizer, data_loader)``, or Opacus's 4-tuple
        ``(module, optimizer, criterion, data_loader)`` for ``grad_sample_mode="ghost"``
        (the criterion is returned unchanged: one ordinary backward suffices here).
        ``grad_sample_mode="ghost"`` is also the low-memory mode: each layer's
        per-sample norms come from whichever method needs less memory (ghost
        norms where Bu et al.'s rule 2T^2 <= p d says so, no kept per-sample
        gradients), where the default picks the faster one. The update is the
        same either way.

        ``clipping``: ``"flat"``, ``"per_layer"`` (``max_grad_norm`` a list,
        one bound per trainable parameter) or ``"adaptive"`` (Andrew et al.
        2021; pass Opacus's ``target_unclipped_quantile``,
        ``clipbound_learning_rate``, ``max_clipbound``, ``min_clipbound``,
        ``unclipped_num_std``; see :mod:`modelsec_fast.privacy.adaptive`).
        With ``poisson_sampling=False``, k backward passes before one step
        are divided by k * E[B] and charged as one step, as Opacus does; the
        sampler uses the DataLoader's ``generator`` when it has one (Opacus
        too), and torch's global generator seeds the noise, so
        ``torch.manual_seed`` reproduces a run outside secure mode.

        Extra options: ``expected_batch_size`` (public E[B]; default int(N/len(loader))),
        ``keep_grad_sample`` (store per-sample gradients as ``p.grad_sample``,
        Opacus's attribute; opt-in because they cost memory),
        ``grad_scaler`` (a ``torch.amp.GradScaler`` to unscale before clipping),
        ``sampler_generator`` (a ``torch.Generator`` that draws the Poisson
        sampler's base seed; default torch's global generator; refused in
        secure mode and with ``poisson_sampling=False``).

        Distributed: when ``module`` is a
        :class:`~modelsec_fast.privacy.distributed.DPDDP`, call this on every
        rank with a plain DataLoader over the whole dataset. The returned loader
        Poisson-samples this rank's shard with the global q = 1/len(data_loader)
        (the sampler seed comes from rank 0), the optimizer sums the clipped
        gradients of all ranks in ``step()`` and only rank 0 adds noise. E[B]
        and the accountant's q are the global ones, as in a single process (a
        given ``expected_batch_size`` must be the global one too).
        ``poisson_sampling=False`` is refused there.

        The layers of ``module`` are routed through the engine in place, so with
        ``wrap_model=False`` (Opacus's non-wrapping mode) keep using ``module``
        itself; the returned object then only serves ``cleanup()``.
        ``batch_first`` must match the model's layout (sample index on dim 0,
        or on dim 1 of sequence layers when False), as in Opacus. Unlike
        Opacus, each step checks that it clipped exactly as many samples as
        the returned loader's batch holds, which catches a mismatch (or samples
        duplicated into the batch) at the first step whose batch size differs
        from the sequence length; steps where the two coincide warn until then.

        Raises:
            ValueError / TypeError: invalid hyperparameters; ``UnsupportedModuleError``
            (a ValueError) for models the engine cannot train; torch's own
            ``DistributedDataParallel`` (use DPDDP).
        """
        unknown = set(kwargs) - _OPACUS_MODEL_KWARGS - _ADAPTIVE_KWARGS
        if unknown:
            raise TypeError(f"make_private() got unexpected keyword arguments {sorted(unknown)}")
        adaptive = {k: kwargs[k] for k in _ADAPTIVE_KWARGS if k in kwargs}
        if clipping == "adaptive" and set(adaptive) != _ADAPTIVE_KWARGS:
            raise ValueError(f"clipping='adaptive' needs {sorted(_ADAPTIVE_KWARGS - set(adaptive))}")
        if clipping != "adaptive" and adaptive:
            raise ValueError(f"{sorted(adaptive)} apply only to clipping='adaptive'")
        if sampler_generator is None and not self.secure_mode:
            # Opacus samples with the DataLoader's own generator when it has one
            sampler_generator = getattr(data_loader, "generator", None) \
                if poisson_sampling else None
        if noise_generator is not None and self.secure_mode:
            raise ValueError("Passing seed is prohibited in secure mode")
        self._check_args(module, optimizer, noise_multiplier, max_grad_norm, loss_reduction,
                         clipping, grad_sample_mode)
        distributed, process_group = self._distributed_process_group(module)
        if isinstance(module, PrivateModule):
            raise ValueError("module is already private; pass the plain model "
                             "(PrivateModule.cleanup() returns it)")
        ModuleValidator.validate(module, strict=True)
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        data_loader = self._prepare_data_loader(data_loader, poisson_sampling=poisson_sampling,
                                                distributed=distributed,
                                                generator=sampler_generator)
        n_batches = len(data_loader)
        if n_batches == 0:
            raise ValueError("data_loader has no batches")
        sample_rate = 1.0 / n_batches
        if expected_batch_size is None:
            # The whole dataset's N also in distributed mode: each rank divides by the
            # global E[B], and the all-reduce sums the ranks' shares.
            expected_batch_size = int(len(data_loader.dataset) * sample_rate)
            if expected_batch_size < 1:
                raise ValueError("expected batch size int(N * q) is 0; pass expected_batch_size")
        # Opacus's ghost clipping is its memory-saving mode: ours picks, layer by
        # layer, whichever norm method needs less memory
        private_module = PrivateModule(module, batch_first=batch_first,
                                       loss_reduction=loss_reduction,
                                       low_memory=grad_sample_mode == "ghost")
        options = dict(noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                       expected_batch_size=expected_batch_size, loss_reduction=loss_reduction,
                       generator=noise_generator, secure_mode=self.secure_mode,
                       keep_grad_sample=keep_grad_sample,
                       accumulation="logical" if poisson_sampling else "opacus")
        try:
            if clipping == "adaptive":
                from .adaptive import AdaptiveClipDPOptimizer
                dp_optimizer = AdaptiveClipDPOptimizer(optimizer, **options, **adaptive)
            else:
                dp_optimizer = DPOptimizer(optimizer, clipping=clipping, **options)
        except Exception:
            private_module.cleanup()
            raise
        dp_optimizer.logical_batch_source = data_loader
        if distributed:
            attach_distributed(dp_optimizer, process_group=process_group)
        if grad_scaler is not None:
            dp_optimizer.attach_grad_scaler(grad_scaler)
        accountant = self.accountant

        def account(opt, sample_rate=sample_rate):
            accountant.step(noise_multiplier=opt.noise_multiplier, sample_rate=sample_rate)

        dp_optimizer.attach_step_hook(account)
        if grad_sample_mode == "ghost":
            if criterion is None:
                criterion = nn.CrossEntropyLoss()  # Opacus's default
            return private_module, dp_optimizer, criterion, data_loader
        return private_module, dp_optimizer, data_loader

    def make_private_with_epsilon(self, *, module: nn.Module, optimizer: optim.Optimizer,
                                  data_loader, target_epsilon: float, target_delta: float,
                                  epochs: int, max_grad_norm: float, criterion=None,
                                  epsilon_tolerance: float = 0.01, **kwargs):
        """``make_private`` with sigma chosen so that epsilon(epochs) <= target_epsilon.

        The default accountant is PLD (Opacus defaults to PRV), so sigma may differ
        from Opacus's for the same target.

        Raises:
            ValueError: ``target_delta`` outside (0, 1), bad ``epochs`` or target
                epsilon. Warns (UserWarning) when ``target_delta`` >= 1/N.
        """
        from modelsec_fast.accountants import check_delta, get_noise_multiplier
        epochs = check_int("epochs", epochs, 1)
        target_delta = check_delta(
            target_delta, num_samples=_dataset_size(getattr(data_loader, "dataset", None)))
        sample_rate = 1.0 / len(data_loader)
        if len(self.accountant) > 0:
            warnings.warn("make_private_with_epsilon with privacy budget already spent: the "
                          "chosen noise assumes a fresh start, the total epsilon will be higher")
        sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=target_delta,
                                     sample_rate=sample_rate, epochs=epochs,
                                     accountant=self.accountant.mechanism(),
                                     epsilon_tolerance=epsilon_tolerance)
        return self.make_private(module=module, optimizer=optimizer, data_loader=data_loader,
                                 criterion=criterion, noise_multiplier=sigma,
                                 max_grad_norm=max_grad_norm, **kwargs)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``, from the accountant.

        Raises:
            ValueError: ``delta`` outside the open interval (0, 1);
                ``InfiniteEpsilonError`` (a ValueError) after steps with sigma = 0.
            TypeError: ``delta`` is not a real number.
        Warns (UserWarning) when ``delta`` >= 1/N for the dataset given to
        ``make_private`` (a guarantee that permits releasing a whole record).
        """
        from modelsec_fast.accountants import check_delta
        delta = check_delta(delta, num_samples=_dataset_size(self.dataset))
        return self.accountant.get_epsilon(delta=delta)

    @staticmethod
    def is_compatible(*, module: nn.Module, optimizer=None, data_loader=None) -> bool:
        return ModuleValidator.is_valid(module)

    @staticmethod
    def validate(*, module: nn.Module, optimizer=None, data_loader=None) -> None:
        ModuleValidator.validate(module, strict=True)

    @classmethod
    def get_compatible_module(cls, module: nn.Module) -> nn.Module:
        return ModuleValidator.fix_and_validate(module)

    def save_checkpoint(self, *, path, module, optimizer=None, **kwargs):
        """Delegates to :func:`modelsec_fast.privacy.checkpoint.save_checkpoint`."""
        from . import checkpoint
        return checkpoint.save_checkpoint(path=path, module=module, optimizer=optimizer,
                                          engine=self, **kwargs)

    def load_checkpoint(self, *, path, module, optimizer=None, **kwargs):
        """Delegates to :func:`modelsec_fast.privacy.checkpoint.load_checkpoint`."""
        from . import checkpoint
        return checkpoint.load_checkpoint(path=path, module=module, optimizer=optimizer,
                                          engine=self, **kwargs)


__all__ = ["PrivacyEngine"]
