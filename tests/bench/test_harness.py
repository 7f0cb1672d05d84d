"""The benchmark harness (bench/_harness.py) on toy workloads, and each bench script's --quick.

Timing tests run on a scripted clock (a fake ``time`` module inside the harness), so
rotation, the canary rule and the statistics are checked exactly, whatever the load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")


def _load_harness():
    path = os.path.join(BENCH, "_harness.py")
    spec = importlib.util.spec_from_file_location("bench_harness", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


h = _load_harness()


class ScriptedClock:
    """Stands in for the ``time`` module: time moves only when a workload says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def process_time(self):
        return self.now / 2  # CPU seconds: half the wall time, to tell the two apart

    def spend(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = ScriptedClock()
    monkeypatch.setattr(h, "time", fake)
    return fake


def _scripted_canary(monkeypatch, clock, seconds_per_round):
    """The canary takes ``seconds_per_round[r]`` in round r (after one untimed first call)."""
    calls = iter([0.0] + list(seconds_per_round))
    monkeypatch.setattr(h, "_canary", lambda device: (lambda: clock.spend(next(calls))))


def test_rounds_rotate_the_contenders_order_after_the_warmup(monkeypatch, clock):
    _scripted_canary(monkeypatch, clock, [1e-3] * 4)
    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    m = h.measure(contenders, device="cpu", rounds=4, warmup=2)
    assert calls[:6] == list("abcabc")  # two untimed warm-up calls each
    assert calls[6:] == list("abc" "bca" "cab" "abc")
    assert m.orders == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_medians_iqr_cpu_time_and_per_round_ratio(monkeypatch, clock):
    _scripted_canary(monkeypatch, clock, [1e-3] * 5)
    times = iter([0.010, 0.020, 0.012, 0.024, 0.014, 0.028, 0.016, 0.032, 0.018, 0.036])
    step = {"fast": lambda: clock.spend(next(times)), "slow": lambda: clock.spend(next(times))}
    m = h.measure(step, device="cpu", rounds=5, warmup=0)
    # rotation: round r runs fast, slow in rounds 0, 2, 4 and slow, fast in rounds 1, 3
    fast = [0.010, 0.024, 0.014, 0.032, 0.018]
    slow = [0.020, 0.012, 0.028, 0.016, 0.036]
    assert [s.wall for s in m.samples["fast"]] == pytest.approx(fast)
    assert m.wall("fast").median == pytest.approx(0.018)
    assert m.wall("fast").iqr == pytest.approx(0.024 - 0.014)
    assert m.cpu("fast").median == pytest.approx(0.009)
    ratios = sorted(s / f for s, f in zip(slow, fast))
    assert m.ratio("slow", "fast").median == pytest.approx(ratios[2])


def test_a_round_whose_canary_exceeds_the_factor_of_the_median_is_dropped(monkeypatch, clock):
    canary = [1e-3, 1.1e-3, 0.9e-3, 1e-3, h.CANARY_FACTOR * 1e-3 * 1.01, 1e-3]
    _scripted_canary(monkeypatch, clock, canary)
    times = iter([0.010, 0.010, 0.010, 0.010, 5.0, 0.010])
    m = h.measure({"a": lambda: clock.spend(next(times))}, device="cpu", rounds=6, warmup=0)
    assert m.kept == [0, 1, 2, 3, 5]
    assert m.dropped == 1
    assert m.wall("a").n == 5 and m.wall("a").iqr == pytest.approx(0.0)  # the 5 s round is out


def test_the_reference_is_the_median_canary_not_the_fastest():
    # 1.5x the fastest would drop the four ordinary rounds after one lucky one
    assert h.rounds_kept([1.0, 2.0, 2.0, 2.0, 2.0, 3.1]) == [0, 1, 2, 3, 4]


def test_a_canary_at_exactly_the_factor_is_kept():
    assert h.rounds_kept([1.0, 1.0, 1.0, h.CANARY_FACTOR]) == [0, 1, 2, 3]


def test_the_floor_keeps_the_quickest_rounds_when_the_rule_would_keep_fewer():
    # median 5.5, limit 8.25: the rule alone would keep 2 of 4 rounds
    assert h.rounds_kept([1.0, 1.0, 10.0, 11.0]) == [0, 1, 2]
    assert h.rounds_kept([1.0, 100.0]) == [0, 1]  # fewer rounds than the floor: all stay
    assert h.MIN_ROUNDS_KEPT == 3


def test_repeat_averages_and_parts_become_series(monkeypatch, clock):
    _scripted_canary(monkeypatch, clock, [1e-3] * 2)
    counter = []

    def twice_timed():
        counter.append(1)
        clock.spend(0.004)

    def split():
        clock.spend(0.003)
        return h.Parts({"attack": h.Sample(0.001, 0.001), "attack floor": h.Sample(0.002, 0.002)})

    m = h.measure({"a": twice_timed, "split": split}, device="cpu", rounds=2, warmup=0, repeat=2)
    assert len(counter) == 4
    assert m.wall("a").median == pytest.approx(0.004)
    assert m.series == ["a", "attack", "attack floor"]
    assert m.ratio("attack", "attack floor").median == pytest.approx(0.5)


def test_min_time_adds_rounds_until_every_contender_ran_that_long(monkeypatch, clock):
    _scripted_canary(monkeypatch, clock, [1e-3] * 10)
    m = h.measure({"a": lambda: clock.spend(0.3), "b": lambda: clock.spend(0.1)},
                  device="cpu", rounds=1, warmup=0, min_time_s=0.5)
    assert m.rounds == 5  # b needs five calls of 0.1 s


@pytest.mark.parametrize("kwargs, name", [({"rounds": 0}, "rounds"),
                                          ({"rounds": 2, "repeat": 0}, "repeat"),
                                          ({"rounds": 2, "warmup": -1}, "warmup")])
def test_bad_counts_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        h.measure({"a": lambda: None}, device="cpu", **kwargs)


def test_no_contenders_is_refused():
    with pytest.raises(ValueError, match="no contenders"):
        h.measure({}, device="cpu", rounds=1)


def _args(tmp_path, extra=()):
    import argparse
    parser = argparse.ArgumentParser(prog="bench_toy.py")
    return h.parse_args(parser, ["--json", str(tmp_path / "out" / "toy.json"), *extra],
                        rounds=4, quick_rounds=2)


def test_json_document_holds_the_machine_the_command_and_every_row(monkeypatch, clock, tmp_path):
    _scripted_canary(monkeypatch, clock, [1e-3] * 4)
    threads = torch.get_num_threads()
    try:
        args = _args(tmp_path, ["--threads", "1"])
        assert torch.get_num_threads() == 1 and args.rounds == 4 and not args.quick
        report = h.Report("bench_toy", args)
        m = h.measure({"base": lambda: clock.spend(0.01), "other": lambda: clock.spend(0.03)},
                      device="cpu", rounds=args.rounds, warmup=0)
        section = report.section("toy", baseline="base")
        section.add(m, labels={"size": 3})[1].values["GB/s"] = 1.5
        report.section("figures").add_row(labels={"model": "x"}, values={"accuracy": 0.5})
        report.skip("anchor", "not installed")
        report.finish()
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "out" / "toy.json").read_text())
    assert doc["schema"] == "modelsec_fast.bench/1" and doc["bench"] == "bench_toy"
    for key in ("date", "command", "torch", "threads", "machine", "canary", "args", "sections"):
        assert key in doc, key
    assert doc["threads"] == 1 and doc["torch"] == torch.__version__
    assert doc["canary"] == {"workload": "512x512 float32 matmul", "factor_of_median": 1.5,
                             "min_rounds_kept": 3}
    assert {"cpu", "python", "torch", "native", "packages", "env"} <= set(doc["machine"])
    assert doc["left_out"] == [{"what": "anchor", "reason": "not installed"}]
    base, other, figures = doc["rows"]
    assert other["section"] == "toy" and other["labels"] == {"size": 3}
    assert other["contender"] == "other" and other["rounds"] == 4 and other["dropped"] == 0
    assert other["wall_s"]["median"] == pytest.approx(0.03) and other["wall_s"]["n"] == 4
    assert other["cpu_s"]["median"] == pytest.approx(0.015)
    assert other["ratio"]["median"] == pytest.approx(3.0) and base["ratio"]["median"] == 1.0
    assert other["values"] == {"GB/s": 1.5}
    assert figures["wall_s"] is None and figures["values"] == {"accuracy": 0.5}


def test_table_has_the_ratio_to_the_named_baseline_and_drops_empty_columns(monkeypatch, clock,
                                                                          tmp_path):
    _scripted_canary(monkeypatch, clock, [2.0 ** -10] * 3)  # binary fractions: exact sums
    m = h.measure({"eager": lambda: clock.spend(1.0), "native": lambda: clock.spend(0.25)},
                  device="cpu", rounds=3, warmup=0)
    section = h.Section("ops", "eager", None)
    section.add(m, labels={"op": "add"})
    lines = section.table().splitlines()
    assert lines[0] == "| op | contender | median | IQR | x eager | CPU | CPU x eager | kept |"
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---:|"
    assert lines[3] == "| add | native | 250 ms | 0 µs | 0.25x | 125 ms | 0.25x | 3/3 |"


def test_quick_sets_the_quick_rounds(tmp_path):
    assert _args(tmp_path, ["--quick"]).rounds == 2
    assert _args(tmp_path, ["--quick", "--rounds", "7"]).rounds == 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip where CUDA is absent")
def test_cuda_without_cuda_skips_with_a_message_and_a_json_note(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        _args(tmp_path, ["--device", "cuda"])
    assert done.value.code == 0
    assert "bench_toy: skipped: --device cuda but CUDA is not available" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "toy.json").read_text())
    assert doc["bench"] == "bench_toy" and "CUDA is not available" in doc["skipped"]
    assert doc["rows"] == []


# ------------------------------------------------------------------ every script's --quick
QUICK = [
    pytest.param("bench_ops.py", id="ops"),
    pytest.param("bench_add_noise.py", id="add_noise"),
    pytest.param("bench_conv_norms.py", id="conv_norms"),
    pytest.param("bench_dpsgd.py", id="dpsgd", marks=pytest.mark.slow),
    pytest.param("bench_attacks.py", id="attacks", marks=pytest.mark.slow),
    pytest.param("bench_accountants.py", id="accountants", marks=pytest.mark.slow),
    pytest.param("bench_adv_training.py", id="adv_training", marks=pytest.mark.slow),
    pytest.param("bench_audit.py", id="audit", marks=pytest.mark.slow),
    pytest.param("bench_explain.py", id="explain", marks=pytest.mark.slow),
    pytest.param("bench_poisoning.py", id="poisoning", marks=pytest.mark.slow),
    pytest.param("bench_stealing.py", id="stealing", marks=pytest.mark.slow),
    pytest.param("bench_inversion.py", id="inversion", marks=pytest.mark.slow),
    pytest.param("bench_scan.py", id="scan", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("script", QUICK)
def test_quick_run_of_each_script_writes_its_rows(script, tmp_path):
    out = tmp_path / "quick.json"
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, os.path.join(BENCH, script), "--quick", "--threads", "1",
               "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["bench"] == script[:-3] and doc["quick"] is True and doc["rows"]
    timed_rows = [r for r in doc["rows"] if r["wall_s"] is not None]
    assert timed_rows and all(r["wall_s"]["median"] > 0 for r in timed_rows)
