"""Bigram rows: a row per frequent (previous token, token) pair, in ``W_lookup``.

A bigram lookup (``lookup_ngram=2``) holds rows ``d_vocab..`` for frequent pairs. A
position reads its pair's row if the pair has one, else its token's row: one row per
position, so sparse updates, folding, saving and publishing need no bigram code. (A pair
row *added* to the token row was tried and trained unstably at the lookup lr; the docs'
"Lookup initialisation" page has the measurement.)

Pairs are identified by the key ``prev * d_vocab + t``, kept sorted for ``searchsorted``.
SAELens's loader casts every saved tensor to the SAE's dtype (docs/upstream-seams.md), which
would round int64 keys; so the saved buffer ``lookup_bigram_ids`` holds each id as three
base-256 digits, exact in every float dtype (bf16 included), and the keys are rebuilt
from it when it changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sae_lens_tokenized.lookup.ids import TokenIdsError, previous_token_ids, tensor_version


class BigramRows:
    """The bigram part of ``TokenLookupMixin`` (which owns ``W_lookup`` and ``cfg``)."""

    W_lookup: nn.Parameter
    lookup_bigram_ids: torch.Tensor
    cfg: Any

    def _init_bigram_rows(self) -> None:
        self._rows_memo: tuple[Any, ...] | None = None
        self._keys_memo: tuple[Any, ...] | None = None
        if self.cfg.lookup_ngram == 2:
            # Which (previous token, token) pair each bigram row belongs to. No pair yet: the
            # rows are unread until the runner (or set_bigram_rows) assigns them.
            self.register_buffer("lookup_bigram_ids", torch.zeros(  # type: ignore[attr-defined]
                self.cfg.lookup_bigram_rows, 2, 3, dtype=self.W_lookup.dtype, device=self.W_lookup.device))
            self._store_bigram_ids(torch.full((self.cfg.lookup_bigram_rows,), -1, dtype=torch.long))

    def lookup_row_index(self, token_ids: torch.Tensor, prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The ``W_lookup`` row each position reads: its token's, or with a bigram lookup its
        (previous token, token) pair's where the pair has one (``>= d_vocab``). Token ids
        ``[..., pos]`` supply their own previous tokens; flat ids need ``prev_token_ids``
        (-1 = none)."""
        if self.cfg.lookup_ngram == 1:
            return token_ids
        # Memoised for the same id tensors (the trainer stages rows, then the forward reads
        # them: one lookup per step); an in-place change to the ids, or to the bigram table,
        # bumps a version and misses, and a scope's exit clears it.
        # (Inference tensors, e.g. ids made under TransformerLens's generate, have no version
        # counter: nothing is memoised for them.)
        buf = self.lookup_bigram_ids
        key = (tensor_version(token_ids), None if prev_token_ids is None else tensor_version(prev_token_ids), tensor_version(buf))
        memoisable = None not in key[::2] and (prev_token_ids is None or key[1] is not None)
        memo = self._rows_memo
        if (memoisable and memo is not None and memo[0] is token_ids and memo[1] is prev_token_ids
                and memo[2] is buf and memo[3] == key):
            return memo[4]
        if prev_token_ids is None:
            if token_ids.ndim < 2 and self._bigram_rows_in_use() == 0:
                return token_ids  # no pair has a row yet: every position reads its token's row
            if token_ids.ndim < 2:
                raise TokenIdsError(
                    f"{type(self).__name__} has a bigram lookup, so each activation needs its previous "
                    f"token too; token ids of shape {tuple(token_ids.shape)} have no sequence dimension "
                    "to take it from. Pass ids [batch, pos] (previous tokens are read along pos) or "
                    "prev_token_ids=... (-1 where there is none)."
                )
            prev = previous_token_ids(token_ids)
        else:
            prev = prev_token_ids
        keys = self._bigram_keys()
        if len(keys) == 0:
            return token_ids  # a bigram lookup that holds no pair rows
        ids = token_ids.to(keys.device)
        prev = prev.to(keys.device).long()
        V = self.cfg.d_vocab
        query = prev.clamp(min=0) * V + ids
        pos = torch.searchsorted(keys, query.reshape(-1)).clamp(max=len(keys) - 1).view(query.shape)
        hit = (keys[pos] == query) & (prev >= 0)
        rows = torch.where(hit, V + pos, ids)
        if memoisable:
            self._rows_memo = (token_ids, prev_token_ids, buf, key, rows)
        return rows

    def _bigram_rows_in_use(self) -> int:
        self._bigram_keys()
        return self._keys_memo[3]  # type: ignore[index]

    def _bigram_keys(self) -> torch.Tensor:
        # rebuilt when the buffer is replaced (load, .to()) or changed in place; the memo
        # holds the buffer itself, so its id cannot be reused by another tensor meanwhile
        buf = self.lookup_bigram_ids
        memo = self._keys_memo
        if memo is None or memo[0] is not buf or memo[1] is None or memo[1] != tensor_version(buf):
            digits = self.lookup_bigram_ids.detach().round().long()  # [B, 2, 3]
            pair = (digits * torch.tensor([1, 256, 65536], device=digits.device)).sum(-1) - 1  # [B, 2]
            V = self.cfg.d_vocab
            B = pair.shape[0]
            unused = pair[:, 0] < 0
            keys = torch.where(unused, V * V + torch.arange(B, device=pair.device), pair[:, 0] * V + pair[:, 1])
            self._keys_memo = (buf, tensor_version(buf), keys, int((~unused).sum()))
        return self._keys_memo[2]

    def _store_bigram_ids(self, keys: torch.Tensor) -> None:
        """Write pair keys (``prev * d_vocab + t``; -1 = unused) into ``lookup_bigram_ids``."""
        V = self.cfg.d_vocab
        keys = keys.long()
        pair = torch.stack([torch.where(keys >= 0, keys // V, -1), torch.where(keys >= 0, keys % V, -1)], -1) + 1
        digits = torch.stack([pair % 256, (pair // 256) % 256, pair // 65536], -1)
        with torch.no_grad():
            self.lookup_bigram_ids.copy_(digits.to(self.lookup_bigram_ids))

    def bigram_pairs(self) -> torch.Tensor:
        """``[lookup_bigram_rows, 2]`` (previous token, token) of each bigram row; -1 = unused."""
        keys = self._bigram_keys()
        V = self.cfg.d_vocab
        used = keys < V * V
        return torch.stack([torch.where(used, keys // V, -1), torch.where(used, keys % V, -1)], -1)

    @torch.no_grad()
    def set_bigram_rows(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Assign bigram rows: ``keys`` [n] sorted ascending (``prev * d_vocab + t``) and
        their rows [n, d_in] (read instead of the token's row), n <= ``lookup_bigram_rows``;
        the remaining rows are unused."""
        B, V = self.cfg.lookup_bigram_rows, self.cfg.d_vocab
        if self.cfg.lookup_ngram != 2:
            raise ValueError("set_bigram_rows needs a bigram lookup (lookup_ngram=2)")
        if keys.ndim != 1 or len(keys) > B or rows.shape != (len(keys), self.cfg.lookup_width):
            raise ValueError(f"expected at most {B} sorted keys and rows [n, {self.cfg.lookup_width}], got "
                             f"{tuple(keys.shape)} and {tuple(rows.shape)}")
        keys = keys.long().cpu()
        if len(keys) and (bool((keys[1:] <= keys[:-1]).any()) or int(keys.min()) < 0 or int(keys.max()) >= V * V):
            raise ValueError("bigram keys must be distinct, sorted and in [0, d_vocab**2)")
        full = torch.full((B,), -1, dtype=torch.long)
        full[: len(keys)] = keys
        self._store_bigram_ids(full)
        self.W_lookup.data[V : V + len(keys)] = rows.to(self.W_lookup)
        self.W_lookup.data[V + len(keys) :] = 0

    @torch.no_grad()
    def resize_bigram_rows(self, n: int) -> None:
        """Hold exactly ``n`` bigram rows: the first ``n`` are kept (as they are), any rows
        added are unused. The runner calls it with the number of pairs the init chose, so
        a saved lookup carries no empty rows. Call it before an optimizer holds
        ``W_lookup`` (it replaces the parameter)."""
        if self.cfg.lookup_ngram != 2:
            raise ValueError("resize_bigram_rows needs a bigram lookup (lookup_ngram=2)")
        if n < 0:
            raise ValueError(f"a lookup cannot hold {n} bigram rows")
        V, old = self.cfg.d_vocab, self.cfg.lookup_bigram_rows
        if n == old and self.W_lookup.shape[0] == V + n:
            return  # already that size: no second table, even for a moment
        keep = min(n, old)
        keys = torch.full((n,), -1, dtype=torch.long)
        used = self._bigram_keys()[:keep].cpu()
        keys[:keep] = torch.where(used < V * V, used, torch.full_like(used, -1))
        weight = self.W_lookup.new_zeros(V + n, self.W_lookup.shape[1])
        weight[: V + keep] = self.W_lookup[: V + keep]
        self.W_lookup = nn.Parameter(weight, requires_grad=self.W_lookup.requires_grad)
        self.lookup_bigram_ids = self.lookup_bigram_ids.new_zeros(n, 2, 3)
        self.cfg.lookup_bigram_rows = n
        self._store_bigram_ids(keys)
        self._keys_memo = self._rows_memo = None
        self._lookup_stage = None

