r"""Opacus 1.6's own test suite against our PrivacyEngine (not part of the default suite).

Usage (from the repository root)::

    PYTHONPATH=$PWD python3 tests/privacy/opacus_compat/run_opacus_suite.py

The whole suite with ``--max-examples 2`` took 659 s on 2 cores (2026-12-07: 384 passed,
59 skipped, 70 listed failures). Slow with Opacus's Hypothesis budget
(privacy_engine_test.py alone ran 46 minutes on 2 shared cores without finishing). With
two examples per test that file takes 3 to 8 minutes (2026-12-06, 2 shared cores: 280 s
at load 1.5, 480 s at load 3.5)::

    PYTHONPATH=$PWD python3 tests/privacy/opacus_compat/run_opacus_suite.py \
        --files privacy_engine_test.py --max-examples 2

Hypothesis draws examples at random (and replays the failures it saved in .hypothesis/),
so a listed failure that needs one drawn case (test_compare_to_vanilla's) may pass.

It runs the tests that ship inside the installed opacus wheel
(``opacus/tests``) with ``redirect.py`` loaded first, which points Opacus's
user-facing names at ours (no test is copied). Every failure must be listed,
with its reason, in ``expected_failures.txt`` next to this file; the script
exits 1 on any failure not listed there, and prints listed tests that now
pass (remove them). Each test file runs in its own pytest process, user-facing
files first; ``--files a_test.py,b_test.py`` runs a subset, ``--max-examples N``
caps Hypothesis's examples per test (quicker, weaker), ``-k EXPR`` runs only
the tests pytest's ``-k`` selects (and checks only their entries). ``--record``
rewrites the entries of the files that ran (keeping the reasons of known
entries; new ones get "TODO", which still counts as a new failure until a
reason replaces it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected_failures.txt"


def _read_expected() -> dict[str, str]:
    out = {}
    if EXPECTED.exists():
        for line in EXPECTED.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                nodeid, _, reason = line.partition(" # ")
                out[nodeid.strip()] = reason.strip()
    return out


def _failures(junit: Path, module: str) -> tuple[dict[str, str], int, set[str]]:
    """({failed node id: its message}, number passed, every node id run) of one junit report."""
    failed, passed, ran = {}, 0, set()
    for case in ET.parse(junit).getroot().iter("testcase"):
        # a collection error has no classname: key it by its file
        classname = case.get("classname")
        nodeid = f"{classname}::{case.get('name')}" if classname else f"{module}::<collection>"
        ran.add(nodeid)
        outcome = {child.tag: child for child in case}
        bad = outcome.get("failure", outcome.get("error"))
        if bad is not None:
            failed[nodeid] = " ".join((bad.get("message") or "").split())[:300]
        elif "skipped" not in outcome:
            passed += 1
    return failed, passed, ran


# user-facing tests first, the long Hypothesis sweeps of grad_samples/ last
_LAST = ("grad_samples", "multigpu", "distributed", "fast_gradient_clipping", "grad_sample_")


def _test_files(suite: Path) -> list[Path]:
    files = sorted(suite.rglob("*_test.py"))
    return sorted(files, key=lambda f: any(k in str(f.relative_to(suite)) for k in _LAST))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true",
                        help="rewrite expected_failures.txt from this run")
    parser.add_argument("--files", default="",
                        help="comma list of test files (relative to opacus/tests) to run")
    parser.add_argument("--max-examples", type=int, default=0,
                        help="Hypothesis examples per test (default: Opacus's, 100)")
    parser.add_argument("-k", dest="select", default="",
                        help="pytest -k expression: run only the matching tests "
                             "(checks only their entries)")
    args = parser.parse_args()
    import opacus
    suite = Path(opacus.__file__).parent / "tests"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "opacus_compat"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]))
    if args.max_examples:
        env["OPACUS_COMPAT_MAX_EXAMPLES"] = str(args.max_examples)
    files = _test_files(suite)
    if args.files:
        wanted = set(args.files.split(","))
        files = [f for f in files if str(f.relative_to(suite)) in wanted]
    failed, passed, collected = {}, 0, set()
    started = time.monotonic()
    for f in files:  # one process per file, so a partial run still reports per file
        rel = str(f.relative_to(suite))
        junit = out / (rel.replace("/", "__") + ".xml")
        junit.unlink(missing_ok=True)  # a crashed run must not read a stale report
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "redirect",
               "--rootdir", str(suite), "-o", "addopts=", f"--junitxml={junit}", str(f)]
        if args.select:
            cmd += ["-k", args.select]
        file_started = time.monotonic()
        subprocess.run(cmd, env=env, check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        module = _module_of(f, suite)
        if not junit.exists():
            failed[f"{module}::<collection>"] = "pytest wrote no report (crashed)"
            continue
        f_failed, f_passed, f_ran = _failures(junit, module)
        failed.update(f_failed)
        passed += f_passed
        collected |= f_ran
        print(f"{rel}: {f_passed} passed, {len(f_failed)} failed of {len(f_ran)} "
              f"({time.monotonic() - file_started:.0f} s)", flush=True)
    expected = _read_expected()
    ran = {_module_of(f, suite) for f in files}
    if args.files or args.select:  # a partial run checks only the entries it ran
        expected = {k: v for k, v in expected.items() if _module_of_entry(k) in ran
                    and (not args.select or k in collected)}
    # a failure recorded without its reason yet is not an expected one
    new = sorted(set(failed) - {k for k, reason in expected.items() if reason != "TODO"})
    fixed = sorted(set(expected) - set(failed))
    print(f"\n{passed} passed, {len(failed)} failed of {len(collected)} collected "
          f"({len(failed) - len(new)} expected failures) in {time.monotonic() - started:.0f} s")
    if args.record:
        keep = _read_expected()
        lines = [l for l in EXPECTED.read_text().splitlines() if l.startswith("#")] \
            if EXPECTED.exists() else []
        # keep the entries of files (or, with -k, of tests) this run did not run
        entries = {k: v for k, v in keep.items() if _module_of_entry(k) not in ran
                   or (args.select and k not in collected)}
        for nodeid in failed:
            entries[nodeid] = keep.get(nodeid, "TODO")
        lines += [f"{k} # {v}" for k, v in sorted(entries.items())]
        EXPECTED.write_text("\n".join(lines) + "\n")
        return 0
    for nodeid in fixed:
        print(f"now passes (remove from expected_failures.txt): {nodeid}")
    for nodeid in new:
        print(f"NEW FAILURE: {nodeid}: {failed[nodeid]}")
    return 1 if new else 0


def _module_of(path: Path, suite: Path) -> str:
    """The junit classname prefix of a test file: dotted path without .py."""
    return str(path.relative_to(suite).with_suffix("")).replace("/", ".")


def _module_of_entry(nodeid: str) -> str:
    """The test module of an entry: its classname up to the test class."""
    classname = nodeid.partition("::")[0]
    parts = classname.split(".")
    while parts and parts[-1][:1].isupper():  # drop the test class (CamelCase)
        parts.pop()
    return ".".join(parts)


if __name__ == "__main__":
    sys.exit(main())
