"""Quality: tokenized TopK vs SAELens TopK on SmolLM2-135M, several layers, k values, seeds.

Both variants train through their real runners on the same activations (computed once per
layer), same hook/width/k/lr/seed (see sae_lens_tokenized/compare.py). Reports, per
(layer, k): final held-out NMSE of each, the ratio, the training tokens the tokenized
SAE needed to reach TopK's final NMSE (the method's "speed-up"), and CE added / CE loss
score from SAELens's run_evals. Writes JSON and a PNG of the NMSE curves.

    python benchmarks/quality.py                                   # the committed run
    python benchmarks/quality.py --layers 3 --ks 32 --seeds 0 --training_tokens 100000  # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from sae_lens_tokenized.compare import (
    CompareSettings,
    evaluate,
    precompute,
    tokens_to_reach,
    train_variant,
    write_json,
)
from sae_lens_tokenized.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--training_tokens", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lookup_lr", type=float, default=1e-2)
    ap.add_argument("--unigram_strategy", default="auto")
    ap.add_argument("--ce_batches", type=int, default=2, help="run_evals batches of 8x128 tokens")
    ap.add_argument("--out", default="benchmarks/results/quality")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = load_offline_model(SMOLLM2)
    train_ds = load_offline_dataset(WIKI_DATASET, model.tokenizer, 128, "train")
    heldout_ds = load_offline_dataset(WIKI_DATASET, model.tokenizer, 128, "heldout")
    special = torch.tensor(sorted(set(model.tokenizer.all_special_ids)))
    runs, curves = [], {}
    for layer in args.layers:
        hook = f"blocks.{layer}.hook_resid_pre"
        base = CompareSettings(hook_name=hook, expansion=args.expansion, training_tokens=args.training_tokens,
                               batch=args.batch, lr=args.lr, lookup_lr=args.lookup_lr,
                               unigram_strategy=args.unigram_strategy, n_eval_ce_batches=args.ce_batches)
        pre = precompute(model, train_ds, hook, int(args.training_tokens * 1.1), desc=f"L{layer} train acts")
        ev, ev_ids = precompute(model, heldout_ds, hook, base.n_eval_activations * 2, desc=f"L{layer} held-out acts")
        keep = ~torch.isin(ev_ids, special)
        eval_acts = (ev[keep][: base.n_eval_activations], ev_ids[keep][: base.n_eval_activations])
        for k in args.ks:
            for seed in args.seeds:
                s = replace(base, k=k, seed=seed)
                row = {"layer": layer, "hook": hook, "k": k, "seed": seed}
                for variant in ("topk", "tokenized"):
                    r = train_variant(variant, s, model, train_ds, pre, eval_acts, None)
                    metrics = evaluate(r["sae"], model, heldout_ds, s, variant == "tokenized", eval_acts)
                    row[variant] = {**metrics, "curve": r["curve"], "train_s": r["train_s"],
                                    "unigram_strategy": r["unigram_strategy"]}
                    curves[(layer, k, seed, variant)] = r["curve"]
                    print(f"L{layer} k={k} seed={seed} {variant}: NMSE {metrics['nmse']:.4f} "
                          f"CE added {metrics['ce_added']:.4f} ({r['train_s']:.0f}s)", flush=True)
                reach = tokens_to_reach(row["tokenized"]["curve"], row["topk"]["nmse"])
                row["tokens_to_reach_topk_final_nmse"] = reach
                row["speedup"] = (args.training_tokens / reach) if reach else None
                row["nmse_ratio"] = row["tokenized"]["nmse"] / row["topk"]["nmse"]
                runs.append(row)
                write_json({"runs": runs}, out / "quality_partial.json")

    summary = []
    for layer in args.layers:
        for k in args.ks:
            rs = [r for r in runs if r["layer"] == layer and r["k"] == k]
            def mean(f, rs=rs):
                return statistics.mean(f(r) for r in rs)
            speedups = [r["speedup"] for r in rs if r["speedup"]]
            summary.append({
                "layer": layer, "k": k, "n_seeds": len(rs),
                "nmse_topk": mean(lambda r: r["topk"]["nmse"]), "nmse_tokenized": mean(lambda r: r["tokenized"]["nmse"]),
                "nmse_ratio": mean(lambda r: r["nmse_ratio"]),
                "ce_added_topk": mean(lambda r: r["topk"]["ce_added"]), "ce_added_tokenized": mean(lambda r: r["tokenized"]["ce_added"]),
                "ce_score_topk": mean(lambda r: r["topk"]["ce_loss_score"]), "ce_score_tokenized": mean(lambda r: r["tokenized"]["ce_loss_score"]),
                "dead_topk": mean(lambda r: r["topk"]["dead_latents"]), "dead_tokenized": mean(lambda r: r["tokenized"]["dead_latents"]),
                "speedup_mean": statistics.mean(speedups) if speedups else None,
                "speedup_min": min(speedups) if speedups else None,
                "strategy": rs[0]["tokenized"]["unigram_strategy"],
            })
    result = {"command": "python " + " ".join(sys.argv), "settings": {**vars(args)},
              "wall_time_s": time.perf_counter() - t_start, "summary": summary, "runs": runs}
    write_json(result, out / "quality.json")
    (out / "quality_partial.json").unlink(missing_ok=True)
    plot(curves, args, out / "quality.png")
    print("\nlayer  k   NMSE TopK  NMSE tok  ratio   speed-up  CE added TopK  CE added tok")
    for r in summary:
        sp = f"{r['speedup_mean']:.1f}x" if r["speedup_mean"] else "-"
        print(f"{r['layer']:>5} {r['k']:>3}   {r['nmse_topk']:.4f}    {r['nmse_tokenized']:.4f}  {r['nmse_ratio']:.3f}  {sp:>8}"
              f"  {r['ce_added_topk']:.4f}         {r['ce_added_tokenized']:.4f}")


def plot(curves, args, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(args.layers), len(args.ks), figsize=(5.5 * len(args.ks), 4 * len(args.layers)), squeeze=False)
    for i, layer in enumerate(args.layers):
        for j, k in enumerate(args.ks):
            ax = axes[i][j]
            for variant, color in (("topk", "tab:blue"), ("tokenized", "tab:orange")):
                for seed in args.seeds:
                    xs, ys = zip(*curves[(layer, k, seed, variant)])
                    ax.plot(xs, ys, color=color, alpha=0.8, label=f"{variant}" if seed == args.seeds[0] else None)
            ax.set(title=f"SmolLM2 blocks.{layer}.hook_resid_pre, k={k}", xlabel="training tokens",
                   ylabel="held-out NMSE", yscale="log")
            ax.grid(alpha=0.3, which="both")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
