"""The scan pipeline behind ``modelsec-fast scan``: load the user's model and data, run
every stage of :data:`~.stages.STAGES` and write the report (``report.html``,
``report.md``, ``report.json`` and PNG figures) with a one-screen summary first.

Loading is checked before any stage runs: a bad model or data file stops the scan
with :class:`ScanStopped` (a ``ValueError``: exit status 2 from the CLI) after
writing a partial report that says where it stopped. A stage that fails is
reported in its place and the others still run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..console import one_line
from ..report import FailedSection, ReportFiles, ReportMeta, Section, write_report
from .inputs import BUDGETS, FitRecipe, MembershipData, ScanInputs
from .stages import STAGES, run_stage

__all__ = ["ScanStopped", "ScanOptions", "ScanResult", "run_scan", "default_radii", "TITLE"]

TITLE = "modelsec-fast scan"
# Default radii as fractions of the input range: RobustBench's CIFAR-10 threat models.
DEFAULT_LINF_FRACTION = 8 / 255
DEFAULT_L2_FRACTION = 0.5


class ScanStopped(ValueError):
    """The scan could not start (bad model or data); one line naming the file."""


@dataclass
class ScanOptions:
    """What ``modelsec-fast scan`` was asked to do (the flags, checked by the parser).

    ``model``: ``package.module:factory`` or a model file; ``weights``: the factory's
    state dict; ``data``/``train_data``: see :mod:`.data_loading`; ``members``: a
    ``.npy`` mask over ``train_data`` (or over ``data`` without it);
    ``input_range``: (lo, hi) of the model's inputs; ``mean``/``std``: its
    normalisation; ``eps_linf``/``eps_l2``: radii in input units (None: defaults
    relative to the range); ``max_records``: records read per data file.
    """

    model: str
    data: str
    out: str
    weights: Optional[str] = None
    trust_model: bool = False
    train_data: Optional[str] = None
    members: Optional[str] = None
    input_range: tuple[float, float] = (0.0, 1.0)
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    eps_linf: Optional[float] = None
    eps_l2: Optional[float] = None
    budget: str = "standard"
    recipe: Optional[FitRecipe] = None
    device: str = "cpu"
    seed: int = 0
    max_records: int = 10_000


@dataclass
class ScanResult:
    """The written report and the keys of the sections that failed or were skipped."""

    files: ReportFiles
    failed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    seconds: dict = field(default_factory=dict)


def default_radii(input_range: tuple[float, float]) -> tuple[float, float]:
    """(L-inf, L2) radii relative to the input range: 8/255 and 0.5 of its width."""
    width = input_range[1] - input_range[0]
    return DEFAULT_LINF_FRACTION * width, DEFAULT_L2_FRACTION * width


def run_scan(options: ScanOptions, *, progress: bool = True,
             log: Optional[Callable[[str], None]] = None, command: str = "modelsec-fast scan",
             raise_errors: bool = False) -> ScanResult:
    """Scan ``options.model`` on ``options.data``; write the report into ``options.out``.

    Raises:
        ScanStopped: the model or data could not be loaded or do not fit each other
            (a partial report saying where it stopped is written first).
    """
    log = log or (lambda message: None)
    meta = ReportMeta.now(command)
    started = time.perf_counter()
    loader = _Loader(options, log)
    try:
        inputs, described = loader.load()
    except ValueError as error:
        message = one_line(error)
        meta.total_time_s = time.perf_counter() - started
        stopped = FailedSection("stopped", "Scan stopped",
                                f"while {loader.step}: {message}. No stage ran.")
        write_report(options.out, TITLE, meta, [stopped])
        raise ScanStopped(message) from None
    sections: list[Section] = []
    seconds = {}
    with _StageProgress(progress, log) as bar:
        inputs.log = bar.message
        for spec in STAGES:
            bar.start(spec.title)
            begun = time.perf_counter()
            sections.append(run_stage(spec, inputs, raise_errors=raise_errors))
            seconds[spec.key] = time.perf_counter() - begun
            bar.done(spec.title, seconds[spec.key], _status(sections[-1]))
    from .summary import summary_section

    summary = summary_section(STAGES, sections, options, described, seconds)
    meta.total_time_s = time.perf_counter() - started
    files = write_report(options.out, TITLE, meta, [summary, *sections],
                         raise_errors=raise_errors)
    return ScanResult(files=files, failed=files.failed, skipped=files.skipped, seconds=seconds)


def _status(section) -> str:
    from ..report import SkippedSection

    if isinstance(section, FailedSection):
        return "failed"
    return "skipped" if isinstance(section, SkippedSection) else "ok"


# ----------------------------------------------------------------------------- loading
class _Loader:
    """Loads and checks the model and data; ``step`` says what it was doing."""

    def __init__(self, options: ScanOptions, log):
        self.options, self.log, self.step = options, log, "starting"

    def load(self) -> tuple[ScanInputs, dict]:
        from .data_loading import load_data, load_member_mask
        from .model_loading import load_model

        o = self.options
        budget = BUDGETS[o.budget]
        self.step = f"loading the model {o.model}"
        loaded = load_model(o.model, weights=o.weights, trust_model=o.trust_model, mean=o.mean,
                            std=o.std, device=o.device)
        self.log(f"model: {loaded.source}")
        self.step = f"loading the data {o.data}"
        data = load_data(o.data, input_range=o.input_range, limit=o.max_records, seed=o.seed)
        train = None
        if o.train_data is not None:
            self.step = f"loading the training data {o.train_data}"
            train = load_data(o.train_data, input_range=o.input_range, limit=o.max_records,
                              seed=o.seed, split="train")
        model, factory, input_range = loaded.model, loaded.factory, o.input_range
        scaling = None
        if not data.is_image:  # tabular: scale each feature to [0, 1] over the data seen
            self.step = "scaling the tabular features"
            scaling = _feature_scaling([d for d in (data, train) if d is not None])
            for d in (data, train):
                if d is not None:
                    d.x = ((d.x - scaling["min"]) / (scaling["max"] - scaling["min"])).clamp(0, 1)
            model, factory = _scaled(model, scaling), (
                None if factory is None else (lambda make=factory: _scaled(make(), scaling)))
            input_range = (0.0, 1.0)
        self.step = f"checking the data {o.data} against the model"
        layout, num_classes = _fit_layout(model, data, o.device)
        stored_shape = data.x.shape[1:]
        data.x = layout(data.x)
        _check_labels(data, num_classes)
        membership = None
        if train is not None:
            self.step = f"checking the training data {o.train_data} against the model"
            train.x = layout(train.x) if train.x.shape[1:] == stored_shape else \
                _fit_layout(model, train, o.device)[0](train.x)
            _check_labels(train, num_classes)
        self.step = "reading the membership mask"
        pool = train if train is not None else data
        mask = pool.member
        if o.members is not None:
            what = o.train_data if train is not None else o.data
            mask = load_member_mask(o.members, pool.total, what)
            if pool.total != len(pool.y):  # a subset was read: the mask follows it
                mask = mask[_rows(pool.total, o.max_records, o.seed)]
        if mask is not None:
            membership = MembershipData(pool.x, pool.y, mask)
            members = (pool.x[mask], pool.y[mask])
        elif train is not None:
            membership = MembershipData(torch.cat([train.x, data.x]), torch.cat([train.y, data.y]),
                                        torch.cat([torch.ones(len(train.y), dtype=torch.bool),
                                                   torch.zeros(len(data.y), dtype=torch.bool)]))
            members = (train.x, train.y)
        else:
            members = None
        eps_linf, eps_l2 = default_radii(o.input_range)
        if scaling is not None:  # radii of tabular data are fractions of each feature's range
            eps_linf, eps_l2 = DEFAULT_LINF_FRACTION, DEFAULT_L2_FRACTION
        eps_linf = o.eps_linf if o.eps_linf is not None else eps_linf
        eps_l2 = o.eps_l2 if o.eps_l2 is not None else eps_l2
        recipe = o.recipe
        if recipe is None and loaded.factory is not None:
            recipe = _companion_recipe(loaded.factory, o.model)
        inputs = ScanInputs(model=model, x=data.x, y=data.y, num_classes=num_classes,
                            input_range=input_range, eps_linf=eps_linf, eps_l2=eps_l2,
                            budget=budget, device=torch.device(o.device), seed=o.seed,
                            is_image=data.is_image, train=members, membership=membership,
                            factory=factory, recipe=recipe)
        described = {"model": loaded.source, "model_format": loaded.format,
                     "data": f"{data.source} ({data.format}; {len(data.y)} of {data.total} "
                             f"records; {'; '.join(data.notes)})",
                     "train_data": None if train is None else
                     f"{train.source} ({train.format}; {len(train.y)} of {train.total} records)",
                     "membership": None if membership is None else
                     f"{int(membership.is_member.sum())} members, "
                     f"{int((~membership.is_member).sum())} non-members",
                     "num_classes": num_classes, "input_shape": list(data.x.shape[1:]),
                     "feature_scaling": scaling and {k: v.tolist() for k, v in scaling.items()},
                     "eps_linf": eps_linf, "eps_l2": eps_l2, "input_range": list(input_range),
                     "recipe": None if recipe is None else vars(recipe).copy()}
        self.log(f"data: {described['data']}; {num_classes} classes")
        return inputs, described


def _rows(n: int, limit: int, seed: int):
    from .data_loading import subset_rows

    return torch.from_numpy(subset_rows(n, limit, seed))


def _companion_recipe(factory, spec: str) -> Optional[FitRecipe]:
    """The factory's documented ``training_recipe`` (a dict of :class:`FitRecipe` fields)."""
    from .fitting import check_recipe

    recipe = getattr(factory, "training_recipe", None)
    if recipe is None:
        return None
    try:
        return check_recipe(FitRecipe(**dict(recipe)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"--model {spec}: its training_recipe is not valid ({one_line(e)})") \
            from None


def _feature_scaling(datasets) -> dict:
    x = torch.cat([d.x for d in datasets])
    lo, hi = x.amin(0), x.amax(0)
    return {"min": lo, "max": torch.where(hi > lo, hi, lo + 1)}


class _FeatureScaled(nn.Module):
    """``model`` on features scaled to [0, 1]: maps them back to the original units."""

    def __init__(self, model: nn.Module, scaling: dict):
        super().__init__()
        self.model = model
        self.register_buffer("low", scaling["min"].clone())
        self.register_buffer("width", (scaling["max"] - scaling["min"]).clone())

    def forward(self, x):
        return self.model(self.low + self.width * x)


def _scaled(model: nn.Module, scaling: dict) -> nn.Module:
    return _FeatureScaled(model, scaling).to(_device_of(model)).eval()


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _layouts(x: torch.Tensor):
    """Candidate views of the records for the model: as stored, then the usual fixes."""
    yield "as stored", lambda t: t
    if x.dim() == 3:
        yield "with a channel axis", lambda t: t[:, None]
    if x.dim() == 4 and x.shape[-1] in (1, 3):
        yield "channels first", lambda t: t.permute(0, 3, 1, 2).contiguous()
    if x.dim() > 2:
        yield "flattened", lambda t: t.flatten(1)


def _fit_layout(model: nn.Module, data, device) -> tuple[Callable, int]:
    """(the layout the model accepts, its number of classes), by running two records.

    Raises:
        ValueError: no layout fits, or the model's output is not (N, classes >= 2).
    """
    first_error = None
    probe = data.x[:2]
    for _, layout in _layouts(probe):
        try:
            with torch.no_grad():
                out = model(layout(probe).to(device))
        except Exception as e:  # noqa: BLE001  (the model's own complaint, reported below)
            first_error = first_error or e
            continue
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(probe):
            raise ValueError(f"{data.source}: the model returned "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)} "
                             "for a batch of 2; a classifier must return logits (N, classes)")
        if out.shape[1] < 2:
            raise ValueError(f"{data.source}: the model returns {out.shape[1]} output; a "
                             "classifier needs logits for >= 2 classes")
        return layout, int(out.shape[1])
    raise ValueError(f"{data.source}: records of shape {tuple(data.x.shape[1:])} do not fit the "
                     f"model ({type(first_error).__name__}: {one_line(first_error)[:200]})")


def _check_labels(data, num_classes: int) -> None:
    top = int(data.y.max())
    if top >= num_classes:
        raise ValueError(f"{data.source}: labels go up to {top} but the model has "
                         f"{num_classes} classes (0..{num_classes - 1})")


# ----------------------------------------------------------------------------- progress
class _StageProgress:
    """A bar per stage on a terminal (the stage's messages as its postfix); otherwise a
    log line when each stage starts and ends, and each message as a line."""

    def __init__(self, progress: bool, log: Callable[[str], None]):
        self.bar_wanted = progress and sys.stderr.isatty()
        self.log, self.bar = log, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def start(self, title: str) -> None:
        if self.bar_wanted:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=1, desc=title, leave=True, file=sys.stderr,
                            bar_format="{desc}: {bar:20} {elapsed} {postfix}")
        else:
            self.log(f"[scan] {title}: started")

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text[:80])
        else:
            self.log(f"[scan] {text}")

    def done(self, title: str, seconds: float, status: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(status)
            self.bar.update(1)
            self._close()
        else:
            self.log(f"[scan] {title}: {status} ({seconds:.1f} s)")
