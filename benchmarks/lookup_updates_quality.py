"""Sparse (lazy) vs dense lookup updates: final quality on SmolLM2, same everything else.

Tokenized TopK trains through the real runner on the same activations, once with
``lookup_updates="sparse"`` (the default: lazy row-wise Adam) and once with ``"dense"``
(plain Adam over the whole table), for each seed; SAELens TopK at the same settings is
the reference. Reports held-out NMSE, CE added, L0 and dead latents, and the sparse-dense
difference against the seed-to-seed spread.

    python benchmarks/lookup_updates_quality.py --layer 3 --seeds 0 1 --training_tokens 100000
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from sae_lens_tokenized.workbench.settings import CompareSettings
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.runs import evaluate, train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--training_tokens", type=int, default=100_000)
    ap.add_argument("--sparse_lr_multipliers", type=float, nargs="*", default=[],
                    help="also train the sparse lookup at these multiples of the lookup lr")
    ap.add_argument("--out", default="benchmarks/results/lookup_updates_quality")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench = Workbench.offline()
    base = CompareSettings(hook_name=f"blocks.{args.layer}.hook_resid_pre", k=args.k,
                           training_tokens=args.training_tokens, n_curve_points=4)
    data = bench.prepare(base.hook_name, args.training_tokens, base.n_eval_activations)
    runs = []
    for seed in args.seeds:
        for label, arch, extra, lr_mult in (("topk", "topk", {}, 1),
                                            ("sparse", "tokenized_topk", {"lookup_updates": "sparse"}, 1),
                                            ("dense", "tokenized_topk", {"lookup_updates": "dense"}, 1),
                                            *((f"sparse_lookup_lr_x{m:g}", "tokenized_topk",
                                               {"lookup_updates": "sparse"}, m) for m in args.sparse_lr_multipliers)):
            s = replace(base, seed=seed, extra={arch: extra} if extra else {}, lookup_lr=base.lookup_lr * lr_mult)
            r = train_variant(arch, s, bench, data)
            m = evaluate(r["sae"], s, bench, data)
            runs.append({"variant": label, "seed": seed, **{k: m[k] for k in ("nmse", "ce_added", "l0", "dead_latents")},
                         "train_s": r["train_s"]})
            print(f"{label} seed {seed}: NMSE {m['nmse']:.4f} CE added {m['ce_added']:.4f} L0 {m['l0']:.1f} "
                  f"dead {m['dead_latents']} ({r['train_s']:.0f}s)", flush=True)

    def mean(variant: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs if r["variant"] == variant)

    by_seed = {(r["variant"], r["seed"]): r for r in runs}
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    summary = {v: {k: mean(v, k) for k in ("nmse", "ce_added", "l0", "dead_latents", "train_s")} for v in variants}
    summary["sparse_minus_dense_nmse_per_seed"] = [by_seed["sparse", s]["nmse"] - by_seed["dense", s]["nmse"]
                                                   for s in args.seeds]
    summary["seed_spread_nmse"] = {v: max(by_seed[v, s]["nmse"] for s in args.seeds) - min(by_seed[v, s]["nmse"] for s in args.seeds)
                                   for v in variants}
    out = Path(args.out)
    write_json({"command": command_line(), "settings": vars(args), "runs": runs, "summary": summary,
                "wall_time_s": time.perf_counter() - t0}, out / "lookup_updates_quality.json")
    print(summary)


if __name__ == "__main__":
    main()
