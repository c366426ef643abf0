"""Unigram tables for several hooks: one pass (``compute_unigram_tables``) against one pass
per hook, and against a single table at the deepest hook, on SmolLM2, in one process.

A user training SAEs at many layers wants every table; the one-pass version runs each
batch of prompts once, stopping after the deepest hook, so its cost should be that of the
deepest table alone. Rows are restricted to ``--n_tokens`` tokens to keep it short (the
cost is linear in rows). Each variant runs ``--repeats`` times, interleaved.

    python benchmarks/unigram_multi_hook.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sae_lens_tokenized.integrations.offline import SMOLLM2, load_offline_model
from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table, compute_unigram_tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 2, 4, 6, 8, 10, 12])
    ap.add_argument("--strategy", default="space,t")
    ap.add_argument("--n_tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/unigram_multi_hook.json")
    args = ap.parse_args()
    model = load_offline_model(SMOLLM2)
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in args.layers]
    rows = torch.arange(args.n_tokens)
    kw = dict(strategy=args.strategy, token_ids=rows, show_progress=False)

    def one_pass():
        return compute_unigram_tables(model, hooks, **kw)

    def per_hook():
        return {h: compute_unigram_table(model, h, **kw) for h in hooks}

    def deepest_only():
        return compute_unigram_table(model, hooks[-1], **kw)

    variants = {"one_pass_all_hooks": one_pass, "one_pass_per_hook": per_hook, "deepest_hook_only": deepest_only}
    times: dict[str, list[float]] = {k: [] for k in variants}
    results = {}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    for h in hooks:  # same tables either way
        torch.testing.assert_close(results["one_pass_all_hooks"][h], results["one_pass_per_hook"][h])
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "command": "python benchmarks/unigram_multi_hook.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"),
        "hooks": hooks,
        "median_s": med,
        "all_s": times,
        "ratio_one_pass_over_deepest_only": med["one_pass_all_hooks"] / med["deepest_hook_only"],
        "ratio_one_pass_over_per_hook": med["one_pass_all_hooks"] / med["one_pass_per_hook"],
        "device": f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("median_s", "ratio_one_pass_over_deepest_only",
                                          "ratio_one_pass_over_per_hook")}, indent=2))


if __name__ == "__main__":
    main()
