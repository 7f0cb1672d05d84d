"""The one timing harness of the benchmark scripts in ``bench/``.

Every script takes its shared flags from :func:`parse_args`, times its contenders with
:func:`measure` and prints and saves its figures through :class:`Report`, so every
figure in ``bench/RESULTS.md`` is measured by the same rules:

Rounds
    Each contender (a zero-argument callable) runs ``warmup`` times untimed. Then come
    ``rounds`` interleaved rounds: a round times the canary, then every contender once,
    in an order rotated by one place from round to round, because a fixed place (which
    work ran just before, and what it left in the caches and the allocator) biases a
    contender. ``repeat`` calls make one sample of very short work; ``min_time_s`` adds
    rounds until every contender has run that long.

Clocks (one :class:`Sample` per contender per round)
    wall: ``time.perf_counter`` around the call, with ``torch.cuda.synchronize`` before
    and after it on CUDA. CPU: ``time.process_time``, the CPU seconds of every thread
    of this process; other programs' load inflates wall time far more than CPU time,
    so on a shared host the CPU column is the steadier one (on CUDA it is the host's
    share only). faults: minor page faults (``getrusage``), in the JSON only: glibc's
    allocator can fault a pass's activations in afresh each time (bench/RESULTS.md, attacks).

Statistics
    The median and the interquartile range (Q3 - Q1) over the kept rounds. A row's ratio
    to its section's baseline is the median over the kept rounds of the per-round ratio
    contender / baseline: both ran in the same round, so the host's drift from round
    to round cancels out of it.

The canary rule (the only one in ``bench/``)
    The canary is a fixed small workload, a 512x512 float32 matmul on the measured
    device, timed at the start of every round. A round is dropped when its canary took
    more than ``CANARY_FACTOR`` (1.5) times the median canary of the measurement. At
    least ``MIN_ROUNDS_KEPT`` (3) rounds always remain (every round when fewer ran): if
    the rule would leave fewer, the rounds with the quickest canaries are kept. Every
    row reports how many rounds were kept and dropped.

    Why this rule: a canary far above its median means another process held the cores
    (or the GPU) when the round began, and that round's contenders are then not
    comparable with the others'. The median, not the fastest canary, is the reference,
    because the fastest is one lucky round and a rule relative to it drops ordinary
    rounds. 1.5x lies well above the canary's ordinary spread from round to round on
    the hosts we measure on, so only contended rounds go. The floor of three rounds
    keeps every median from resting on one or two rounds; with three rounds or fewer
    (``--quick``) nothing is dropped. The canary sees contention only while it runs,
    which is why the CPU time is reported beside the wall time.

Shared flags (:func:`parse_args`): ``--device cpu|cuda`` (a script asked for CUDA where
there is none prints why and exits 0, skipped), ``--quick`` (a run of seconds, for
smoke tests and CI), ``--json PATH`` (one document: the machine, torch, threads, date,
command line and every row; see :meth:`Report.to_json`), ``--threads N``
(``torch.set_num_threads``) and ``--rounds N``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # `python bench/x.py` from a clone imports this checkout's package

import torch  # noqa: E402

from modelsec_fast.ops import build_info, native_available  # noqa: E402

__all__ = [
    "CANARY_FACTOR", "MIN_ROUNDS_KEPT", "Sample", "Parts", "Stats", "Measurement", "Row",
    "Section", "Report", "sync", "timed", "rounds_kept", "measure", "parse_args",
    "machine_facts", "format_seconds", "optional_import", "peak_rss_increase_mib",
]

CANARY_FACTOR = 1.5  # the canary rule: see the module docstring
MIN_ROUNDS_KEPT = 3
CANARY_SIZE = 512
SCHEMA = "modelsec_fast.bench/1"
# Versions recorded in every JSON document: the anchors we compare against.
ANCHORS = ("opacus", "torchattacks", "dp-accounting", "numpy", "scipy")
# Environment variables that change the figures (allocator, threads, native library).
ENV_PREFIXES = ("MALLOC_", "MODELSEC_FAST_", "OMP_", "MKL_", "LD_PRELOAD", "CUDA_VISIBLE")


# ------------------------------------------------------------------ clocks
@dataclass(frozen=True)
class Sample:
    """Wall seconds, process CPU seconds and minor page faults.

    ``Sample.now()`` reads the three clocks; the difference of two readings is a duration.
    """

    wall: float
    cpu: float
    faults: float = 0.0

    @classmethod
    def now(cls) -> "Sample":
        return cls(time.perf_counter(), time.process_time(),
                   float(resource.getrusage(resource.RUSAGE_SELF).ru_minflt))

    @classmethod
    def zero(cls) -> "Sample":
        return cls(0.0, 0.0, 0.0)

    def __add__(self, other: "Sample") -> "Sample":
        return Sample(self.wall + other.wall, self.cpu + other.cpu, self.faults + other.faults)

    def __sub__(self, other: "Sample") -> "Sample":
        return Sample(self.wall - other.wall, self.cpu - other.cpu, self.faults - other.faults)

    def scaled(self, factor: float) -> "Sample":
        return Sample(self.wall * factor, self.cpu * factor, self.faults * factor)


class Parts(dict):
    """What a contender returns when it times its own parts: ``{series name: Sample}``.

    :func:`measure` then records each part as a series of its own instead of the whole
    call (``bench_attacks.py``'s interleaved floor splits one call into attack and floor).
    """


def sync(device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device, repeat: int = 1) -> tuple[Sample, Any]:
    """Runs ``fn`` ``repeat`` times between two device syncs.

    Returns (the Sample of one call, averaged over the repeats; the last return value).
    """
    sync(device)
    start = Sample.now()
    result = None
    for _ in range(repeat):
        result = fn()
    sync(device)
    return (Sample.now() - start).scaled(1.0 / repeat), result


# ------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stats:
    """Median and interquartile range (Q3 - Q1) of ``n`` values."""

    median: float
    iqr: float
    n: int

    @classmethod
    def of(cls, values) -> "Stats":
        values = sorted(float(v) for v in values)
        if not values:
            raise ValueError("Stats.of: no values")
        if len(values) == 1:
            return cls(values[0], 0.0, 1)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q3 - q1, len(values))

    def to_json(self) -> dict:
        return {"median": self.median, "iqr": self.iqr, "n": self.n}


def rounds_kept(canary_s: Sequence[float]) -> list[int]:
    """Indices of the rounds the canary rule keeps (see the module docstring)."""
    n = len(canary_s)
    if n == 0:
        return []
    limit = CANARY_FACTOR * statistics.median(canary_s)
    kept = [i for i, c in enumerate(canary_s) if c <= limit]
    floor = min(MIN_ROUNDS_KEPT, n)
    if len(kept) < floor:
        kept = sorted(sorted(range(n), key=lambda i: canary_s[i])[:floor])
    return kept


@dataclass
class Measurement:
    """The samples of one :func:`measure` call.

    Attributes:
        samples: series name -> one Sample per round (every round, dropped ones too).
        canary_s: the canary's wall seconds, one per round.
        kept: indices of the rounds the canary rule kept.
        orders: the contenders' order in each round.
        results: contender -> its last call's return value.
    """

    samples: dict[str, list[Sample]]
    canary_s: list[float]
    kept: list[int]
    orders: list[list[str]]
    results: dict[str, Any]

    @property
    def rounds(self) -> int:
        return len(self.canary_s)

    @property
    def dropped(self) -> int:
        return self.rounds - len(self.kept)

    @property
    def series(self) -> list[str]:
        return list(self.samples)

    def _kept(self, name: str) -> list[Sample]:
        if name not in self.samples:
            raise KeyError(f"no series {name!r}; measured: {', '.join(self.samples)}")
        return [self.samples[name][i] for i in self.kept]

    def wall(self, name: str) -> Stats:
        return Stats.of(s.wall for s in self._kept(name))

    def cpu(self, name: str) -> Stats:
        return Stats.of(s.cpu for s in self._kept(name))

    def faults(self, name: str) -> float:
        return statistics.median(s.faults for s in self._kept(name))

    def ratio(self, name: str, baseline: str, clock: str = "wall") -> Stats | None:
        """Per-round ``name / baseline`` over the kept rounds (None if a baseline time is 0)."""
        pairs = list(zip(self._kept(name), self._kept(baseline)))
        if any(getattr(b, clock) <= 0 for _, b in pairs):
            return None
        return Stats.of(getattr(a, clock) / getattr(b, clock) for a, b in pairs)


def _canary(device: torch.device) -> Callable[[], Any]:
    a = torch.randn(CANARY_SIZE, CANARY_SIZE, device=device,
                    generator=torch.Generator(device=device).manual_seed(0))
    return lambda: torch.mm(a, a)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def measure(contenders: Mapping[str, Callable[[], Any]], *, device, rounds: int,
            warmup: int = 1, repeat: int = 1, min_time_s: float = 0.0,
            max_rounds: int = 1000) -> Measurement:
    """Times ``contenders`` in interleaved, rotated, canary-checked rounds.

    Args:
        contenders: name -> zero-argument callable. A callable that returns
            :class:`Parts` is recorded part by part.
        device: the device the contenders run on (synced around every call).
        rounds: rounds at least.
        warmup: untimed calls of each contender first.
        repeat: calls per sample; a sample is their mean.
        min_time_s: add rounds (up to ``max_rounds``) until every contender's calls
            add up to this many wall seconds.

    Raises:
        ValueError: no contenders, or a count that is not a positive int.
    """
    if not contenders:
        raise ValueError("measure: no contenders")
    _positive_int("rounds", rounds)
    _positive_int("repeat", repeat)
    _positive_int("max_rounds", max_rounds)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    device = torch.device(device)
    canary = _canary(device)
    canary()
    names = list(contenders)
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    samples: dict[str, list[Sample]] = {}
    canary_s: list[float] = []
    orders: list[list[str]] = []
    results: dict[str, Any] = {}
    spent = dict.fromkeys(names, 0.0)
    r = 0
    while r < rounds or (min(spent.values()) < min_time_s and r < max_rounds):
        canary_s.append(timed(canary, device)[0].wall)
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        orders.append(order)
        for name in order:
            sample, result = timed(contenders[name], device, repeat)
            spent[name] += sample.wall * repeat
            parts = result if isinstance(result, Parts) else {name: sample}
            for part, part_sample in parts.items():
                samples.setdefault(part, []).append(part_sample)
            results[name] = result
        r += 1
    return Measurement(samples, canary_s, rounds_kept(canary_s), orders, results)


# ------------------------------------------------------------------ rows and tables
def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_increase_mib(fn: Callable[[], Any]) -> float:
    """Peak RSS increase (MiB) while ``fn()`` runs; call it in a fresh process.

    Linux: the VmHWM high-water mark, reset to the current RSS right before ``fn``
    (``/proc/self/clear_refs``). Elsewhere ``ru_maxrss``, which may hold an earlier
    peak (and survives exec, so a child starts at its parent's peak).
    """
    before = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        peak = lambda: _status_kib("VmHWM")  # noqa: E731
    except (OSError, TypeError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    fn()
    return (peak() - before) / 1024.0


def format_seconds(s: float | None) -> str:
    """A duration with a readable unit: '85.2 µs', '638 ms', '6.51 s'."""
    if s is None:
        return "-"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.4g} ms"
    return f"{s:.4g} s"


def _format_value(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return str(v)


@dataclass
class Row:
    """One line of a section's table: labels, optional timings, other figures."""

    section: str
    labels: dict[str, Any]
    contender: str | None = None
    wall: Stats | None = None
    cpu: Stats | None = None
    ratio: Stats | None = None
    cpu_ratio: Stats | None = None
    faults: float | None = None
    rounds: int | None = None
    dropped: int | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"section": self.section, "labels": dict(self.labels), "contender": self.contender}
        for key in ("wall", "cpu", "ratio", "cpu_ratio"):
            stats = getattr(self, key)
            out[key + ("_s" if key in ("wall", "cpu") else "")] = (
                stats.to_json() if stats is not None else None)
        out.update(faults=self.faults, rounds=self.rounds, dropped=self.dropped,
                   values=dict(self.values))
        return out


class Section:
    """A table of rows with one baseline; made by :meth:`Report.section`."""

    def __init__(self, title: str, baseline: str | Mapping[str, str] | None, note: str | None):
        self.title, self.baseline, self.note = title, baseline, note
        self.rows: list[Row] = []
        self.printed = False

    def _baseline_of(self, series: str) -> str | None:
        if isinstance(self.baseline, Mapping):
            return self.baseline.get(series)
        return self.baseline

    def add(self, m: Measurement, *, labels: Mapping[str, Any] | None = None,
            series: Sequence[str] | None = None) -> list[Row]:
        """One row per series of ``m`` (or of ``series``), ratios to the baseline."""
        rows = []
        for name in series or m.series:
            base = self._baseline_of(name)
            has_base = base is not None and base in m.samples
            row = Row(self.title, dict(labels or {}), name, m.wall(name), m.cpu(name),
                      m.ratio(name, base) if has_base else None,
                      m.ratio(name, base, "cpu") if has_base else None,
                      m.faults(name), m.rounds, m.dropped)
            rows.append(row)
        self.rows.extend(rows)
        return rows

    def add_row(self, *, labels: Mapping[str, Any] | None = None,
                values: Mapping[str, Any] | None = None) -> Row:
        """A row of figures that are not timings (accuracies, epsilons, ...)."""
        row = Row(self.title, dict(labels or {}), values=dict(values or {}))
        self.rows.append(row)
        return row

    def table(self) -> str:
        """The rows as a Markdown table; columns no row fills are left out."""
        label_keys = list(dict.fromkeys(k for r in self.rows for k in r.labels))
        value_keys = list(dict.fromkeys(k for r in self.rows for k in r.values))
        base = self.baseline if isinstance(self.baseline, str) else "baseline"
        timing = [("median", lambda r: format_seconds(r.wall.median) if r.wall else "-"),
                  ("IQR", lambda r: format_seconds(r.wall.iqr) if r.wall and r.wall.n > 1 else "-"),
                  (f"x {base}", lambda r: f"{r.ratio.median:.3g}x" if r.ratio else "-"),
                  ("CPU", lambda r: format_seconds(r.cpu.median) if r.cpu else "-"),
                  (f"CPU x {base}", lambda r: f"{r.cpu_ratio.median:.3g}x" if r.cpu_ratio else "-"),
                  ("kept", lambda r: f"{r.rounds - r.dropped}/{r.rounds}" if r.rounds else "-")]
        columns = [(k, (lambda r, k=k: _format_value(r.labels.get(k))), "---")
                   for k in label_keys]
        columns.append(("contender", lambda r: r.contender or "-", "---"))
        columns += [(name, fn, "---:") for name, fn in timing]
        columns += [(k, (lambda r, k=k: _format_value(r.values.get(k))), "---:")
                    for k in value_keys]
        cells = [[fn(r) for _, fn, _ in columns] for r in self.rows]
        used = [i for i in range(len(columns)) if any(row[i] != "-" for row in cells)]
        lines = ["| " + " | ".join(columns[i][0] for i in used) + " |",
                 "|" + "|".join(columns[i][2] for i in used) + "|"]
        lines += ["| " + " | ".join(row[i] for i in used) + " |" for row in cells]
        return "\n".join(lines)

    def print(self) -> None:
        """Prints the title, the baseline, the note and the table (once)."""
        head = f"\n## {self.title}"
        if isinstance(self.baseline, str):
            head += f" (baseline: {self.baseline})"
        print(head)
        if self.note:
            print(self.note)
        print(self.table() if self.rows else "(no rows)", flush=True)
        self.printed = True


# ------------------------------------------------------------------ the run
def optional_import(module: str, report: "Report | None" = None, what: str = ""):
    """Imports an optional anchor (opacus, torchattacks); None, with a skip message, if absent."""
    try:
        return __import__(module)
    except ImportError as err:
        reason = f"{module} is not installed ({err}); its contenders are left out"
        if report is not None:
            report.skip(what or module, reason)
        else:
            print(f"skipped {what or module}: {reason}", flush=True)
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts(device) -> dict:
    """The machine, the software and the settings a figure depends on."""
    device = torch.device(device)
    facts = {
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "native": native_available(), "build": build_info(), "packages": {p: _version(p) for p in ANCHORS},
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _command() -> str:
    return shlex.join(["python"] + sys.argv)


def _write_json(path: str, document: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(document, fh, indent=1, default=str)
        fh.write("\n")


class Report:
    """One benchmark run: its sections, skip messages and notes, printed and saved.

    ``report.section(title, baseline=...)`` opens a table; ``report.finish()`` prints
    every table not yet printed and writes ``--json``.
    """

    def __init__(self, bench: str, args: argparse.Namespace):
        self.bench, self.args = bench, args
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.t0 = time.perf_counter()
        self.sections: list[Section] = []
        self.left_out: list[dict] = []
        self.notes: list[str] = []
        print(f"{bench}: device={args.device} threads={torch.get_num_threads()} "
              f"native={native_available()} rounds={args.rounds} quick={args.quick}; canary rule: "
              f"drop a round whose {CANARY_SIZE}x{CANARY_SIZE} matmul took > {CANARY_FACTOR}x "
              f"the median, keep >= {MIN_ROUNDS_KEPT}", flush=True)

    def section(self, title: str, *, baseline: str | Mapping[str, str] | None = None,
                note: str | None = None) -> Section:
        sec = Section(title, baseline, note)
        self.sections.append(sec)
        return sec

    def skip(self, what: str, reason: str) -> None:
        """Records (JSON ``left_out``) and prints that ``what`` was not measured, and why."""
        self.left_out.append({"what": what, "reason": reason})
        print(f"skipped {what}: {reason}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(text, flush=True)

    @property
    def rows(self) -> list[Row]:
        return [r for s in self.sections for r in s.rows]

    def to_json(self) -> dict:
        """The JSON document (schema ``modelsec_fast.bench/1``)."""
        return {
            "schema": SCHEMA, "bench": self.bench,
            "date": self.started.isoformat(timespec="seconds"),
            "duration_s": time.perf_counter() - self.t0, "command": _command(),
            "device": str(self.args.device), "quick": self.args.quick, "rounds": self.args.rounds,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "canary": {"workload": f"{CANARY_SIZE}x{CANARY_SIZE} float32 matmul",
                       "factor_of_median": CANARY_FACTOR, "min_rounds_kept": MIN_ROUNDS_KEPT},
            "machine": machine_facts(self.args.device), "args": vars(self.args),
            "sections": [{"title": s.title, "baseline": s.baseline, "note": s.note}
                         for s in self.sections],
            "rows": [r.to_json() for r in self.rows],
            "left_out": self.left_out, "notes": self.notes,
        }

    def finish(self) -> dict:
        """Prints the tables not yet printed, writes ``--json`` if given; returns the document."""
        for sec in self.sections:
            if not sec.printed:
                sec.print()
        document = self.to_json()
        print(f"\n{self.bench}: {format_seconds(document['duration_s'])}", flush=True)
        if self.args.json:
            _write_json(self.args.json, document)
        return document


def parse_args(parser: argparse.ArgumentParser, argv=None, *, rounds: int, quick_rounds: int = 2,
               threads: int | None = None) -> argparse.Namespace:
    """Adds the shared flags to ``parser``, parses ``argv`` and applies them.

    ``rounds`` and ``quick_rounds`` are the script's defaults for ``--rounds``;
    ``threads`` its default for ``--threads`` (None: torch's own). A script asked for
    ``--device cuda`` without CUDA prints why, writes a ``skipped`` JSON document if
    ``--json`` was given, and exits with status 0.
    """
    def positive(text):
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        return value

    shared = parser.add_argument_group("shared benchmark flags (bench/_harness.py)")
    shared.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    shared.add_argument("--quick", action="store_true",
                        help="a run of seconds at small sizes (smoke tests, CI); "
                             "its figures mean nothing")
    shared.add_argument("--json", metavar="PATH", help="write every row and the machine facts here")
    shared.add_argument("--threads", type=positive, default=threads,
                        help="torch.set_num_threads (default: %s)" % (threads or "torch's"))
    shared.add_argument("--rounds", type=positive, default=None,
                        help=f"timed rounds (default {rounds}; --quick: {quick_rounds})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rounds is None:
        args.rounds = quick_rounds if args.quick else rounds
    if args.device == "cuda" and not torch.cuda.is_available():
        bench = os.path.splitext(os.path.basename(parser.prog))[0]
        reason = f"--device cuda but CUDA is not available (torch {torch.__version__})"
        print(f"{bench}: skipped: {reason}", flush=True)
        if args.json:
            _write_json(args.json, {"schema": SCHEMA, "bench": bench, "skipped": reason, "rows": [],
                                    "command": _command(), "torch": torch.__version__})
        raise SystemExit(0)
    return args
