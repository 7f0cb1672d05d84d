"""DPLSTM, DPGRU, DPRNN (and their cells): torch's recurrent layers from nn.Linear.

PyTorch's recurrent layers keep their weights as flat raw parameters and run
them in one fused kernel, so no per-sample rule can see them. These modules
compute the same functions with one ``nn.Linear`` per weight matrix and
direction, so the engine's Linear rule covers every parameter:

* ``ih`` (input -> gates) is applied once to the whole sequence;
* ``hh`` (hidden -> gates) is applied once per time step on (B, H) inputs; the
  engine records the steps as one call along time (``hidden_product``), which
  gives the exact per-sample gradient sum_t g_t h_{t-1}^T;
* ``hr`` (LSTM ``proj_size``: hidden -> projection, no bias) once per step.

Same constructor, forward signature, gate order, initialisation and shapes as
the torch modules: ``batch_first``, ``num_layers``, ``bidirectional``,
``dropout``, ``bias``, ``proj_size`` (LSTM), ``nonlinearity`` (RNN),
unbatched inputs and ``PackedSequence`` inputs. ``state_dict()`` uses torch's
key names (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...), so checkpoints move
both ways between an ``nn.LSTM`` and a ``DPLSTM``; ``from_module`` converts a
torch module with its weights. ``DPLSTMCell`` / ``DPGRUCell`` / ``DPRNNCell``
replace ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` the same way, and
``convert_rnn`` maps any of the six torch modules to its replacement.

Packed sequences run every sequence for the full padded length and freeze the
state of finished sequences with a mask, so every Linear call sees the whole
batch (the engine needs one sample count per pass) and padded steps get an
exactly zero gradient.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...validation import check_in_range, check_int
from ..per_sample.capture import OWNER_ATTR
from ..per_sample.linear import hidden_product

__all__ = ["DPRNNBase", "DPLSTM", "DPGRU", "DPRNN", "DPRNNCellBase", "DPLSTMCell",
           "DPGRUCell", "DPRNNCell", "convert_rnn"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _engine_batch_dim(linear: nn.Linear) -> int | None:
    """The sample dimension the DP engine assumes for a 3-D input of ``linear``.

    None when no engine manages the layer (any layout is then fine).
    """
    owner = getattr(linear.weight, OWNER_ATTR, None)
    return None if owner is None else owner[0].batch_dim


class RecurrentDirection(nn.Module):
    """The Linear layers of one layer and one direction of a recurrent network.

    ``ih``: (input_size -> gates * hidden_size), ``hh``: (state_size -> gates *
    hidden_size), ``hr``: (hidden_size -> proj_size, no bias) or None, where
    state_size is proj_size when projecting, else hidden_size.
    """

    def __init__(self, input_size: int, hidden_size: int, gates: int, proj_size: int,
                 bias: bool, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        state_size = proj_size or hidden_size
        self.ih = nn.Linear(input_size, gates * hidden_size, bias=bias, **kw)
        self.hh = nn.Linear(state_size, gates * hidden_size, bias=bias, **kw)
        self.hr = nn.Linear(hidden_size, proj_size, bias=False, **kw) if proj_size else None


# (submodule attribute, parameter) -> torch's key stem; the layer suffix follows
_TORCH_STEMS = (("ih", "weight", "weight_ih"), ("hh", "weight", "weight_hh"),
                ("ih", "bias", "bias_ih"), ("hh", "bias", "bias_hh"),
                ("hr", "weight", "weight_hr"))


def _name_pairs(module: nn.Module, path: str = "", suffix: str = ""):
    """(our key, torch's key) for the Linear layers of one direction or cell.

    ``module`` holds ``ih``, ``hh`` and optionally ``hr``; ``path`` is its key
    prefix inside the DP module, ``suffix`` what torch appends (``_l0_reverse``).
    """
    for sub, pname, stem in _TORCH_STEMS:
        owner = getattr(module, sub, None)
        if owner is not None and getattr(owner, pname, None) is not None:
            yield f"{path}{sub}.{pname}", f"{stem}{suffix}"


# A step takes hh(h), the hidden product W_hh h + b_hh (a cell's ``hh`` module, or
# a recurrence's :func:`hidden_product` at the current step).
def _lstm_step(cell, hh, projected, h, c):
    """projected: (B, 4H) = W_ih x_t + b_ih; h: (B, proj or H); c: (B, H)."""
    i, f, g, o = (projected + hh(h)).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    if getattr(cell, "hr", None) is not None:
        h = cell.hr(h)
    return h, c


def _gru_step(cell, hh, projected, h, c):
    """projected: (B, 3H); torch's gate order r, z, n; b_hn stays inside r * (.)."""
    xr, xz, xn = projected.chunk(3, dim=1)
    hr, hz, hn = hh(h).chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def _tanh_step(cell, hh, projected, h, c):
    return torch.tanh(projected + hh(h)), None


def _relu_step(cell, hh, projected, h, c):
    return torch.relu(projected + hh(h)), None


_STEPS = {"LSTM": _lstm_step, "GRU": _gru_step, "RNN_TANH": _tanh_step, "RNN_RELU": _relu_step}


def _state_dict_to_torch_names(module, state_dict, prefix, local_metadata):
    for ours, theirs in module._torch_name_pairs():
        if prefix + ours in state_dict:
            state_dict[prefix + theirs] = state_dict.pop(prefix + ours)


def _state_dict_from_torch_names(module, state_dict, prefix, local_metadata, strict,
                                 missing_keys, unexpected_keys, error_msgs):
    for ours, theirs in module._torch_name_pairs():
        if prefix + theirs in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + theirs)


def _check_state(owner: nn.Module, name: str, t, expected: tuple, x) -> None:
    """Raise a clear error unless ``t`` is a tensor of shape ``expected`` and x's dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{type(owner).__name__}: {name} must be a Tensor, "
                        f"got {type(t).__name__}")
    if tuple(t.shape) != expected:
        raise ValueError(f"{type(owner).__name__}: {name} must have shape {expected}, "
                         f"got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"{type(owner).__name__}: {name} dtype {t.dtype} differs "
                        f"from the input's {x.dtype}")


class _TorchCompatible:
    """What the DP modules share with their torch originals: initialisation,
    torch's state-dict key names, and conversion from a torch module."""

    #: the torch module type this class replaces
    _torch_type: type = nn.Module

    def _use_torch_key_names(self) -> None:
        self.register_state_dict_post_hook(_state_dict_to_torch_names)
        self.register_load_state_dict_pre_hook(_state_dict_from_torch_names)

    def reset_parameters(self) -> None:
        """torch's initialisation: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-bound, bound)

    @classmethod
    def _constructor_args(cls, module) -> dict:
        """Keyword arguments that rebuild ``module``'s configuration."""
        ref = next(module.parameters())
        return {"input_size": module.input_size, "hidden_size": module.hidden_size,
                "bias": module.bias, "device": ref.device, "dtype": ref.dtype}

    @classmethod
    def from_module(cls, module: nn.Module):
        """A DP module computing the same function as the torch ``module`` (weights,
        ``requires_grad`` flags, device, dtype and train/eval mode copied).

        Raises:
            TypeError: ``module`` is not the matching torch type, or a subclass
                that overrides ``forward`` (its forward would be lost).
        """
        expected = cls._torch_type
        if not isinstance(module, expected):
            raise TypeError(f"{cls.__name__}.from_module expects nn.{expected.__name__}, "
                            f"got {type(module).__name__}")
        if type(module).forward is not expected.forward:
            raise TypeError(f"{type(module).__name__} overrides forward; {cls.__name__} "
                            "would not reproduce it")
        new = cls(**cls._constructor_args(module))
        new.load_state_dict(module.state_dict())
        ours = dict(new.named_parameters())
        for mine, theirs in new._torch_name_pairs():
            ours[mine].requires_grad_(getattr(module, theirs).requires_grad)
        new.train(module.training)
        return new


class DPRNNBase(_TorchCompatible, nn.Module):
    """Shared machinery of DPLSTM, DPGRU and DPRNN (see the module docstring).

    ``mode`` is one of "LSTM", "GRU", "RNN_TANH", "RNN_RELU" (as torch's RNNBase).
    """

    _torch_type: type = nn.RNNBase

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"unknown recurrent mode {mode!r}; expected one of {list(_GATES)}")
        input_size = check_int("input_size", input_size, 1)
        hidden_size = check_int("hidden_size", hidden_size, 1)
        num_layers = check_int("num_layers", num_layers, 1)
        dropout = check_in_range("dropout", dropout, 0.0, 1.0)
        proj_size = check_int("proj_size", proj_size, 0)
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between recurrent layers, so dropout > 0 with "
                          f"num_layers=1 has no effect (dropout={dropout})", stacklevel=3)
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size is only supported for LSTM, not RNN or GRU")
        if proj_size >= hidden_size:
            raise ValueError(
                f"proj_size ({proj_size}) must be smaller than hidden_size ({hidden_size})")
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        gates = _GATES[mode]
        out_size = self.proj_size or self.hidden_size
        directions = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else out_size * directions
            for suffix in self._suffixes():
                setattr(self, f"l{layer}{suffix}", RecurrentDirection(
                    layer_in, self.hidden_size, gates, self.proj_size, self.bias,
                    device=device, dtype=dtype))
        self.reset_parameters()
        self._use_torch_key_names()

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _torch_name_pairs(self):
        """(our key, torch's key) for every parameter, in torch's order."""
        for layer in range(self.num_layers):
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                yield from _name_pairs(getattr(self, name), f"{name}.", f"_{name}")

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch's cuDNN modules (nothing to flatten here)."""

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Per layer and direction, the parameters in torch's order."""
        params = dict(self.named_parameters())
        out, current, key = [], [], None
        for ours, theirs in self._torch_name_pairs():
            stem_key = ours.split(".")[0]
            if stem_key != key and current:
                out.append(current)
                current = []
            key = stem_key
            current.append(params[ours])
        if current:
            out.append(current)
        return out

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    @classmethod
    def _constructor_args(cls, module) -> dict:
        return {**super()._constructor_args(module), "num_layers": module.num_layers,
                "batch_first": module.batch_first, "dropout": module.dropout,
                "bidirectional": module.bidirectional}

    def forward(self, input, hx=None):
        """Same contract as the torch module.

        input: (T, B, input_size) ((B, T, input_size) if ``batch_first``),
        (T, input_size) unbatched, or a PackedSequence.
        hx: initial state(s) of shape (num_layers * D, B, size) (unbatched:
        (num_layers * D, size)); zeros when None. LSTM takes (h_0, c_0).

        Returns (output, h_n) ((output, (h_n, c_n)) for LSTM); output has
        D * (proj_size or hidden_size) features.

        Raises:
            TypeError: input is not a floating tensor or PackedSequence.
            ValueError: wrong input rank, feature size or empty sequence, or hx of
                the wrong shape.
        """
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lengths = pad_packed_sequence(input)
            batched = True
            mask = (torch.arange(x.shape[0]).unsqueeze(1) < lengths.unsqueeze(0)).to(x.device)
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{type(self).__name__} input must be a Tensor or "
                                f"PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: expected a 3-D batched or 2-D "
                                 f"unbatched input, got shape {tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            mask = None
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} input must be floating point, got {x.dtype}")
        steps, batch, features = x.shape
        if features != self.input_size:
            raise ValueError(f"{type(self).__name__}: input has {features} features, "
                             f"expected input_size={self.input_size}")
        if steps == 0:
            raise ValueError(f"{type(self).__name__}: the sequence length must be positive")
        h0, c0 = self._initial_state(hx, batch, batched, x)
        output, h_n, c_n = self._run_layers(x, h0, c0, mask)
        if packed:
            if input.sorted_indices is not None:
                output = output.index_select(1, input.sorted_indices)
                lengths = lengths.index_select(0, input.sorted_indices.cpu())
            data = pack_padded_sequence(output, lengths).data
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1).contiguous()
        return output, ((h_n, c_n) if self.mode == "LSTM" else h_n)

    def _state_shape(self, batch: int, size: int, batched: bool) -> tuple[int, ...]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        return (layers, batch, size) if batched else (layers, size)

    def _checked_state(self, name: str, t, batch: int, size: int, batched: bool, x):
        """``t`` validated and shaped (layers * D, B, size)."""
        _check_state(self, name, t, self._state_shape(batch, size, batched), x)
        return t if batched else t.unsqueeze(1)

    def _initial_state(self, hx, batch: int, batched: bool, x):
        """(h0, c0) as (layers * D, B, size) tensors; c0 is None except for LSTM."""
        out_size = self.proj_size or self.hidden_size
        if hx is None:
            h0 = x.new_zeros(self._state_shape(batch, out_size, True))
            c0 = x.new_zeros(self._state_shape(batch, self.hidden_size, True)) \
                if self.mode == "LSTM" else None
            return h0, c0
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{type(self).__name__}: hx must be a tuple (h_0, c_0)")
            return (self._checked_state("h_0", hx[0], batch, out_size, batched, x),
                    self._checked_state("c_0", hx[1], batch, self.hidden_size, batched, x))
        return self._checked_state("hx", hx, batch, out_size, batched, x), None

    def _run_layers(self, x, h0, c0, mask):
        """x: (T, B, input_size) -> (output (T, B, D*out), h_n, c_n or None)."""
        directions = 2 if self.bidirectional else 1
        layer_input, h_n, c_n = x, [], []
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                k = layer * directions + d
                out, h, c = self._run_direction(
                    getattr(self, f"l{layer}{suffix}"), layer_input, h0[k],
                    None if c0 is None else c0[k], reverse=d == 1, mask=mask)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        return (layer_input, torch.stack(h_n),
                torch.stack(c_n) if self.mode == "LSTM" else None)

    def _run_direction(self, cell: RecurrentDirection, x, h, c, *, reverse: bool, mask):
        """One layer, one direction over (T, B, F) -> ((T, B, out), h_T, c_T)."""
        # GRU: b_hn and W_hn h stay inside r * (.), the hidden product is not additive
        projected, hh = hidden_product(cell.hh, self._project_sequence(cell.ih, x),
                                       additive=self.mode != "GRU")
        # unbind, not projected[t]: its backward stacks the T step gradients once,
        # where T selects would each scatter into a zeroed (T, B, G) buffer
        projected = projected.unbind(0)
        steps = x.shape[0]
        outputs = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            h_new, c_new = _STEPS[self.mode](cell, partial(hh, t), projected[t], h, c)
            if mask is None:
                h, c = h_new, c_new
                outputs[t] = h
            else:
                m = mask[t].unsqueeze(1)
                # finished sequences keep their state; their padded steps get zero gradient
                h = torch.where(m, h_new, h)
                c = None if c is None else torch.where(m, c_new, c)
                outputs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
        return torch.stack(outputs), h, c

    @staticmethod
    def _project_sequence(linear: nn.Linear, x):
        """linear over the whole (T, B, F) sequence, laid out as the DP engine expects."""
        if _engine_batch_dim(linear) == 0:
            return linear(x.transpose(0, 1)).transpose(0, 1)
        return linear(x)


class DPLSTM(DPRNNBase):
    """Drop-in for ``nn.LSTM`` (same signature, including ``proj_size``)."""

    _torch_type = nn.LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device=device, dtype=dtype)

    @classmethod
    def _constructor_args(cls, module) -> dict:
        return {**super()._constructor_args(module), "proj_size": module.proj_size}


class DPGRU(DPRNNBase):
    """Drop-in for ``nn.GRU`` (``proj_size`` is accepted only as 0, like torch)."""

    _torch_type = nn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device=device, dtype=dtype)


class DPRNN(DPRNNBase):
    """Drop-in for ``nn.RNN``; ``nonlinearity`` is the 4th positional argument, as in torch."""

    _torch_type = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None):
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; select 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, proj_size,
                         device=device, dtype=dtype)

    @classmethod
    def _constructor_args(cls, module) -> dict:
        return {**super()._constructor_args(module), "nonlinearity": module.nonlinearity}


class DPRNNCellBase(_TorchCompatible, nn.Module):
    """One recurrent step (``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``) through
    two nn.Linear layers, ``ih`` and ``hh``.

    A cell called once per time step in a user's loop is a Linear called T times
    per forward; the Linear rule sums those calls per sample.
    """

    _torch_type: type = nn.RNNCellBase

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        input_size = check_int("input_size", input_size, 1)
        hidden_size = check_int("hidden_size", hidden_size, 1)
        self.mode = mode
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bool(bias)
        kw = {"device": device, "dtype": dtype}
        gates = _GATES[mode]
        self.ih = nn.Linear(self.input_size, gates * self.hidden_size, bias=self.bias, **kw)
        self.hh = nn.Linear(self.hidden_size, gates * self.hidden_size, bias=self.bias, **kw)
        self.reset_parameters()
        self._use_torch_key_names()

    def _torch_name_pairs(self):
        return _name_pairs(self)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s

    def _checked_state(self, name: str, t, batch: int, batched: bool, x):
        """``t`` validated and shaped (B, H)."""
        expected = (batch, self.hidden_size) if batched else (self.hidden_size,)
        _check_state(self, name, t, expected, x)
        return t if batched else t.unsqueeze(0)

    def forward(self, input, hx=None):
        """input: (B, input_size) or (input_size,); hx: (B, H) / (H,) state(s),
        zeros when None ((h, c) for LSTMCell). Returns h' ((h', c') for LSTMCell).

        Raises:
            TypeError: input not a floating tensor; hx of the wrong kind or dtype.
            ValueError: wrong input rank or feature size; hx of the wrong shape.
        """
        name = type(self).__name__
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{name} input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: expected a 2-D batched or 1-D unbatched input, "
                             f"got shape {tuple(input.shape)}")
        if not input.is_floating_point():
            raise TypeError(f"{name} input must be floating point, got {input.dtype}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{name}: input has {input.shape[-1]} features, "
                             f"expected input_size={self.input_size}")
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        batch = x.shape[0]
        if hx is None:
            h = x.new_zeros(batch, self.hidden_size)
            c = h if self.mode == "LSTM" else None
        elif self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0)")
            h = self._checked_state("h_0", hx[0], batch, batched, x)
            c = self._checked_state("c_0", hx[1], batch, batched, x)
        else:
            h, c = self._checked_state("hx", hx, batch, batched, x), None
        h, c = _STEPS[self.mode](self, self.hh, self.ih(x), h, c)
        if not batched:
            h = h.squeeze(0)
            c = None if c is None else c.squeeze(0)
        return (h, c) if self.mode == "LSTM" else h


class DPLSTMCell(DPRNNCellBase):
    """Drop-in for ``nn.LSTMCell``."""

    _torch_type = nn.LSTMCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, bias, device=device, dtype=dtype)


class DPGRUCell(DPRNNCellBase):
    """Drop-in for ``nn.GRUCell``."""

    _torch_type = nn.GRUCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, bias, device=device, dtype=dtype)


class DPRNNCell(DPRNNCellBase):
    """Drop-in for ``nn.RNNCell`` (same argument order: bias before nonlinearity)."""

    _torch_type = nn.RNNCell

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype=None):
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; select 'tanh' or 'relu'")
        self.nonlinearity = nonlinearity
        super().__init__(modes[nonlinearity], input_size, hidden_size, bias,
                         device=device, dtype=dtype)

    @classmethod
    def _constructor_args(cls, module) -> dict:
        return {**super()._constructor_args(module), "nonlinearity": module.nonlinearity}


_REPLACEMENTS = (DPLSTM, DPGRU, DPRNN, DPLSTMCell, DPGRUCell, DPRNNCell)


def convert_rnn(module: nn.Module) -> nn.Module:
    """The DP replacement of a torch recurrent module, weights copied.

    nn.LSTM / nn.GRU / nn.RNN -> DPLSTM / DPGRU / DPRNN and nn.LSTMCell /
    nn.GRUCell / nn.RNNCell -> DPLSTMCell / DPGRUCell / DPRNNCell.

    Raises:
        TypeError: for any other module, or a subclass overriding ``forward``.
    """
    for dp_type in _REPLACEMENTS:
        if isinstance(module, dp_type._torch_type):
            return dp_type.from_module(module)
    raise TypeError("convert_rnn expects nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell "
                    f"or nn.RNNCell, got {type(module).__name__}")
