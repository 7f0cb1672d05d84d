"""The generic per-sample path, tied parameters, broadcast inputs and the batch-index checks.

Ground truths are per-sample backward passes (``parity.check_parity``) in
float64, except where the forward is random (dropout): there the truth is
computed from the masks of the forward that ran.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy import ModuleValidator
from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule, rule_for
from parity import check_parity

F64 = dict(rtol=1e-10, atol=1e-13)


class Scale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x):
        return x * self.gamma


class DerivedWeight(nn.Module):
    """Parameters transformed before use: p.t(), p * 2 are replayed per sample."""

    def __init__(self, d, k):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d, k) / d ** 0.5)
        self.b = nn.Parameter(torch.zeros(k))

    def forward(self, x):
        return F.linear(x, (self.w * 2).t(), self.b)


def _f64(make):
    return lambda: make().double()


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Sequential(nn.Linear(6, 6), Scale(6), nn.Tanh(), nn.Linear(6, 3)), (6,)),
    (lambda: nn.Sequential(DerivedWeight(6, 5), nn.Tanh(), nn.Linear(5, 3)), (6,)),
    (lambda: nn.Sequential(nn.EmbeddingBag(12, 5, mode="mean"), nn.Linear(5, 3)), None),
])
def test_generic_path_matches_ground_truth(make, shape, random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    if shape is None:
        x = torch.randint(0, 12, (7, 4), generator=gen)
    else:
        x = torch.randn(7, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=gen)
    check_parity(_f64(make), x, y, max_grad_norm=0.3, **F64)


class TiedLM(nn.Module):
    """Embedding and output head sharing one weight (both trainable)."""

    def __init__(self, vocab=11, d=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.emb(ids)))).mean(1)


def test_tied_parameter_sums_its_uses_before_the_norm(random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    ids = torch.randint(0, 11, (6, 4), generator=gen)
    y = torch.randint(0, 11, (6,), generator=gen)
    check_parity(_f64(TiedLM), ids, y, max_grad_norm=0.2, **F64)


def test_frozen_tied_parameter_is_not_refused():
    model = TiedLM()
    model.emb.weight.requires_grad_(False)  # frozen, like a LoRA model's tied head
    assert ModuleValidator.validate(model) == []
    dl = DataLoader(TensorDataset(torch.randint(0, 11, (20, 4)), torch.randint(0, 11, (20,))),
                    batch_size=5)
    m, o, dl = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.mix.parameters(), lr=0.1),
        data_loader=dl, noise_multiplier=1.0, max_grad_norm=1.0)
    for ids, y in dl:
        o.zero_grad()
        F.cross_entropy(m(ids), y).backward()
        o.step()
        break
    assert model.emb.weight.grad is None and model.mix.weight.grad is not None


class DropoutScale(nn.Module):
    """A generic-path module with dropout inside: y = dropout(x) @ W^T."""

    def __init__(self, d, k):
        super().__init__()
        self.w = nn.Parameter(torch.randn(k, d) / d ** 0.5)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return F.linear(self.drop(x), self.w)


def test_generic_path_with_dropout_equals_the_forward_that_ran(random_seed):
    torch.manual_seed(random_seed)
    model = nn.Sequential(DropoutScale(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    masks = []
    model[0].drop.register_forward_hook(lambda m, i, o: masks.append((o != 0).double() * 2.0))
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    C = 0.2
    pm = PrivateModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=C, expected_batch_size=8)
    opt.zero_grad()
    F.cross_entropy(pm(x), y).backward()
    opt.step()
    got = [p.grad.clone() for p in model.parameters()]
    pm.cleanup()
    (mask,) = masks
    # ground truth of that forward: the same masks, one sample at a time
    params = [p.detach().requires_grad_() for p in model.parameters()]
    total = [torch.zeros_like(p) for p in params]
    for i in range(8):
        h = torch.tanh(F.linear(x[i:i + 1] * mask[i:i + 1], params[0]))
        loss = F.cross_entropy(F.linear(h, params[1], params[2]), y[i:i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        c = min(1.0, C / (float(norm) + 1e-6))
        for t, g in zip(total, grads):
            t += c * g / 8
    for g, t in zip(got, total):
        torch.testing.assert_close(g, t, rtol=1e-10, atol=1e-13)


class InPlaceUpdate(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x):
        with torch.no_grad():
            self.w.mul_(0.5)
        return x * self.w


class ParameterOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x), self.w * 2  # the second output is the same for every sample


class SetItem(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x):
        self.w[0] = 2.0
        return x * self.w


@pytest.mark.parametrize("module", [InPlaceUpdate, SetItem])
def test_impure_generic_module_gets_a_clear_error_naming_the_layer(module):
    pm = PrivateModule(nn.Sequential(module(), nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=rf"layer '0' \({module.__name__}\).*updated in place"):
        pm(torch.randn(5, 4))
    pm.cleanup()


def test_parameter_leaving_the_forward_unbatched_is_refused():
    pm = PrivateModule(ParameterOutput())
    with pytest.raises(ValueError, match=r"layer '<root>' \(ParameterOutput\).*\['w'\] "
                                         r"leave the forward without meeting the batch"):
        pm(torch.randn(5, 4))
    pm.cleanup()


def test_parameter_added_to_every_sample_has_a_per_sample_gradient(random_seed):
    class AddSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(-1, 1, 4))
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) + self.w.square().sum()

    gen = torch.Generator().manual_seed(random_seed)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    check_parity(_f64(AddSum), x, torch.randint(0, 3, (6,), generator=gen), max_grad_norm=0.2,
                 **F64)


class PositionModel(nn.Module):
    """nanoGPT-style: token embedding plus a position embedding of arange(T)."""

    def __init__(self, vocab=10, steps=6, d=4, batched_positions=False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(steps, d)
        self.head = nn.Linear(d, 3)
        self.batched_positions = batched_positions

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        if self.batched_positions:
            pos = pos[None]  # (1, T): the way Hugging Face models call it
        return self.head((self.tok(ids) + self.pos(pos)).mean(1))


def test_nanogpt_position_embedding_with_batch_equal_to_t_is_refused():
    """B == T, poisson_sampling=False: the step was accepted and 35% off before."""
    steps = 6
    dl = DataLoader(TensorDataset(torch.randint(0, 10, (24, steps)), torch.randint(0, 3, (24,))),
                    batch_size=steps)
    model = PositionModel(steps=steps)
    with pytest.warns(UserWarning, match="poisson_sampling=False"):
        m, o, dl = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=dl, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    ids, y = next(iter(dl))
    assert ids.shape == (steps, steps)
    o.zero_grad()
    with pytest.raises(ValueError, match="'pos'.*cannot be shown to carry the sample index"):
        F.cross_entropy(m(ids), y).backward()


def test_position_embedding_called_with_a_batch_of_one_matches_ground_truth(random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    ids = torch.randint(0, 10, (6, 6), generator=gen)  # B == T: still exact
    y = torch.randint(0, 3, (6,), generator=gen)
    check_parity(_f64(lambda: PositionModel(batched_positions=True)), ids, y,
                 max_grad_norm=0.1, **F64)


def test_one_dimensional_token_ids_that_are_the_model_input_are_accepted(random_seed):
    gen = torch.Generator().manual_seed(random_seed)
    ids = torch.randint(0, 10, (7,), generator=gen)
    y = torch.randint(0, 3, (7,), generator=gen)
    check_parity(_f64(lambda: nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))), ids, y,
                 max_grad_norm=0.1, **F64)


class SameLayerNorm(nn.LayerNorm):
    """Overrides forward with the same function (as timm's LayerNorm does)."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """Overrides forward with another function: LayerNorm over dim 1 of (B, C, L)."""

    def forward(self, x):
        return F.layer_norm(x.transpose(1, 2), self.normalized_shape, self.weight, self.bias,
                            self.eps).transpose(1, 2)


def test_subclass_with_the_same_function_uses_the_rule_else_the_generic_path(random_seed):
    from modelsec_fast.privacy.per_sample.norms import LayerNormRule
    assert isinstance(rule_for(SameLayerNorm(5)), LayerNormRule)
    assert rule_for(ChannelsFirstLayerNorm(5)) is None
    gen = torch.Generator().manual_seed(random_seed)
    x = torch.randn(6, 5, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=gen)

    def make(norm):
        return lambda: nn.Sequential(norm(5), nn.Flatten(), nn.Linear(15, 3)).double()

    check_parity(make(SameLayerNorm), x.transpose(1, 2).contiguous(), y, max_grad_norm=0.2,
                 **F64)
    check_parity(make(ChannelsFirstLayerNorm), x, y, max_grad_norm=0.2, **F64)


def test_batchnorm_is_refused_with_the_reason_even_without_affine():
    errors = ModuleValidator.validate(nn.Sequential(nn.BatchNorm1d(4, affine=False)))
    assert len(errors) == 1 and "statistics of the other samples" in errors[0]


def _opacus_layers():
    return pytest.importorskip("opacus.layers")


class _RecurrentNet(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.rnn = cls(4, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("name", ["DPLSTM", "DPGRU", "DPRNN"])
def test_opacus_recurrent_layers_are_accepted_as_they_are(name, random_seed):
    cls = getattr(_opacus_layers(), name)
    assert ModuleValidator.validate(_RecurrentNet(cls)) == []
    gen = torch.Generator().manual_seed(random_seed)
    x = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    check_parity(_f64(lambda: _RecurrentNet(cls)), x, torch.randint(0, 3, (6,), generator=gen),
                 max_grad_norm=0.1, **F64)


@pytest.mark.parametrize("batch_first", [True, False])
def test_opacus_sequence_bias_is_accepted_as_it_is(batch_first, random_seed):
    from opacus.layers.dp_multihead_attention import SequenceBias
    _opacus_layers()
    dim = 1 if batch_first else 0

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.sb = SequenceBias(4, batch_first=batch_first)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.tanh(self.sb(x)).mean(dim))

    torch.manual_seed(random_seed)
    model = Net().double()
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    y = torch.randint(0, 3, (6,))
    C = 0.05
    per = []
    for i in range(6):
        xi = x[i:i + 1] if batch_first else x[:, i:i + 1]
        per.append(torch.autograd.grad(F.cross_entropy(model(xi), y[i:i + 1]),
                                       list(model.parameters())))
    truth = [sum(min(1.0, C / (float(torch.sqrt(sum((g ** 2).sum() for g in gs))) + 1e-6))
                 * gs[k] for gs in per) / 6 for k in range(len(per[0]))]
    pm = PrivateModule(model, batch_first=batch_first)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=C, expected_batch_size=6)
    opt.zero_grad()
    F.cross_entropy(pm(x), y).backward()
    opt.step()
    for p, t in zip(model.parameters(), truth):
        torch.testing.assert_close(p.grad, t, rtol=1e-10, atol=1e-13)
    pm.cleanup()
