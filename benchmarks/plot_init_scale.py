"""Plot held-out NMSE (over the base's) and CE added against the lookup's init scale, for every
lookup_knobs multi-SAE run that trained three or more scales beside each other (the same
runs as the results page's init-scale sweep table; render_results.init_scale_sweeps).

    python benchmarks/plot_init_scale.py --out benchmarks/results/init_scale_sweep.png
"""

from __future__ import annotations

import argparse

from render_results import RESULTS, init_scale_sweeps, sparsity

from sae_lens_tokenized.analysis.plotting import new_figure, save_figure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "init_scale_sweep.png"))
    args = ap.parse_args()
    fig, axes = new_figure(1, 2, size=(5.2, 4.0))
    for _, d, r, by_scale in init_scale_sweeps():
        xs = sorted(by_scale)
        label = f"L{r['layer']} {sparsity(r)}, {d['settings']['training_tokens'] // 1000}k tokens, seed {r['seed']}"
        line, = axes[0][0].plot(xs, [by_scale[x]["nmse"] / r["base"]["nmse"] for x in xs], marker="o", label=label)
        axes[0][1].plot(xs, [by_scale[x]["ce_added"] for x in xs], marker="o", color=line.get_color())
        axes[0][1].axhline(r["base"]["ce_added"], color=line.get_color(), lw=0.8, ls=":")
    axes[0][0].axhline(1.0, color="k", lw=0.8)
    axes[0][0].set_ylabel("held-out NMSE / TopK's")
    axes[0][1].set_ylabel("CE added (dotted: TopK's)")
    for ax in axes[0]:
        ax.set_xlabel("lookup_init_scale (0.5: the default)")
        ax.axvline(0.5, color="grey", lw=0.6)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("TopK tokenized SAEs, SmolLM2, the data-estimated lookup at several init scales", fontsize=9)
    save_figure(fig, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
