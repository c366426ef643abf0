"""An SAELens ActivationsStore whose rows carry their token id.

SAELens's store computes ``(activations, token_ids)`` for every LLM batch
(``get_raw_llm_batch``) and drops the ids once its special-token filter has used them.
We keep them by overriding that one method: each activation row gets its token id as one
extra float32 column. Everything downstream is SAELens's own code, unchanged: the
special-token filter (which still reads the ids returned beside the rows), the epoch
handling, the mixing buffer (a single ``randperm`` moves a row's activation and its id
together, exactly as SAELens packs several hooks in ``multi_hook_concat_split_iter``),
``next(store)`` and the prefetch thread. So ``next(store)`` yields packed rows
``[batch, d_in + 1]``; ``TokenIdsSideChannel`` splits them for the trainer.

A bigram lookup (``lookup_ngram=2``) also needs each activation's previous token, which
is gone once SAELens has flattened and shuffled its batch. So the store packs it too, as
a second column (``[activations | previous id | id]``), taken from the sequence each LLM
batch was cut from: SAELens returns ``store_batch_size_prompts`` sequences of equal
length, flattened row by row (live and cached alike). A sequence's first position has no
previous token (``-1``: it reads its token's row); with ``seqpos_slice`` the previous
token of the slice's first position is not kept, so it counts as none too.

Ids are validated once, where they enter: ``get_raw_llm_batch`` checks each LLM batch's
ids against the lookup's ``d_vocab`` (one host read per LLM batch, in the producer). The
training step itself never reads a value back to the host: unpacking checks only the
buffer's dtype (float32 holds every integer below 2**24 exactly, so a buffer in a lower
precision fails loudly instead of silently corrupting ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens.constants import ACTIVATIONS_STORE_STATE_FILENAME
from sae_lens.training.activations_store import ActivationsStore

from sae_lens_tokenized import parallel
from sae_lens_tokenized._compat import MAX_PACKABLE_TOKEN_ID
from sae_lens_tokenized.lookup_init.statistics import previous_ids_of_batch
from sae_lens_tokenized.training.held_batches import HeldBatches
from sae_lens_tokenized.training.transcoders import TargetColumns


def check_vocab_packable(d_vocab: int) -> None:
    """Raise (before any work) if ids of this vocabulary cannot ride in a float32 column."""
    if d_vocab > MAX_PACKABLE_TOKEN_ID:
        raise ValueError(
            f"d_vocab={d_vocab} exceeds {MAX_PACKABLE_TOKEN_ID} (2**24): token ids that large "
            "cannot be carried exactly in SAELens's float32 activation buffer, so the "
            "token-carrying store cannot train this SAE."
        )


def checked_ids(token_ids: torch.Tensor, d_vocab: int | None) -> torch.Tensor:
    """Raise if ids are out of the lookup's range or too large to ride a float32 buffer
    (one host read, where ids enter the store)."""
    limit = MAX_PACKABLE_TOKEN_ID if d_vocab is None else min(d_vocab, MAX_PACKABLE_TOKEN_ID)
    if token_ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(token_ids))
        if hi >= MAX_PACKABLE_TOKEN_ID:
            raise ValueError(
                f"token ids >= {MAX_PACKABLE_TOKEN_ID} cannot be packed exactly into SAELens's float32 "
                "activation buffer; this vocabulary is too large for the token-carrying store."
            )
        if lo < 0 or hi >= limit:
            raise ValueError(
                f"the training data has token ids in [{lo}, {hi}] but the lookup has d_vocab={d_vocab} "
                f"rows (valid ids 0..{limit - 1}): was the dataset tokenized for another model?"
            )
    return token_ids


def pack_token_ids(activations: torch.Tensor, token_ids: torch.Tensor, d_vocab: int | None = None,
                   prev_token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[N, d_in] activations + [N] ids -> [N, d_in + 1] float32 rows; ids checked here.
    With ``prev_token_ids`` [N] (-1 = none): [N, d_in + 2] rows ``[acts | prev | id]``."""
    if token_ids.shape != activations.shape[:1]:
        raise ValueError(f"{activations.shape[0]} activations but {tuple(token_ids.shape)} token ids")
    checked_ids(token_ids, d_vocab)
    columns = [activations.to(torch.float32)]
    if prev_token_ids is not None:
        columns.append(prev_token_ids.to(torch.float32).unsqueeze(1))
    columns.append(token_ids.to(torch.float32).unsqueeze(1))
    return torch.cat(columns, dim=1)


def unpack_token_ids(packed: torch.Tensor, with_prev: bool = False) -> tuple[torch.Tensor, ...]:
    """Inverse of ``pack_token_ids``: (activations as a view, ids), or with ``with_prev``
    (activations, ids, previous ids). No host sync."""
    if packed.dtype != torch.float32:
        raise RuntimeError(
            f"the activation buffer is {packed.dtype}, not float32, so the token ids riding in "
            "it may no longer be exact (SAELens internals changed? see sae_lens_tokenized/_compat.py)"
        )
    if with_prev:
        return packed[:, :-2], packed[:, -1].long(), packed[:, -2].long()
    return packed[:, :-1], packed[:, -1].long()


def check_cached_token_ids(store: ActivationsStore, d_vocab: int | None) -> None:
    """Before training from cached activations (SAELens's ``CacheActivationsRunner``
    output): the cache must hold each activation's token id, and SAELens's store, which
    loads every column in the activation dtype, must be able to hold those ids exactly."""
    ds = store.cached_activation_dataset
    assert ds is not None
    where = getattr(store, "cached_activations_path", None)
    if "token_ids" not in ds.column_names:
        raise ValueError(
            f"the cached activations at {where} have no 'token_ids' column (columns: "
            f"{ds.column_names}), so a tokenized SAE cannot know which token each activation "
            "belongs to. Re-create the cache with SAELens's CacheActivationsRunner (which "
            "saves token_ids), or train from the model (use_cached_activations=False)."
        )
    dtype = store.dtype if isinstance(store.dtype, torch.dtype) else getattr(torch, str(store.dtype))
    if dtype.is_floating_point:
        exact_below = int(2 / torch.finfo(dtype).eps)  # 2 ** (mantissa bits + 1)
        if d_vocab is not None and d_vocab > exact_below:
            raise ValueError(
                f"SAELens loads cached token ids in the activation dtype ({dtype}), which holds "
                f"integers exactly only below {exact_below}; this lookup has d_vocab={d_vocab}, "
                "so ids would be rounded. Train with dtype='float32' (the cache itself may stay "
                "in lower precision)."
            )


class RankShare:
    """An ActivationsStore that, under ``torchrun``, reads only its rank's share of the data
    (``parallel``; the plain and the token-carrying store alike)."""

    #: this process's rank under torchrun (None: a single process)
    rank: int | None = None

    @classmethod
    def from_config(cls, model: Any, cfg: Any, override_dataset: Any = None) -> Any:
        store = super().from_config(model, cfg, override_dataset)  # type: ignore[misc]
        dp = parallel.current()
        if dp is not None:
            store.take_rank_share(dp)
        return store

    def take_rank_share(self, dp: parallel.DataParallel) -> None:
        """Under ``torchrun``: read this rank's part of the data only (a contiguous shard of
        the dataset, or of the activation cache's rows, via ``datasets``'
        ``split_dataset_by_node``) and yield this rank's part of the global batch
        (``train_batch_size_tokens`` is the global batch, divided by the world size)."""
        from datasets.distributed import split_dataset_by_node

        self.train_batch_size_tokens = dp.share_of_batch(self.train_batch_size_tokens)
        if self.dataset is not None:
            self.dataset = split_dataset_by_node(self.dataset, rank=dp.rank, world_size=dp.world)
            self.iterable_sequences = self._iterate_tokenized_sequences()
        cache = self.cached_activation_dataset
        if cache is not None:
            self.cached_activation_dataset = split_dataset_by_node(cache, rank=dp.rank, world_size=dp.world)
            rows = len(self.cached_activation_dataset)
            if rows < self.store_batch_size_prompts:
                raise parallel.DataParallelError(
                    f"the activation cache has {len(cache)} sequences; split across {dp.world} ranks, rank "
                    f"{dp.rank} gets {rows}, fewer than store_batch_size_prompts="
                    f"{self.store_batch_size_prompts}. Use fewer ranks, a larger cache, or a smaller "
                    "store_batch_size_prompts."
                )
        self.rank = dp.rank

    def _rank_state_file(self, checkpoint_path: str | Path) -> Path:
        # under torchrun each rank keeps its own position in its own part of the data
        return Path(checkpoint_path) / ACTIVATIONS_STORE_STATE_FILENAME.replace(
            ".safetensors", f"_rank{self.rank}.safetensors")

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        if self.rank is None:
            return super().save_to_checkpoint(checkpoint_path)
        self.save(str(self._rank_state_file(checkpoint_path)))

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        if self.rank is None:
            return super().load_from_checkpoint(checkpoint_path)
        path = self._rank_state_file(checkpoint_path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by a run with rank {self.rank} "
                "(each rank saves its own data position). Resume with the world size that wrote it, "
                "or start a new run from its weights (from_pretrained_path)."
            )
        self.load(str(path))


class ShardedActivationsStore(RankShare, TargetColumns, ActivationsStore):
    """SAELens's ActivationsStore, reading its rank's share under ``torchrun`` (plain SAEs
    trained through the plugin's runner)."""


class TokenizedActivationsStore(HeldBatches, RankShare, TargetColumns, ActivationsStore):
    """ActivationsStore whose batches are packed ``[activations | token id]`` rows."""

    #: rows of the lookup; ids are checked against it as they enter (set by from_config)
    d_vocab: int | None = None
    #: also carry each activation's previous token (a bigram lookup; set by from_config)
    carries_prev: bool = False

    @classmethod
    def from_config(cls, model: Any, cfg: Any, override_dataset: Any = None) -> TokenizedActivationsStore:  # type: ignore[override]
        d_vocab = getattr(getattr(cfg, "sae", None), "d_vocab", None)
        if d_vocab is not None:
            check_vocab_packable(d_vocab)
        store = super().from_config(model, cfg, override_dataset)
        store.d_vocab = d_vocab  # type: ignore[attr-defined]
        store.carries_prev = getattr(getattr(cfg, "sae", None), "lookup_ngram", 1) == 2  # type: ignore[attr-defined]
        if store.cached_activation_dataset is not None:
            check_cached_token_ids(store, d_vocab)
        return store  # type: ignore[return-value]

    @torch.no_grad()
    def get_raw_llm_batch(self, raise_on_epoch_end: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        held = self._next_held()
        if held is not None:
            return held
        packed_and_ids = self._read_llm_batch(raise_on_epoch_end)
        self.llm_activations_read += len(packed_and_ids[1])
        self._keep_if_holding(packed_and_ids, len(packed_and_ids[1]))
        return packed_and_ids

    def _read_llm_batch(self, raise_on_epoch_end: bool) -> tuple[torch.Tensor, torch.Tensor]:
        activations, token_ids = super().get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        if token_ids is None:
            raise ValueError(
                "these cached activations have no 'token_ids' column, so a tokenized SAE "
                "cannot know which token each activation belongs to. Re-create the cache "
                "with SAELens's CacheActivationsRunner (it saves token_ids) or train from "
                "the model directly."
            )
        prev = previous_ids_of_batch(token_ids, self.store_batch_size_prompts) if self.carries_prev else None
        return pack_token_ids(activations, token_ids, self.d_vocab, prev), token_ids

    def get_raw_llm_batch_with_ids(self, raise_on_epoch_end: bool = False) -> tuple[torch.Tensor, ...]:
        """One LLM batch in corpus order, unshuffled: ``(activations, ids)``, or with
        ``carries_prev`` ``(activations, ids, previous ids)`` (the data-estimated init).
        ``raise_on_epoch_end``: as SAELens's ``get_raw_llm_batch`` (StopIteration once the
        dataset has been read through; the store then starts it anew)."""
        packed, _ = self.get_raw_llm_batch(raise_on_epoch_end=raise_on_epoch_end)
        return self._with_ids(packed)

    def held_batches_with_ids(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The kept batches (``holding()``) as ``get_raw_llm_batch_with_ids`` gave them,
        again, without serving them."""
        return (self._with_ids(packed) for packed, _ in self.held_batches())

    def _with_ids(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        acts, *ids = unpack_token_ids(packed, self.carries_prev)
        if self.hook_name_out is not None:  # a transcoder's lookup models its output: the target
            acts = acts[:, -self.d_out:]
        return (acts, *ids)

    def iter_with_token_ids(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """SAELens's shuffled stream, split into ``(activations [B, d_in], token_ids [B])``
        (a bigram lookup's store: plus the previous ids)."""
        return (unpack_token_ids(packed, self.carries_prev) for packed in self)


class TokenIdsSideChannel(Iterator[torch.Tensor]):
    """Turns a stream of packed rows into SAELens's stream of activations.

    SAELens's trainer calls ``next(data_provider)`` and passes the tensor to ``step``;
    it has no slot for ids. This iterator yields the activations and keeps the ids of
    the batch it last handed out; ``token_ids_for(batch)`` gives them back only for that
    very tensor (identity check), once, so ids can never be paired with another batch.
    ``source`` is what SAELens built: the store itself or its ``PrefetchingIterator``.
    """

    def __init__(self, source: Iterator[torch.Tensor], with_prev: bool = False):
        self.source: Any = source
        self.with_prev = with_prev
        self._pending: tuple[torch.Tensor, ...] | None = None

    def __iter__(self) -> TokenIdsSideChannel:
        return self

    def __next__(self) -> torch.Tensor:
        unpacked = unpack_token_ids(next(self.source), self.with_prev)
        self._pending = unpacked
        return unpacked[0]

    def token_ids_for(self, batch: torch.Tensor) -> torch.Tensor:
        """The ids of ``batch`` (see ``ids_for``)."""
        return self.ids_for(batch)[0]

    def ids_for(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(ids, previous ids or None)`` of ``batch``, once."""
        if self._pending is None or self._pending[0] is not batch:
            raise RuntimeError(
                "this batch did not come from the token-carrying data provider (or its ids "
                "were already used); tokenized SAEs must be trained on batches from a "
                "TokenizedActivationsStore"
            )
        pending = self._pending
        self._pending = None
        return pending[1], (pending[2] if self.with_prev else None)
