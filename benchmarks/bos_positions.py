"""What to do with BOS / separator positions: train TopK and tokenized TopK with SAELens's
``exclude_special_tokens`` set to False, True, and an explicit list of every special id, and
measure held-out NMSE on ordinary tokens and on the separator positions (position 0 of each
row: <|endoftext|>, a massive activation).

On SmolLM2-Instruct, ``True`` means SAELens's *structural* ids (bos/eos/pad/sep attributes:
<|im_start|>, <|im_end|>), which do not include the document separator <|endoftext|>, so
``True`` and ``False`` train on the same activations; the explicit list is what removes the
separators.

    python benchmarks/bos_positions.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from sae_lens.util import get_special_token_ids

from sae_lens_tokenized.workbench.settings import CompareSettings
from sae_lens_tokenized.workbench.data import HookData, Workbench, precompute
from sae_lens_tokenized.workbench.runs import heldout_nmse, train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--training_tokens", type=int, default=200_000)
    ap.add_argument("--out", default="benchmarks/results/bos_positions.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench = Workbench.offline()
    model = bench.model
    hook = f"blocks.{args.layer}.hook_resid_pre"
    base = CompareSettings(hook_name=hook, training_tokens=args.training_tokens, unigram_strategy="space,t")  # lr, batch: CompareSettings defaults
    data = bench.prepare(hook, args.training_tokens, base.n_eval_activations)
    # the separators are what this benchmark is about: held-out activations with them kept
    ev, ev_ids = precompute(model, bench.heldout_ds, hook, base.n_eval_activations * 2, desc="held-out acts")
    all_special = bench.special_ids.tolist()
    special = torch.isin(ev_ids, bench.special_ids)
    ordinary = (ev[~special][: base.n_eval_activations], ev_ids[~special][: base.n_eval_activations])
    separators = (ev[special], ev_ids[special])
    norms = {"ordinary_mean_norm": float(ordinary[0].norm(dim=-1).mean()),
             "separator_mean_norm": float(separators[0].norm(dim=-1).mean()),
             "separator_share_of_positions": float(special.float().mean())}
    print(norms, flush=True)
    structural = sorted(get_special_token_ids(model.tokenizer))
    norms["structural_special_ids (exclude_special_tokens=True)"] = structural
    norms["all_special_ids"] = all_special
    results = {}
    for exclude in (False, True, all_special):
        for variant in ("topk", "tokenized_topk"):
            s = replace(base, exclude_special_tokens=exclude)
            r = train_variant(variant, s, bench, HookData(hook, data.train, ordinary))
            row = {"nmse_ordinary": heldout_nmse(r["sae"], *ordinary),
                   "nmse_separators": heldout_nmse(r["sae"], *separators)}
            results[f"{variant}, exclude_special_tokens={exclude}"] = row
            print(f"{variant:9s} exclude_special_tokens={exclude}: NMSE ordinary {row['nmse_ordinary']:.4f} "
                  f"separators {row['nmse_separators']:.4f}", flush=True)
    write_json({"command": command_line(), "settings": vars(args), "hook": hook,
                "compare_settings": base.__dict__, **norms, "results": results,
                "wall_time_s": time.perf_counter() - t0}, args.out)


if __name__ == "__main__":
    main()
