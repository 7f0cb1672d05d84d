"""The one way this package draws PNGs: matplotlib's Agg backend (no display needed),
figures freed once written. Used by the library's plots and the report's sections."""

from __future__ import annotations

import os

__all__ = ["agg_pyplot", "save_figure"]


def agg_pyplot():
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: float | None = None) -> str:
    """Write ``fig`` as a PNG at ``path`` (creating its folder), free it, return ``path``."""
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi if dpi is not None else "figure")
    plt.close(fig)
    return path
