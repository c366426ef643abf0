"""Do the defaults generalise? SAELens's TopK against tokenized TopK variants (the
default, and candidate defaults given as config overrides) on one offline corpus, one
layer, several seeds, at a given run length.

The default lookup (data-estimated token rows plus bigram rows) was chosen on the
Wikipedia introductions; this checks it on text it was not chosen on (BBC News, a second
register; Shakespeare, literary English) and at small data, where a row per pair seen
once can memorise the training activations. Every variant trains through the real
runners on the same activations (the workbench), same k, width, lr, batch and seed.
Reported per seed: final held-out NMSE and training tokens to reach TopK's final NMSE
(every activation counted: the init sample is part of the run's stream).
``--architecture`` compares another SAELens base the same way (e.g. BatchTopK's AuxK check).

    python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 3 \\
        --training_tokens 20000 --seeds 0 1 2 --variants '{"min_count_2": {"lookup_bigram_min_count": 2}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from render_results import ARCHITECTURE_NAMES  # benchmarks/: the names the results page uses

from sae_lens_tokenized.analysis.plotting import new_figure, save_figure
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.workbench.runs import dead_latents, tokens_to_reach, train_variant
from sae_lens_tokenized.workbench.settings import CompareSettings, stream_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--architecture", default="topk",
                    help="the SAELens base (compared with tokenized_<base>); the JSON's 'topk' keys hold it")
    ap.add_argument("--dataset", default="wiki-summaries-en")
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--training_tokens", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=1024, help="train_batch_size_tokens (SAELens's default is 4096)")
    ap.add_argument("--variants", default="{}",
                    help='tokenized variants beside the default, as JSON {label: config overrides}')
    ap.add_argument("--topk_variants", default="{}",
                    help="SAELens TopK variants beside SAELens's defaults, as JSON {label: config overrides} "
                         "(reported beside the baseline; speed-ups stay against the default TopK)")
    ap.add_argument("--out", default="benchmarks/results/defaults_check")
    args = ap.parse_args()
    variants = {"default": {}, **json.loads(args.variants)}
    base_name = ARCHITECTURE_NAMES.get(args.architecture, args.architecture)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = Workbench.offline(dataset=args.dataset)
    s0 = CompareSettings(hook_name=f"blocks.{args.layer}.hook_resid_pre", training_tokens=args.training_tokens, k=args.k,
                         batch=args.batch)
    data = bench.prepare(s0.hook_name, stream_tokens(s0), s0.n_eval_activations)
    runs: list[dict] = []
    fig, axes = new_figure(1, len(args.seeds), size=(5.5, 4.5))
    for ax, seed in zip(list(axes[0]), args.seeds):
        s = replace(s0, seed=seed)
        base = train_variant(args.architecture, s, bench, data)
        row: dict = {"seed": seed, "topk": {"nmse": base["nmse"], "curve": base["curve"],
                                            "dead_latents": dead_latents(base["sae"], *data.eval)}, "tokenized": {}}
        ax.plot(*zip(*base["curve"]), label=base_name, color="black")
        print(f"seed {seed} topk: NMSE {base['nmse']:.4f}", flush=True)
        for label, overrides in json.loads(args.topk_variants).items():
            r = train_variant(args.architecture, s, bench, data, overrides=overrides)
            row.setdefault("topk_variants", {})[label] = {"overrides": overrides, "nmse": r["nmse"], "curve": r["curve"],
                                                          "nmse_ratio_to_topk": r["nmse"] / base["nmse"],
                                                          "dead_latents": dead_latents(r["sae"], *data.eval)}
            ax.plot(*zip(*r["curve"]), label=f"{base_name} {label}", color="grey", ls="--")
            print(f"seed {seed} topk {label}: NMSE {r['nmse']:.4f}", flush=True)
        for label, overrides in variants.items():
            r = train_variant(f"tokenized_{args.architecture}", s, bench, data, overrides=overrides)
            init = r["unigram_report"]["lookup_init"]
            reach = tokens_to_reach(r["curve"], base["nmse"])
            row["tokenized"][label] = {
                "overrides": overrides, "nmse": r["nmse"], "curve": r["curve"],
                "nmse_ratio_to_topk": r["nmse"] / base["nmse"],
                "tokens_to_reach_topk_final": reach,
                "speedup": args.training_tokens / reach if reach else None,  # reach 0: the init alone beats TopK's end
                "bigram_rows_used": init.get("bigram_rows_used"),
                "dead_latents": dead_latents(r["sae"], *data.eval),
            }
            ax.plot(*zip(*r["curve"]), label=f"tokenized {label}")
            print(f"seed {seed} {label}: NMSE {r['nmse']:.4f} ({r['nmse'] / base['nmse']:.3f}x TopK), "
                  f"reach {reach}, bigram rows {init.get('bigram_rows_used')}", flush=True)
            del r
        ax.set(title=f"{args.dataset} L{args.layer} k {args.k}, seed {seed}", xlabel="training tokens",
               ylabel="held-out NMSE", yscale="log")
        ax.legend(fontsize=7)
        runs.append(row)
    name = (f"{args.dataset}_L{args.layer}_{args.training_tokens}" + (f"_batch{args.batch}" if args.batch != 1024 else "")
            + (f"_{args.architecture}_k{args.k}" if args.architecture != "topk" else f"_k{args.k}" if args.k != 32 else ""))
    summary = {label: {"nmse_ratio_to_topk_mean": statistics.mean(r["tokenized"][label]["nmse_ratio_to_topk"] for r in runs),
                       "nmse_ratio_to_topk_max": max(r["tokenized"][label]["nmse_ratio_to_topk"] for r in runs)}
               for label in variants}
    print(json.dumps(summary, indent=1))
    write_json({"command": command_line(), "settings": vars(args), "dataset": args.dataset,
                "wall_time_s": time.perf_counter() - t0, "runs": runs, "summary": summary},
               out / f"{name}.json")
    save_figure(fig, out / f"{name}.png")


if __name__ == "__main__":
    main()
