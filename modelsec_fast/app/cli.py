"""The ``modelsec-fast`` command (also ``python -m modelsec_fast``): the parser, the
dispatch to :mod:`modelsec_fast.app.commands`, and the error policy.

Subcommands:

* ``demo``: train a baseline, a DP-SGD model and an adversarially trained model
  on the embedded digits, attack them, audit their privacy and write a report
  with plots into ``--out``.
* ``train``: train one model (``--dp``, ``--adv``), save a checkpoint that
  records its members so ``audit`` can run on it; ``--resume`` continues one.
* ``evaluate``: clean and robust accuracy of a checkpoint (FGSM, PGD, APGD).
* ``audit``: membership inference (loss threshold, LiRA with shadow models) on a
  checkpoint; ``--canary`` adds the one-run canary audit of its DP-SGD recipe.
* ``epsilon``: accountant calculator, epsilon from sigma or sigma from epsilon.
* ``scan``: a security review of the user's own model and data (evasion,
  membership, extraction, inversion, backdoors, explanations) in one HTML report.

Benchmarks are not a subcommand: they ship with the source tree, not the
package (``bash bench/run_all.sh`` in a checkout).

Bad input (a missing or corrupt dataset, an unknown model, a checkpoint that
does not fit, a flag out of range) prints one line ``modelsec-fast: error: ...``
and exits with status 2, without a traceback (set ``MODELSEC_FAST_DEBUG=1`` to
see one). A report section that fails is reported in the report and the
command exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from typing import Callable

from modelsec_fast.validation import (check_choice, check_in_range, check_int,
                                      check_non_negative, check_positive, check_real)

from .console import PROG, UsageError, one_line
from .recipe import ADV_METHODS, OPTIMIZERS
from .robustness import DEFAULT_ATTACKS

__all__ = ["main", "build_parser", "UsageError"]

ACCOUNTANTS = ("pld", "rdp", "prv")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit status 2."""

    def error(self, message):
        raise UsageError(message)


# ----------------------------------------------------------------------------- flag types
def _flag_type(parse: Callable[[str], object], check: Callable, expected: str):
    """An argparse type: ``parse`` the text, then ``check`` the value (a check of
    :mod:`modelsec_fast.validation`, whose message argparse prefixes with the flag)."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        try:
            return check(value)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = expected  # argparse's own messages name the type by it
    return convert


def _int_at_least(minimum: int):
    return _flag_type(int, lambda v: check_int("value", v, minimum),
                      f"an integer >= {minimum}")


_positive_int = _int_at_least(1)
_positive = _flag_type(float, lambda v: check_positive("value", v), "a number > 0")
_non_negative = _flag_type(float, lambda v: check_non_negative("value", v), "a number >= 0")
_probability = _flag_type(float, lambda v: check_in_range("value", v, 0.0, 1.0, low_open=True,
                                                          high_open=True), "a number in (0, 1)")
_rate = _flag_type(float, lambda v: check_in_range("value", v, 0.0, 1.0, low_open=True),
                   "a number in (0, 1]")


def _float_list(text: str) -> list[float]:
    """Comma-separated L-inf radii, each a finite number >= 0."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return [_non_negative(t) for t in items]


def _attack_list(text: str) -> list[str]:
    """Comma-separated attack names, a subset of :data:`DEFAULT_ATTACKS`."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated attacks, got {text!r}")
    try:
        return [check_choice("attack", n, DEFAULT_ATTACKS) for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ----------------------------------------------------------------------------- parser
def _add_common(p, *, device=True, threads=None):
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive_int, default=threads,
                   help="CPU threads for torch (default: " +
                   ("1, since the demo's small models gain nothing from more" if threads
                    else "torch's default") + ")")
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--quiet", action="store_true", help="only print results")


def build_parser() -> argparse.ArgumentParser:
    """The ``modelsec-fast`` argument parser (errors raise :class:`UsageError`)."""
    from modelsec_fast import __version__

    parser = _Parser(prog=PROG, description="Fast, verified AI-model security for PyTorch: "
                     "DP-SGD, adversarial attacks and training, privacy audits.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser("demo", help="train, attack and audit three models; write a report")
    demo.add_argument("--data", default="digits",
                      help="digits (default, offline), fashion-mnist, an IDX dir or an .npz")
    demo.add_argument("--out", default="report", help="output folder (default ./report)")
    demo.add_argument("--quick", action="store_true", help="smaller run, under a minute")
    demo.add_argument("--target-epsilon", type=_positive, default=4.0,
                      help="DP-SGD model's target epsilon (default 4)")
    demo.add_argument("--delta", type=_probability, default=1e-5,
                      help="DP delta (default 1e-5)")
    demo.add_argument("--adv", default="fgsm_rs", choices=ADV_METHODS,
                      help="adversarial-training method (default fgsm_rs)")
    demo.add_argument("--shadows", type=_int_at_least(2), default=None,
                      help="LiRA shadow models per audited model (default 16; quick 8)")
    demo.add_argument("--model", default="mlp", help="architecture (default mlp)")
    _add_common(demo, threads=1)

    train = sub.add_parser("train", help="train one model and save an auditable checkpoint")
    train.add_argument("--data", default="digits", help="digits, fashion-mnist, IDX dir or .npz")
    train.add_argument("--train-size", type=_positive_int, help="subset of the train split")
    train.add_argument("--test-size", type=_positive_int, help="subset of the test split")
    train.add_argument("--membership", choices=("coin", "all"), default="coin",
                       help="coin (default): each training-split record joins by a fair coin, "
                            "so audits can bound epsilon; all: the whole split")
    train.add_argument("--model", default="mlp", help="architecture (default mlp)")
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--lr", type=_positive, default=1e-3)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--dp", action="store_true", help="train with DP-SGD")
    train.add_argument("--epsilon", type=_positive, help="DP target epsilon (implies --dp)")
    train.add_argument("--noise-multiplier", type=_non_negative,
                       help="DP noise multiplier (implies --dp)")
    train.add_argument("--delta", type=_probability, default=1e-5)
    train.add_argument("--max-grad-norm", type=_positive, default=1.0)
    train.add_argument("--accountant", choices=ACCOUNTANTS, default="pld")
    train.add_argument("--adv", choices=ADV_METHODS, help="adversarial training method")
    train.add_argument("--eps", type=_rate,
                       help="adversarial-training L-inf radius (pixel space, in (0, 1])")
    train.add_argument("--adv-steps", type=_positive_int, default=7,
                       help="attack steps for --adv pgd/trades (default 7)")
    train.add_argument("--checkpoint", help="save the model here (written every epoch)")
    train.add_argument("--resume", help="continue the run saved in this checkpoint")
    train.add_argument("--json", help="write a JSON summary here ('-' for stdout)")
    _add_common(train)

    ev = sub.add_parser("evaluate", help="clean and robust accuracy of a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data", help="evaluate on this dataset's test split instead")
    ev.add_argument("--test-size", type=_positive_int, help="subset of the test split")
    ev.add_argument("--model", help="expected architecture (checked against the checkpoint)")
    ev.add_argument("--attacks", type=_attack_list, default=list(DEFAULT_ATTACKS),
                    help="comma-separated subset of fgsm,pgd,apgd (default all)")
    ev.add_argument("--eps", type=_float_list,
                    help="comma-separated L-inf radii (default the training eps or 0.1)")
    ev.add_argument("--steps", type=_positive_int, default=20, help="PGD/APGD steps (default 20)")
    ev.add_argument("--batch-size", type=_positive_int, default=512)
    ev.add_argument("--save-adversarial", help="save the worst-case adversarial examples (.pt)")
    ev.add_argument("--json", help="write the metrics as JSON here ('-' for stdout)")
    _add_common(ev)

    au = sub.add_parser("audit", help="membership-inference audit of a checkpoint")
    au.add_argument("checkpoint")
    au.add_argument("--shadows", type=_int_at_least(2), default=16,
                    help="LiRA shadow models (default 16; LiRA needs in and out models, >= 2)")
    au.add_argument("--canary", action="store_true",
                    help="also run the one-run canary audit of the checkpoint's DP-SGD recipe")
    au.add_argument("--out", help="folder for the report and its ROC plot")
    au.add_argument("--json", help="write the audit as JSON here ('-' for stdout)")
    _add_common(au)

    ep = sub.add_parser("epsilon", help="DP accountant calculator")
    ep.add_argument("--noise-multiplier", type=_positive, help="sigma -> epsilon")
    ep.add_argument("--epsilon", type=_positive, help="target epsilon -> sigma")
    ep.add_argument("--sample-rate", type=_rate, required=True, help="Poisson rate q")
    ep.add_argument("--steps", type=_positive_int, help="number of DP-SGD steps")
    ep.add_argument("--epochs", type=_positive, help="epochs (steps = epochs / q)")
    ep.add_argument("--delta", type=_probability, default=1e-5)
    ep.add_argument("--accountant", choices=ACCOUNTANTS + ("all",), default="pld")
    ep.add_argument("--json", action="store_true", help="print JSON")
    _add_scan(sub)
    return parser


def _range(text: str) -> tuple[float, float]:
    """``LO,HI`` with LO < HI, both finite."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}")
    lo, hi = (_flag_type(float, lambda v: check_real("value", v), "a number")(p) for p in parts)
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO < HI, got {text!r}")
    return lo, hi


def _numbers(text: str) -> list[float]:
    """Comma-separated finite numbers (one per channel)."""
    items = [t for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return [_flag_type(float, lambda v: check_real("value", v), "a number")(t) for t in items]


def _radii(text: str) -> list[float]:
    """``LINF`` or ``LINF,L2``, each > 0."""
    items = [t for t in text.split(",") if t.strip()]
    if not 1 <= len(items) <= 2:
        raise argparse.ArgumentTypeError(f"expected LINF or LINF,L2, got {text!r}")
    return [_positive(t) for t in items]


def _add_scan(sub) -> None:
    from .scan.inputs import BUDGETS

    sc = sub.add_parser("scan", help="security review of your own model and data, "
                                     "one HTML report")
    sc.add_argument("--model", required=True,
                    help="package.module:factory (with --weights), or a .pt2 / TorchScript "
                         "file (with --trust-model), or an .onnx file (needs onnx2torch)")
    sc.add_argument("--weights", help="state dict of the factory's model (read with "
                                      "weights_only=True)")
    sc.add_argument("--trust-model", action="store_true",
                    help="allow .pt2 and TorchScript files: loading them unpickles, which can "
                         "run code; only for files you trust")
    sc.add_argument("--data", required=True,
                    help="test records: an image folder, X.npy,Y.npy, IDX files, .npz "
                         "(x, y, optional member) or .csv")
    sc.add_argument("--train-data", help="training records (members), same formats")
    sc.add_argument("--members", help=".npy bool mask: which --train-data records (or --data "
                                      "records without it) were trained on")
    sc.add_argument("--input-range", type=_range, default=(0.0, 1.0),
                    help="LO,HI of the model's inputs (default 0,1)")
    sc.add_argument("--mean", type=_numbers, help="per-channel mean the model normalises with")
    sc.add_argument("--std", type=_numbers, help="per-channel std the model normalises with")
    sc.add_argument("--eps", type=_radii, help="attack radii LINF[,L2] in input units "
                                               "(default 8/255 and 0.5 of the input range)")
    sc.add_argument("--budget", choices=tuple(BUDGETS), default="standard",
                    help="quick, standard (default) or thorough: attack steps, restarts and "
                         "shadow models together")
    sc.add_argument("--recipe", help="training recipe for retraining the factory's model "
                                     "(LiRA shadows): epochs=20,lr=1e-3,batch_size=64,"
                                     "optimizer=adam")
    sc.add_argument("--max-records", type=_positive_int, default=10_000,
                    help="records read per data file, a seeded subset (default 10000)")
    sc.add_argument("--out", default="scan-report", help="output folder (default ./scan-report)")
    _add_common(sc)


# ----------------------------------------------------------------------------- entry point
def main(argv=None) -> int:
    """Entry point of the ``modelsec-fast`` console script; returns the exit status."""
    from modelsec_fast.data import DataError
    from modelsec_fast.state import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MODELSEC_FAST_DEBUG") == "1"
    try:
        args = build_parser().parse_args(argv)
        args.debug = debug
        args.command_line = shlex.join([PROG, *argv])
        if hasattr(args, "model"):
            args.model_given = args.model is not None and any(
                a == "--model" or a.startswith("--model=") for a in argv)
        import torch

        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        device = getattr(args, "device", "cpu")
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda, but this torch build sees no CUDA device")
        # Each subcommand is the module of the same name, imported only when it runs.
        command = importlib.import_module(f"modelsec_fast.app.commands.{args.command}")
        return int(command.run(args) or 0)
    except (UsageError, DataError, CheckpointError, ValueError) as e:
        # ValueError: the library's validation of a value the user gave.
        if debug:
            raise
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
