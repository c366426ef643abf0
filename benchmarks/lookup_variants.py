"""Evidence for the lookup's defaults: prompt init, data init, data init + bigrams vs TopK.

On SmolLM2-135M, for each layer, k and seed, SAELens's TopK and three tokenized TopK SAEs
train through their real runners on the same activations (sae_lens_tokenized/compare.py)
at the same k, width, lr, batch and training tokens:

* ``prompt``: the method's prompt init, ``unigram_strategy="space,t"`` at scale 0.5
  (on SmolLM2 the paper's ``bos,t`` is an attention sink; see README);
* ``data``: ``unigram_strategy="data"`` (per-token means of the init sample), scale 1;
* ``data+bigram``: ``data`` plus ``lookup_ngram=2`` (the defaults).

The data variants draw ``lookup_init_tokens`` activations from the stream before training
(not trained on); tokens-to-reach is reported without and with that sample counted.
Reports held-out NMSE, CE added and KL (SAELens's run_evals), L0, dead latents, the share
of live latents that are single-token features, and tokens to reach TopK's final NMSE.

    python benchmarks/lookup_variants.py --layers 3 9 --ks 16 32 --seeds 0 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from sae_lens_tokenized.workbench.settings import CompareSettings, stream_tokens
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.runs import evaluate, tokens_to_reach, train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.analysis.plotting import new_figure, save_figure

VARIANTS = {
    "topk": ("topk", {}),
    "prompt": ("tokenized_topk", {"unigram_strategy": "space,t", "lookup_ngram": 1}),
    "data": ("tokenized_topk", {"unigram_strategy": "data", "lookup_ngram": 1}),
    "data+bigram": ("tokenized_topk", {"unigram_strategy": "data", "lookup_ngram": 2}),
}
METRICS = ("nmse", "ce_added", "kl_div_with_sae", "l0", "dead_fraction", "single_token_fraction_of_live", "train_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--training_tokens", type=int, default=400_000)
    ap.add_argument("--lookup_init_tokens", type=int, default=500_000)
    ap.add_argument("--ce_batches", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/lookup_variants")
    ap.add_argument("--resume", help="a partial.json of an interrupted run: its finished variants are kept")
    ap.add_argument("--rerun", nargs="*", default=[], help="variants to train again even if --resume has them")
    args = ap.parse_args()
    done: dict = {}
    resumed_rows: list[dict] = []
    if args.resume:
        import json

        for r in json.loads(Path(args.resume).read_text())["runs"]:
            done[(r["layer"], r["k"], r["seed"])] = {n: v for n, v in r.items() if n in VARIANTS and n not in args.rerun}
            resumed_rows.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = Workbench.offline()
    grid = {(layer, k, seed) for layer in args.layers for k in args.ks for seed in args.seeds}
    # resumed runs outside this invocation's grid are kept as they are (summary, table, plot)
    runs: list[dict] = [r for r in resumed_rows if (r["layer"], r["k"], r["seed"]) not in grid]
    curves: dict = {(r["layer"], r["k"], r["seed"], n): r[n]["curve"] for r in runs for n in args.variants if n in r}
    for layer in args.layers:
        base = CompareSettings(hook_name=f"blocks.{layer}.hook_resid_pre", training_tokens=args.training_tokens,
                               lookup_init_tokens=args.lookup_init_tokens, n_eval_ce_batches=args.ce_batches)
        todo = [(k, seed) for k in args.ks for seed in args.seeds
                if any(n not in done.get((layer, k, seed), {}) for n in args.variants)]
        data = bench.prepare(base.hook_name, stream_tokens(base), base.n_eval_activations) if todo else None
        for k in args.ks:
            for seed in args.seeds:
                s = replace(base, k=k, seed=seed)
                row: dict = {"layer": layer, "k": k, "seed": seed}
                for name in args.variants:
                    if name in done.get((layer, k, seed), {}):  # --resume: trained in the interrupted run
                        row[name] = done[(layer, k, seed)][name]
                        curves[(layer, k, seed, name)] = row[name]["curve"]
                        continue
                    arch, overrides = VARIANTS[name]
                    r = train_variant(arch, s, bench, data, overrides=overrides)
                    m = evaluate(r["sae"], s, bench, data)
                    row[name] = {**m, "curve": r["curve"], "train_s": r["train_s"],
                                 "init_sample_tokens": r["init_sample_tokens"], "unigram_strategy": r["unigram_strategy"]}
                    curves[(layer, k, seed, name)] = r["curve"]
                    print(f"L{layer} k{k} seed {seed} {name}: NMSE {m['nmse']:.4f} CE+ {m['ce_added']:.4f} "
                          f"dead {m['dead_fraction']:.1%} single-token {m['single_token_fraction_of_live']:.3f} "
                          f"({r['train_s']:.0f}s)", flush=True)
                    del r
                target = row["topk"]["nmse"] if "topk" in row else None
                for name in args.variants:
                    if name == "topk" or target is None:
                        continue
                    reach = tokens_to_reach(row[name]["curve"], target)
                    sample = row[name]["init_sample_tokens"]
                    row[name]["tokens_to_reach_topk_final"] = reach
                    row[name]["speedup"] = args.training_tokens / reach if reach else None
                    row[name]["speedup_counting_sample"] = args.training_tokens / (reach + sample) if reach is not None else None
                runs.append(row)
                write_json({"command": command_line(), "runs": runs}, out / "partial.json")
    summary = summarise(runs, args.variants)
    write_json({"command": command_line(), "settings": vars(args),
                "wall_time_s": time.perf_counter() - t0, "summary": summary, "runs": runs}, out / "lookup_variants.json")
    (out / "partial.json").unlink(missing_ok=True)
    (out / "table.md").write_text(table(summary, args.variants) + "\n")
    plot(curves, args, out / "lookup_variants.png")
    print("\n" + table(summary, args.variants))


def summarise(runs: list[dict], variants: list[str]) -> list[dict]:
    summary = []
    for layer, k in sorted({(r["layer"], r["k"]) for r in runs}):
        rs = [r for r in runs if (r["layer"], r["k"]) == (layer, k)]
        row: dict = {"layer": layer, "k": k, "n_seeds": len(rs)}
        for name in variants:
            for m in METRICS:
                row[f"{name}.{m}"] = statistics.mean(r[name][m] for r in rs)
            if name != "topk":
                for key in ("speedup", "speedup_counting_sample"):
                    vals = [r[name][key] for r in rs]
                    row[f"{name}.{key}"] = statistics.mean(vals) if all(v is not None for v in vals) else None
        summary.append(row)
    return summary


def _sp(v) -> str:
    return "not reached" if v is None else f"{v:.1f}×"


def table(summary: list[dict], variants: list[str]) -> str:
    lines = ["| hook | k | variant | NMSE | CE added | KL | L0 | dead | single-token (of live) | "
             "fewer training tokens to TopK's final NMSE | counting the init sample |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        for name in variants:
            g = lambda m: r[f"{name}.{m}"]  # noqa: E731
            sp = ("" if name == "topk" else _sp(r[f"{name}.speedup"]))
            sps = ("" if name == "topk" else _sp(r[f"{name}.speedup_counting_sample"]))
            lines.append(f"| L{r['layer']} | {r['k']} | {name} | {g('nmse'):.4f} | {g('ce_added'):.4f} | "
                         f"{g('kl_div_with_sae'):.4f} | {g('l0'):.0f} | {g('dead_fraction'):.1%} | "
                         f"{g('single_token_fraction_of_live'):.3f} | {sp} | {sps} |")
    return "\n".join(lines)


def plot(curves, args, path) -> None:
    combos = sorted({(layer, k) for layer, k, _, _ in curves})
    seeds = sorted({seed for _, _, seed, _ in curves})
    fig, axes = new_figure(1, len(combos), size=(4.2, 3.2))
    colors = {"topk": "tab:blue", "prompt": "tab:green", "data": "tab:orange", "data+bigram": "tab:red"}
    for j, (layer, k) in enumerate(combos):
        ax = axes[0][j]
        for name in args.variants:
            for seed in seeds:
                if (layer, k, seed, name) not in curves:
                    continue
                xs, ys = zip(*curves[(layer, k, seed, name)])
                ax.plot(xs, ys, color=colors.get(name), alpha=0.8, label=name if seed == seeds[0] else None)
        ax.set(title=f"SmolLM2 L{layer}, k={k}", xlabel="training tokens", ylabel="held-out NMSE", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    main()
