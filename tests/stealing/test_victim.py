"""The victim's query counter and the checks on what its query function answers."""

import pytest
import torch
from torch import nn

from modelsec_fast.stealing import HeldOut, QueryBudgetExceeded, Victim


class Counting:
    """A query function that records how many inputs it was asked about."""

    def __init__(self, answer):
        self.answer, self.seen = answer, 0

    def __call__(self, x):
        self.seen += len(x)
        return self.answer(x)


def uniform(x):
    return torch.full((len(x), 4), 0.25)


@pytest.mark.parametrize("budget", [0, -3])
def test_a_budget_below_one_is_refused(budget):
    with pytest.raises(ValueError, match=f"budget must be >= 1, got {budget}"):
        Victim(uniform, num_classes=4, budget=budget)


def test_a_budget_that_is_not_an_integer_is_refused():
    with pytest.raises(TypeError, match="budget must be an integer"):
        Victim(uniform, num_classes=4, budget=10.5)


def test_the_counter_is_exact_and_a_query_past_the_budget_runs_nothing():
    fn = Counting(uniform)
    victim = Victim(fn, num_classes=4, budget=10, batch_size=3)
    victim.query(torch.zeros(4, 2))
    victim.query(torch.zeros(5, 2))
    assert (victim.queries_used, victim.remaining, fn.seen) == (9, 1, 9)
    with pytest.raises(QueryBudgetExceeded, match="9 of 10 used, 1 left"):
        victim.query(torch.zeros(2, 2))
    assert (victim.queries_used, fn.seen) == (9, 9)
    victim.query(torch.zeros(1, 2))
    assert victim.remaining == 0 and fn.seen == 10


def test_a_query_function_answering_the_wrong_shape_is_named():
    victim = Victim(lambda x: torch.full((len(x), 3), 1 / 3), num_classes=4, budget=10)
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\).*needs \(2, 4\) floats"):
        victim.query(torch.zeros(2, 5))
    labels = Victim(lambda x: torch.zeros(len(x), 4), num_classes=4, output="labels", budget=5)
    with pytest.raises(ValueError, match=r"output='labels' needs \(2,\) int64 labels"):
        labels.query(torch.zeros(2, 5))


def test_probabilities_that_do_not_sum_to_one_are_refused():
    victim = Victim(lambda x: torch.full((len(x), 4), 0.3), num_classes=4, budget=10)
    with pytest.raises(ValueError, match="a row sums to 1.2"):
        victim.query(torch.zeros(2, 5))


@pytest.mark.parametrize("answer, message", [
    (lambda x: torch.full((len(x), 4), float("nan")), "NaN or infinite"),
    (lambda x: torch.tensor([[1.5, -0.5, 0.0, 0.0]]).expand(len(x), 4), r"must lie in \[0, 1\]"),
])
def test_nan_or_out_of_range_probabilities_are_refused(answer, message):
    with pytest.raises(ValueError, match=message):
        Victim(answer, num_classes=4, budget=10).query(torch.zeros(1, 5))


def test_top_k_rows_with_too_many_entries_and_labels_out_of_range_are_refused():
    top2 = Victim(uniform, num_classes=4, output="top_k", top_k=2, budget=10)
    with pytest.raises(ValueError, match="k=2, but a row has 4 non-zero entries"):
        top2.query(torch.zeros(1, 5))
    labels = Victim(lambda x: torch.full((len(x),), 7), num_classes=4, output="labels",
                    budget=10)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        labels.query(torch.zeros(1, 5))


def test_from_model_answers_each_output_kind_and_tells_the_monitor():
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    x = torch.randn(6, 5)
    seen = []

    class Monitor:
        def observe(self, xb, out):
            seen.append((len(xb), tuple(out.shape)))

    probs = Victim.from_model(model, budget=100, monitor=Monitor()).query(x)
    torch.testing.assert_close(probs, torch.softmax(model(x), 1).detach())
    labels = Victim.from_model(model, output="labels", budget=100).query(x)
    assert torch.equal(labels, probs.argmax(1))
    top = Victim.from_model(model, output="top_k", top_k=2, budget=100).query(x)
    assert bool(((top > 0).sum(1) == 2).all()) and torch.equal(top.argmax(1), labels)
    assert seen == [(6, (6, 4))]
    onehot = Victim.from_model(model, output="labels", budget=100).query_probabilities(x)
    assert torch.equal(onehot.argmax(1), labels) and bool((onehot.sum(1) == 1).all())


def test_held_out_scores_are_accuracy_and_fidelity():
    torch.manual_seed(0)
    victim = nn.Linear(3, 2)
    x = torch.randn(50, 3)
    y = victim(x).argmax(1)
    y[:10] = 1 - y[:10]  # the victim is wrong on the first ten
    held = HeldOut.from_model(victim, x, y)
    acc, fid = held.scores(victim)
    assert (acc, fid) == (0.8, 1.0)
    with pytest.raises(ValueError, match="HeldOut needs"):
        HeldOut(x, y[:3], y)
