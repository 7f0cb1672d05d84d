"""pytest plugin: point Opacus's user-facing names at modelsec_fast before its tests import them.

Loaded with ``-p`` by run_opacus_suite.py, so it runs before collection:
``opacus.PrivacyEngine`` (and ``opacus.privacy_engine.PrivacyEngine``) and
``opacus.utils.batch_memory_manager.BatchMemoryManager`` become ours. Nothing
is copied; Opacus's internals (GradSampleModule, its optimizers and
accountants) stay Opacus's, so tests of those test Opacus itself.
"""

import os
import sys
from pathlib import Path

import hypothesis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from real_models import import_torchvision  # noqa: E402  (some Opacus tests use torchvision)

import_torchvision()

import opacus  # noqa: E402
import opacus.privacy_engine  # noqa: E402
import opacus.utils.batch_memory_manager  # noqa: E402

import modelsec_fast  # noqa: E402
from modelsec_fast.privacy import BatchMemoryManager  # noqa: E402

REDIRECTED = {
    "opacus.PrivacyEngine": modelsec_fast.PrivacyEngine,
    "opacus.privacy_engine.PrivacyEngine": modelsec_fast.PrivacyEngine,
    "opacus.utils.batch_memory_manager.BatchMemoryManager": BatchMemoryManager,
}

opacus.PrivacyEngine = modelsec_fast.PrivacyEngine
opacus.privacy_engine.PrivacyEngine = modelsec_fast.PrivacyEngine
opacus.utils.batch_memory_manager.BatchMemoryManager = BatchMemoryManager

# run_opacus_suite.py --max-examples N: fewer Hypothesis examples per test (a quicker run)
if os.environ.get("OPACUS_COMPAT_MAX_EXAMPLES"):
    hypothesis.settings.register_profile(
        "opacus_compat", max_examples=int(os.environ["OPACUS_COMPAT_MAX_EXAMPLES"]))
    hypothesis.settings.load_profile("opacus_compat")
