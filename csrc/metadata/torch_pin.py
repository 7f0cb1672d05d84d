"""scikit-build-core metadata provider: pins torch to the minor version we build against.

The extension uses the ATen C++ API, whose ABI changes between torch minor
versions, so a wheel built against torch X.Y runs only with torch X.Y.*.
"""


def dynamic_metadata(field, settings=None):
    if field != "dependencies":
        raise ValueError(f"torch_pin provides 'dependencies', not {field!r}")
    import torch  # the torch of the build environment (pip --no-build-isolation)

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    runtime = [
        "numpy",
        "scipy",                 # RDP accountant, Clopper-Pearson bounds
        "dp-accounting>=0.6",    # the default PLD accountant
        "tqdm",                  # progress bars
        "matplotlib",            # report plots
        "scikit-learn",          # the embedded digits dataset
    ]
    return [f"torch>={major}.{minor},<{major}.{minor + 1}", *runtime]
