"""The training loop behind ``modelsec-fast train`` and ``demo``, and LiRA's shadow models.

:func:`train_model` trains a fresh model by a
:class:`~modelsec_fast.app.recipe.TrainingRecipe`:

* plain training (Adam or SGD, cross-entropy);
* DP-SGD through :class:`modelsec_fast.PrivacyEngine` (Poisson sampling, the
  accountant of the recipe), with a fixed noise multiplier or a target epsilon;
* adversarial training through :class:`modelsec_fast.defenses.AdversarialTrainer`
  (``fgsm_rs``, ``pgd``, ``free``, ``trades``), alone or under DP-SGD.

Plain and DP-SGD runs capture their resumable state after every epoch through
:mod:`modelsec_fast.state`; adversarial runs keep theirs in the trainer's own
checkpoint file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .recipe import TrainingRecipe, replay_recipe

__all__ = ["TrainedModel", "train_model", "evaluate_accuracy", "epsilon_curve",
           "shadow_trainer"]


@dataclass
class TrainedModel:
    """A trained model and its training record.

    ``history``: one dict per epoch (epoch, steps, loss, train_accuracy and,
    under DP, epsilon). ``privacy``: None, or the DP facts (noise_multiplier,
    max_grad_norm, sample_rate, steps, delta, accountant and, when tracked,
    epsilon and epsilon_curve of (steps, epsilon) pairs). ``seconds``: wall time
    of this call of :func:`train_model` (a resumed run counts only its own part).
    """

    model: nn.Module
    recipe: TrainingRecipe
    history: list[dict]
    privacy: dict | None
    state: dict = field(default_factory=dict, repr=False)
    seconds: float = 0.0


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 1024) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on x (N, ...) and labels y (N,), taken in
    batches on the model's device; NaN for an empty set."""
    if len(y) == 0:
        return math.nan
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = sum(int((model(x[i:i + batch_size].to(device)).argmax(1)
                       == y[i:i + batch_size].to(device)).sum())
                  for i in range(0, len(y), batch_size))
    model.train(was)
    return correct / len(y)


def _make_optimizer(recipe: TrainingRecipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9)


def train_model(
    recipe: TrainingRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device = "cpu",
    resume_state: dict | None = None,
    on_epoch_end: Callable[[TrainedModel], None] | None = None,
    trainer_state_path: str | None = None,
    resume: bool = False,
    track_privacy: bool = True,
) -> TrainedModel:
    """Train a fresh model by ``recipe`` on (x, y).

    Args:
        x: float32 (N, C, H, W) pixels in [0, 1]; y: int64 (N,).
        num_classes: logits of the model.
        seed: seeds the initial weights, the shuffling/Poisson sampling, the
            DP noise and the attacks' random starts.
        resume_state: a ``TrainedModel.state`` captured by ``on_epoch_end``;
            training continues after its last epoch (plain and DP-SGD recipes).
        on_epoch_end: ``fn(trained: TrainedModel)`` after each epoch (checkpointing;
            adversarial recipes call it once, at the end).
        trainer_state_path: adversarial recipes only: the file where
            :class:`AdversarialTrainer` writes its resumable state every epoch.
        resume: adversarial recipes only: continue from ``trainer_state_path``.
        track_privacy: DP recipes: compute epsilon (final, and a curve over
            training at up to 8 points). Off for shadow models, where only the
            noise matters and PLD accounting would dominate the cost.

    Raises:
        ValueError: bad recipe, empty data; CheckpointError (a ValueError): a
            ``resume_state`` from another recipe or model.
    """
    started = time.perf_counter()
    recipe.validate()
    if len(y) == 0:
        raise ValueError("cannot train on an empty dataset")
    torch.manual_seed(seed)
    model = recipe.build_model(tuple(x.shape[1:]), num_classes).to(device)
    optimizer = _make_optimizer(recipe, model.parameters())
    loader_gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=min(recipe.batch_size, len(y)),
        shuffle=True, generator=loader_gen)
    engine = None
    train_module = model
    if recipe.dp:
        from modelsec_fast.privacy.engine import PrivacyEngine

        engine = PrivacyEngine(accountant=recipe.accountant)
        common = dict(module=model, optimizer=optimizer, data_loader=loader,
                      max_grad_norm=recipe.max_grad_norm, poisson_sampling=True,
                      noise_generator=torch.Generator().manual_seed(seed + 7919))
        if recipe.noise_multiplier is not None:
            train_module, optimizer, loader = engine.make_private(
                noise_multiplier=recipe.noise_multiplier, **common)
        else:
            train_module, optimizer, loader = engine.make_private_with_epsilon(
                target_epsilon=recipe.target_epsilon, target_delta=recipe.delta,
                epochs=recipe.epochs, **common)
    result = TrainedModel(model=model, recipe=recipe, history=[], privacy=None)
    if recipe.adv:
        trainer = _adversarial_trainer(recipe, train_module, optimizer, engine, progress,
                                       trainer_state_path)
        fit = trainer.fit(loader, recipe.epochs, resume=resume and trainer_state_path is not None)
        result.history = [_adversarial_record(h, engine, loader) for h in fit]
        result.history[-1]["train_accuracy"] = evaluate_accuracy(model, x, y)
        if on_epoch_end is not None:
            on_epoch_end(result)
    else:
        start_epoch = 0
        if resume_state is not None:
            start_epoch = _restore(resume_state, model, optimizer, engine, loader, result)
        epochs = range(start_epoch, recipe.epochs)
        if progress:
            from tqdm.auto import tqdm
            epochs = tqdm(epochs, desc=_progress_label(recipe), leave=False,
                          initial=start_epoch, total=recipe.epochs)
        for epoch in epochs:
            loss = _plain_epoch(train_module, optimizer, loader, device)
            record = {"epoch": epoch + 1, "steps": _steps(engine, loader, epoch + 1),
                      "loss": loss, "train_accuracy": evaluate_accuracy(model, x, y)}
            result.history.append(record)
            result.state = _capture(model, optimizer, engine, loader, epoch + 1, result)
            if on_epoch_end is not None:
                on_epoch_end(result)
    if engine is not None:
        result.privacy = _privacy_facts(engine, optimizer, loader, recipe, track_privacy)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result


def shadow_trainer(recipe: TrainingRecipe, privacy: dict | None, num_classes: int,
                   device: str | torch.device = "cpu"
                   ) -> Callable[[torch.Tensor, torch.Tensor, int], nn.Module]:
    """``train_fn(x, y, seed) -> model`` replaying the target's recipe, for LiRA's shadow
    models (:func:`modelsec_fast.audit.membership_audit`'s ``train_fn``). A target-epsilon
    DP recipe is pinned to the noise multiplier the target was trained with."""
    replay = replay_recipe(recipe, privacy)

    def train_fn(x, y, seed):
        return train_model(replay, x, y, num_classes=num_classes, seed=seed, device=device,
                           track_privacy=False).model

    return train_fn


def _progress_label(recipe) -> str:
    label = "DP-SGD" if recipe.dp else "training"
    return f"{label} + {recipe.adv}" if recipe.adv else label


def _plain_epoch(module, optimizer, loader, device) -> float:
    module.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(module(xb), yb)
        loss.backward()
        optimizer.step()
        if len(yb):
            total += loss.item() * len(yb)
            count += len(yb)
    return total / max(count, 1)


def _adversarial_trainer(recipe, module, optimizer, engine, progress, state_path):
    from modelsec_fast.defenses import AdversarialTrainer

    options = dict(method=recipe.adv, eps=recipe.adv_eps, progress=progress,
                   checkpoint_path=state_path)
    if recipe.adv in ("pgd", "trades"):
        options["steps"] = recipe.adv_steps
    if engine is not None:
        # No public validation data here, so no weight selection (defenses.privacy_rules).
        options.update(guard=False, privacy_engine=engine)
    return AdversarialTrainer(module, optimizer, **options)


def _adversarial_record(h: dict, engine, loader) -> dict:
    record = {"epoch": h["epoch"], "loss": h.get("train_loss", math.nan),
              "adversarial_train_accuracy": h.get("train_accuracy", math.nan),
              "steps": len(engine.accountant) if engine is not None
              else h.get("optimizer_steps", h["epoch"] * len(loader))}
    if "epsilon" in h:
        record["epsilon"] = h["epsilon"]
    if "stopped" in h:
        record["stopped"] = h["stopped"]
    return record


def _steps(engine, loader, epochs_done) -> int:
    if engine is not None:
        return len(engine.accountant)
    return epochs_done * len(loader)


def _privacy_facts(engine, optimizer, loader, recipe, track: bool) -> dict:
    facts = {
        "noise_multiplier": float(optimizer.noise_multiplier),
        "max_grad_norm": float(optimizer.max_grad_norm),
        "sample_rate": float(getattr(loader, "sample_rate", 1.0 / len(loader))),
        "steps": len(engine.accountant),
        "delta": recipe.delta,
        "accountant": recipe.accountant,
    }
    if track:
        facts["epsilon"] = float(engine.get_epsilon(recipe.delta))
        facts["epsilon_curve"] = epsilon_curve(engine.accountant, recipe.delta)
    return facts


def epsilon_curve(accountant, delta: float, points: int = 8) -> list[tuple[int, float]]:
    """(steps, epsilon) at up to ``points`` evenly spaced prefixes of the accountant's history."""
    from modelsec_fast.accountants import create_accountant

    total = len(accountant)
    if total == 0:
        return []
    marks = sorted({max(1, round(total * (i + 1) / points)) for i in range(points)})
    curve = []
    for mark in marks:
        prefix, left = [], mark
        for sigma, q, steps in accountant.history:
            take = min(int(steps), left)
            if take:
                prefix.append((sigma, q, take))
            left -= take
        acct = create_accountant(accountant.mechanism())
        acct.history = prefix
        curve.append((mark, float(acct.get_epsilon(delta))))
    return curve


def _capture(model, optimizer, engine, loader, epochs_done, result) -> dict:
    from modelsec_fast.state import capture_training_state

    return capture_training_state(
        model=model, optimizer=optimizer, loader=loader,
        accountant=engine.accountant if engine is not None else None,
        extra={"epochs_done": epochs_done, "history": [dict(h) for h in result.history]})


def _restore(state, model, optimizer, engine, loader, result) -> int:
    from modelsec_fast.state import restore_training_state

    own = restore_training_state(state, source="resume_state", model=model, optimizer=optimizer,
                                 loader=loader,
                                 accountant=engine.accountant if engine is not None else None)
    result.history = [dict(h) for h in own["history"]]
    return int(own["epochs_done"])
