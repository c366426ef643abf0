"""Plot the step-time ratios written by step_time.py (one panel per vocabulary size).

    python benchmarks/plot_step_time.py benchmarks/results/step_time_V50257.json \\
        benchmarks/results/step_time_V262144.json --out benchmarks/results/step_time.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sae_lens_tokenized.analysis.plotting import new_figure, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", default="benchmarks/results/step_time.png")
    args = ap.parse_args()
    fig, axes = new_figure(1, len(args.results), size=(6.5, 4.2))
    for ax, path in zip(axes[0], args.results):
        run = json.loads(Path(path).read_text())
        cfg, res = run["config"], run["results"]
        archs = list(res)
        modes = [("tokenized_{}", "sparse lookup (default)"), ("tokenized_{}/dense", "dense lookup")]
        width = 0.38
        for i, (pattern, label) in enumerate(modes):
            values = [res[a]["ratio_vs_base"].get(pattern.format(a)) for a in archs]
            xs = [j + (i - 0.5) * width for j, v in enumerate(values) if v is not None]
            ys = [v for v in values if v is not None]
            if ys:
                ax.bar(xs, ys, width, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.05, color="k", lw=0.8, ls=":", label="1.05x goal")
        ax.set_xticks(range(len(archs)), [a.replace("_", "\n") for a in archs], fontsize=7)
        ax.set_ylabel("step time / SAELens base")
        ax.set_title(f"V={cfg['d_vocab']:,}, d_in {cfg['d_in']}, d_sae {cfg['d_sae']}, batch {cfg['batch']} (CPU)",
                     fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
