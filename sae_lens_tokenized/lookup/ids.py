"""Token ids of activations: the errors, the previous-token convention, and what a
capture hands an SAE (``splicing.py``).

A tokenized SAE needs the input token id of every activation it reconstructs, and a
bigram lookup also the token before it. ``NO_PREV`` (-1) marks a position with no known
previous token (a context's first position): it reads its token's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

#: previous-token id of a position whose previous token is unknown (a context's first
#: position): its bigram never matches, so it reads its token's row
NO_PREV = -1
#: the pseudo-hook of a multi-hook batch that carries ``[previous id, id]`` per activation
#: (``training.multi_runner``)
TOKEN_IDS_KEY = "sae_lens_tokenized.token_ids"


class TokenIdsError(ValueError):
    """Token ids are missing, malformed, or do not match the activations."""


def previous_token_ids(ids: torch.Tensor) -> torch.Tensor:
    """``prev[..., j] = ids[..., j - 1]`` along the last dim; ``NO_PREV`` at position 0."""
    prev = torch.full_like(ids, NO_PREV)
    prev[..., 1:] = ids[..., :-1]
    return prev


def bigram_keys(prev: torch.Tensor, ids: torch.Tensor, d_vocab: int) -> torch.Tensor:
    """One int64 key per (prev, token) pair; ``-1`` where prev is unknown."""
    prev = prev.long()
    return torch.where(prev >= 0, prev * d_vocab + ids.long(), torch.full_like(prev, -1))


def tensor_version(t: torch.Tensor) -> int | None:
    """``t``'s version counter; ``None`` for an inference tensor, which has none."""
    return None if t.is_inference() else t._version


@dataclass(frozen=True)
class CapturedIds:
    """The token ids of one sequence a model ran, as a capture saw them.

    ``seq`` [..., S] holds every position of the sequence so far; the forward that took
    them ran its last ``own`` positions (fewer than S when it continued a sequence from a
    KV cache, as generation does). Activations of that forward have batch shape
    ``[..., own]`` or, when it ran the whole sequence, ``[..., S]``; their previous tokens
    are read off ``seq``, so a cached generation step still knows the token before it.
    """

    seq: torch.Tensor
    own: int

    def for_batch(self, batch_shape: tuple[int, ...], origin: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, previous ids)`` for activations of ``batch_shape`` (-1: no previous token)."""
        seq = self.seq
        if seq.is_inference() and not torch.is_inference_mode_enabled():
            seq = seq.clone()  # ids taken under inference_mode, used where autograd may save them
        full = tuple(seq.shape)
        if tuple(batch_shape) == full:
            return seq, previous_token_ids(seq)
        if self.own < full[-1] and tuple(batch_shape) == full[:-1] + (self.own,):
            return seq[..., -self.own:], previous_token_ids(seq)[..., -self.own:]
        raise TokenIdsError(
            f"token ids from the {origin} have shape {full}"
            + (f" (the last {self.own} positions ran in its latest forward)" if self.own < full[-1] else "")
            + f" but the activations have batch shape {tuple(batch_shape)}: each activation needs "
            "exactly one id (ids [batch, pos] for activations [batch, pos, d_in]). If these "
            "activations are from another input, pass token_ids=... explicitly."
        )


class TokenIdSource(Protocol):
    """Where a tokenized SAE finds the ids of activations it was not given ids for
    (``sae_lens_tokenized.splicing``: the ids of a model's input)."""

    def ids_of(self, tensor: torch.Tensor | None) -> CapturedIds | None:
        """The ids of the forward that produced ``tensor``, if known, else of the latest
        forward; ``None`` if there are none."""

    def remember(self, tensor: torch.Tensor, ids: CapturedIds) -> None:
        """``tensor`` (an SAE's latents) belongs to ``ids``: a later decode of it reads them."""

    def describe(self) -> str: ...


