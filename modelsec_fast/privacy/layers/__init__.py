"""DP-compatible replacements for layers that use their weights functionally.

``ModuleValidator.fix`` swaps them in; each is built from supported layers
(nn.Linear), so the per-sample rules cover every parameter.
"""

from .dp_multihead_attention import DPMultiheadAttention

__all__ = ["DPMultiheadAttention"]
