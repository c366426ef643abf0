"""Which unigram prompt matches the model's real activations best?

For real text, compare the activation at each position with the unigram of the token at
that position, per strategy and per layer (the follow-up note's experiment: 2-token
prompts beat [t], whose token sits on position 0 where massive activations swamp it).
Reported per strategy and hook:

* ``cosine``: mean cos(x_j, U_{t_j}) over positions j >= 1 (and ``cosine_by_position``);
* ``cosine_centred``: the same after subtracting the mean activation of the text from both
  (a raw cosine is inflated by the shared mean direction);
* ``cosine_random``: cos(x_j, U_r) for a random token r, the no-information baseline;
* ``nmse``: |x - U_t|^2/|x|^2, the unigram used as a reconstruction. A table whose
  frequent tokens carry sink-sized vectors can have a fine cosine and a ruinous NMSE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_lens_tokenized.metrics import nmse_per_activation
from sae_lens_tokenized.lookup.strategies import STRATEGIES, UnigramStrategy, UnigramStrategyError
from sae_lens_tokenized.models import activations_at_hook
from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table

DEFAULT_STRATEGIES = STRATEGIES


@torch.no_grad()
def compare_strategies(
    model: Any,
    tokens: torch.Tensor,
    hook_names: Sequence[str],
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    control_token: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Similarity of real activations to their tokens' unigrams. ``tokens``: [n_seq, seq_len]
    of real text, no BOS prepended (as in the note); position 0 is reported but excluded
    from the means. ``control_token`` adds [X, t] and the control [bos, X]."""
    strategies = list(strategies)
    if control_token is not None:
        strategies += [f"{control_token},t", f"bos,{control_token}"]
    gen = torch.Generator().manual_seed(seed)
    rows = torch.unique(tokens)
    rand_ids = rows[torch.randint(len(rows), tokens.shape, generator=gen)]
    out: dict[str, Any] = {"n_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]),
                           "strategies": strategies, "hooks": {}}
    for hook in hook_names:
        acts = activations_at_hook(model, tokens, hook).float()  # [n, L, d]
        mean = acts[:, 1:].reshape(-1, acts.shape[-1]).mean(0)
        per_hook: dict[str, Any] = {}
        for strat in strategies:
            try:
                table = compute_unigram_table(model, hook, strat, token_ids=rows, show_progress=False)
            except UnigramStrategyError as e:
                per_hook[strat] = {"skipped": str(e)}
                continue
            u = table.to(acts.device)[tokens.to(acts.device)]
            ur = table.to(acts.device)[rand_ids.to(acts.device)]
            cos = torch.nn.functional.cosine_similarity(acts, u, dim=-1)  # [n, L]
            cos_c = torch.nn.functional.cosine_similarity(acts - mean, u - mean, dim=-1)
            cos_r = torch.nn.functional.cosine_similarity(acts, ur, dim=-1)
            nmse = nmse_per_activation(u, acts)
            per_hook[strat] = {
                "cosine": float(cos[:, 1:].mean()),
                "cosine_centred": float(cos_c[:, 1:].mean()),
                "cosine_random": float(cos_r[:, 1:].mean()),
                "nmse": float(nmse[:, 1:].mean()),
                "cosine_position0": float(cos[:, 0].mean()),
                "cosine_by_position": cos.mean(0).tolist(),
                "has_t": UnigramStrategy.parse(strat).has_t,
            }
        nm = nmse_per_activation(mean.expand_as(acts[:, 1:]), acts[:, 1:])
        per_hook["_mean_activation_nmse"] = float(nm.mean())
        out["hooks"][hook] = per_hook
    return out


def plot_strategies(result: dict[str, Any], path: str) -> None:
    from sae_lens_tokenized.analysis.plotting import new_figure, save_figure

    hooks = list(result["hooks"])
    strategies = result["strategies"]
    fig, axes = new_figure(1, 3, size=(17 / 3, 4.6))
    axes = axes[0]
    mid = hooks[len(hooks) // 2]
    for s in strategies:
        r = result["hooks"][mid].get(s, {})
        if "cosine_by_position" in r:
            axes[0].plot(r["cosine_by_position"], label=f"[{s}]", lw=1.2)
    axes[0].set(title=f"cos(activation, unigram of its token) by position\n{mid}",
                xlabel="position", ylabel="mean cosine")
    axes[0].legend(fontsize=7)
    layer_x = list(range(len(hooks)))
    for key, ax, title in (("cosine", axes[1], "mean cosine (positions >= 1)"),
                           ("cosine_centred", axes[2], "mean-centred cosine")):
        for s in strategies:
            ys = [result["hooks"][h].get(s, {}).get(key, float("nan")) for h in hooks]
            ax.plot(layer_x, ys, marker="o", label=f"[{s}]")
        rand = [result["hooks"][h].get(strategies[1] if len(strategies) > 1 else strategies[0], {})
                .get("cosine_random", float("nan")) for h in hooks]
        if key == "cosine":
            ax.plot(layer_x, rand, "k--", label="random token")
        ax.set_xticks(layer_x, [h.replace(".hook_resid_pre", "").replace("blocks.", "L") for h in hooks],
                      rotation=30, fontsize=8)
        ax.set(title=title, xlabel="hook")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
