"""scikit-build-core metadata provider: the torch versions the wheel runs with.

The extension uses only the LibTorch stable ABI (and CPython's limited API),
compiled with TORCH_TARGET_VERSION = MIN_TORCH, so one binary runs on every
torch from MIN_TORCH on. CMakeLists.txt reads MIN_TORCH from this file: keep the
``MIN_TORCH = "X.Y"`` line as it is.
"""

MIN_TORCH = "2.10"


def dynamic_metadata(field, settings=None):
    if field != "dependencies":
        raise ValueError(f"torch_pin provides 'dependencies', not {field!r}")
    runtime = [
        "numpy",
        "scipy",                 # RDP accountant, Clopper-Pearson bounds
        "dp-accounting>=0.6",    # the default PLD accountant
        "tqdm",                  # progress bars
        "matplotlib",            # report plots
        "scikit-learn",          # the embedded digits dataset
        "captum>=0.9",           # attributions (modelsec_fast.explain)
    ]
    return [f"torch>={MIN_TORCH}", *runtime]
