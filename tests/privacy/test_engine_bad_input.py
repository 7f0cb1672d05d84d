"""Bad input gets a clear error, never a step that silently skips clipping."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy.validate import ModuleValidator, UnsupportedModuleError


def loader(n=20, shape=(4,), batch=5):
    return DataLoader(TensorDataset(torch.randn(n, *shape), torch.randint(0, 3, (n,))),
                      batch_size=batch)


def make(model, **kw):
    args = dict(noise_multiplier=1.0, max_grad_norm=1.0)
    args.update(kw)
    dl = args.pop("data_loader", None) or loader()
    return PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=dl,
        **args)


class CustomScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return x * self.scale


def test_batchnorm_rejected_with_fix_hint_and_fix_replaces_it():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedModuleError, match=r"'1'.*BatchNorm.*ModuleValidator.fix"):
        make(model)
    fixed = ModuleValidator.fix(model)
    assert isinstance(fixed[1], nn.GroupNorm) and fixed[1].num_groups == 8
    assert ModuleValidator.is_valid(fixed)
    assert isinstance(model[1], nn.BatchNorm2d)  # fix() copies


# A shared parameter and a trainable layer without a rule were refused here;
# both now train (tests/privacy/test_generic_path.py checks them against the
# ground truth). A frozen layer without a rule still gets no gradient at all.
def test_frozen_layer_without_rule_gets_no_gradient():
    frozen = CustomScale().requires_grad_(False)
    m, o, _ = make(nn.Sequential(frozen, nn.Linear(4, 3)))
    o.zero_grad()
    nn.functional.cross_entropy(m(torch.randn(3, 4)), torch.tensor([0, 1, 2])).backward()
    o.step()
    assert frozen.scale.grad is None


def test_multihead_attention_rejected_and_fixed():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    assert not ModuleValidator.is_valid(mha)
    assert ModuleValidator.is_valid(ModuleValidator.fix(mha))


def test_embedding_and_instancenorm_configurations():
    errs = ModuleValidator.validate(nn.Sequential(nn.Embedding(5, 3, sparse=True),
                                                  nn.Embedding(5, 3, scale_grad_by_freq=True)))
    assert any("sparse" in e for e in errs) and any("scale_grad_by_freq" in e for e in errs)
    inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    assert any("track_running_stats" in e for e in ModuleValidator.validate(inorm))
    assert ModuleValidator.is_valid(ModuleValidator.fix(inorm))


def test_reduction_none_loss_cannot_be_backpropagated():
    m, o, _ = make(nn.Linear(4, 3))
    o.zero_grad()
    loss = nn.functional.cross_entropy(m(torch.randn(5, 4)), torch.randint(0, 3, (5,)),
                                       reduction="none")
    with pytest.raises(RuntimeError, match="scalar outputs"):
        loss.backward()
    with pytest.raises(ValueError, match="without a backward"):
        o.step()


def test_non_finite_per_sample_gradient_raises():
    m, o, _ = make(nn.Linear(4, 3))
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    o.zero_grad()
    with pytest.raises(ValueError, match="sample 2 has a non-finite norm"):
        nn.functional.cross_entropy(m(x), torch.randint(0, 3, (5,))).backward()
    with pytest.raises(ValueError, match="non-finite"):
        o.step()


@pytest.mark.parametrize("kw,match", [
    ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
    ({"max_grad_norm": float("nan")}, "max_grad_norm must be finite"),
    ({"noise_multiplier": -0.1}, "noise_multiplier must be >= 0"),
    ({"clipping": "per_layer"}, "per_layer' needs max_grad_norm as a list of one bound per "
                                "trainable parameter \\(2\\)"),
    ({"clipping": "per_layer", "max_grad_norm": [1.0, 1.0, 1.0]}, r"parameter \(2\), got \[1"),
    ({"clipping": "percentile"}, "clipping must be 'flat', 'per_layer' or 'adaptive'"),
    ({"clipping": "adaptive"}, "needs .*target_unclipped_quantile"),
    ({"grad_sample_mode": "magic"}, "unknown grad_sample_mode"),
    ({"loss_reduction": "avg"}, "loss_reduction"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        make(nn.Linear(4, 3), **kw)


def test_optimizer_over_foreign_parameters_rejected():
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    with pytest.raises(ValueError, match="different than optimizer"):
        PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
            data_loader=loader(), noise_multiplier=1.0, max_grad_norm=1.0)


def test_parameter_used_outside_its_layer_is_refused():
    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) + x[:, :3] @ self.lin.weight[:, :3].t()

    m, o, _ = make(Leaky())
    o.zero_grad()
    nn.functional.cross_entropy(m(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
    with pytest.raises(ValueError, match="unclipped"):
        o.step()


def test_unused_trainable_layer_is_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x)

    m, o, _ = make(Unused())
    o.zero_grad()
    nn.functional.cross_entropy(m(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
    with pytest.raises(ValueError, match=r"b\.weight.*no per-sample gradient"):
        o.step()


def test_parameter_broadcast_over_the_batch_is_refused():
    class BroadcastPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = nn.Embedding(10, 4), nn.Embedding(6, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head((self.tok(x) + self.pos(torch.arange(x.shape[1]))).mean(1))

    dl = DataLoader(TensorDataset(torch.randint(0, 10, (20, 6)), torch.randint(0, 3, (20,))),
                    batch_size=5)
    m, o, _ = make(BroadcastPositions(), data_loader=dl)
    o.zero_grad()
    # refused at the forward (before: at the backward, as batches of 5 and 6)
    with pytest.raises(ValueError, match="cannot be shown to carry the sample index"):
        nn.functional.cross_entropy(m(torch.randint(0, 10, (5, 6))),
                                    torch.randint(0, 3, (5,))).backward()


def test_second_backward_through_the_same_forward_is_refused():
    m, o, _ = make(nn.Linear(4, 3))
    o.zero_grad()
    loss = nn.functional.cross_entropy(m(torch.randn(5, 4)), torch.randint(0, 3, (5,)))
    loss.backward(retain_graph=True)
    loss.backward()
    with pytest.raises(ValueError, match="second backward"):
        o.step()


def test_make_private_twice_on_the_same_model_is_refused():
    model = nn.Linear(4, 3)
    make(model)
    with pytest.raises(ValueError, match="already"):
        make(model)


@pytest.mark.parametrize("layer", [nn.LSTM(4, 5, batch_first=True), nn.GRU(4, 5),
                                   nn.RNN(4, 5), nn.LSTMCell(4, 5)])
def test_recurrent_layers_rejected_and_fixed(layer):
    errs = ModuleValidator.validate(nn.Sequential(layer))
    assert len(errs) == 1 and "ModuleValidator.fix" in errs[0]
    fixed = ModuleValidator.fix(nn.Sequential(layer))
    assert type(fixed[0]).__name__.startswith("DP") and ModuleValidator.is_valid(fixed)


def test_misspelled_keyword_is_refused_but_opacus_model_options_are_accepted():
    with pytest.raises(TypeError, match="sampler_generater"):
        make(nn.Linear(4, 3), sampler_generater=torch.Generator())
    make(nn.Linear(4, 3), strict=True, force_functorch=False)
