"""Never-seen tokens: what their lookup row costs, and what a unigram row would give.

The data-estimated lookup (``unigram_strategy="data"``) gives a token that never occurs in
its init sample the sample's mean activation. The SAEBench absorption comparison
(``benchmarks/saebench_demo.py``) found that a third of the first-letter probe's words are
such tokens, and that the demo's tokenized SAE loses their first letter. This script
measures, on the demo's trained tokenized SAE and those held-out words (activation at the
word in SAEBench's prompts), post hoc and without retraining:

* ``mean``: the rows as trained (the sample mean for these tokens);
* ``unigram``: the row replaced by the model's prompt unigram of the token, times a scale;
* ``mean+centred unigram``: the sample mean plus the unigram minus the unigrams' mean.

for the prompt strategies ``space,t`` and ``bos,t`` (the attention-sink prefix on SmolLM2).
Reported: NMSE of the SAE's reconstruction of these activations, and the probe's
first-letter accuracy on it (SAELens TopK on the same words, for reference).

Run after ``python benchmarks/saebench_demo.py --evals absorption`` (it reads SAEBench's
saved probe and held-out activations), in the same environment::

    python benchmarks/unseen_token_prior.py --demo /tmp/sltok-demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="/tmp/sltok-demo")
    p.add_argument("--out", default="benchmarks/results/saebench_demo/unseen_token_prior.json")
    args = p.parse_args()

    from saebench_demo import first_letter_words, rows_never_seen  # this folder's SAEBench script
    from sae_lens import SAE

    from sae_lens_tokenized import compute_unigram_table
    from sae_lens_tokenized.integrations.offline import SMOLLM2, load_offline_model

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    model = load_offline_model(SMOLLM2)
    sae = SAE.load_from_disk(str(Path(args.demo) / "sae_tokenized"))
    topk = SAE.load_from_disk(str(Path(args.demo) / "sae_topk"))
    V = sae.cfg.d_vocab
    trained = sae.W_lookup.detach().clone()
    never_seen = rows_never_seen(sae)
    mean_row = trained[:V][never_seen][0]

    probe, x, y, tok, prev = first_letter_words(model)
    words = never_seen[tok]
    x, y, tok, prev = x[words], y[words], tok[words], prev[words]
    need = torch.unique(tok)

    def score(recon: torch.Tensor) -> dict:
        nmse = float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
        return {"nmse": round(nmse, 4), "first_letter_accuracy": round(float((probe(recon).argmax(-1) == y).float().mean()), 4)}

    out: dict = {"command": f"python benchmarks/unseen_token_prior.py --demo {args.demo}",
                 "vocab_rows_never_seen": int(never_seen.sum()), "vocab": V, "held_out_words_never_seen": int(words.sum()),
                 "the model's activation": round(float((probe(x).argmax(-1) == y).float().mean()), 4),
                 "SAELens TopK": score(topk.decode(topk.encode(x))),
                 "tokenized, rows as trained (sample mean)": score(sae.decode(sae.encode(x), token_ids=tok, prev_token_ids=prev))}
    for strategy in ("space,t", "bos,t"):
        U = compute_unigram_table(model, sae.cfg.metadata.hook_name, strategy, token_ids=need, show_progress=False)[need]
        for scale in (0.5, 1.0):
            for label, rows in ((f"unigram x{scale}", scale * U),
                                (f"mean + {scale} x (unigram - its mean)", mean_row + scale * (U - U.mean(0)))):
                lookup = trained.clone()
                lookup[need] = rows
                sae.W_lookup.data.copy_(lookup)
                out[f"tokenized, {strategy} {label}"] = score(
                    sae.decode(sae.encode(x), token_ids=tok, prev_token_ids=prev))
    sae.W_lookup.data.copy_(trained)
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=2))
    for k, v in out.items():
        print(k, v)


if __name__ == "__main__":
    main()
