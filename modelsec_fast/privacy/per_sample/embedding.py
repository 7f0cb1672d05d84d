"""nn.Embedding (dense gradients).

Sample i's gradient is sum_t onehot(idx_it) g_it^T: rows of equal index add up.
Its squared norm is computed exactly without a (V, p) tensor per sample: key
each token by (sample, index), sum the output-gradient rows of equal keys
(``index_add``), square, and sum per sample. ``padding_idx`` tokens get no
gradient, as in PyTorch. The clipped sum scatters factor-scaled rows into the
(V, p) table (book-keeping). Calls of one forward are concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerRule, batch_first, flat_rows, layout_meta, opmath, release, row_sq_norms
from .registry import register_rule


class _EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight, recorder, padding_idx, max_norm, norm_type):
        ctx.recorder = recorder
        ctx.save_for_backward(idx)
        return F.embedding(idx, weight, padding_idx, max_norm, norm_type)

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        rec = ctx.recorder
        bdim = rec.state.batch_dim if idx.dim() > 1 else 0
        rec.capture(ctx, (idx, grad_out), idx.shape[bdim] if idx.dim() else 1,
                    ctx.needs_input_grad[1:2], layout_meta(idx, bdim, sequence=idx.dim() > 1))
        return None, None, None, None, None, None


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule):
    param_names = ("weight",)

    def validate(self, module):
        errors = []
        if module.sparse:
            errors.append("sparse=True gradients are not supported; use sparse=False")
        if module.scale_grad_by_freq:
            errors.append("scale_grad_by_freq=True scales gradients by batch-wide "
                          "token counts, which mixes samples; use scale_grad_by_freq=False")
        return errors

    def forward(self, module, recorder, input):
        if input.dim() < 1:
            raise ValueError(f"Embedding layer {recorder.name!r}: needs a batched index tensor")
        if input.dim() == 1 and not recorder.state.views_model_input(input):
            # (B,) token ids and (T,) position ids broadcast over the batch look alike,
            # and agree in size when B == T: accepting the latter clips positions
            raise ValueError(
                f"Embedding layer {recorder.name!r} got a 1-D index tensor of length "
                f"{input.shape[0]} that is not a view of the model's input, so it cannot "
                "be shown to carry the sample index: ids shared by all samples (e.g. "
                "positions from torch.arange(T)) have no per-sample gradient in that "
                "shape. Give it a batch dimension: (1, T) for ids shared by every sample "
                "(the engine expands them over the batch), (B, ...) for per-sample ids")
        return _EmbeddingFunction.apply(input, module.weight, recorder, module.padding_idx,
                                        module.max_norm, module.norm_type)

    def _flat(self, module, calls, batch_dim):
        acc = opmath(calls[0].tensors[1].dtype)
        idx, rows = [], []
        for c in calls:
            i, g = c.tensors
            if i.dim() == 1:
                i, g = i.unsqueeze(1), g.unsqueeze(1)
            else:
                i, g = batch_first(i, batch_dim), batch_first(g, batch_dim)
            b = i.shape[0]
            idx.append(flat_rows(i))
            rows.append(g.reshape(b, idx[-1].shape[1], g.shape[-1]).to(acc))
        idx = torch.cat(idx, 1) if len(idx) > 1 else idx[0]
        rows = torch.cat(rows, 1) if len(rows) > 1 else rows[0]
        batch, steps = idx.shape
        owner = torch.arange(batch, device=idx.device).repeat_interleave(steps)
        idx = idx.reshape(-1)
        rows = rows.reshape(-1, rows.shape[-1])
        if module.padding_idx is not None:
            keep = idx != module.padding_idx
            idx, rows, owner = idx[keep], rows[keep], owner[keep]
        return batch, idx, rows, owner

    def sq_norms(self, module, calls, mask, batch_dim):
        batch, idx, rows, owner = self._flat(module, calls, batch_dim)
        release(calls)  # the cache holds the flattened indices and rows
        vocab = module.weight.shape[0]
        keys, inverse = torch.unique(owner * vocab + idx, return_inverse=True)
        summed = rows.new_zeros(keys.shape[0], rows.shape[1]).index_add_(0, inverse, rows)
        sq = rows.new_zeros(batch).index_add_(0, keys // vocab, row_sq_norms(summed))
        return sq, (idx, rows, owner)

    def example_input(self, module):
        return torch.randint(0, module.num_embeddings, (2, 3), device=module.weight.device)

    def per_sample_grads(self, module, calls, mask, batch_dim):
        batch, idx, rows, owner = self._flat(module, calls, batch_dim)
        release(calls)
        vocab, width = module.weight.shape
        table = rows.new_zeros(batch * vocab, width).index_add_(0, owner * vocab + idx, rows)
        return {"weight": table.reshape(batch, vocab, width)}

    def clipped_sums(self, module, calls, mask, batch_dim, cache, factors):
        idx, rows, owner = cache
        scaled = rows * factors.to(rows.dtype)[owner].unsqueeze(1)
        table = rows.new_zeros(module.weight.shape).index_add_(0, idx, scaled)
        return {"weight": table}
