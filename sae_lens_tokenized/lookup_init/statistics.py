"""The lookup estimated from the data: per-token and per-bigram activation means.

What a trained lookup row converges towards is the activation's mean given its token
(the least-squares optimum of ``x ~ W_lookup[t]`` before any latent helps). The method
initialises rows from a *prompt* instead (Dooms & Wilhelm, Sec. 3: the activation of
``[<bos>, t]``), a guess at the average context of ``t`` that gets worse with depth.
``LookupStatistics`` estimates the means directly from activations the training stream
yields anyway (``unigram_strategy="data"``), and the bigram rows of a
``lookup_ngram=2`` lookup, keyed by (previous token, token).

Rare tokens are shrunk toward a prior (a prompt table or the sample's mean) with a
pseudo-count: ``row_t = (sum_t + c * prior_t) / (n_t + c)``, so a token seen once does
not get one noisy activation as its row, and an unseen token gets exactly the prior.
Bigram rows are shrunk the same way toward their token's row; a bigram seen fewer than
``min_count`` times, or beyond the row budget (the most frequent bigrams are kept), gets
no row and falls back to its token's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sae_lens_tokenized.lookup.ids import NO_PREV, bigram_keys, previous_token_ids

__all__ = ["NO_PREV", "BigramTable", "LookupStatistics", "bigram_keys", "previous_token_ids"]

def previous_ids_of_batch(token_ids: torch.Tensor, n_sequences: int) -> torch.Tensor:
    """Previous-token ids of a flattened LLM batch of ``n_sequences`` equal-length sequences."""
    if n_sequences <= 0 or token_ids.numel() % n_sequences:
        raise ValueError(
            f"cannot split {token_ids.numel()} token ids into {n_sequences} sequences to find each "
            "position's previous token (SAELens's batch layout changed? see _compat.py)"
        )
    return previous_token_ids(token_ids.view(n_sequences, -1)).reshape(-1)



@dataclass
class BigramTable:
    """Bigram rows chosen for a lookup: sorted keys ``prev * d_vocab + t`` and their rows."""

    keys: torch.Tensor  # [n] int64, sorted ascending
    rows: torch.Tensor  # [n, d_in]
    counts: torch.Tensor  # [n] occurrences in the sample
    n_distinct_seen: int  # distinct bigrams in the sample (before the budget and min_count)


class LookupStatistics:
    """Running sums of activations per token (and per bigram, with ``ngram=2``).

    ``add(acts [N, d_in], ids [N], prev [N])`` accumulates a batch; ``token_rows`` and
    ``bigram_table`` turn the sums into lookup rows. Memory: ``d_vocab * d_in`` floats for
    the token sums, plus up to one ``d_in`` row per distinct bigram seen (bounded by the
    sample size; compacted as it grows).
    """

    def __init__(self, d_vocab: int, d_in: int, ngram: int = 1, device: torch.device | str = "cpu"):
        self.d_vocab, self.d_in, self.ngram = d_vocab, d_in, ngram
        self.sums = torch.zeros(d_vocab, d_in, dtype=torch.float32, device=device)
        self.counts = torch.zeros(d_vocab, dtype=torch.long, device=device)
        self.n_tokens = 0
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._pending_rows = 0

    @torch.no_grad()
    def add(self, acts: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor | None = None) -> None:
        acts = acts.to(self.sums.device, torch.float32)
        ids = ids.to(self.sums.device).long()
        self.sums.index_add_(0, ids, acts)
        self.counts.index_add_(0, ids, torch.ones_like(ids))
        self.n_tokens += len(ids)
        if self.ngram < 2:
            return
        if prev is None:
            raise ValueError("a bigram lookup's statistics need the previous token of each activation")
        keys = bigram_keys(prev.to(ids.device), ids, self.d_vocab)
        known = keys >= 0
        self._pending.append(_reduce(keys[known], acts[known], torch.ones_like(keys[known])))
        self._pending_rows += len(self._pending[-1][0])
        if self._pending_rows > 4 * max(len(self._pending[0][0]), 1) and len(self._pending) > 8:
            self._compact()

    def _compact(self) -> None:
        if len(self._pending) > 1:
            keys, sums, counts = (torch.cat(parts) for parts in zip(*self._pending))
            self._pending = [_reduce(keys, sums, counts)]
            self._pending_rows = len(self._pending[0][0])

    def mean(self) -> torch.Tensor:
        return self.sums.sum(0) / max(self.n_tokens, 1)

    def token_rows(self, prior: torch.Tensor | None = None, pseudo_count: float = 0.5) -> torch.Tensor:
        """``[d_vocab, d_in]`` rows: each token's mean, shrunk toward ``prior`` (a table
        ``[d_vocab, d_in]``, or ``None`` for the sample's mean activation)."""
        if self.n_tokens == 0:
            raise ValueError("no activations were added; cannot estimate the lookup from data")
        prior_rows = self.mean().expand_as(self.sums) if prior is None else prior.to(self.sums)
        c = float(pseudo_count)
        n = self.counts.unsqueeze(1).to(self.sums)
        rows = (self.sums + c * prior_rows) / (n + c).clamp_min(1e-12)
        return torch.where(n > 0, rows, prior_rows)  # unseen: exactly the prior (also with c = 0)

    def bigram_table(self, token_rows: torch.Tensor, budget: int, min_count: int = 1,
                     pseudo_count: float = 0.5) -> BigramTable:
        """The ``budget`` most frequent bigrams seen at least ``min_count`` times, each row
        its mean shrunk toward its token's row in ``token_rows``."""
        if self.ngram < 2:
            raise ValueError("these statistics were collected without bigrams (ngram=1)")
        self._compact()
        if not self._pending:
            empty = torch.zeros(0, dtype=torch.long, device=self.sums.device)
            return BigramTable(empty, self.sums.new_zeros(0, self.d_in), empty, 0)
        keys, sums, counts = self._pending[0]
        n_seen = len(keys)
        eligible = (counts >= min_count).nonzero().squeeze(1)
        if len(eligible) > budget:  # keep the most frequent; ties broken by key for determinism
            order = torch.argsort(counts[eligible] * (len(keys) + 1) - torch.arange(len(eligible), device=keys.device),
                                  descending=True)
            eligible = eligible[order[:budget]]
        eligible = eligible.sort().values  # keys are sorted, so this keeps them sorted
        keys, sums, counts = keys[eligible], sums[eligible], counts[eligible]
        tok = keys % self.d_vocab
        c = float(pseudo_count)
        rows = (sums + c * token_rows.to(sums)[tok]) / (counts.unsqueeze(1).to(sums) + c)
        return BigramTable(keys, rows, counts, n_seen)

    def report(self) -> dict[str, Any]:
        seen = int((self.counts > 0).sum())
        out: dict[str, Any] = {"tokens": self.n_tokens, "distinct_tokens": seen}
        if self.ngram >= 2:
            self._compact()
            out["distinct_bigrams"] = len(self._pending[0][0]) if self._pending else 0
        return out


def _reduce(keys: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    out_sums = sums.new_zeros(len(uniq), sums.shape[1]).index_add_(0, inverse, sums)
    out_counts = counts.new_zeros(len(uniq)).index_add_(0, inverse, counts)
    return uniq, out_sums, out_counts
