"""Opacus 1.6's own test suite against our PrivacyEngine (not part of the default suite).

Usage (from the repository root; about 15 minutes on 2 cores)::

    PYTHONPATH=$PWD python3 tests/privacy/opacus_compat/run_opacus_suite.py

It runs the tests that ship inside the installed opacus wheel
(``opacus/tests``) with ``redirect.py`` loaded first, which points Opacus's
user-facing names at ours (no test is copied). Every failure must be listed,
with its reason, in ``expected_failures.txt`` next to this file; the script
exits 1 on any failure not listed there, and prints listed tests that now
pass (remove them). ``--record`` rewrites the list's entries for a new run
(keeping the reasons of known entries; new ones get "TODO").
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
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


def _failures(junit: Path) -> tuple[set[str], int, int]:
    failed, passed, total = set(), 0, 0
    for case in ET.parse(junit).getroot().iter("testcase"):
        total += 1
        nodeid = f"{case.get('classname')}::{case.get('name')}"
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            failed.add(nodeid)
        elif "skipped" not in outcome:
            passed += 1
    return failed, passed, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true",
                        help="rewrite expected_failures.txt from this run")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k)")
    args = parser.parse_args()
    import opacus
    suite = Path(opacus.__file__).parent / "tests"
    junit = Path(os.environ.get("TMPDIR", "/tmp")) / "opacus_compat_junit.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "redirect",
           "--rootdir", str(suite), "-o", "addopts=",
           "--continue-on-collection-errors", f"--junitxml={junit}", str(suite),
           *args.pytest_args]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=False)
    failed, passed, total = _failures(junit)
    expected = _read_expected()
    new = sorted(failed - set(expected))
    fixed = sorted(set(expected) - failed)
    print(f"\n{passed} passed, {len(failed)} failed of {total} collected "
          f"({len(failed) - len(new)} expected failures)")
    if args.record:
        lines = [l for l in EXPECTED.read_text().splitlines() if l.startswith("#")] \
            if EXPECTED.exists() else []
        for nodeid in sorted(failed):
            lines.append(f"{nodeid} # {expected.get(nodeid, 'TODO')}")
        EXPECTED.write_text("\n".join(lines) + "\n")
        return 0
    for nodeid in fixed:
        print(f"now passes (remove from expected_failures.txt): {nodeid}")
    for nodeid in new:
        print(f"NEW FAILURE: {nodeid}")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main())
