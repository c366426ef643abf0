"""The lookup alone (no SAE): how well each initialisation reconstructs held-out activations.

For SmolLM2-135M at each layer, held-out NMSE of ``x ~ row(t)`` for: the mean activation,
prompt unigram tables (``bos,t``, ``space,t``) at scale 0.5 / 1 / least-squares, per-token
data means (``sae_lens_tokenized.lookup_stats``) for several sample sizes, priors and
pseudo-counts, and bigram rows for several row budgets. This is the measurement behind the
defaults of ``unigram_strategy="data"`` and ``lookup_ngram=2``.

    python benchmarks/lookup_init.py --layers 3 9
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics
from sae_lens_tokenized.lookup.ids import bigram_keys, previous_token_ids
from sae_lens_tokenized.metrics import nmse
from sae_lens_tokenized.lookup_init.unigrams import get_unigram_table


def rows_nmse(table: torch.Tensor, acts: torch.Tensor, ids: torch.Tensor) -> float:
    return nmse(table[ids], acts)


def bigram_nmse(tokens: torch.Tensor, bt, acts, ids, prev, d_vocab) -> float:
    q = bigram_keys(prev, ids, d_vocab)
    pos = torch.searchsorted(bt.keys, q).clamp(max=max(len(bt.keys) - 1, 0))
    hit = (bt.keys[pos] == q) & (q >= 0) if len(bt.keys) else torch.zeros_like(q, dtype=torch.bool)
    pred = tokens[ids].clone()
    pred[hit] = bt.rows[pos[hit]]
    return nmse(pred, acts), float(hit.float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--samples", type=int, nargs="+", default=[25_000, 50_000, 100_000, 250_000, 500_000])
    ap.add_argument("--pseudo_counts", type=float, nargs="+", default=[0.5, 2, 8, 32])
    ap.add_argument("--budgets", type=int, nargs="+", default=[16_384, 65_536, 262_144])
    ap.add_argument("--min_counts", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--bigram_pseudo_counts", type=float, nargs="+", default=[2.0, 8.0])
    ap.add_argument("--token_pseudo_count", type=float, default=2.0, help="token rows the bigram rows shrink toward")
    ap.add_argument("--eval_activations", type=int, default=20_000)
    ap.add_argument("--out", default="benchmarks/results/lookup_init.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    bench = Workbench.offline()
    ctx = len(bench.train_ds[0]["tokens"])
    V = bench.model.cfg.d_vocab
    results: dict = {"command": command_line(), "layers": {}}
    n_max = max(args.samples)
    for layer in args.layers:
        hook = f"blocks.{layer}.hook_resid_pre"
        data = bench.prepare(hook, int(n_max / 1.1) + ctx, args.eval_activations)
        # held-out positions with their previous token (eval rows are filtered, so recompute)
        ev_acts, ev_ids = data.eval
        from sae_lens_tokenized.workbench.data import precompute

        ho_acts, ho_ids = precompute(bench.model, bench.heldout_ds, hook, args.eval_activations * 2, desc="held-out")
        ho_prev = previous_token_ids(ho_ids.view(-1, ctx)).reshape(-1)
        keep = ~torch.isin(ho_ids, bench.special_ids)
        ho_acts, ho_ids, ho_prev = ho_acts[keep][: args.eval_activations], ho_ids[keep][: args.eval_activations], ho_prev[keep][: args.eval_activations]
        tr_acts, tr_ids = data.train
        tr_prev = previous_token_ids(tr_ids[: len(tr_ids) // ctx * ctx].view(-1, ctx)).reshape(-1)
        r: dict = {}
        mean = tr_acts[:n_max].mean(0)
        r["mean_activation"] = nmse(mean.expand_as(ho_acts), ho_acts)
        prompts = {}
        for strat in ("bos,t", "space,t"):
            U = get_unigram_table(bench.model, hook, strat)
            prompts[strat] = U
            u = U[ho_ids]
            lsq = float((u * ho_acts).sum() / u.pow(2).sum())
            r[f"prompt[{strat}]"] = {"scale_0.5": rows_nmse(0.5 * U, ho_acts, ho_ids), "scale_1": rows_nmse(U, ho_acts, ho_ids),
                                      "lsq_scale": lsq, "scale_lsq": rows_nmse(lsq * U, ho_acts, ho_ids)}
        for n in tqdm(args.samples, desc=f"L{layer} data samples"):
            stats = LookupStatistics(V, tr_acts.shape[1], ngram=2)
            for i in range(0, n, 16_384):
                j = min(i + 16_384, n)
                stats.add(tr_acts[i:j], tr_ids[i:j], tr_prev[i:j])
            entry: dict = {"report": stats.report()}
            for prior_name in ("mean", "space,t"):
                prior = None
                if prior_name != "mean":
                    U = prompts[prior_name]
                    # least-squares scale of the prompt table on the sample itself
                    seen = stats.counts > 0
                    prior = U * float((stats.sums[seen] * U[seen]).sum() / (stats.counts[seen, None] * U[seen].pow(2)).sum())
                for c in args.pseudo_counts:
                    entry[f"data prior={prior_name} c={c:g}"] = rows_nmse(stats.token_rows(prior, c), ho_acts, ho_ids)
            best_tok = stats.token_rows(None, args.token_pseudo_count)
            for budget in args.budgets:
                for mc in args.min_counts:
                    for c in args.bigram_pseudo_counts:
                        bt = stats.bigram_table(best_tok, budget, mc, c)
                        v, hit = bigram_nmse(best_tok, bt, ho_acts, ho_ids, ho_prev, V)
                        entry[f"bigram budget={budget} min_count={mc} c={c:g}"] = {"nmse": v, "held_out_hit_rate": hit,
                                                                                   "rows": len(bt.keys)}
            r[f"sample={n}"] = entry
            print(layer, n, {k: v for k, v in entry.items() if "bigram" not in k}, flush=True)
        results["layers"][hook] = r
        write_json(results, args.out)
    results["wall_time_s"] = time.perf_counter() - t0
    write_json(results, args.out)


if __name__ == "__main__":
    main()
