"""Each step must clip exactly the samples the Poisson loader handed out.

A ``batch_first`` that does not match the model makes the engine clip time
steps instead of samples. When every trainable layer is a sequence layer, no
shape disagreement between layers reveals it, so the optimizer compares the
number of clipped gradients with the loader's batch (issue 3's noted hazard).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from modelsec_fast import PrivacyEngine
from modelsec_fast.privacy.sampling import BatchMemoryManager, DPDataLoader

VOCAB, DIM, CLASSES, T = 11, 6, 3, 5


class TokenTagger(nn.Module):
    """Only sequence layers: (B, T) tokens -> (B, T, classes) tags."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, tokens):
        return self.head(self.norm(self.embed(tokens)))


def _private(n, batch_size, *, batch_first=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randint(0, VOCAB, (n, T), generator=g),
                         torch.randint(0, CLASSES, (n, T), generator=g))
    torch.manual_seed(seed)
    model = TokenTagger()
    engine = PrivacyEngine()
    return engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=batch_size), noise_multiplier=0.0,
        max_grad_norm=1.0, batch_first=batch_first,
        sampler_generator=torch.Generator().manual_seed(seed + 1))


def _loss(model, tokens, tags):
    return nn.functional.cross_entropy(model(tokens).reshape(-1, CLASSES), tags.reshape(-1))


def _steps(model, optimizer, loader, count):
    done = 0
    for tokens, tags in loader:
        optimizer.zero_grad()
        _loss(model, tokens, tags).backward()
        optimizer.step()
        done += 1
        if done == count:
            return


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_batch_first_that_does_not_match_the_model_is_refused(seed):
    # The model takes (B, T); batch_first=False makes the engine clip along T.
    model, optimizer, loader = _private(40, 10, batch_first=False, seed=seed)
    tokens, tags = next(b for b in loader if len(b[0]) not in (0, T))
    optimizer.zero_grad()
    _loss(model, tokens, tags).backward()
    with pytest.raises(ValueError, match=r"clipped 5 per-sample gradients.*batch_first=False"):
        optimizer.step()


def test_the_refused_step_leaves_the_parameters_and_the_accountant_untouched():
    model, optimizer, loader = _private(40, 10, batch_first=False)
    before = [p.detach().clone() for p in model.parameters()]
    tokens, tags = next(b for b in loader if len(b[0]) not in (0, T))
    optimizer.zero_grad()
    _loss(model, tokens, tags).backward()
    with pytest.raises(ValueError):
        optimizer.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert optimizer.original_optimizer.state == {}


def test_a_matching_batch_first_trains_without_warnings():
    model, optimizer, loader = _private(40, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _steps(model, optimizer, loader, 4)


def test_samples_duplicated_into_the_batch_dimension_are_refused():
    # Two rows per record (e.g. two augmented views) would double the sensitivity.
    model, optimizer, loader = _private(40, 10)
    tokens, tags = next(b for b in loader if len(b[0]) > 0)
    optimizer.zero_grad()
    _loss(model, torch.cat([tokens, tokens]), torch.cat([tags, tags])).backward()
    with pytest.raises(ValueError, match=f"clipped {2 * len(tokens)} per-sample gradients, "
                                         f"but the data loader's batch holds {len(tokens)}"):
        optimizer.step()


def test_physical_batches_of_one_logical_batch_add_up():
    model, optimizer, loader = _private(60, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with BatchMemoryManager(data_loader=loader, max_physical_batch_size=4,
                                optimizer=optimizer) as physical:
            steps = 0
            for tokens, tags in physical:
                _loss(model, tokens, tags).backward()
                optimizer.step()
                optimizer.zero_grad()
                steps += not optimizer._is_last_step_skipped
                if steps == 3:
                    break
    assert steps == 3


def test_a_step_where_batch_and_sequence_sizes_coincide_warns_until_verified():
    # q = 1 and N = T: every batch holds exactly T samples, so B == T.
    model, optimizer, loader = _private(T, T)
    with pytest.warns(UserWarning, match="cannot be verified"):
        _steps(model, optimizer, loader, 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_reports_each_batch_size_including_empty_ones(workers):
    # With workers the sampler runs ahead of the batches handed out (prefetch).
    data = TensorDataset(torch.arange(30.0).reshape(30, 1))
    loader = DPDataLoader.from_data_loader(DataLoader(data, batch_size=2, num_workers=workers),
                                           generator=torch.Generator().manual_seed(3))
    assert loader.num_workers == workers
    sizes = []
    for _ in range(3):  # E[B] = 2: about one batch in eight is empty
        for (x,) in loader:
            assert loader.logical_batch_samples == len(x)
            sizes.append(len(x))
    assert 0 in sizes and max(sizes) > 1
