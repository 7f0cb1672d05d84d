"""DP-compatible replacements for layers that use their weights functionally.

``ModuleValidator.fix`` swaps them in; each is built from supported layers
(nn.Linear), so the per-sample rules cover every parameter.
``DPMultiheadAttention`` (dp_multihead_attention.py); ``DPLSTM``, ``DPGRU``,
``DPRNN`` and their cells (dp_rnn.py), resolved lazily (the ``TYPE_CHECKING``
block tells IDEs and type checkers what they are).
"""

import importlib
from typing import TYPE_CHECKING

from .dp_multihead_attention import DPMultiheadAttention

if TYPE_CHECKING:
    from .dp_rnn import (DPGRU, DPLSTM, DPRNN, DPGRUCell, DPLSTMCell, DPRNNBase, DPRNNCell,
                         DPRNNCellBase, convert_rnn)

_RNN = {"DPRNNBase", "DPLSTM", "DPGRU", "DPRNN", "DPRNNCellBase", "DPLSTMCell", "DPGRUCell",
        "DPRNNCell", "convert_rnn"}


# Hidden from type checkers, which read the TYPE_CHECKING imports instead and so
# flag a misspelt name rather than typing it Any.
if not TYPE_CHECKING:
    def __getattr__(name):
        if name in _RNN:
            return getattr(importlib.import_module(f"{__name__}.dp_rnn"), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(globals()) | _RNN)


__all__ = [
    "DPMultiheadAttention", "DPGRU", "DPGRUCell", "DPLSTM", "DPLSTMCell", "DPRNN",
    "DPRNNBase", "DPRNNCell", "DPRNNCellBase", "convert_rnn",
]
