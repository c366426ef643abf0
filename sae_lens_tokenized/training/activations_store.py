"""An SAELens ActivationsStore that keeps each activation's token id beside it.

SAELens's store computes ``(activations, token_ids)`` for every LLM batch
(``get_raw_llm_batch``) and then drops the ids before its mixing buffer shuffles rows.
We keep them: each activation row gets its token id as one extra float32 column, the
packed rows go through SAELens's own ``mixing_buffer`` (a single ``randperm`` moves a
row's activation and its id together, exactly as SAELens packs several hooks in
``multi_hook_concat_split_iter``), and the column is split off again on the way out.
float32 holds every integer below 2**24 exactly; unpacking re-checks that the column is
still integral, so a future buffer in a lower precision fails loudly instead of
silently corrupting ids.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterator
from typing import Any

import torch

from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.mixing_buffer import mixing_buffer

from sae_lens_tokenized._compat import MAX_PACKABLE_TOKEN_ID


def pack_token_ids(activations: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[N, d_in] activations + [N] ids -> [N, d_in + 1] float32 rows."""
    if token_ids.shape != activations.shape[:1]:
        raise ValueError(
            f"{activations.shape[0]} activations but {tuple(token_ids.shape)} token ids"
        )
    if token_ids.numel() and int(token_ids.max()) >= MAX_PACKABLE_TOKEN_ID:
        raise ValueError(f"token ids >= {MAX_PACKABLE_TOKEN_ID} cannot be packed exactly")
    return torch.cat(
        [activations.to(torch.float32), token_ids.to(torch.float32).unsqueeze(1)], dim=1
    )


def unpack_token_ids(packed: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_token_ids``; raises if the id column was corrupted."""
    ids_f = packed[:, -1]
    ids = ids_f.round().long()
    if not torch.equal(ids.to(ids_f.dtype), ids_f) or (ids.numel() and int(ids.min()) < 0):
        raise RuntimeError(
            "token ids in the activation buffer are no longer exact integers; the buffer "
            "must stay float32 (SAELens internals changed?)"
        )
    return packed[:, :-1].to(dtype), ids


class TokenizedActivationsStore(ActivationsStore):
    """ActivationsStore whose ``iter_with_token_ids()`` yields ``(activations, token_ids)``.

    ``next(store)`` still yields plain activation batches, as SAELens's store does, drawn
    from the same token-carrying pipeline.
    """

    _dataloader_with_ids: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- one LLM batch, special tokens filtered, ids kept ------------------------------------
    @torch.no_grad()
    def get_filtered_llm_batch_with_ids(
        self, raise_on_epoch_end: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        activations, token_ids = self.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        if token_ids is None:
            raise ValueError(
                "these cached activations have no 'token_ids' column, so a tokenized SAE "
                "cannot know which token each activation belongs to. Re-create the cache "
                "with SAELens's CacheActivationsRunner (it saves token_ids) or train from "
                "the model directly."
            )
        if self.exclude_special_tokens is not None:
            keep = ~torch.isin(token_ids.long(), self.exclude_special_tokens.to(token_ids.device))
            activations, token_ids = activations[keep], token_ids[keep]
        return activations, token_ids

    def _iterate_packed(self) -> Generator[torch.Tensor, None, None]:
        # Mirrors ActivationsStore._iterate_filtered_activations (sae-lens 6.54.12).
        while True:
            try:
                yield pack_token_ids(*self.get_filtered_llm_batch_with_ids(raise_on_epoch_end=True))
            except StopIteration:
                warnings.warn(
                    "All samples in the training dataset have been exhausted, beginning new epoch.",
                    stacklevel=2,
                )
                try:
                    yield pack_token_ids(*self.get_filtered_llm_batch_with_ids())
                except StopIteration:
                    raise ValueError(
                        "Unable to fill buffer after starting new epoch. Dataset may be too small."
                    ) from None

    def get_data_loader_with_ids(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Auto-refilling stream of shuffled ``(activations [B, d_in], token_ids [B])``."""
        for packed in mixing_buffer(
            buffer_size=self.n_batches_in_buffer * self.training_context_size,
            batch_size=self.train_batch_size_tokens,
            activations_loader=self._iterate_packed(),
            mix_fraction=self.activations_mixing_fraction,
        ):
            yield unpack_token_ids(packed, self.dtype)

    def iter_with_token_ids(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The store's single token-carrying stream (created on first use)."""
        if self._dataloader_with_ids is None:
            self._dataloader_with_ids = self.get_data_loader_with_ids()
        return self._dataloader_with_ids

    def get_data_loader(self) -> Iterator[Any]:
        return (acts for acts, _ in self.iter_with_token_ids())


class TokenIdsSideChannel(Iterator[torch.Tensor]):
    """Turns a stream of ``(activations, ids)`` into SAELens's stream of activations.

    SAELens's trainer calls ``next(data_provider)`` and passes the tensor to ``step``;
    it has no slot for ids. This iterator yields the activations and keeps the ids of
    the batch it last handed out; ``token_ids_for(batch)`` gives them back only for that
    very tensor (identity check), once, so ids can never be paired with another batch.
    """

    def __init__(self, source: Iterator[tuple[torch.Tensor, torch.Tensor]]):
        self.source = source
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def __iter__(self) -> TokenIdsSideChannel:
        return self

    def __next__(self) -> torch.Tensor:
        acts, ids = next(self.source)
        self._pending = (acts, ids)
        return acts

    def token_ids_for(self, batch: torch.Tensor) -> torch.Tensor:
        if self._pending is None or self._pending[0] is not batch:
            raise RuntimeError(
                "this batch did not come from the token-carrying data provider (or its ids "
                "were already used); tokenized SAEs must be trained on batches from "
                "TokenizedActivationsStore.iter_with_token_ids()"
            )
        ids = self._pending[1]
        self._pending = None
        return ids
