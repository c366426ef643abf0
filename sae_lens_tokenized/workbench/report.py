"""What the demo and the benchmarks write: curve plots and JSON."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from sae_lens_tokenized.analysis.plotting import new_figure, save_figure


def plot_curves(results: dict[str, dict[str, Any]], path: str | Path, title: str) -> None:
    fig, axes = new_figure()
    ax = axes[0][0]
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.set(xlabel="training tokens", ylabel="held-out NMSE", yscale="log", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    save_figure(fig, path)


def write_json(obj: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, default=str))


def command_line() -> str:
    """The command that is running, shell-quoted so that a result file's ``command`` can be
    copied and pasted (JSON arguments such as ``--tokenized_variants '{...}'`` included)."""
    return "python " + shlex.join(sys.argv)
