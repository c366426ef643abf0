"""Analyses of a trained tokenized SAE's lookup (Dooms & Wilhelm, Sec. 5).

* ``lookup_sim`` per token: <W_lookup[t], U_t> / |U_t|^2 (how much of the unigram the
  lookup carries), mean and max over tokens;
* cosine of each trained row to its initialisation (the paper: median ~0.91);
* last-token detection: for a mid-sequence activation x, does argmax_t cos(x, W_lookup[t])
  recover the actual current token? Compared with the raw unigram table U (the paper:
  88-98% with the trained lookup vs 35-77% with U on GPT-2).
* a bigram lookup (``lookup_ngram=2``): how many pair rows are in use, their norms
  against the token rows, their cosine to their token's row, how often positions read a
  pair row, and last-bigram detection: for a position whose (previous token, token) pair
  has a row, does argmax over the pair rows of cos(x, row) find its own pair's row?

A lookup estimated from data (``unigram_strategy="data"``) has no prompt table to compare
with; pass ``unigrams=None`` and the unigram-relative fields are left out.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens_tokenized.models import activations_at_hook


@torch.no_grad()
def detection_accuracy(table: torch.Tensor, acts: torch.Tensor, ids: torch.Tensor, chunk: int = 512) -> float:
    """Fraction of activations whose most cosine-similar table row is their own token."""
    rows = torch.nn.functional.normalize(table.float(), dim=-1)
    hits = 0
    for i in range(0, len(ids), chunk):
        x = torch.nn.functional.normalize(acts[i : i + chunk].float(), dim=-1)
        hits += int(((x @ rows.T).argmax(-1) == ids[i : i + chunk]).sum())
    return hits / max(len(ids), 1)


@torch.no_grad()
def bigram_analysis(sae: Any, acts: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                    prev: torch.Tensor | None = None) -> dict[str, Any]:
    """The bigram rows of a ``lookup_ngram=2`` lookup (module docstring)."""
    V = sae.cfg.d_vocab
    table = sae.W_lookup.detach().float().cpu()
    pairs = sae.bigram_pairs().cpu()
    used = pairs[:, 0] >= 0
    token_rows = table[:V]
    full = table[V:]
    norms_tok = token_rows.norm(dim=-1)
    out: dict[str, Any] = {
        "bigram_rows": int(pairs.shape[0]),
        "bigram_rows_used": int(used.sum()),
        "bigram_row_norm_median": float(table[V:][used].norm(dim=-1).median()) if used.any() else None,
        "token_row_norm_median": float(norms_tok[norms_tok > 0].median()) if (norms_tok > 0).any() else None,
        "bigram_row_cosine_to_token_row_median": float(torch.nn.functional.cosine_similarity(
            full[used], token_rows[pairs[used, 1]], dim=-1).median()) if used.any() else None,
    }
    if acts is not None and ids is not None and prev is not None:
        rows = sae.lookup_row_index(ids.to(sae.W_lookup.device), prev.to(sae.W_lookup.device)).cpu()
        hit = rows >= V
        out["positions_reading_a_bigram_row"] = float(hit.float().mean())
        if hit.any():
            out["last_bigram_detection"] = detection_accuracy(full, acts[hit], rows[hit] - V)
    return out


@torch.no_grad()
def lookup_analysis(
    sae: Any,
    unigrams: torch.Tensor | None,
    model: Any | None = None,
    tokens: torch.Tensor | None = None,
    hook_name: str | None = None,
    min_position: int = 1,
) -> dict[str, Any]:
    """``unigrams``: the table of the SAE's strategy (its init was
    ``lookup_init_scale * unigrams``). With ``model`` and real ``tokens``, also runs
    last-token detection at positions >= ``min_position``."""
    lookup = sae.W_lookup.detach().float().cpu()[: sae.cfg.d_vocab]  # the token rows
    out: dict[str, Any] = {
        "unigram_strategy": sae.cfg.unigram_strategy,
        "lookup_init_scale": sae.cfg.lookup_init_scale,
        "lookup_ngram": getattr(sae.cfg, "lookup_ngram", 1),
        "n_rows": int(sae.W_lookup.shape[0]),
    }
    u = None
    if unigrams is not None:
        u = unigrams.float().cpu()
        if lookup.shape != u.shape:
            raise ValueError(f"lookup {tuple(lookup.shape)} and unigram table {tuple(u.shape)} differ in shape")
        valid = u.norm(dim=-1) > 0
        sim = (lookup * u).sum(-1)[valid] / u[valid].pow(2).sum(-1)
        init = sae.cfg.lookup_init_scale * u
        cos_init = torch.nn.functional.cosine_similarity(lookup[valid], init[valid], dim=-1)
        moved = (lookup - init).norm(dim=-1)
        out.update({
            "lookup_sim_mean": float(sim.mean()),
            "lookup_sim_max": float(sim.max()),
            "lookup_sim_median": float(sim.median()),
            "cosine_to_init_median": float(cos_init.median()),
            "cosine_to_init_mean": float(cos_init.mean()),
            "rows_moved_from_init": int((moved > 1e-6).sum()),
        })
    acts = ids = prev = None
    if model is not None and tokens is not None:
        from sae_lens_tokenized.lookup.ids import previous_token_ids

        hook = hook_name or sae.cfg.metadata.hook_name
        acts = activations_at_hook(model, tokens, hook)[:, min_position:].reshape(-1, lookup.shape[1]).cpu()
        ids = tokens[:, min_position:].reshape(-1).cpu()
        prev = previous_token_ids(tokens)[:, min_position:].reshape(-1).cpu()
        detection = {"trained_lookup": detection_accuracy(lookup, acts, ids)}
        if u is not None:
            detection["unigram_table"] = detection_accuracy(u, acts, ids)
        out["last_token_detection"] = {**detection, "n_positions": int(len(ids)), "hook_name": hook}
    if out["lookup_ngram"] == 2:
        out["bigrams"] = bigram_analysis(sae, acts, ids, prev)
    return out
