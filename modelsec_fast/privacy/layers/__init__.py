"""DP-compatible replacements for layers that use their weights functionally.

``ModuleValidator.fix`` swaps them in; each is built from supported layers
(nn.Linear), so the per-sample rules cover every parameter.
``DPMultiheadAttention`` (dp_multihead_attention.py); ``DPLSTM``, ``DPGRU``,
``DPRNN`` and their cells (dp_rnn.py), resolved lazily.
"""

import importlib

from .dp_multihead_attention import DPMultiheadAttention

_RNN = {"DPRNNBase", "DPLSTM", "DPGRU", "DPRNN", "DPRNNCellBase", "DPLSTMCell", "DPGRUCell",
        "DPRNNCell", "convert_rnn"}


def __getattr__(name):
    if name in _RNN:
        return getattr(importlib.import_module(f"{__name__}.dp_rnn"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DPMultiheadAttention", *sorted(_RNN)]
