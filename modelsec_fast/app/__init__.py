"""The application layer: the ``modelsec-fast`` command, its subcommands, the demo
pipeline, the training recipes with their checkpoint, and the report writer.

Nothing in the library imports this package (a test checks it): the library's
functions take what they need as arguments (for example the membership audit's
``train_fn``, which :func:`modelsec_fast.app.training.shadow_trainer` provides).

* :mod:`.cli`: the parser and the error policy; :mod:`.commands`: one module per
  subcommand.
* :mod:`.recipe`, :mod:`.training`, :mod:`.checkpoint`: what ``train`` trains and saves.
* :mod:`.robustness`, :mod:`.audits`: the evaluations the commands share.
* :mod:`.demo`: the demo pipeline.
* :mod:`.report` and :mod:`.sections`: the report writer and its sections.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoint import ModelCheckpoint, load_checkpoint
    from .cli import main
    from .demo import run_demo
    from .recipe import TrainingRecipe
    from .training import TrainedModel, train_model

_EXPORTS = {
    "main": "modelsec_fast.app.cli",
    "run_demo": "modelsec_fast.app.demo",
    "TrainingRecipe": "modelsec_fast.app.recipe",
    "TrainedModel": "modelsec_fast.app.training",
    "train_model": "modelsec_fast.app.training",
    "ModelCheckpoint": "modelsec_fast.app.checkpoint",
    "load_checkpoint": "modelsec_fast.app.checkpoint",
}

__all__ = [
    "ModelCheckpoint", "TrainedModel", "TrainingRecipe", "load_checkpoint", "main",
    "run_demo", "train_model",
]


# Hidden from type checkers, which read the TYPE_CHECKING imports instead and so
# flag a misspelt name rather than typing it Any.
if not TYPE_CHECKING:
    def __getattr__(name):
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(globals()) | set(_EXPORTS))
