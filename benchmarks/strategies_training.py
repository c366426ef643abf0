"""Train the tokenized SAE with different unigram strategies at equal budget (issue: the
follow-up note's last experiment), plus the SAELens TopK baseline; report final NMSE.

    python benchmarks/strategies_training.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from sae_lens_tokenized.workbench.settings import CompareSettings
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.runs import train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.analysis.plotting import new_figure, save_figure
from sae_lens_tokenized.lookup.strategies import STRATEGIES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--training_tokens", type=int, default=200_000)
    ap.add_argument("--out", default="benchmarks/results/strategies_training.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench = Workbench.offline()
    hook = f"blocks.{args.layer}.hook_resid_pre"
    s = CompareSettings(hook_name=hook, k=args.k, expansion=args.expansion, training_tokens=args.training_tokens)
    data = bench.prepare(hook, args.training_tokens, s.n_eval_activations)
    results = {}
    r = train_variant("topk", s, bench, data)
    results["SAELens TopK (no lookup)"] = {"nmse": r["nmse"], "initial_nmse": r["curve"][0][1], "curve": r["curve"]}
    print(f"TopK: final NMSE {r['nmse']:.4f}", flush=True)
    for strategy in args.strategies:
        r = train_variant("tokenized_topk", replace(s, unigram_strategy=strategy), bench, data)
        fit = (r["unigram_report"] or {}).get("unigram_fit", {})
        results[strategy] = {"nmse": r["nmse"], "initial_nmse": r["curve"][0][1], "curve": r["curve"], "unigram_fit": fit}
        print(f"[{strategy}]: initial NMSE {r['curve'][0][1]:.4f} final NMSE {r['nmse']:.4f} "
              f"(unigram fit NMSE {fit.get('nmse', float('nan')):.3f}, norm ratio {fit.get('norm_ratio', float('nan')):.2f})", flush=True)
    write_json({"command": command_line(), "settings": vars(args), "hook": hook,
                "wall_time_s": time.perf_counter() - t0, "results": results}, args.out)
    plot(results, hook, Path(args.out).with_suffix(".png"))


def plot(results, hook, path) -> None:
    fig, axes = new_figure(size=(7.5, 4.5))
    ax = axes[0][0]
    for name, r in results.items():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, marker="o", ms=2, label=name if name.startswith("SAELens") else f"[{name}]",
                ls="--" if name.startswith("SAELens") else "-")
    ax.set(title=f"Tokenized TopK by unigram strategy, SmolLM2 {hook}", xlabel="training tokens",
           ylabel="held-out NMSE", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
