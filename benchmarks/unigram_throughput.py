"""Unigram-table throughput vs a plain forward of the same tokens to the same layer.

Both sides run the same prompts ([space, t] for the whole vocabulary, batches of 1024,
stopped after the hook's layer), interleaved, in one process. The plain forward is
``model(prompts, stop_at_layer=...)`` with no hooks; the table adds the hook capture and
the write into the [V, d] table.

    python benchmarks/unigram_throughput.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

from sae_lens_tokenized.integrations.offline import SMOLLM2, load_offline_model
from sae_lens_tokenized.lookup.strategies import UnigramStrategy
from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table
from sae_lens_tokenized.workbench.report import command_line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hook_name", default="blocks.3.hook_resid_pre")
    ap.add_argument("--strategy", default="space,t")
    ap.add_argument("--batch_size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/unigram_throughput.json")
    args = ap.parse_args()
    model = load_offline_model(SMOLLM2)
    V = model.cfg.d_vocab
    template = UnigramStrategy.parse(args.strategy).resolve(model.tokenizer, V)
    stop = extract_stop_at_layer_from_tlens_hook_name(args.hook_name)

    @torch.no_grad()
    def plain() -> None:
        for start in range(0, V, args.batch_size):
            t = torch.arange(start, min(start + args.batch_size, V))
            prompt = torch.stack([t if i is None else torch.full_like(t, i) for i in template], 1)
            model(prompt, stop_at_layer=stop)

    def table() -> None:
        compute_unigram_table(model, args.hook_name, args.strategy, args.batch_size, show_progress=False)

    times = {"plain_forward": [], "unigram_table": []}
    for _ in range(args.repeats):
        for name, fn in (("plain_forward", plain), ("unigram_table", table)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tok = V * len(template)
    result = {
        "command": command_line(), "settings": vars(args), "tokens_per_pass": n_tok,
        "median_s": med, "all_s": times, "ratio_table_over_forward": med["unigram_table"] / med["plain_forward"],
        "tokens_per_s": {k: n_tok / v for k, v in med.items()},
        "device": f"cpu, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_table_over_forward", "tokens_per_s")}, indent=2))


if __name__ == "__main__":
    main()
