"""Data parallelism on ``torch.distributed``: the collectives a data-parallel run needs.

SAELens has no multi-process training (SAELens issue #491). Under ``torchrun`` each rank
runs its own LLM replica over its own part of the data and its own copy of the SAE; this
module keeps the copies identical (docs: "Data-parallel training"):

* ``GradientSync``: after each backward, before SAELens clips gradients, the dense
  parameters' gradients are averaged with one flat ``all_reduce``, and a sparse lookup's
  staged rows are combined exactly: every rank all-gathers the (row id, row gradient) pairs
  it staged, and every rank sums the union identically (sort + segment sum). This costs
  ``world * batch * d_in`` floats per step, not the ``d_vocab * d_in`` of a dense
  all-reduce, and the lazy Adam then applies the same update on every rank.
* ``DataParallel``: rank, world size and the collectives, each bounded by the process
  group's timeout and re-raised with the rank and the step that failed, so a dead rank
  ends the others with a clear error instead of a hang (sparsify issue #68).

Only ``torch`` and the lookup's row staging are imported here, so the lookup's statistics
can be reduced with it too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.autograd import Variable

from sae_lens_tokenized.lookup.sparse import distinct_slots

#: seconds a collective may wait for the other ranks (``SAE_LENS_TOKENIZED_DIST_TIMEOUT``)
DEFAULT_TIMEOUT_S = 300


class DataParallelError(RuntimeError):
    """A collective failed or the ranks disagree; names the rank and what to fix."""


def timeout_s() -> float:
    return float(os.environ.get("SAE_LENS_TOKENIZED_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device) -> DataParallel | None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1) if it is not
    joined yet: NCCL for CUDA devices, gloo otherwise. Returns the context, or None for a
    single process."""
    if not dist.is_available():
        if launched_with_torchrun():
            raise DataParallelError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        return None
    if launched_with_torchrun() and not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s()))
    return current()


def current() -> DataParallel | None:
    """The data-parallel context of this process: None unless a process group of more
    than one rank is initialised."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return DataParallel(dist.get_rank(), dist.get_world_size())


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_of_batch(self, global_batch: int) -> int:
        """This rank's part of ``train_batch_size_tokens``, which means the global batch."""
        if global_batch % self.world:
            raise DataParallelError(
                f"train_batch_size_tokens={global_batch} is the global batch and must divide evenly "
                f"across the {self.world} ranks; use a multiple of {self.world}."
            )
        return global_batch // self.world

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except DataParallelError:
            raise
        except Exception as e:  # gloo/NCCL raise RuntimeError or DistBackendError
            raise DataParallelError(
                f"rank {self.rank}/{self.world}: {what} failed ({type(e).__name__}: {e}). Another rank "
                f"most likely stopped (see its error above) or did not reach this point within "
                f"{timeout_s():.0f} s (SAE_LENS_TOKENIZED_DIST_TIMEOUT)."
            ) from e

    def all_reduce_(self, t: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """Sum ``t`` over the ranks, in place."""
        with self.collective(what):
            dist.all_reduce(t)
        return t

    def all_gather(self, t: torch.Tensor, what: str = "all_gather") -> torch.Tensor:
        """Equal-shaped tensors of every rank, concatenated along dim 0 in rank order."""
        out = [torch.empty_like(t) for _ in range(self.world)]
        with self.collective(what):
            dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    def all_gather_varlen(self, t: torch.Tensor, what: str = "all_gather") -> torch.Tensor:
        """Like ``all_gather`` for tensors whose first dimension differs between ranks."""
        n = self.all_gather(torch.tensor([t.shape[0]], device=t.device), what + " (sizes)")
        longest = int(n.max())
        padded = t.new_zeros(longest, *t.shape[1:])
        padded[: t.shape[0]] = t
        gathered = self.all_gather(padded, what).view(self.world, longest, *t.shape[1:])
        return torch.cat([gathered[r, : int(n[r])] for r in range(self.world)])

    def broadcast_(self, t: torch.Tensor, what: str = "broadcast") -> torch.Tensor:
        with self.collective(what):
            dist.broadcast(t, src=0)
        return t

    def gather_objects(self, obj: Any, what: str) -> list[Any]:
        out: list[Any] = [None] * self.world
        with self.collective(what):
            dist.all_gather_object(out, obj)
        return out

    def agree(self, what: str, facts: dict[str, Any]) -> None:
        """Raise on every rank, before any work, if the ranks' ``facts`` differ."""
        every = self.gather_objects(facts, f"comparing {what} across ranks")
        differ = sorted(k for k in facts if any(f.get(k) != facts.get(k) for f in every))
        missing = sorted({k for f in every for k in f} - set(facts))
        if differ or missing:
            detail = "; ".join(f"{k}: " + ", ".join(f"rank {r} {f.get(k)!r}" for r, f in enumerate(every))
                               for k in differ + missing)
            raise DataParallelError(
                f"the {self.world} ranks were started with different {what} ({detail}). Every rank must "
                "run the same config on the same model and tokenizer: launch them with one torchrun "
                "command and the same arguments."
            )


def union_rows(dp: DataParallel, rows: torch.Tensor, valid: torch.Tensor, grads: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact sum, over ranks, of sparse row gradients: each rank's staged ``rows`` [n]
    (``valid`` [n] marks the real ones) and ``grads`` [n, d] in, the union's ``(rows,
    valid, grads)`` out, [world * n] rows, identical on every rank. Averaged over ranks,
    as the dense gradients are."""
    pad = torch.iinfo(torch.long).max  # sorts after every row id
    keys = dp.all_gather(torch.where(valid, rows, pad), "sharing the lookup rows' ids")
    g = dp.all_gather(grads, "sharing the lookup rows' gradients")
    order, slot, out_rows = distinct_slots(keys)  # as one process stages its rows
    summed = torch.zeros_like(g).index_add_(0, slot, g[order]).div_(dp.world)
    out_valid = (out_rows != pad) & (torch.arange(len(out_rows), device=rows.device) <= slot[-1])
    return torch.where(out_valid, out_rows, 0), out_valid, summed


class GradientSync:
    """Averages an SAE's gradients across ranks at the end of every backward pass.

    SAELens's ``_train_step`` runs ``loss.backward()``, then ``clip_grad_norm_``, then the
    optimizer, with no hook between the first two. Each parameter gets a post-accumulate
    hook; the first to fire in a backward queues one callback on autograd's engine (as
    ``torch.nn.parallel.DistributedDataParallel`` does), which runs when the whole backward
    has finished and before ``backward()`` returns. So clipping and Adam see the averaged
    gradients on every rank, exactly as one process with the whole batch would.
    """

    def __init__(self, dp: DataParallel, sae: Any):
        self.dp, self.sae = dp, sae
        self._hooked: dict[int, Any] = {}
        self._queued = False
        self.steps_synced = 0

    def arm(self) -> None:
        """Before a step: hook every trainable parameter (again, if one was replaced)."""
        params = {id(p): p for p in self.sae.parameters() if p.requires_grad}
        if params.keys() != self._hooked.keys():
            for handle in self._hooked.values():
                handle.remove()
            self._hooked = {i: p.register_post_accumulate_grad_hook(self._on_grad) for i, p in params.items()}
        self._queued = False

    def _on_grad(self, _: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            Variable._execution_engine.queue_callback(self._sync)

    @torch.no_grad()
    def _sync(self) -> None:
        sae, dp = self.sae, self.dp
        rows_param = getattr(sae, "lookup_rows", None)
        dense = [p for p in sae.parameters() if p.requires_grad and p is not rows_param]
        # one flat buffer: a has-gradient flag per parameter, then every gradient
        flags = torch.tensor([p.grad is not None for p in dense], dtype=torch.float32)
        parts = [flags.to(sae.W_dec.device)] + [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in dense]
        flat = dp.all_reduce_(torch.cat(parts), what=f"averaging gradients (step {self.steps_synced})")
        has_grad, offset = flat[: len(dense)], len(dense)
        for i, p in enumerate(dense):
            n = p.numel()
            if has_grad[i] > 0:
                p.grad = flat[offset: offset + n].view_as(p).div_(dp.world).to(p.dtype)
            offset += n
        if rows_param is not None and rows_param.grad is not None:
            self._sync_lookup_rows(rows_param)
        self.steps_synced += 1

    def _sync_lookup_rows(self, rows_param: torch.Tensor) -> None:
        sae = self.sae
        ids, inverse, rows, valid = sae._lookup_stage
        u_rows, u_valid, u_grad = union_rows(self.dp, rows, valid, rows_param.grad)
        # The staged rows become the union's: what clipping and the lazy Adam read next
        rows_param.data = sae.W_lookup.detach().index_select(0, u_rows)
        rows_param.grad = u_grad.to(rows_param.dtype)
        sae._lookup_stage = (ids, inverse, u_rows, u_valid)
        sae._staged_version = rows_param._version
