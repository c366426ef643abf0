"""How many lookup rows a run on real text touches, and so what lazy Adam's moments cost.

The sparse lookup's optimizer keeps Adam's two moments only for rows a step has touched
(``sae_lens_tokenized/lookup/sparse.py``), so what the default lookup adds in memory beyond
its table is ``2 * touched * d_in`` floats (plus the storage's growth slack, at most 1.5x).
``benchmarks/default_cost.py`` measures it on a synthetic stream that touches every row;
this counts the rows real text touches.

No activations are needed: which row a position reads depends on its ids only. For each
offline corpus and run length, the default bigram rows are chosen by the package's own
``LookupStatistics`` from the run's init sample (the first ``lookup_init_tokens`` of the
training stream, capped at the run; first positions skipped, as the runner does), put
into a tokenized SAE with ``set_bigram_rows``, and ``lookup_row_index`` maps every
position of the run's stream to its row. Reported: the table's rows (vocabulary + bigram
rows used), the rows touched, and the moments as a multiple of the table.

    python benchmarks/touched_rows.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sae_lens_tokenized import TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.integrations.offline import OFFLINE_DATASETS, SMOLLM2, load_offline_dataset, load_offline_model
from sae_lens_tokenized.lookup.config import DEFAULT_BIGRAM_ROWS, LookupTrainingConfig
from sae_lens_tokenized.lookup.ids import previous_token_ids
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics

DEFAULTS = LookupTrainingConfig


def stream(dataset: str, tokenizer, context_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split's ids and previous ids, flat, in stream order."""
    ds = load_offline_dataset(dataset, tokenizer, context_size, "train")
    tokens = torch.stack([ds[i]["tokens"] for i in range(len(ds))])
    return tokens.reshape(-1), previous_token_ids(tokens).reshape(-1)


def touched(ids: torch.Tensor, prev: torch.Tensor, d_vocab: int, run: int, init_tokens: int) -> dict[str, float]:
    sample = min(init_tokens, run)
    stats = LookupStatistics(d_vocab, 1, ngram=2)
    s_ids, s_prev = ids[:sample], prev[:sample]
    stats.add(torch.zeros(sample, 1), s_ids, s_prev, keep=s_prev >= 0)
    pairs = stats.bigram_table(torch.zeros(d_vocab, 1), DEFAULT_BIGRAM_ROWS,
                               DEFAULTS.lookup_bigram_min_count, DEFAULTS.lookup_bigram_pseudo_count)
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(
        d_in=1, d_sae=1, k=1, d_vocab=d_vocab, lookup_ngram=2, lookup_bigram_rows=len(pairs.keys)))
    sae.set_bigram_rows(pairs.keys, pairs.rows)
    rows = sae.lookup_row_index(ids[:run], prev[:run])
    n_touched = int(torch.unique(rows).numel())
    table = d_vocab + len(pairs.keys)
    return {"run_tokens": run, "init_sample_tokens": sample, "bigram_rows": len(pairs.keys), "table_rows": table,
            "rows_touched": n_touched, "touched_fraction": n_touched / table,
            "distinct_tokens": int(torch.unique(ids[:run]).numel()),
            "moments_over_table": 2 * n_touched / table,
            "moments_over_table_with_growth_slack": 3 * n_touched / table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(OFFLINE_DATASETS))
    p.add_argument("--runs", nargs="+", type=int, default=[20_000, 100_000, 400_000, 1_600_000],
                   help="run lengths in tokens (each capped at the corpus's training split)")
    p.add_argument("--context_size", type=int, default=128)
    p.add_argument("--out", default="benchmarks/results/touched_rows.json")
    args = p.parse_args()
    model = load_offline_model(SMOLLM2)  # the run's tokenizer and d_vocab
    tokenizer, d_vocab = model.tokenizer, model.cfg.d_vocab
    results = []
    for dataset in tqdm(args.datasets, desc="corpora"):
        ids, prev = stream(dataset, tokenizer, args.context_size)
        for run in sorted({min(r, len(ids)) for r in args.runs}):
            row = {"dataset": dataset, "corpus_train_tokens": len(ids),
                   **touched(ids, prev, d_vocab, run, DEFAULTS.lookup_init_tokens)}
            results.append(row)
            print(json.dumps(row))
    out = {"command": "python benchmarks/touched_rows.py " + " ".join(
               f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
           "model": SMOLLM2, "d_vocab": d_vocab, "lookup_init_tokens": DEFAULTS.lookup_init_tokens,
           "lookup_bigram_rows": DEFAULT_BIGRAM_ROWS, "lookup_bigram_min_count": DEFAULTS.lookup_bigram_min_count,
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
