"""Massive activations: is position 0 the outlier? (Sun et al. 2024; the follow-up note.)

Per hook and position: the feature-wise standard deviation of the activation vector
(averaged over sequences), the across-sample standard deviation (per feature, over
sequences, averaged over features), and the mean norm. Per hook: the largest-magnitude
dimensions, their ratio to the median magnitude, and which positions and tokens carry
them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from sae_lens_tokenized.models import activations_at_hook


@torch.no_grad()
def massive_activations(
    model: Any, tokens: torch.Tensor, hook_names: Sequence[str], top_dims: int = 5, top_positions: int = 10
) -> dict[str, Any]:
    """``tokens``: [n_seq, seq_len] real text (no BOS prepended, as in the note)."""
    tokenizer = getattr(model, "tokenizer", None)

    def tok_str(t: int) -> str:
        return tokenizer.decode([t]) if tokenizer is not None else str(t)

    out: dict[str, Any] = {"n_sequences": int(tokens.shape[0]), "seq_len": int(tokens.shape[1]), "hooks": {}}
    for hook in hook_names:
        acts = activations_at_hook(model, tokens, hook).float().cpu()  # [n, L, d]
        mag = acts.abs()
        median = float(mag.median())
        per_dim_max = mag.amax(dim=(0, 1))  # [d]
        dims = torch.topk(per_dim_max, top_dims).indices.tolist()
        flat = mag.amax(-1)  # [n, L]: largest |value| per activation
        idx = torch.topk(flat.reshape(-1), min(top_positions, flat.numel())).indices
        carriers = []
        for i in idx.tolist():
            s, p = divmod(i, flat.shape[1])
            carriers.append({"sequence": s, "position": p, "token": tok_str(int(tokens[s, p])),
                             "max_abs": float(flat[s, p]), "ratio_to_median": float(flat[s, p]) / max(median, 1e-12)})
        big = flat > 100 * median
        out["hooks"][hook] = {
            "median_abs": median,
            "featurewise_std_by_position": acts.std(-1).mean(0).tolist(),
            "across_sample_std_by_position": acts.std(0).mean(-1).tolist(),
            "norm_by_position": acts.norm(dim=-1).mean(0).tolist(),
            "top_dims": [{"dim": d, "max_abs": float(per_dim_max[d]), "ratio_to_median": float(per_dim_max[d]) / max(median, 1e-12)} for d in dims],
            "top_activations": carriers,
            "positions_with_activation_over_100x_median": dict(Counter(int(p) for p in big.nonzero()[:, 1].tolist())),
            "tokens_with_activation_over_100x_median": dict(Counter(tok_str(int(tokens[s, p])) for s, p in big.nonzero().tolist()).most_common(10)),
        }
    return out


def plot_massive(result: dict[str, Any], path: str) -> None:
    from sae_lens_tokenized.analysis.plotting import new_figure, save_figure

    hooks = list(result["hooks"])
    fig, axes = new_figure(1, 3, size=(17 / 3, 4.6))
    axes = axes[0]
    for h in hooks:
        r = result["hooks"][h]
        label = h.replace(".hook_resid_pre", "").replace("blocks.", "L")
        axes[0].plot(r["featurewise_std_by_position"], label=label)
        axes[1].plot(r["across_sample_std_by_position"], label=label)
        axes[2].plot(r["norm_by_position"], label=label)
    for ax, title in zip(axes, ("feature-wise std (mean over sequences)", "across-sample std (mean over features)", "mean norm")):
        ax.set(title=title, xlabel="position", yscale="log")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)
