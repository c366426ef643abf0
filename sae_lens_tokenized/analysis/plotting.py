"""Figures for the demo, the benchmarks and the analyses: written to PNG, no display needed.

Each PNG also carries what it plots, as JSON in a text chunk (``SERIES_KEY``): per panel, its
title, axis labels and every line's label and data. ``read_plotted_series(path)`` reads it
back, so a test can check a figure against the numbers it was meant to show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: PNG text chunk holding the plotted series (``read_plotted_series``)
SERIES_KEY = "sae_lens_tokenized:series"


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7, 4.5)) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg backend; ``size`` is per panel; axes as a 2-D array."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)


def plotted_series(fig: Any) -> list[dict[str, Any]]:
    """Per panel of ``fig``: title, axis labels, and each line's label, x and y."""
    panels = []
    for ax in fig.axes:
        lines = [{"label": line.get_label(), "x": [float(v) for v in line.get_xdata()],
                  "y": [float(v) for v in line.get_ydata()]}
                 for line in ax.get_lines() if not line.get_label().startswith("_")]
        panels.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                       "lines": lines})
    return panels


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi, metadata={SERIES_KEY: json.dumps(plotted_series(fig))})
    plt.close(fig)


def read_plotted_series(path: str | Path) -> list[dict[str, Any]]:
    """What ``save_figure`` recorded in the PNG at ``path``."""
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text[SERIES_KEY])
