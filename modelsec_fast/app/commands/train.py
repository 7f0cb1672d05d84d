"""``modelsec-fast train``: train one model and save a checkpoint that an audit can use
(its recipe, data and members); ``--resume`` continues an interrupted run."""

from __future__ import annotations

import os

from ..console import UsageError, log, progress_enabled

__all__ = ["run", "recipe_from_args"]


def recipe_from_args(args):
    """The :class:`~modelsec_fast.app.recipe.TrainingRecipe` the flags describe.

    Raises:
        UsageError: flags that contradict each other (both ``--epsilon`` and
            ``--noise-multiplier``; ``--dp`` with neither; ``--eps`` without ``--adv``).
    """
    from ..recipe import TrainingRecipe

    dp = args.dp or args.epsilon is not None or args.noise_multiplier is not None
    if args.epsilon is not None and args.noise_multiplier is not None:
        raise UsageError("give either --epsilon (target) or --noise-multiplier, not both")
    if dp and args.epsilon is None and args.noise_multiplier is None:
        raise UsageError("--dp needs --epsilon TARGET or --noise-multiplier SIGMA")
    if args.eps is not None and args.adv is None:
        raise UsageError("--eps is the adversarial-training radius: it needs --adv")
    recipe = TrainingRecipe(
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        optimizer=args.optimizer, dp=dp, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm,
        accountant=args.accountant, adv=args.adv,
        adv_eps=args.eps if args.eps is not None else 0.1, adv_steps=args.adv_steps)
    return recipe.validate()


def run(args) -> int:
    from modelsec_fast.app.checkpoint import ModelCheckpoint, dataset_from_spec, load_checkpoint
    from modelsec_fast.app.training import evaluate_accuracy, train_model

    from ..audits import membership_split
    from ..jsonio import write_json

    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if args.model_given and args.model != ckpt.recipe.model:
            raise UsageError(f"checkpoint {args.resume} holds model {ckpt.recipe.model!r}, not "
                             f"{args.model!r}: resume with the same architecture")
        if ckpt.complete:
            ckpt.build_model()  # fails in one line if the weights do not fit
            log(args, f"{args.resume} is already complete ({ckpt.recipe.epochs} epochs); "
                      "nothing to resume")
            return 0
        recipe, data_spec, seed, mask = ckpt.recipe, ckpt.data, ckpt.seed, ckpt.member_mask
        membership = ckpt.membership
        target = args.checkpoint or args.resume
        resume_state = ckpt.resume_state
        if resume_state is not None:
            ckpt.build_model()
        log(args, f"resuming {args.resume} with its own recipe, data and members "
                  "(other training flags are ignored)")
    else:
        recipe = recipe_from_args(args)
        data_spec = {"source": args.data, "train_size": args.train_size,
                     "test_size": args.test_size, "seed": args.seed}
        seed, membership = args.seed, args.membership
        target = args.checkpoint
        resume_state, mask = None, None
    ds = dataset_from_spec(data_spec)
    if mask is None:
        mask = membership_split(len(ds.y_train), membership, seed)
    elif len(mask) != len(ds.y_train):
        raise UsageError(f"checkpoint's member mask covers {len(mask)} records but the data "
                         f"has {len(ds.y_train)}; was the dataset changed?")
    log(args, f"data: {ds.describe()}; training on {int(mask.sum())} members ({membership})")
    log(args, f"recipe: {recipe.describe()}")
    x, y = ds.x_train[mask], ds.y_train[mask]

    def checkpoint_of(trained, complete):
        return ModelCheckpoint(
            recipe=recipe, data=data_spec, in_shape=ds.in_shape, num_classes=ds.num_classes,
            member_mask=mask, membership=membership, seed=seed,
            model_state={k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
            history=trained.history, privacy=trained.privacy, complete=complete,
            resume_state=None if complete else trained.state,
            member_indices=ds.train_indices[mask])

    def save_epoch(trained):
        if target:
            checkpoint_of(trained, complete=False).save(target)

    if target and not args.resume:
        # Recipe, data and members first, so an interrupted run can always be resumed
        # (adversarial training keeps its per-epoch state in TARGET.trainer).
        ModelCheckpoint(recipe=recipe, data=data_spec, in_shape=ds.in_shape,
                        num_classes=ds.num_classes, member_mask=mask, membership=membership,
                        seed=seed, model_state={}, complete=False,
                        member_indices=ds.train_indices[mask]).save(target)
    # Adversarial training keeps its resumable per-epoch state next to the checkpoint.
    trainer_state = ((args.resume or target) + ".trainer") if (target and recipe.adv) else None
    trained = train_model(recipe, x, y, num_classes=ds.num_classes, seed=seed,
                          progress=progress_enabled(args), device=args.device,
                          resume_state=resume_state, on_epoch_end=save_epoch,
                          trainer_state_path=trainer_state, resume=bool(args.resume))
    if target:
        checkpoint_of(trained, complete=True).save(target)
        if trainer_state and os.path.exists(trainer_state):
            os.remove(trainer_state)  # the run is complete: nothing left to resume
    summary = {
        "checkpoint": target,
        "recipe": recipe.to_dict(),
        "data": ds.describe(),
        "members": int(mask.sum()),
        "membership": membership,
        "train_time_s": trained.seconds,
        "train_accuracy": evaluate_accuracy(trained.model, x, y),
        "test_accuracy": evaluate_accuracy(trained.model, ds.x_test, ds.y_test),
        "privacy": trained.privacy,
        "history": trained.history,
    }
    if args.json:
        write_json(summary, args.json)
    line = (f"test accuracy {100 * summary['test_accuracy']:.2f}% "
            f"(train {100 * summary['train_accuracy']:.2f}%), {trained.seconds:.1f} s")
    if trained.privacy:
        line += f"; DP epsilon {trained.privacy['epsilon']:.3f} at delta {recipe.delta:g}"
    if target:
        line += f"; checkpoint {target}"
    log(args, line)
    return 0
