"""How large must the default's init sample be? Held-out NMSE of the default tokenized
TopK (data-estimated table + bigram rows) against ``lookup_init_tokens``.

The init sample is the start of the training stream, held in memory until training has
used it (``n * (d_in + 2) * 4`` bytes), and the bigram rows are chosen from it. A smaller
sample costs less memory; this measures what it costs in reconstruction. For each layer,
SAELens's TopK and the default tokenized TopK at each sample size train through their
real runners on the same activations (the workbench), same k, width, lr, batch, seed and
training tokens. Reported: final held-out NMSE, and training tokens to reach TopK's final
NMSE (every activation counted: the sample is part of the run's stream).

    python benchmarks/init_sample_size.py --layers 3 --sizes 25000 100000 400000
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from sae_lens_tokenized.analysis.plotting import new_figure, save_figure
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.workbench.runs import tokens_to_reach, train_variant
from sae_lens_tokenized.workbench.settings import CompareSettings, stream_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[3])
    ap.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--training_tokens", type=int, default=400_000)
    ap.add_argument("--overrides", default="{}", help='tokenized config fields, as JSON (e.g. \'{"lookup_bigram_min_count": 2}\')')
    ap.add_argument("--baseline", help="an earlier result JSON of this script: its TopK runs are reused, not retrained")
    ap.add_argument("--out", default="benchmarks/results/init_sample_size")
    args = ap.parse_args()
    overrides = json.loads(args.overrides)
    baselines = ({r["layer"]: r["topk"] for r in json.loads(Path(args.baseline).read_text())["runs"]}
                 if args.baseline else {})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bench = Workbench.offline()
    d_in = bench.model.cfg.d_model
    runs: list[dict] = []
    fig, axes = new_figure(1, len(args.layers), size=(6, 4.5))
    axes = list(axes[0])
    for ax, layer in zip(axes, args.layers):
        s = CompareSettings(hook_name=f"blocks.{layer}.hook_resid_pre", training_tokens=args.training_tokens,
                            k=args.k, seed=args.seed)
        data = bench.prepare(s.hook_name, stream_tokens(s), s.n_eval_activations)
        base = baselines.get(layer) or train_variant("topk", s, bench, data)
        row: dict = {"layer": layer, "topk": {"nmse": base["nmse"], "curve": base["curve"]}, "tokenized": {},
                     "overrides": overrides}
        ax.plot(*zip(*base["curve"]), label="TopK", color="black")
        print(f"L{layer} topk: NMSE {base['nmse']:.4f}", flush=True)
        for n in args.sizes:
            r = train_variant("tokenized_topk", replace(s, lookup_init_tokens=n), bench, data, overrides=overrides)
            init = r["unigram_report"]["lookup_init"]
            reach = tokens_to_reach(r["curve"], base["nmse"])
            row["tokenized"][str(n)] = {
                "nmse": r["nmse"], "curve": r["curve"], "tokens_to_reach_topk_final": reach,
                "speedup": args.training_tokens / reach if reach else None,
                "sample_drawn": init["tokens_drawn_from_training_stream"],
                "bigram_rows_used": init.get("bigram_rows_used"),
                "held_sample_bytes": init["tokens_drawn_from_training_stream"] * (d_in + 2) * 4,
            }
            ax.plot(*zip(*r["curve"]), label=f"tokenized, sample {n:,}" + (f" {overrides}" if overrides else ""))
            print(f"L{layer} tokenized sample {n:,}: NMSE {r['nmse']:.4f}, reach {reach}, "
                  f"bigram rows {init.get('bigram_rows_used')}", flush=True)
            del r
        ax.set(title=f"SmolLM2-135M L{layer}, k {args.k}", xlabel="training tokens", ylabel="held-out NMSE", yscale="log")
        ax.legend()
        runs.append(row)
    write_json({"command": command_line(), "settings": vars(args), "d_in": d_in,
                "wall_time_s": time.perf_counter() - t0, "runs": runs}, out / "init_sample_size.json")
    save_figure(fig, out / "init_sample_size.png")


if __name__ == "__main__":
    main()
