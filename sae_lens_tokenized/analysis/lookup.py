"""Analyses of a trained tokenized SAE's lookup (Dooms & Wilhelm, Sec. 5).

* ``lookup_sim`` per token: <W_lookup[t], U_t> / |U_t|^2 (how much of the unigram the
  lookup carries), mean and max over tokens;
* cosine of each trained row to its initialisation (the paper: median ~0.91);
* last-token detection: for a mid-sequence activation x, does argmax_t cos(x, W_lookup[t])
  recover the actual current token? Compared with the raw unigram table U (the paper:
  88-98% with the trained lookup vs 35-77% with U on GPT-2).
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens_tokenized.unigrams import activations_at_hook


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
def lookup_analysis(
    sae: Any,
    unigrams: torch.Tensor,
    model: Any | None = None,
    tokens: torch.Tensor | None = None,
    hook_name: str | None = None,
    min_position: int = 1,
) -> dict[str, Any]:
    """``unigrams``: the table of the SAE's strategy (its init was
    ``lookup_init_scale * unigrams``). With ``model`` and real ``tokens``, also runs
    last-token detection at positions >= ``min_position``."""
    lookup = sae.W_lookup.detach().float().cpu()
    u = unigrams.float().cpu()
    if lookup.shape != u.shape:
        raise ValueError(f"lookup {tuple(lookup.shape)} and unigram table {tuple(u.shape)} differ in shape")
    valid = u.norm(dim=-1) > 0
    sim = (lookup * u).sum(-1)[valid] / u[valid].pow(2).sum(-1)
    init = sae.cfg.lookup_init_scale * u
    cos_init = torch.nn.functional.cosine_similarity(lookup[valid], init[valid], dim=-1)
    moved = (lookup - init).norm(dim=-1)
    out: dict[str, Any] = {
        "unigram_strategy": sae.cfg.unigram_strategy,
        "lookup_init_scale": sae.cfg.lookup_init_scale,
        "lookup_sim_mean": float(sim.mean()),
        "lookup_sim_max": float(sim.max()),
        "lookup_sim_median": float(sim.median()),
        "cosine_to_init_median": float(cos_init.median()),
        "cosine_to_init_mean": float(cos_init.mean()),
        "rows_moved_from_init": int((moved > 1e-6).sum()),
        "n_rows": int(lookup.shape[0]),
    }
    if model is not None and tokens is not None:
        hook = hook_name or sae.cfg.metadata.hook_name
        acts = activations_at_hook(model, tokens, hook)[:, min_position:].reshape(-1, lookup.shape[1]).cpu()
        ids = tokens[:, min_position:].reshape(-1).cpu()
        out["last_token_detection"] = {
            "trained_lookup": detection_accuracy(lookup, acts, ids),
            "unigram_table": detection_accuracy(u, acts, ids),
            "n_positions": int(len(ids)),
            "hook_name": hook,
        }
    return out
