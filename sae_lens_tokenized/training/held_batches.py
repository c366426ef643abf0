"""The lookup init's sample, held until it is trained on.

The default lookup is estimated from the first activations of the training stream (docs:
Lookup initialisation). Reading them once for the estimate and again for training would
cost a second LLM pass, so the stores keep what they read while the estimate is taken and serve
it to training first (issue 20, item 2: every activation read is trained on).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_lens_tokenized.lookup.config import HOLD_PLACES


class HeldBatchesError(ValueError):
    """The init sample cannot be held where it was asked to be (e.g. too little disk)."""


class HeldBatches:
    """What a store reads inside ``holding()`` it also keeps, and serves to training first,
    so activations read before training (the lookups' init sample) are trained on, not
    read twice. Shared by the single-SAE store and the multi-SAE runner's store, which
    differ only in what one batch is.

    The sample is the largest thing the default init holds that does not scale with the
    lookup (``lookup_init_tokens * (d_in + 2) * 4`` bytes for the single store: gigabytes
    at a large model's width). ``where="disk"`` (the default) appends each batch to one
    unnamed temporary file as it is read (``tempfile.gettempdir()``: set ``TMPDIR`` to move
    it), so the run's memory holds one batch of it at a time, and the file is closed once
    training has taken the last batch; ``"memory"`` keeps the batches as they are (on the
    store's device). The file has no name (``tempfile.TemporaryFile``: ``O_TMPFILE``, or
    unlinked at once), so the kernel frees it when the process ends however it ends: a
    SIGTERM from a job cancel or from torchrun stopping the other ranks, a SIGKILL, the
    out-of-memory killer, ``os._exit``. Named files would stay behind, gigabytes at a large
    model's width."""

    #: LLM (or cache) activations this store has read; each is trained on once
    llm_activations_read: int = 0
    #: kept batches, in read order: (the batch, or where it is in the file; its rows)
    _held: deque[tuple[Any, int]] | None = None
    _holding: bool = False
    _spill: _SpillFile | None = None
    _expected_rows: int | None = None

    @contextlib.contextmanager
    def holding(self, where: str = "memory", expected_rows: int | None = None) -> Iterator[None]:
        """Inside the block, every batch read is also kept; afterwards the kept batches are
        served first. ``where``: ``"disk"`` or ``"memory"`` (class docstring).
        ``expected_rows``: how many rows the block will read, so that, on disk, the free
        space is checked against the whole sample when the first batch arrives, before
        anything is written."""
        if where not in HOLD_PLACES:
            raise ValueError(f"the init sample can be held on {HOLD_PLACES}, not {where!r}")
        if self._held is None:
            self._held = deque()
        if where == "disk" and self._spill is None:
            self._spill = _SpillFile()
        self._expected_rows = expected_rows
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    @property
    def held_activations(self) -> int:
        """Rows kept and not yet served to training."""
        return sum(n for _, n in self._held or ())

    def held_batches(self) -> Iterator[Any]:
        """The kept batches in read order, without serving them (a second pass over the
        init sample: e.g. summing the chosen bigrams' activations). On disk, one is loaded
        at a time."""
        for item, _ in list(self._held or ()):
            yield self._load(item)

    def _load(self, item: Any) -> Any:
        if isinstance(item, _OnDisk):
            assert self._spill is not None
            return self._spill.read(item)
        return item

    def _next_held(self) -> Any:
        """The next kept batch to serve, or None (none left, or still holding)."""
        if not self._held or self._holding:
            return None
        item, _ = self._held.popleft()
        batch = self._load(item)
        if not self._held and self._spill is not None:
            self._remove_spill()  # the last one served: nothing of the sample stays on disk
        return batch

    def _keep_if_holding(self, batch: Any, rows: int) -> None:
        if not self._holding:
            return
        assert self._held is not None
        if self._spill is None:
            self._held.append((batch, rows))
            return
        if not self._held and self._expected_rows:
            self._check_free_space(self._spill.folder, batch, rows)
        self._held.append((self._spill.write(batch), rows))

    def _remove_spill(self) -> None:
        assert self._spill is not None
        self._spill.close()
        self._spill = None

    def _check_free_space(self, folder: Path, batch: Any, rows: int) -> None:
        assert self._expected_rows
        per_row = sum(t.numel() * t.element_size() for t in _flat_tensors((batch,))) / max(rows, 1)
        need = int(per_row * self._expected_rows * 1.05)
        free = shutil.disk_usage(folder).free
        if need > free:
            self._remove_spill()
            raise HeldBatchesError(
                f"the lookup init's sample ({self._expected_rows:,} activations, about {need / 2**30:.1f} GiB) "
                f"is held on disk until it is trained on, but {folder} has {free / 2**30:.1f} GiB free. "
                "Set TMPDIR to a folder with room, lower lookup_init_tokens, or hold it in memory "
                "(lookup_init_hold='memory')."
            )


@dataclass(frozen=True)
class _OnDisk:
    """Where one kept batch is in the spill file."""

    offset: int
    length: int


class _SpillFile:
    """The init sample on disk: one unnamed temporary file (class docstring of ``HeldBatches``),
    batches appended as ``torch.save`` bytes and read back by position."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.gettempdir())
        self.file = tempfile.TemporaryFile(prefix="sae_lens_tokenized_init_sample_")
        self.end = 0

    def write(self, batch: Any) -> _OnDisk:
        buffer = io.BytesIO()
        torch.save(_compact(batch), buffer)
        data = memoryview(buffer.getbuffer())
        where = _OnDisk(self.end, len(data))
        while data:
            written = os.pwrite(self.file.fileno(), data, self.end)
            self.end += written
            data = data[written:]
        return where

    def read(self, where: _OnDisk) -> Any:
        chunks, got = [], 0
        while got < where.length:  # pread may return less than asked (one call: 2 GiB at most)
            chunk = os.pread(self.file.fileno(), where.length - got, where.offset + got)
            if not chunk:
                raise RuntimeError(f"the init sample's file ended {where.length - got} bytes early")
            chunks.append(chunk)
            got += len(chunk)
        return torch.load(io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks)), weights_only=True)

    def close(self) -> None:
        self.file.close()


def _compact(x: Any) -> Any:
    """``x`` with every tensor that views a larger storage copied out (``torch.save``
    writes a view's whole storage)."""
    if isinstance(x, torch.Tensor):
        return x if x.untyped_storage().nbytes() == x.numel() * x.element_size() else x.clone()
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_compact(v) for v in x)
    return x


def _flat_tensors(items: Any) -> Iterator[torch.Tensor]:
    for x in items:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, dict):
            yield from _flat_tensors(x.values())
        elif isinstance(x, (tuple, list)):
            yield from _flat_tensors(x)
