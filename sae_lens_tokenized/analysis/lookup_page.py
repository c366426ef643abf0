"""A browsable page for what no dashboard shows: the lookup.

sae-dashboard and Neuronpedia show latents; a tokenized SAE also has a row per token (and
per frequent pair) that carries each token's share of the reconstruction. For the tokens
of some real text, ``lookup_page`` writes one self-contained HTML file with, per token:
how often it occurs, its row's norm, the tokens whose rows are nearest (cosine), the cosine
to a unigram table (the one it started from, for a prompt init), and the latents that fire
with it (mean activation over its positions, and how often they fire there). With a
bigram lookup, a second table shows the pair rows the text reads.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from sae_lens_tokenized.lookup.ids import previous_token_ids
from sae_lens_tokenized.models import activations_at_hook


def _show(tokenizer: Any, t: int) -> str:
    text = tokenizer.decode([t]) if tokenizer is not None else str(t)
    return text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or f"<{t}>"


@torch.no_grad()
def lookup_page_data(sae: Any, model: Any, tokens: torch.Tensor, *, unigrams: torch.Tensor | None = None,
                     n_tokens: int = 300, n_neighbours: int = 5, n_latents: int = 5,
                     min_position: int = 1, chunk: int = 1024) -> dict[str, Any]:
    """What the page shows, as plain data (positions before ``min_position`` are skipped:
    position 0 is the attention sink)."""
    V = sae.cfg.d_vocab
    tok = getattr(model, "tokenizer", None)
    hook = sae.cfg.metadata.hook_name
    acts = activations_at_hook(model, tokens, hook)[:, min_position:].reshape(-1, sae.cfg.d_in)
    ids = tokens[:, min_position:].reshape(-1).to(acts.device)
    prev = previous_token_ids(tokens)[:, min_position:].reshape(-1).to(acts.device)
    counts = torch.bincount(ids.cpu(), minlength=V)
    shown = counts.argsort(descending=True)[: min(n_tokens, int((counts > 0).sum()))]
    slot = torch.full((V,), -1, dtype=torch.long)
    slot[shown] = torch.arange(len(shown))
    lat_sum = torch.zeros(len(shown), sae.cfg.d_sae)
    lat_fire = torch.zeros(len(shown), sae.cfg.d_sae)
    for i in range(0, len(ids), chunk):
        x, t, p = acts[i: i + chunk], ids[i: i + chunk], prev[i: i + chunk]
        kw = {"prev_token_ids": p} if getattr(sae.cfg, "lookup_ngram", 1) == 2 else {}
        f = sae.encode(x.to(sae.W_lookup.device, sae.W_lookup.dtype), token_ids=t.to(sae.W_lookup.device), **kw)
        s = slot[t.cpu()]
        keep = s >= 0
        lat_sum.index_add_(0, s[keep], f.float().cpu()[keep])
        lat_fire.index_add_(0, s[keep], (f > 0).float().cpu()[keep])
    table = sae.W_lookup.detach().float().cpu()
    rows = torch.nn.functional.normalize(table[:V], dim=-1)
    cos = rows[shown] @ rows.T
    cos[torch.arange(len(shown)), shown] = -2  # not its own neighbour
    seen = counts > 0  # neighbours among the tokens the text contains: readable, and trained
    cos[:, ~seen] = -2
    nb_cos, nb_idx = cos.topk(min(n_neighbours, max(int(seen.sum()) - 1, 1)), dim=-1)
    n = counts[shown].clamp(min=1).float()[:, None]
    mean_act, fire = lat_sum / n, lat_fire / n
    top_act, top_lat = mean_act.topk(min(n_latents, sae.cfg.d_sae), dim=-1)
    u_cos = None
    if unigrams is not None:
        u_cos = torch.nn.functional.cosine_similarity(table[:V][shown], unigrams.float().cpu()[shown], dim=-1)
    token_rows = []
    for j, t in enumerate(shown.tolist()):
        token_rows.append({
            "id": t, "token": _show(tok, t), "count": int(counts[t]), "norm": float(table[t].norm()),
            "cosine_to_unigram": None if u_cos is None else float(u_cos[j]),
            "neighbours": [[_show(tok, int(k)), float(c)] for k, c in zip(nb_idx[j], nb_cos[j]) if c > -2],
            "latents": [[int(k), float(a), float(fire[j, k])] for k, a in zip(top_lat[j], top_act[j]) if a > 0],
        })
    out: dict[str, Any] = {
        "hook_name": hook, "d_vocab": V, "lookup_ngram": getattr(sae.cfg, "lookup_ngram", 1),
        "unigram_strategy": sae.cfg.unigram_strategy, "n_positions": int(len(ids)), "tokens": token_rows,
    }
    if out["lookup_ngram"] == 2:
        read = sae.lookup_row_index(ids.to(sae.W_lookup.device), prev.to(sae.W_lookup.device)).cpu()
        pairs = sae.bigram_pairs().cpu()
        hit = read[read >= V] - V
        pair_counts = torch.bincount(hit, minlength=pairs.shape[0])
        order = pair_counts.argsort(descending=True)[: min(n_tokens, int((pair_counts > 0).sum()))]
        out["positions_reading_a_pair_row"] = float((read >= V).float().mean())
        out["pairs"] = [{
            "pair": [_show(tok, int(pairs[r, 0])), _show(tok, int(pairs[r, 1]))], "count": int(pair_counts[r]),
            "norm": float(table[V + r].norm()),
            "cosine_to_token_row": float(torch.nn.functional.cosine_similarity(
                table[V + r], table[int(pairs[r, 1])], dim=0)),
        } for r in order.tolist()]
    return out


_STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px} table{border-collapse:collapse;margin:12px 0}
td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4;position:sticky;top:0} .tok{font-family:monospace;background:#eef;padding:0 3px;white-space:pre}
.num{text-align:right;font-variant-numeric:tabular-nums} .bar{background:#8ab;height:10px;display:inline-block}
.lat{font-family:monospace;margin-right:10px;white-space:nowrap} #filter{padding:4px;width:260px}
"""

_SCRIPT = """
document.getElementById('filter').addEventListener('input', e => {
  const q = e.target.value.toLowerCase();
  document.querySelectorAll('#tokens tbody tr').forEach(r => {
    r.style.display = r.dataset.token.toLowerCase().includes(q) ? '' : 'none'; });
});
"""


def render_lookup_page(data: dict[str, Any], title: str = "Tokenized SAE lookup") -> str:
    """The page for ``lookup_page_data``'s output: one file, no external resources."""
    e = html.escape
    max_norm = max([r["norm"] for r in data["tokens"]] or [1.0]) or 1.0
    has_u = any(r["cosine_to_unigram"] is not None for r in data["tokens"])
    rows = []
    for r in data["tokens"]:
        neighbours = " ".join(f'<span class="tok">{e(t)}</span>&nbsp;{c:.2f}' for t, c in r["neighbours"])
        latents = "".join(f'<span class="lat">#{k} {a:.2f} ({100 * f:.0f}%)</span>' for k, a, f in r["latents"])
        u = f'<td class="num">{r["cosine_to_unigram"]:.3f}</td>' if has_u else ""
        rows.append(
            f'<tr data-token="{e(r["token"], quote=True)}"><td><span class="tok">{e(r["token"])}</span></td>'
            f'<td class="num">{r["id"]}</td><td class="num">{r["count"]}</td>'
            f'<td class="num">{r["norm"]:.2f} <span class="bar" style="width:{60 * r["norm"] / max_norm:.0f}px"></span></td>'
            f"{u}<td>{neighbours}</td><td>{latents}</td></tr>")
    u_head = "<th>cos to unigram</th>" if has_u else ""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Hook <code>{e(str(data['hook_name']))}</code>, lookup init <code>{e(str(data['unigram_strategy']))}</code>, "
        f"{'bigram' if data['lookup_ngram'] == 2 else 'unigram'} lookup; {data['n_positions']:,} positions of text. "
        "Per token: its row's norm, the tokens with the nearest rows (cosine), and the latents with the highest "
        "mean activation on its positions (mean, and % of its positions where the latent fires).</p>",
        "<input id='filter' placeholder='filter tokens'>",
        f"<table id='tokens'><thead><tr><th>token</th><th>id</th><th>count</th><th>row norm</th>{u_head}"
        "<th>nearest rows</th><th>latents that fire with it</th></tr></thead><tbody>",
        *rows, "</tbody></table>",
    ]
    if data.get("pairs"):
        parts.append(f"<h2>Pair rows read by this text ({100 * data['positions_reading_a_pair_row']:.1f}% of positions)</h2>"
                     "<table id='pairs'><thead><tr><th>previous</th><th>token</th><th>count</th><th>row norm</th>"
                     "<th>cos to token row</th></tr></thead><tbody>")
        parts += [f'<tr><td><span class="tok">{e(p["pair"][0])}</span></td><td><span class="tok">{e(p["pair"][1])}</span></td>'
                  f'<td class="num">{p["count"]}</td><td class="num">{p["norm"]:.2f}</td>'
                  f'<td class="num">{p["cosine_to_token_row"]:.3f}</td></tr>' for p in data["pairs"]]
        parts.append("</tbody></table>")
    parts.append(f"<script>{_SCRIPT}</script>"
                 f"<script type='application/json' id='data'>{json.dumps(data).replace('</', '<' + chr(92) + '/')}</script>"
                 "</body></html>")
    return "".join(parts)


def lookup_page(sae: Any, model: Any, tokens: torch.Tensor, path: str | Path, **kwargs: Any) -> Path:
    """Write the lookup page for ``tokens`` (real text, [batch, pos]) to ``path``."""
    title = kwargs.pop("title", f"Tokenized SAE lookup: {sae.cfg.metadata.hook_name}")
    data = lookup_page_data(sae, model, tokens, **kwargs)
    path = Path(path)
    path.write_text(render_lookup_page(data, title), encoding="utf-8")
    return path
