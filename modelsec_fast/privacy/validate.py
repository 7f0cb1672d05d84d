"""ModuleValidator: which models the DP engine can train, and automatic fixes.

Mirrors ``opacus.validators.ModuleValidator``: ``validate(module, strict=False)``
returns (or with ``strict=True`` raises) the list of problems,
``is_valid(module)``, and ``fix(module)`` which returns a fixed deep copy:

* BatchNorm (any) -> GroupNorm(gcd(32, C), C) (or InstanceNorm with
  ``replace_bn_with_in=True``): BatchNorm mixes the samples of a batch.
* nn.MultiheadAttention -> :class:`~modelsec_fast.privacy.layers.DPMultiheadAttention`
  (the same computation through nn.Linear layers, weights copied).
* nn.LSTM / GRU / RNN and their cells -> DPLSTM / DPGRU / DPRNN (and cells)
  from :mod:`modelsec_fast.privacy.layers.dp_rnn`, weights copied.
* InstanceNorm with ``track_running_stats=True`` -> ``track_running_stats=False``.

Rejected: BatchNorm (its batch statistics mix the samples, which no
per-sample method can undo); torch's fused recurrent layers and
nn.MultiheadAttention (``fix`` swaps in DP versions); rule-specific
configurations (e.g. Embedding ``sparse=True``). Trainable layers without a
rule take the generic per-sample path; parameters shared between layers
(tied weights) are supported. Warns when a LoRA model trains its base layers.
"""

from __future__ import annotations

import copy
import math
import warnings

from torch import nn

from .per_sample import rule_for


class UnsupportedModuleError(ValueError):
    """A model the DP engine cannot train with a valid guarantee; lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("the model is not compatible with DP-SGD:\n  - " + "\n  - ".join(errors))


_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)
_RECURRENT = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


def _warn_trainable_lora_base(module: nn.Module) -> None:
    """Warn when a LoRA model (peft) also trains its base weights, usually by mistake."""
    count = 0
    for sub in module.modules():
        base = getattr(sub, "base_layer", None)
        if isinstance(base, nn.Module) and hasattr(sub, "lora_A"):
            count += sum(p.numel() for p in base.parameters() if p.requires_grad)
    if count:
        warnings.warn(
            f"this LoRA model also trains {count} parameters of its base layers "
            "(requires_grad=True): they are clipped and noised like the adapters, which "
            "costs memory and utility; freeze them unless that is intended "
            "(peft's get_peft_model does)", UserWarning, stacklevel=4)


def _describe(name: str, module: nn.Module) -> str:
    return f"layer {name or '<root>'!r} ({type(module).__name__})"


class ModuleValidator:
    """Checks and fixes models for the DP engine (Opacus's API)."""

    @classmethod
    def validate(cls, module: nn.Module, *, strict: bool = False) -> list[str]:
        """Problems with ``module`` as messages naming the layer and the fix.

        Raises:
            UnsupportedModuleError: when ``strict`` and there is a problem.
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        errors: list[str] = []
        for name, sub in module.named_modules():
            where = _describe(name, sub)
            if isinstance(sub, _BATCHNORM):
                errors.append(
                    f"{where}: BatchNorm normalises each sample with statistics of the other "
                    "samples in its batch (running statistics too, even without affine "
                    "parameters), so a sample's influence is not confined to its own "
                    "gradient and per-sample clipping cannot bound it. Fix: "
                    "ModuleValidator.fix(model) replaces it with GroupNorm")
                continue
            if isinstance(sub, nn.MultiheadAttention):
                errors.append(
                    f"{where}: nn.MultiheadAttention uses its projection weights "
                    "functionally, so per-sample gradients cannot be captured. Fix: "
                    "ModuleValidator.fix(model) swaps in DPMultiheadAttention")
                continue
            if isinstance(sub, _RECURRENT) and any(p.requires_grad for p in sub.parameters()):
                errors.append(
                    f"{where}: torch's recurrent layers run their weights in one fused "
                    "kernel, so per-sample gradients cannot be captured. Fix: "
                    "ModuleValidator.fix(model) swaps in the DP version "
                    "(DPLSTM / DPGRU / DPRNN and cells), built from nn.Linear")
                continue
            own = list(sub.named_parameters(recurse=False))
            trainable = [pname for pname, p in own if p.requires_grad]
            if not trainable:
                continue
            rule = rule_for(sub)
            if rule is None:
                continue  # the generic per-sample path (per_sample/generic.py)
            known = {n for n, _ in rule.present_params(sub)}
            extra = [n for n in trainable if n not in known]
            if extra:
                errors.append(f"{where}: parameters {extra} are not covered by its rule")
            for msg in rule.validate(sub):
                errors.append(f"{where}: {msg}")
        _warn_trainable_lora_base(module)
        if strict and errors:
            raise UnsupportedModuleError(errors)
        return errors

    @classmethod
    def is_valid(cls, module: nn.Module) -> bool:
        return not cls.validate(module)

    @classmethod
    def fix(cls, module: nn.Module, **kwargs) -> nn.Module:
        """A deep copy of ``module`` with the known-fixable layers replaced.

        Keyword options (as Opacus): ``replace_bn_with_in`` (bool),
        ``num_groups`` (int, GroupNorm groups for replaced BatchNorms).
        """
        if kwargs.get("replace_bn_with_in") and kwargs.get("num_groups") is not None:
            raise ValueError("replace_bn_with_in and num_groups are mutually exclusive")
        module = copy.deepcopy(module)
        replacement = _fix_one(module, kwargs)
        if replacement is not None:
            return replacement
        cls._fix_children(module, kwargs)
        return module

    @classmethod
    def _fix_children(cls, module, kwargs):
        for name, child in list(module.named_children()):
            replacement = _fix_one(child, kwargs)
            if replacement is not None:
                setattr(module, name, replacement)
            else:
                cls._fix_children(child, kwargs)

    @classmethod
    def fix_and_validate(cls, module: nn.Module, **kwargs) -> nn.Module:
        fixed = cls.fix(module, **kwargs)
        cls.validate(fixed, strict=True)
        return fixed


def _fix_one(module: nn.Module, kwargs) -> nn.Module | None:
    if isinstance(module, _BATCHNORM):
        c = module.num_features
        if kwargs.get("replace_bn_with_in"):
            dim = {nn.BatchNorm1d: nn.InstanceNorm1d, nn.BatchNorm2d: nn.InstanceNorm2d,
                   nn.BatchNorm3d: nn.InstanceNorm3d}.get(type(module), nn.InstanceNorm2d)
            return dim(c, affine=module.affine)
        groups = kwargs.get("num_groups") or math.gcd(32, c)
        return nn.GroupNorm(groups, c, affine=module.affine)
    if isinstance(module, nn.MultiheadAttention):
        from .layers import DPMultiheadAttention
        return DPMultiheadAttention.from_multihead_attention(module)
    if type(module) in _RECURRENT:
        from .layers.dp_rnn import convert_rnn
        return convert_rnn(module)
    if isinstance(module, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) \
            and module.track_running_stats:
        fixed = copy.deepcopy(module)
        fixed.track_running_stats = False
        fixed.running_mean = None
        fixed.running_var = None
        return fixed
    return None
