"""Bad input gets a clear error (issue 6 item 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast.defenses import AdversarialTrainer
from modelsec_fast.models import build_model

from at_helpers import make_loader


def _model():
    torch.manual_seed(0)
    return build_model("small_cnn", (1, 8, 8), 10)


def _trainer(method="pgd", model=None, **options):
    model = model or _model()
    options.setdefault("progress", False)
    return AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), method, **options)


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="unknown method 'madry'.*pgd, fgsm_rs, free, trades"):
        _trainer("madry")


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_eps_out_of_range(eps):
    with pytest.raises(ValueError, match="eps must lie in"):
        _trainer(eps=eps)


@pytest.mark.parametrize("alpha", [0.0, -1e-3, 2.0, float("nan")])
@pytest.mark.parametrize("method", ["pgd", "fgsm_rs", "free", "trades"])
def test_alpha_out_of_range(method, alpha):
    with pytest.raises(ValueError, match="alpha must lie in"):
        _trainer(method, eps=0.1, alpha=alpha)


def test_non_numeric_eps_is_a_type_error():
    with pytest.raises(TypeError, match="eps must be a number"):
        _trainer(eps="0.1")


@pytest.mark.parametrize("method", ["fgsm_rs", "free"])
def test_steps_for_single_step_methods_is_refused(method):
    with pytest.raises(ValueError, match="steps is not used"):
        _trainer(method, eps=0.1, steps=5)


def test_steps_and_replays_must_be_positive_integers():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        _trainer(eps=0.1, steps=0)
    with pytest.raises(TypeError, match="steps must be an int"):
        _trainer(eps=0.1, steps=2.5)
    with pytest.raises(ValueError, match="replays must be >= 1"):
        _trainer("free", eps=0.1, replays=0)


def test_model_without_trainable_parameters():
    model = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        AdversarialTrainer(model, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_optimizer_missing_model_parameters():
    model = _model()
    opt = torch.optim.SGD(model.classifier.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer does not hold .* trainable parameter"):
        AdversarialTrainer(model, opt, "pgd")


def test_model_on_meta_device():
    with torch.device("meta"):
        model = build_model("small_cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="meta device"):
        AdversarialTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "pgd")


def test_not_a_module_or_not_an_optimizer():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        AdversarialTrainer(lambda x: x, torch.optim.SGD(_model().parameters(), lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        AdversarialTrainer(_model(), object())


def test_model_returning_probabilities_is_refused(digits):
    model = nn.Sequential(_model(), nn.Softmax(dim=1))
    trainer = _trainer("trades", model=model, eps=0.1, steps=1)
    with pytest.raises(ValueError, match="returns probabilities"):
        trainer.fit(make_loader(digits.x_train[:64], digits.y_train[:64]), 1)


def test_model_returning_a_single_logit_is_refused(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    trainer = _trainer("free", model=model, eps=0.1)
    with pytest.raises(ValueError, match=r"logits shaped \(B, K\) with K >= 2"):
        trainer.train_step(digits.x_train[:8], torch.zeros(8, dtype=torch.long))


@pytest.mark.parametrize("method", ["pgd", "free"])
def test_empty_train_loader(method, digits):
    empty = DataLoader(TensorDataset(digits.x_train[:10], digits.y_train[:10]), batch_size=64,
                       drop_last=True)
    with pytest.raises(ValueError, match="train_loader yielded no batches"):
        _trainer(method, eps=0.1, guard=False).fit(empty, 1)


def test_empty_eval_loader(digits):
    empty = DataLoader(TensorDataset(digits.x_test[:0], digits.y_test[:0]), batch_size=8)
    trainer = _trainer(eps=0.1, steps=1)
    with pytest.raises(ValueError, match="eval_loader yielded no examples"):
        trainer.fit(make_loader(digits.x_train[:64], digits.y_train[:64]), 1, eval_loader=empty)


def test_epochs_must_be_positive(digits):
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        _trainer(eps=0.1).fit(make_loader(digits.x_train, digits.y_train), 0)


def test_batches_must_be_image_label_pairs(digits):
    trainer = _trainer(eps=0.1, steps=1)
    with pytest.raises(TypeError, match="labels must be an int64 tensor"):
        trainer.train_step(digits.x_train[:4], digits.y_train[:4].float())
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        trainer.train_step(digits.x_train[:4], digits.y_train[:3])
    with pytest.raises(TypeError, match=r"\(images, labels\) pairs"):
        trainer.fit([digits.x_train[:4]], 1)


def test_images_outside_the_pixel_range(digits):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _trainer(eps=0.1, steps=1).train_step(digits.x_train[:4] * 16, digits.y_train[:4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _trainer("free", eps=0.1).train_step(digits.x_train[:4] * 16, digits.y_train[:4])


def test_bad_normalization():
    with pytest.raises(ValueError, match="std must be > 0"):
        _trainer(eps=0.1, normalization=([0.5], [0.0]))
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        _trainer(eps=0.1, normalization=([0.5, 0.5], [0.2]))


def test_bad_guard_settings(digits):
    with pytest.raises(ValueError, match="guard_max_drop must lie in"):
        _trainer("fgsm_rs", eps=0.1, guard_max_drop=0.0)
    with pytest.raises(ValueError, match="guard_data is empty"):
        _trainer("fgsm_rs", eps=0.1, guard_data=(digits.x_test[:0], digits.y_test[:0]))
