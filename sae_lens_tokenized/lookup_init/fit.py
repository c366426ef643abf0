"""Is a unigram table a good lookup init? Measured against real activations of its tokens.

The activation a lookup row stands in for is the token's activation in ordinary text, so
the table is compared with that directly (``unigram_fit``): ``"auto"`` picks the best
candidate this way (``select_unigram_strategy``), and a table that looks like an
attention sink (the "massive activations" of a sequence's first position) is flagged
(``warn_if_sink``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sae_lens_tokenized.lookup.strategies import AUTO_CANDIDATES, UnigramStrategy, UnigramStrategyError
from sae_lens_tokenized.metrics import nmse, nmse_per_activation
from sae_lens_tokenized.models import activations_at_hook, model_label, vocab_size
from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_table


@dataclass
class UnigramFit:
    """How well unigram rows match the real activations of their tokens.

    ``nmse``: mean over positions of |x - U_t|^2 / |x|^2 (the method's NMSE of the unigram
    used as a reconstruction; >1 is worse than predicting zero); ``nmse_median`` the same,
    median. ``nmse_of_mean``: the mean activation's NMSE, a baseline. ``cosine``: mean
    cos(x, U_t). ``norm_ratio``: mean |U_t| / mean |x| over positions (frequency-weighted:
    a sink on a frequent token counts as often as it occurs). ``sink_fraction``: share of
    positions whose token's unigram is over 4x the median activation norm; ``sink_tokens``
    the most frequent of those tokens.
    """

    strategy: str
    nmse: float
    nmse_median: float
    nmse_of_mean: float
    cosine: float
    norm_ratio: float
    sink_fraction: float
    sink_tokens: list[int]
    n_positions: int

    def looks_like_a_sink(self) -> bool:
        # Large rows alone are not the problem: some tokens really have massive activations
        # mid-sequence, and their data-estimated rows are rightly large (on SmolLM2's layer 3
        # such a table is oversized and still beats the mean). A sink table is large *and* a
        # worse reconstruction than the mean activation.
        oversized = self.norm_ratio > 2.0 or self.sink_fraction > 0.05
        return oversized and self.nmse > self.nmse_of_mean

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sample_activations(
    model: Any,
    tokens: torch.Tensor,
    hook_name: str,
    hook_head_index: int | None = None,
    skip_first: int = 1,
    exclude_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [N, d_in], token ids [N]) from real sequences, position 0 skipped."""
    acts = activations_at_hook(model, tokens, hook_name, hook_head_index)[:, skip_first:]
    ids = tokens[:, skip_first:].to(acts.device)
    keep = ~torch.isin(ids, torch.tensor(list(exclude_ids), dtype=ids.dtype, device=ids.device))
    return acts[keep].float(), ids[keep]


def unigram_fit(
    table: torch.Tensor, acts: torch.Tensor, ids: torch.Tensor, strategy: str = ""
) -> UnigramFit:
    """Compare table rows with the activations of their tokens (see ``UnigramFit``)."""
    u = table.to(acts.device, torch.float32)[ids]
    per = nmse_per_activation(u, acts)
    u_norm, x_norm = u.norm(dim=-1), acts.norm(dim=-1)
    sink = u_norm > 4 * x_norm.median()
    sink_ids, counts = torch.unique(ids[sink], return_counts=True)
    return UnigramFit(
        strategy=strategy,
        nmse=float(per.mean()),
        nmse_median=float(per.median()),
        nmse_of_mean=nmse(acts.mean(0).expand_as(acts), acts),
        cosine=float(torch.nn.functional.cosine_similarity(acts, u, dim=-1).mean()),
        norm_ratio=float(u_norm.mean() / x_norm.mean().clamp_min(1e-12)),
        sink_fraction=float(sink.float().mean()),
        sink_tokens=[int(i) for i in sink_ids[counts.argsort(descending=True)][:10]],
        n_positions=int(len(ids)),
    )


def warn_if_sink(fit: UnigramFit, model_label: str, hook_name: str) -> None:
    if fit.looks_like_a_sink():
        warnings.warn(
            f"unigram strategy '{fit.strategy}' on {model_label} at {hook_name} looks like an "
            f"attention sink: weighted by frequency its unigrams have {fit.norm_ratio:.1f}x the "
            f"norm of ordinary activations, {fit.sink_fraction:.0%} of positions get a sink-sized "
            f"unigram (token ids {fit.sink_tokens[:5]}), and as reconstructions they give NMSE "
            f"{fit.nmse:.2f} (the mean activation: {fit.nmse_of_mean:.2f}). A lookup initialised "
            "from it starts far off. Try "
            "unigram_strategy='auto' (measures the candidates and picks the best) or 'space,t'.",
            UnigramSinkWarning,
            stacklevel=2,
        )


class UnigramSinkWarning(UserWarning):
    """A unigram table looks like an attention sink rather than ordinary activations."""


def select_unigram_strategy(
    model: Any,
    hook_name: str,
    sample_tokens: torch.Tensor,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    hook_head_index: int | None = None,
    exclude_ids: Sequence[int] = (),
    extra_tables: dict[str, torch.Tensor] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """``strategy='auto'``: measure each resolvable candidate on real sequences, pick the best.

    ``extra_tables``: further candidates given as ready tables (the runner passes the
    data-estimated table as ``"data"``), measured the same way after the prompt ones.

    Only the rows of tokens that occur in ``sample_tokens`` are computed, so this costs a
    few small forward passes, not a vocabulary sweep per candidate. Best = lowest
    ``UnigramFit.nmse``. Returns (chosen strategy, {strategy: measurement}).
    """
    acts, ids = sample_activations(model, sample_tokens, hook_name, hook_head_index, exclude_ids=exclude_ids)
    if len(ids) == 0:
        raise ValueError("no positions left to measure unigram strategies on")
    rows = torch.unique(ids)
    label = model_label(model)
    report: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        try:
            UnigramStrategy.parse(cand).resolve(getattr(model, "tokenizer", None), vocab_size(model), label)
        except UnigramStrategyError as e:
            report[cand] = {"skipped": str(e)}
            continue
        table = compute_unigram_table(model, hook_name, cand, hook_head_index=hook_head_index,
                                      token_ids=rows, show_progress=False)
        report[cand] = unigram_fit(table, acts, ids, cand).as_dict()
    for name, table in (extra_tables or {}).items():
        report[name] = unigram_fit(table, acts, ids, name).as_dict()
    scored = {k: v["nmse"] for k, v in report.items() if "nmse" in v}
    if not scored:
        raise UnigramStrategyError(f"no candidate unigram strategy resolves for {label}: {report}")
    return min(scored, key=scored.__getitem__), report


