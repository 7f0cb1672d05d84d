"""DPMultiheadAttention: nn.MultiheadAttention through four nn.Linear layers.

``nn.MultiheadAttention`` applies ``in_proj_weight`` functionally, so no layer
rule sees it. This module computes the same function with separate q/k/v and
output ``nn.Linear`` projections, applied in the caller's layout (so with
``batch_first=False`` the model must be made private with
``make_private(batch_first=False)``, as in Opacus). Same constructor and forward signature as
``nn.MultiheadAttention``. ``add_bias_kv=True`` keeps torch's ``bias_k`` and
``bias_v`` (1, 1, E) parameters, appended to every sample's keys and values;
the generic per-sample path handles them (an additive broadcast). A state
dict of ``nn.MultiheadAttention`` (``in_proj_weight``/``in_proj_bias`` or the
separate ``q/k/v_proj_weight``) loads directly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DPMultiheadAttention(nn.Module):
    """Drop-in for ``nn.MultiheadAttention`` whose parameters live in nn.Linear layers."""

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=False,
                 device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        kw = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.add_zero_attn = add_zero_attn
        self.qlinear = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.klinear = nn.Linear(self.kdim, embed_dim, bias=bias, **kw)
        self.vlinear = nn.Linear(self.vdim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        # Attributes nn.TransformerEncoderLayer inspects; None disables its fused fast path.
        self.in_proj_weight = None
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)
        else:
            self.bias_k = self.bias_v = None
        self._register_load_state_dict_pre_hook(self._from_torch_layout)

    def _from_torch_layout(self, state_dict, prefix, *args):
        """Rename nn.MultiheadAttention's packed projection keys to this module's Linears."""
        packed_w = state_dict.pop(prefix + "in_proj_weight", None)
        if packed_w is not None:
            for name, part in zip("qkv", packed_w.chunk(3, dim=0)):
                state_dict[f"{prefix}{name}linear.weight"] = part
        for name in "qkv":
            w = state_dict.pop(f"{prefix}{name}_proj_weight", None)
            if w is not None:
                state_dict[f"{prefix}{name}linear.weight"] = w
        packed_b = state_dict.pop(prefix + "in_proj_bias", None)
        if packed_b is not None:
            for name, part in zip("qkv", packed_b.chunk(3)):
                state_dict[f"{prefix}{name}linear.bias"] = part

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "DPMultiheadAttention":
        """A DPMultiheadAttention computing the same function as ``mha`` (weights copied)."""
        ref = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout,
                  bias=mha.in_proj_bias is not None, add_bias_kv=mha.bias_k is not None,
                  add_zero_attn=mha.add_zero_attn,
                  kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first,
                  device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                q, k, v = mha.in_proj_weight.chunk(3, dim=0)
            else:
                q, k, v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            new.qlinear.weight.copy_(q)
            new.klinear.weight.copy_(k)
            new.vlinear.weight.copy_(v)
            if mha.in_proj_bias is not None:
                qb, kb, vb = mha.in_proj_bias.chunk(3)
                new.qlinear.bias.copy_(qb)
                new.klinear.bias.copy_(kb)
                new.vlinear.bias.copy_(vb)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
            if mha.bias_k is not None:
                new.bias_k.copy_(mha.bias_k)
                new.bias_v.copy_(mha.bias_v)
        new.train(mha.training)
        return new

    def _merged_mask(self, attn_mask, key_padding_mask, batch, tgt, src, dtype):
        """Additive float mask (B|1, H|1, T, S) from PyTorch's mask conventions, or None."""
        mask = None
        if attn_mask is not None:
            m = attn_mask
            if m.dtype == torch.bool:
                m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            m = m.to(dtype)
            if m.dim() == 2:
                m = m.view(1, 1, tgt, src)
            else:
                m = m.view(batch, self.num_heads, tgt, src)
            mask = m
        if key_padding_mask is not None:
            k = key_padding_mask
            if k.dtype == torch.bool:
                k = torch.zeros(k.shape, dtype=dtype, device=k.device).masked_fill(k, float("-inf"))
            k = k.to(dtype).view(batch, 1, 1, src)
            mask = k if mask is None else mask + k
        return mask

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if query.dim() != 3:
            raise ValueError(f"DPMultiheadAttention needs batched 3-D inputs, got {query.dim()}-D")
        # Projections run in the caller's layout, so every Linear sees the sample
        # index where the rest of the model has it (make_private(batch_first=...)).
        q, k, v = self.qlinear(query), self.klinear(key), self.vlinear(value)
        if self.bias_k is not None:  # one more key/value per sample, in the caller's layout
            bdim = 0 if self.batch_first else 1
            shape = list(k.shape)
            shape[bdim], shape[1 - bdim] = k.shape[bdim], 1
            k = torch.cat([k, self.bias_k.expand(shape)], 1 - bdim)
            v = torch.cat([v, self.bias_v.expand(shape)], 1 - bdim)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        if not self.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        batch, tgt, _ = q.shape
        h, hd = self.num_heads, self.head_dim
        q = q.reshape(batch, tgt, h, hd).transpose(1, 2)
        k = k.reshape(batch, k.shape[1], h, hd).transpose(1, 2)
        v = v.reshape(batch, v.shape[1], h, hd).transpose(1, 2)
        if self.add_zero_attn:
            zeros = q.new_zeros(batch, h, 1, hd)
            k, v = torch.cat([k, zeros], 2), torch.cat([v, zeros], 2)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))
            if key_padding_mask is not None:
                key_padding_mask = F.pad(key_padding_mask, (0, 1))
        src = k.shape[2]
        mask = self._merged_mask(attn_mask, key_padding_mask, batch, tgt, src, q.dtype)
        causal = bool(is_causal) and mask is None
        p_drop = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
            if causal:
                upper = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(upper, float("-inf"))
            elif mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            out = F.dropout(weights, p_drop, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop,
                                                 is_causal=causal)
            weights = None
        out = out.transpose(1, 2).reshape(batch, tgt, self.embed_dim)
        if not self.batch_first:
            out = out.transpose(0, 1)
        out = self.out_proj(out)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights
