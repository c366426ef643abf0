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

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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

    ``add(acts [N, d_in], ids [N], prev [N], keep [N])`` accumulates a batch; ``token_rows``
    and ``bigram_table`` turn the sums into lookup rows.

    Memory, which the lookup's init must keep proportionate (issue: the default's cost):
    ``d_vocab * d_in`` floats for the token sums; for bigrams, while sampling, only an
    int64 key and count per distinct pair, never a row. ``bigram_table`` chooses its pairs
    from the counts and then sums the activations of the chosen pairs alone, in a second
    pass over the batches it was given: read again through ``reread`` (the runner's store
    holds them anyway, to train on them, on disk by default), or else kept by reference.
    So the bigram part costs ``budget * d_in`` floats, not ``distinct pairs * d_in``, which
    for a 500k-token sample can be several times the lookup itself.
    """

    def __init__(self, d_vocab: int, d_in: int, ngram: int = 1, device: torch.device | str = "cpu",
                 sums: torch.Tensor | None = None, reread: Callable[[], Iterable[torch.Tensor]] | None = None):
        """``sums``: a float32 ``[d_vocab, d_in]`` tensor to accumulate the token sums in
        (zeroed here), e.g. the token rows of the lookup being initialised, so that with
        ``token_rows(consume=True)`` the table is computed where it will live, and the init
        holds no second ``[d_vocab, d_in]`` table. ``reread``: gives the activations of the
        batches added, again and in the same order, for the bigrams' second pass; without
        it a bigram lookup's statistics keep a reference to every batch added."""
        self.d_vocab, self.d_in, self.ngram = d_vocab, d_in, ngram
        if sums is None:
            sums = torch.zeros(d_vocab, d_in, dtype=torch.float32, device=device)
        elif tuple(sums.shape) != (d_vocab, d_in) or sums.dtype != torch.float32:
            raise ValueError(f"sums must be float32 [{d_vocab}, {d_in}], got {sums.dtype} {tuple(sums.shape)}")
        else:
            sums.zero_()
        self._sums: torch.Tensor | None = sums
        self.counts = torch.zeros(d_vocab, dtype=torch.long, device=sums.device)
        self.n_tokens = 0
        self._pair_counts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (sorted keys, counts)
        self._pair_rows = 0
        self._reread = reread
        self._batches: list[tuple[torch.Tensor | None, torch.Tensor]] = []  # (acts or None, key per row or -1)
        self._across: Any = None  # a parallel.DataParallel once reduce_across() ran
        #: how many lookups will ask ``bigram_table`` for each (budget, min_count), set by a
        #: caller whose several lookups share these statistics (``expect_bigram_tables``)
        self._askers: dict[tuple[int, int], int] = {}
        self._chosen: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @property
    def sums(self) -> torch.Tensor:
        """``[d_vocab, d_in]`` per-token sums of the activations added."""
        if self._sums is None:
            raise RuntimeError("these statistics' token sums were consumed by token_rows(consume=True)")
        return self._sums

    @torch.no_grad()
    def add(self, acts: torch.Tensor, ids: torch.Tensor, prev: torch.Tensor | None = None,
            keep: torch.Tensor | None = None) -> None:
        """Accumulate a batch; ``keep`` [N] bool selects the rows to count (default all).
        Without ``reread``, a bigram lookup keeps a reference to ``acts`` until the
        statistics are dropped."""
        sums = self.sums
        ids = ids.to(sums.device).long()
        if keep is None:
            keep = torch.ones_like(ids, dtype=torch.bool)
        keep = keep.to(ids.device)
        acts = acts.to(sums.device, torch.float32)
        sums.index_add_(0, ids[keep], acts[keep])  # the masked copy is one batch
        self.counts.index_add_(0, ids[keep], torch.ones_like(ids[keep]))
        self.n_tokens += int(keep.sum())
        if self.ngram < 2:
            return
        if prev is None:
            raise ValueError("a bigram lookup's statistics need the previous token of each activation")
        keys = torch.where(keep, bigram_keys(prev.to(ids.device), ids, self.d_vocab), -1)
        known = keys[keys >= 0]
        uniq, counts = torch.unique(known, sorted=True, return_counts=True)
        self._pair_counts.append((uniq, counts))
        self._pair_rows += len(uniq)
        self._batches.append((None if self._reread is not None else acts, keys))
        if self._pair_rows > 4 * max(len(self._pair_counts[0][0]), 1) and len(self._pair_counts) > 8:
            self._compact()

    def _compact(self) -> None:
        if len(self._pair_counts) > 1:
            keys, counts = (torch.cat(parts) for parts in zip(*self._pair_counts))
            uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
            self._pair_counts = [(uniq, counts.new_zeros(len(uniq)).index_add_(0, inverse, counts))]
            self._pair_rows = len(uniq)

    @torch.no_grad()
    def reduce_across(self, dp: Any) -> None:
        """Sum these statistics over the ranks of a data-parallel run, so every rank holds
        the statistics of the union of the ranks' samples: token sums and counts, and the
        pairs' counts (every rank then chooses the same bigram rows). The chosen pairs'
        activation sums are summed across ranks too, in ``bigram_table``'s second pass."""
        dp.all_reduce_(self.sums, what="summing the lookup's per-token activations")
        dp.all_reduce_(self.counts, what="summing the per-token counts")
        self.n_tokens = int(dp.all_reduce_(torch.tensor([self.n_tokens]), what="summing the sample sizes"))
        if self.ngram >= 2:
            self._compact()
            keys, counts = self._pair_counts[0] if self._pair_counts else (
                torch.zeros(0, dtype=torch.long, device=self.counts.device),) * 2
            keys = dp.all_gather_varlen(keys, "sharing the bigram counts")
            counts = dp.all_gather_varlen(counts, "sharing the bigram counts")
            uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
            self._pair_counts = [(uniq, counts.new_zeros(len(uniq)).index_add_(0, inverse, counts))] if len(uniq) else []
            self._pair_rows = len(uniq)
        self._across = dp

    def mean(self) -> torch.Tensor:
        return self.sums.sum(0) / max(self.n_tokens, 1)

    def token_rows(self, prior: torch.Tensor | None = None, pseudo_count: float = 0.5,
                   consume: bool = False) -> torch.Tensor:
        """``[d_vocab, d_in]`` rows: each token's mean, shrunk toward ``prior`` (a table
        ``[d_vocab, d_in]``, or ``None`` for the sample's mean activation). One new table
        is allocated, or with ``consume=True`` none: the sums become the rows (for the one
        caller that needs no other rows from these statistics; bigram rows still work)."""
        if self.n_tokens == 0:
            raise ValueError("no activations were added; cannot estimate the lookup from data")
        sums = self.sums
        mean = self.mean()
        prior_rows = mean.expand_as(sums) if prior is None else prior.to(sums)
        c = float(pseudo_count)
        n = self.counts.unsqueeze(1).to(sums)
        unseen = self.counts == 0
        if consume:
            rows, self._sums = sums, None
            rows.add_(prior_rows, alpha=c)
        else:
            rows = torch.mul(prior_rows, c).add_(sums)
        rows.div_((n + c).clamp_min(1e-12))
        # unseen tokens: exactly the prior (also with c = 0); the mean is written as one
        # broadcast row, not gathered into an [unseen, d_in] copy
        rows[unseen] = mean if prior is None else prior_rows[unseen]
        return rows

    def bigram_table(self, token_rows: torch.Tensor, budget: int, min_count: int = 1,
                     pseudo_count: float = 0.5) -> BigramTable:
        """The ``budget`` most frequent bigrams seen at least ``min_count`` times, each row
        its mean shrunk toward its token's row in ``token_rows``."""
        if self.ngram < 2:
            raise ValueError("these statistics were collected without bigrams (ngram=1)")
        self._compact()
        if not self._pair_counts:
            empty = torch.zeros(0, dtype=torch.long, device=self.counts.device)
            return BigramTable(empty, torch.zeros(0, self.d_in, dtype=torch.float32, device=self.counts.device), empty, 0)
        n_seen = len(self._pair_counts[0][0])
        setting = (int(budget), int(min_count))
        keys, counts, sums = self._chosen.pop(setting, None) or self._chosen_pair_sums(budget, min_count)
        self._askers[setting] = self._askers.get(setting, 1) - 1
        if self._askers[setting] > 0:  # kept for the next lookup; the rows are computed in place below
            self._chosen[setting] = keys, counts, sums
            sums = sums.clone()
        tok = keys % self.d_vocab
        c = float(pseudo_count)
        rows = sums.add_(token_rows.to(sums)[tok], alpha=c).div_(counts.unsqueeze(1).to(sums) + c)
        return BigramTable(keys, rows, counts, n_seen)

    def expect_bigram_tables(self, settings: Iterable[tuple[int, int]]) -> None:
        """The (budget, min_count) of every lookup that will share these statistics (the
        multi-SAE runner's SAEs at one hook). Lookups that choose their pairs alike (a
        sweep's) then share one second pass over the sample: its sums are kept until the
        last of them has taken them, and a setting only one lookup asks for is never kept."""
        self._askers = dict(Counter((int(b), int(m)) for b, m in settings))

    def _chosen_pair_sums(self, budget: int, min_count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The keys and counts of the pairs a budget and min_count choose, and their
        activations' sums (one pass over the sample's batches)."""
        keys, counts = self._pair_counts[0]
        eligible = (counts >= min_count).nonzero().squeeze(1)
        if len(eligible) > budget:  # keep the most frequent; ties broken by key for determinism
            order = torch.argsort(counts[eligible] * (len(keys) + 1) - torch.arange(len(eligible), device=keys.device),
                                  descending=True)
            eligible = eligible[order[:budget]]
        eligible = eligible.sort().values  # keys are sorted, so this keeps them sorted
        keys, counts = keys[eligible], counts[eligible]
        # the second pass: sum the activations of the chosen pairs only (one spare row
        # takes every other position)
        sums = torch.zeros(len(keys) + 1, self.d_in, dtype=torch.float32, device=self.counts.device)
        for acts, batch_keys in self._second_pass() if len(keys) else ():
            pos = torch.searchsorted(keys, batch_keys).clamp_max(len(keys) - 1)
            hit = (keys[pos] == batch_keys) & (batch_keys >= 0)
            sums.index_add_(0, torch.where(hit, pos, len(keys)), acts)
        if self._across is not None:
            self._across.all_reduce_(sums, what="summing the chosen bigrams' activations")
        return keys, counts, sums[: len(keys)]

    def _second_pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._reread is None:
            yield from self._batches  # type: ignore[misc]
            return
        again = iter(self._reread())
        for i, (_, batch_keys) in enumerate(self._batches):
            acts = next(again, None)
            if acts is None or len(acts) != len(batch_keys):
                raise RuntimeError(
                    f"re-reading the init sample gave {'no' if acts is None else len(acts)} rows for batch {i}, "
                    f"which held {len(batch_keys)}: the held sample was consumed or changed before the "
                    "bigram rows were chosen")
            yield acts.to(self.counts.device, torch.float32), batch_keys

    def report(self) -> dict[str, Any]:
        seen = int((self.counts > 0).sum())
        out: dict[str, Any] = {"tokens": self.n_tokens, "distinct_tokens": seen}
        if self.ngram >= 2:
            self._compact()
            out["distinct_bigrams"] = len(self._pair_counts[0][0]) if self._pair_counts else 0
        return out
