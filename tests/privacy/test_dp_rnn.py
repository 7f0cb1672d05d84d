"""DPLSTM / DPGRU / DPRNN and their cells: torch's function, exact DP parity, bad input.

Equivalence: weights copied from a torch module (``from_module``), outputs and
final states compared in float64 (rtol 1e-12). Parity: with noise 0, the
private gradient equals the slow per-sample ground truth (rtol 1e-10, float64),
for both sample layouts of the engine and of the module, packed sequences,
user loops over a cell, accumulation and empty batches; fp32 at rtol 1e-4,
atol 1e-6 (gradients here are O(1e-3..1)).
"""

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from parity import check_parity, ground_truth
from modelsec_fast.privacy.layers.dp_rnn import (
    DPGRU, DPGRUCell, DPLSTM, DPLSTMCell, DPRNN, DPRNNCell, convert_rnn)
from modelsec_fast.privacy.optimizer import DPOptimizer
from modelsec_fast.privacy.per_sample import PrivateModule
from modelsec_fast.privacy.validate import ModuleValidator

FAST = settings(max_examples=6, deadline=None)
F64 = dict(rtol=1e-10, atol=1e-13)
EXACT = dict(rtol=1e-12, atol=1e-13)

TORCH_TYPES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


def make_torch_rnn(kind, d, h, *, layers=1, bidirectional=False, batch_first=False,
                   bias=True, proj=0):
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
              bias=bias)
    if kind == "LSTM":
        return nn.LSTM(d, h, proj_size=proj, **kw).double()
    if kind == "GRU":
        return nn.GRU(d, h, **kw).double()
    return nn.RNN(d, h, nonlinearity="relu" if kind == "RNN_RELU" else "tanh", **kw).double()


def assert_same_outputs(ours, theirs):
    out_a, state_a = ours
    out_b, state_b = theirs
    if isinstance(out_b, nn.utils.rnn.PackedSequence):
        assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
        out_a, out_b = out_a.data, out_b.data
    torch.testing.assert_close(out_a, out_b, **EXACT)
    states_a = state_a if isinstance(state_a, tuple) else (state_a,)
    states_b = state_b if isinstance(state_b, tuple) else (state_b,)
    assert len(states_a) == len(states_b)
    for a, b in zip(states_a, states_b):
        torch.testing.assert_close(a, b, **EXACT)


# ---- equivalence with torch -------------------------------------------------

@FAST
@given(kind=st.sampled_from(list(TORCH_TYPES)), b=st.integers(1, 4), t=st.integers(1, 6),
       d=st.integers(1, 5), h=st.integers(2, 6), layers=st.integers(1, 2),
       bidirectional=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
       with_hx=st.booleans(), seed=st.integers(0, 2**16))
def test_outputs_match_torch_module(kind, b, t, d, h, layers, bidirectional, batch_first,
                                    bias, with_hx, seed):
    torch.manual_seed(seed)
    proj = 1 if kind == "LSTM" and seed % 2 else 0
    ref = make_torch_rnn(kind, d, h, layers=layers, bidirectional=bidirectional,
                         batch_first=batch_first, bias=bias, proj=proj)
    ours = convert_rnn(ref)
    shape = (b, t, d) if batch_first else (t, b, d)
    x = torch.randn(*shape, dtype=torch.float64)
    hx = None
    if with_hx:
        n = layers * (2 if bidirectional else 1)
        h0 = torch.randn(n, b, proj or h, dtype=torch.float64)
        hx = (h0, torch.randn(n, b, h, dtype=torch.float64)) if kind == "LSTM" else h0
    assert_same_outputs(ours(x, hx), ref(x, hx))


@pytest.mark.parametrize("kind", list(TORCH_TYPES))
def test_unbatched_non_contiguous_input_matches_torch(kind):
    torch.manual_seed(1)
    ref = make_torch_rnn(kind, 3, 5, layers=2, bidirectional=True)
    ours = convert_rnn(ref)
    x = torch.randn(3, 7, dtype=torch.float64).t()  # (T=7, d=3), non-contiguous
    assert_same_outputs(ours(x), ref(x))
    xb = torch.randn(2, 4, 3, dtype=torch.float64).transpose(0, 1)  # (T, B, d) view
    assert_same_outputs(ours(xb), ref(xb))


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_matches_torch(kind, enforce_sorted):
    torch.manual_seed(2)
    ref = make_torch_rnn(kind, 3, 4, layers=2, bidirectional=True, proj=2 if kind == "LSTM" else 0)
    ours = convert_rnn(ref)
    lengths = torch.tensor([5, 5, 3, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 5, 4])
    x = torch.randn(int(lengths.max()), len(lengths), 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    n = 4
    hx = torch.randn(n, len(lengths), 2 if kind == "LSTM" else 4, dtype=torch.float64)
    if kind == "LSTM":
        hx = (hx, torch.randn(n, len(lengths), 4, dtype=torch.float64))
    got, want = ours(packed, hx), ref(packed, hx)
    assert_same_outputs(got, want)
    if not enforce_sorted:
        assert torch.equal(got[0].sorted_indices, want[0].sorted_indices)
        assert torch.equal(got[0].unsorted_indices, want[0].unsorted_indices)


def test_eval_mode_dropout_matches_torch_and_train_mode_drops():
    torch.manual_seed(3)
    ref = nn.LSTM(3, 4, num_layers=3, dropout=0.5).double().eval()
    ours = convert_rnn(ref)
    assert not ours.training
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    assert_same_outputs(ours(x), ref(x))
    ours.train()
    torch.manual_seed(0)
    a = ours(x)[0]
    torch.manual_seed(1)
    b = ours(x)[0]
    assert not torch.allclose(a, b)


def test_state_dict_moves_both_ways_between_torch_and_dp_modules():
    torch.manual_seed(4)
    ours = DPLSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).double()
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).double()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())  # strict: same keys and shapes
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    assert_same_outputs(ours(x), ref(x))
    wrapped = nn.Sequential(nn.Linear(3, 3), DPGRU(3, 4)).double()
    plain = nn.Sequential(nn.Linear(3, 3), nn.GRU(3, 4)).double()
    wrapped.load_state_dict(plain.state_dict())
    assert torch.equal(wrapped[1].l0.hh.bias, plain[1].bias_hh_l0)


def test_from_module_copies_requires_grad_and_mode():
    ref = nn.GRU(2, 3, num_layers=2)
    ref.weight_hh_l1.requires_grad_(False)
    ref.eval()
    ours = DPGRU.from_module(ref)
    assert not ours.l1.hh.weight.requires_grad
    assert ours.l0.hh.weight.requires_grad and not ours.training
    assert [len(w) for w in ours.all_weights] == [4, 4]


def test_initialisation_is_uniform_in_torch_bound():
    ours = DPRNN(4, 16, num_layers=2)
    bound = 16 ** -0.5
    for p in ours.parameters():
        assert p.abs().max() <= bound


def test_empty_batch_gives_empty_outputs():
    ours = DPLSTM(3, 4, batch_first=True)
    out, (h, c) = ours(torch.randn(0, 5, 3))
    assert out.shape == (0, 5, 4) and h.shape == (1, 0, 4) and c.shape == (1, 0, 4)


# ---- DP parity ----------------------------------------------------------------

class SeqClassifier(nn.Module):
    """Recurrent layer + linear head on (mean output over time + last h_n).

    ``time_major`` means the model's input is (T, B, d) (engine batch_first=False).
    """

    def __init__(self, rnn, k, time_major=False):
        super().__init__()
        self.rnn = rnn
        self.time_major = time_major
        directions = 2 if rnn.bidirectional else 1
        width = (rnn.proj_size or rnn.hidden_size)
        self.head = nn.Linear(width * directions, k).double()

    def forward(self, x):
        if self.time_major != (not self.rnn.batch_first):
            x = x.transpose(0, 1)
        out, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        time_dim = 1 if self.rnn.batch_first else 0
        last = h[-1] if not self.rnn.bidirectional else torch.cat([h[-2], h[-1]], dim=1)
        feats = out.mean(time_dim) + last
        if isinstance(state, tuple):
            feats = feats + state[1][-1].sum(1, keepdim=True)
        return self.head(feats)


class BatchFirstView(nn.Module):
    """The time-major model seen through batch-first inputs (for the ground truth)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.transpose(0, 1))


def make_dp(kind, d, h, **kw):
    return convert_rnn(make_torch_rnn(kind, d, h, **kw))


@FAST
@given(kind=st.sampled_from(list(TORCH_TYPES)), b=st.integers(1, 5), t=st.integers(1, 5),
       d=st.integers(1, 4), h=st.integers(1, 5), layers=st.integers(1, 2),
       bidirectional=st.booleans(), batch_first=st.booleans(),
       red=st.sampled_from(["mean", "sum"]), clip=st.sampled_from([1e-3, 0.5, 10.0]),
       seed=st.integers(0, 2**16))
def test_private_gradient_matches_ground_truth(kind, b, t, d, h, layers, bidirectional,
                                               batch_first, red, clip, seed):
    torch.manual_seed(seed)
    proj = 1 if kind == "LSTM" and h > 1 and seed % 2 else 0
    rnn = make_dp(kind, d, h, layers=layers, bidirectional=bidirectional,
                  batch_first=batch_first, proj=proj)
    model = SeqClassifier(rnn, 3)
    x = torch.randn(b, t, d, dtype=torch.float64)
    y = torch.randint(0, 3, (b,))
    check_parity(lambda: copy.deepcopy(model), x, y, reduction=red, max_grad_norm=clip, **F64)


@pytest.mark.parametrize("case", ["empty_batch", "accumulation", "batch_of_one", "float32"])
def test_parity_edge_cases(case):
    torch.manual_seed(10)
    dtype = torch.float32 if case == "float32" else torch.float64
    rnn = make_dp("LSTM", 3, 4, layers=2, batch_first=True, proj=2).to(dtype)
    model = SeqClassifier(rnn, 3).to(dtype)
    b = {"empty_batch": 0, "accumulation": 6, "batch_of_one": 1, "float32": 6}[case]
    x = torch.randn(b, 5, 3, dtype=dtype)
    y = torch.randint(0, 3, (b,))
    tol = dict(rtol=1e-4, atol=1e-6) if case == "float32" else F64
    check_parity(lambda: copy.deepcopy(model), x, y, max_grad_norm=0.1,
                 micro_batches=3 if case == "accumulation" else 1,
                 expected_batch_size=4 if case == "empty_batch" else None, **tol)


def test_bf16_autocast_step_is_close_to_float32_truth():
    torch.manual_seed(11)
    model = SeqClassifier(make_dp("GRU", 3, 4, batch_first=True), 3).float()
    x = torch.randn(8, 5, 3)
    y = torch.randint(0, 3, (8,))
    truth = ground_truth(copy.deepcopy(model), x, y, nn.functional.cross_entropy,
                         max_grad_norm=0.5, reduction="mean", expected_batch_size=8)
    pm = PrivateModule(model)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=0.5, expected_batch_size=8)
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pm(x)
    nn.functional.cross_entropy(out.float(), y).backward()
    opt.step()
    got = torch.cat([p.grad.flatten() for p in model.parameters()])
    want = torch.cat([t.flatten() for t in truth])
    assert got.dtype == torch.float32
    # bf16 has an 8-bit mantissa: a few per cent of the gradient's norm
    assert (got - want).norm() <= 0.05 * want.norm()


def _time_major_engine_grads(model, x_tm, y, *, clip, reduction):
    pm = PrivateModule(model, batch_first=False, loss_reduction=reduction)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=clip, expected_batch_size=x_tm.shape[1],
                      loss_reduction=reduction)
    opt.zero_grad()
    nn.functional.cross_entropy(pm(x_tm), y, reduction=reduction).backward()
    opt.step()
    grads = [p.grad.clone() for p in model.parameters()]
    pm.cleanup()
    return grads


@pytest.mark.parametrize("kind,batch_first", [("LSTM", False), ("GRU", True), ("RNN_RELU", False)])
def test_parity_with_time_major_engine(kind, batch_first):
    torch.manual_seed(5)
    rnn = make_dp(kind, 3, 4, layers=2, bidirectional=True, batch_first=batch_first)
    model = SeqClassifier(rnn, 3, time_major=True)
    x = torch.randn(4, 6, 3, dtype=torch.float64)  # (B, T, d)
    y = torch.randint(0, 3, (4,))

    def loss_fn(out, target):
        return nn.functional.cross_entropy(out, target, reduction="sum")

    truth = ground_truth(BatchFirstView(copy.deepcopy(model)), x, y, loss_fn,
                         max_grad_norm=0.3, reduction="sum", expected_batch_size=4)
    got = _time_major_engine_grads(copy.deepcopy(model), x.transpose(0, 1), y, clip=0.3,
                                   reduction="sum")
    for g, want in zip(got, truth):
        torch.testing.assert_close(g, want, **F64)


class PackedClassifier(nn.Module):
    """Takes (B, T, d) padded inputs with fixed per-sample lengths stored on the model."""

    def __init__(self, rnn, lengths, k):
        super().__init__()
        self.rnn = rnn
        self.lengths = lengths
        self.head = nn.Linear(2 * rnn.hidden_size, k).double()

    def forward(self, x, lengths=None):
        lengths = self.lengths[:x.shape[0]] if lengths is None else lengths
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h = self.rnn(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True)
        return self.head(padded.sum(1) + torch.cat([h[-2], h[-1]], dim=1))


def test_parity_with_packed_sequences():
    torch.manual_seed(6)
    lengths = torch.tensor([3, 6, 1, 4, 6])
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (5,))
    rnn = make_dp("GRU", 3, 4, layers=2, bidirectional=True, batch_first=True)
    model = PackedClassifier(rnn, lengths, 2)

    def loss_fn(out, target):
        return nn.functional.cross_entropy(out, target, reduction="mean")

    # the ground truth feeds each sample alone, with its own length and only its valid steps
    truth_model = copy.deepcopy(model)
    params = list(truth_model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(5):
        xi = x[i:i + 1, :int(lengths[i])]
        grads = torch.autograd.grad(loss_fn(truth_model(xi, lengths[i:i + 1]), y[i:i + 1]), params)
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        c = min(1.0, 0.2 / (float(norm) + 1e-6))
        for acc, g in zip(total, grads):
            acc += c * g
    truth = [t / 5 for t in total]
    pm = PrivateModule(model, loss_reduction="mean")
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=0.0,
                      max_grad_norm=0.2, expected_batch_size=5, loss_reduction="mean")
    opt.zero_grad()
    loss_fn(pm(x), y).backward()
    opt.step()
    for p, want in zip(model.parameters(), truth):
        torch.testing.assert_close(p.grad, want, **F64)


def _made_private(model, x, y):
    """make_private over one full batch of (x, y): noise 0, C = 0.5, no Poisson sampling."""
    from modelsec_fast import PrivacyEngine

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=len(x))
    return PrivacyEngine().make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        data_loader=loader, noise_multiplier=0.0, max_grad_norm=0.5, poisson_sampling=False)


@pytest.mark.filterwarnings("ignore:poisson_sampling=False")
def test_privacy_engine_step_matches_ground_truth():
    torch.manual_seed(7)
    model = SeqClassifier(make_dp("LSTM", 2, 3, layers=2, batch_first=True, proj=2), 2)
    reference = copy.deepcopy(model)
    x = torch.randn(6, 4, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (6,))
    pmodel, popt, ploader = _made_private(model, x, y)
    xb, yb = next(iter(ploader))
    popt.zero_grad()
    nn.functional.cross_entropy(pmodel(xb), yb).backward()
    popt.step()
    truth = ground_truth(reference, x, y, nn.functional.cross_entropy, max_grad_norm=0.5,
                         reduction="mean", expected_batch_size=6)
    for p, want in zip(model.parameters(), truth):
        torch.testing.assert_close(p.grad, want, **F64)


@pytest.mark.filterwarnings("ignore:poisson_sampling=False")
@pytest.mark.parametrize("kind", ["LSTM", "RNN_TANH", "GRU"])
def test_recurrence_is_one_call_and_input_gradient_passes_leave_no_trace(kind):
    """Each direction's hh steps reach the rule as one call (hidden_product; GRU's
    hidden product is not additive, it takes the zero-slot tap); an attack's
    autograd.grad on the input through the recurrence records nothing."""
    from unittest import mock

    from modelsec_fast.privacy.per_sample.capture import LayerRecorder

    def step(attack_first):
        torch.manual_seed(3)
        model = SeqClassifier(make_dp(kind, 2, 3, layers=2, batch_first=True,
                                      bidirectional=True), 2)
        x = torch.randn(5, 4, 2, dtype=torch.float64)
        y = torch.randint(0, 2, (5,))
        pm, opt, _ = _made_private(model, x, y)
        if attack_first:
            xa = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(nn.functional.cross_entropy(pm(xa), y), xa)
            assert g.abs().sum() > 0
        opt.zero_grad()
        with mock.patch.object(LayerRecorder, "capture", autospec=True,
                               side_effect=LayerRecorder.capture) as capture:
            nn.functional.cross_entropy(pm(x), y).backward()
        opt.step()
        hh = [c.args[0].name for c in capture.call_args_list if c.args[0].name.endswith(".hh")]
        return hh, [p.grad.clone() for p in model.parameters()]

    hh_calls, plain = step(attack_first=False)
    assert len(hh_calls) == len(set(hh_calls)) == 4  # 2 layers x 2 directions, once each
    _, attacked = step(attack_first=True)
    for a, b in zip(plain, attacked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dp_modules_pass_the_validator():
    model = nn.Sequential(DPLSTM(3, 4, proj_size=2), DPGRU(3, 4, bidirectional=True),
                          DPRNN(3, 4, 2, "relu"), DPLSTMCell(3, 4), DPGRUCell(4, 4),
                          DPRNNCell(4, 4, nonlinearity="relu"))
    assert ModuleValidator.validate(model) == []


# ---- bad input ------------------------------------------------------------------

@pytest.mark.parametrize("ctor,msg", [
    (lambda: DPLSTM(3, 0), "hidden_size"),
    (lambda: DPLSTM(0, 3), "input_size"),
    (lambda: DPGRU(3, 4, num_layers=0), "num_layers"),
    (lambda: DPLSTM(3, 4, dropout=1.5), "dropout"),
    (lambda: DPLSTM(3, 4, proj_size=4), "proj_size"),
    (lambda: DPLSTM(3, 4, proj_size=-1), "proj_size"),
    (lambda: DPGRU(3, 4, proj_size=2), "only supported for LSTM"),
    (lambda: DPRNN(3, 4, nonlinearity="sigmoid"), "nonlinearity"),
])
def test_bad_constructor_arguments_raise(ctor, msg):
    with pytest.raises(ValueError, match=msg):
        ctor()


def test_bad_forward_inputs_raise():
    lstm = DPLSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match="features"):
        lstm(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match="3-D batched or 2-D"):
        lstm(torch.randn(5, 2, 3, 1))
    with pytest.raises(ValueError, match="sequence length"):
        lstm(torch.randn(0, 2, 3))
    with pytest.raises(TypeError, match="floating point"):
        lstm(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="Tensor or PackedSequence"):
        lstm([[0.0, 1.0, 2.0]])
    with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
        lstm(torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 4\)"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4)))
    gru = DPGRU(3, 4)
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 4\)"):
        gru(torch.randn(5, 3), torch.zeros(1, 2, 4))  # unbatched input, batched state
    with pytest.raises(TypeError, match="dtype"):
        gru(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))


def test_from_module_rejects_wrong_types():
    with pytest.raises(TypeError, match="expects nn.LSTM"):
        DPLSTM.from_module(nn.GRU(2, 3))

    class CustomLSTM(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    with pytest.raises(TypeError, match="overrides forward"):
        DPLSTM.from_module(CustomLSTM(2, 3))
    with pytest.raises(TypeError, match="convert_rnn expects"):
        convert_rnn(nn.Linear(2, 3))


# ---- cells ------------------------------------------------------------------------

CELL_TYPES = {"LSTM": lambda d, h, bias: nn.LSTMCell(d, h, bias=bias),
              "GRU": lambda d, h, bias: nn.GRUCell(d, h, bias=bias),
              "RNN_TANH": lambda d, h, bias: nn.RNNCell(d, h, bias=bias),
              "RNN_RELU": lambda d, h, bias: nn.RNNCell(d, h, bias=bias, nonlinearity="relu")}


@pytest.mark.parametrize("kind", list(CELL_TYPES))
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch_cells(kind, bias):
    torch.manual_seed(8)
    ref = CELL_TYPES[kind](3, 5, bias).double()
    ours = convert_rnn(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for shape, state in (((4, 3), (4, 5)), ((3,), (5,))):
        x = torch.randn(*shape, dtype=torch.float64)
        hx = torch.randn(*state, dtype=torch.float64)
        if kind == "LSTM":
            hx = (hx, torch.randn(*state, dtype=torch.float64))
        for state_arg in (None, hx):
            got, want = ours(x, state_arg), ref(x, state_arg)
            got = got if isinstance(got, tuple) else (got,)
            want = want if isinstance(want, tuple) else (want,)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **EXACT)


class CellLoop(nn.Module):
    """A user's own time loop over a cell: the cell's Linears are called T times."""

    def __init__(self, cell, k):
        super().__init__()
        self.cell = cell
        self.head = nn.Linear(cell.hidden_size, k).double()

    def forward(self, x):  # (B, T, d)
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        h = state[0] + state[1] if isinstance(state, tuple) else state
        return self.head(h)


@pytest.mark.parametrize("kind", list(CELL_TYPES))
def test_cell_loop_parity(kind):
    torch.manual_seed(9)
    model = CellLoop(convert_rnn(CELL_TYPES[kind](3, 4, True).double()), 3)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    check_parity(lambda: copy.deepcopy(model), x, y, reduction="mean", max_grad_norm=0.05,
                 **F64)


def test_cell_bad_inputs_raise():
    cell = DPLSTMCell(3, 4)
    with pytest.raises(ValueError, match="2-D batched or 1-D"):
        cell(torch.randn(2, 2, 3))
    with pytest.raises(ValueError, match="features"):
        cell(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 4\)"):
        cell(torch.randn(2, 3), (torch.zeros(3, 4), torch.zeros(2, 4)))
    with pytest.raises(TypeError, match="tuple"):
        cell(torch.randn(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="nonlinearity"):
        DPRNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match="expects nn.GRUCell"):
        DPGRUCell.from_module(nn.LSTMCell(2, 3))


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        DPGRU(3, 4, dropout=0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_and_private_gradient_match():
    torch.manual_seed(12)
    dev = torch.device("cuda")
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).double().to(dev)
    ours = convert_rnn(ref)
    assert ours.l0.ih.weight.device.type == "cuda"
    lengths = torch.tensor([2, 5, 1, 5, 4])
    x = torch.randn(5, 5, 3, dtype=torch.float64, device=dev)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    assert_same_outputs(ours(packed), ref(packed))
    assert_same_outputs(ours(x), ref(x))
    model = SeqClassifier(make_dp("GRU", 3, 4, layers=2, batch_first=True), 3).to(dev)
    xb = torch.randn(6, 4, 3, dtype=torch.float64, device=dev)
    yb = torch.randint(0, 3, (6,), device=dev)
    check_parity(lambda: copy.deepcopy(model), xb, yb, max_grad_norm=0.1, **F64)


@pytest.mark.filterwarnings("ignore:poisson_sampling=False")
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_the_hidden_product_tap_frees_the_steps_without_the_garbage_collector(kind):
    """The tap's context keeps the steps' inputs; were they not detached, their graph
    would lead back to the tap and the cycle would hold every step's activations until
    the garbage collector ran."""
    import gc
    import weakref
    from unittest import mock

    from modelsec_fast.privacy.per_sample import linear

    torch.manual_seed(5)
    model = SeqClassifier(make_dp(kind, 2, 3, batch_first=True), 2)
    x, y = torch.randn(5, 6, 2, dtype=torch.float64), torch.randint(0, 2, (5,))
    pm, opt, _ = _made_private(model, x, y)
    states = []
    real = linear.F.linear

    def spy(h, weight, bias=None):
        if not weight.requires_grad:  # the hidden product's detached weight
            states.append(weakref.ref(h))
        return real(h, weight, bias)

    gc.collect()
    gc.disable()
    try:
        with mock.patch.object(linear.F, "linear", spy):
            nn.functional.cross_entropy(pm(x), y).backward()
        opt.step()
        opt.zero_grad()
        assert len(states) == 6
        assert all(ref() is None for ref in states[1:])  # states[0] is h_0, the zeros
    finally:
        gc.enable()
