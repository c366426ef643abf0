"""Why the demo's SAEs had 62% dead latents, and the fix (fair to both sides).

SAELens gives a latent AuxK gradient only once it has not fired for ``dead_feature_window``
steps. Its default (1000) is longer than a 400k-token run at batch 1024 (~390 steps), so
AuxK never fires. This trains SAELens TopK and the tokenized TopK at several windows, same
everything else, and reports held-out NMSE and dead latents.

    python benchmarks/dead_latents.py --windows 1000 50
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from sae_lens_tokenized.workbench.settings import CompareSettings, stream_tokens
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.runs import evaluate, train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, nargs="+", default=[1000, 50])
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--training_tokens", type=int, default=400_000)
    ap.add_argument("--variants", nargs="+", default=["topk", "tokenized_topk"])
    ap.add_argument("--out", default="benchmarks/results/dead_latents.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench = Workbench.offline()
    base = CompareSettings(hook_name=f"blocks.{args.layer}.hook_resid_pre", training_tokens=args.training_tokens,
                           n_eval_ce_batches=2)
    data = bench.prepare(base.hook_name, stream_tokens(base), base.n_eval_activations)
    runs = []
    for window in args.windows:
        for variant in args.variants:
            s = replace(base, dead_feature_window=window)
            r = train_variant(variant, s, bench, data)
            m = evaluate(r["sae"], s, bench, data)
            runs.append({"variant": variant, "dead_feature_window": window, **m, "train_s": r["train_s"]})
            print(f"{variant} window {window}: NMSE {m['nmse']:.4f} dead {m['dead_latents']} "
                  f"({m['dead_fraction']:.1%}) single-token {m['single_token_fraction_of_live']:.3f}", flush=True)
            write_json({"command": command_line(), "runs": runs}, args.out)
    write_json({"command": command_line(), "runs": runs, "wall_time_s": time.perf_counter() - t0}, args.out)


if __name__ == "__main__":
    main()
