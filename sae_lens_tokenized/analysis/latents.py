"""Which latents are single-token features (Dooms & Wilhelm, Sec. 5).

The method's point is that the lookup takes "which token is this" off the latents: the
authors report 35-45% of a standard SAE's features reconstructing common unigrams, and
under 5% of a tokenized SAE's firing on any single unigram. Here a latent counts as a
single-token feature when its ``top`` strongest activations on a text sample are
dominated by one token (at least ``threshold`` of them at positions holding that token).
"""

from __future__ import annotations

from typing import Any

import torch


@torch.no_grad()
def single_token_latents(sae: Any, acts: torch.Tensor, ids: torch.Tensor, top: int = 16,
                         threshold: float = 0.9, chunk: int = 4096, prev: torch.Tensor | None = None,
                         labels: torch.Tensor | None = None) -> dict[str, Any]:
    """Fraction of live latents (firing at least ``top`` times on ``acts``) whose top
    activations are dominated by one token. ``ids`` [N] are the activations' tokens
    (given to a tokenized SAE's encoder too, which ignores them). ``labels`` [N]: group the
    top activations by these instead of ``ids`` (e.g. ``prev``: latents that fire on one
    previous token)."""
    labels = ids if labels is None else labels
    from sae_lens_tokenized.lookup.mixin import TokenLookupMixin

    tokenized = isinstance(sae, TokenLookupMixin)
    d_sae = sae.cfg.d_sae
    best_v = torch.full((top, d_sae), -torch.inf)
    best_t = torch.full((top, d_sae), -1, dtype=torch.long)
    fired = torch.zeros(d_sae, dtype=torch.long)
    for i in range(0, len(ids), chunk):
        x = acts[i : i + chunk].to(sae.device)
        kw = {"token_ids": ids[i : i + chunk].to(sae.device)} if tokenized else {}
        if tokenized and prev is not None:
            kw["prev_token_ids"] = prev[i : i + chunk].to(sae.device)
        f = sae.encode(x, **kw).float().abs().cpu()  # AbsTopK fires negative
        fired += (f > 0).sum(0)
        v = torch.cat([best_v, f])
        t = torch.cat([best_t, labels[i : i + chunk].cpu().unsqueeze(1).expand(-1, d_sae)])
        best_v, idx = v.topk(top, dim=0)
        best_t = t.gather(0, idx)
    live = fired >= top
    # share of each latent's top activations held by its most common token
    mode = best_t.mode(dim=0).values
    share = (best_t == mode).float().mean(0)
    single = live & (share >= threshold)
    return {
        "single_token_latents": int(single.sum()),
        "live_latents": int(live.sum()),
        "single_token_fraction_of_live": float(single.sum() / live.sum().clamp_min(1)),
        "top": top,
        "threshold": threshold,
    }
