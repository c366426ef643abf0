"""Sparse lookup updates, the whole protocol: a step costs what its tokens cost.

With lazy lookup updates (``lookup_updates="sparse_rowwise"``, the default, or
``"sparse"``) a training step never touches the
``[d_vocab, d_in]`` table through autograd:

1. **Stage** (``stage_for_step``, called by the trainer before SAELens's forward): the
   step's distinct rows are copied from ``W_lookup`` into ``lookup_rows`` ``[n, d_in]``
   (n = the number of ids; slots past the distinct count are padding no position reads).
   Every shape is fixed by the batch (sort + cumsum, no ``unique()``): no host sync.
2. **Read**: the training forward reads ``lookup_rows``, so the gradient is
   ``lookup_rows.grad``: exactly the nonzero rows of the dense gradient. SAELens's
   ``clip_grad_norm_`` (over ``sae.parameters()``, which yields ``lookup_rows``) sees the
   same norm as with a dense lookup.
3. **Update** (``TokenizedAdam``): Adam on those rows only, moments kept per token id and
   allocated the first time a row is touched, written back into ``W_lookup``.

Semantics: lazy Adam, as ``torch.optim.SparseAdam`` and TF's LazyAdam: a row's moments
decay only on steps that touch it, the bias correction counts every step, and an
untouched row does not move (dense Adam keeps moving it on its momentum). With
``"sparse"`` the first step from equal states equals dense Adam's exactly (moments start
at zero); with ``"sparse_rowwise"`` it is ``-lr * g / rms(g)`` per row, at the same RMS size.

Memory: the moments grow with the distinct tokens seen, 2 * touched * d_in floats plus an
int64 slot per vocabulary row, instead of 3 * d_vocab * d_in for dense Adam's gradient
and moments. ``lookup_updates="sparse_rowwise"`` (the default) keeps one second moment per
row (the mean of the row's squared gradient) instead of one per element, as FBGEMM's
partial row-wise Adam does for embedding tables: touched * (d_in + 1) floats, so a run that
touches every row holds about one table of moments instead of two (docs "Results", "One
second moment per row").

Where the moments live: on the CPU, storage for every row is reserved once, uncommitted
(``new_empty``: the kernel backs a page only when it is first written), and a row's slot is
written the first time its token is seen, so resident memory follows the rows touched with no
copy and no host read. Growing by copying (below) holds up to half as many rows again as are
in use, and the old and the new storage at once while it copies (docs "Results", "Where the
moments live"). Elsewhere (a GPU allocator commits what it reserves) the storage grows
1.5x as rows are touched, and no step reads a value back to the host except to grow, O(log)
times (a host-side upper bound on the rows in use decides when to check). A new row's moments
are zeroed where they are read, so neither path initialises storage. Everything lives in
``optimizer.state``, so SAELens's checkpoints save it (the rows in use only) and resuming
restores it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.optim import Adam


#: the per-row moment tensors of a lazy group's state (the rest: slot table, counters)
MOMENTS = ("exp_avg", "exp_avg_sq")


def distinct_slots(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct values of ``keys`` [n] with every shape fixed by ``n`` (sort + cumsum,
    no ``unique()``, so no host sync): ``(order, slot, rows)``, where sorted position ``i``
    (``keys[order[i]]``) is distinct value ``slot[i]``, and ``rows[:slot[-1] + 1]`` are the
    distinct values ascending (the rest is padding, 0)."""
    sorted_keys, order = torch.sort(keys, stable=True)
    starts = torch.ones_like(sorted_keys, dtype=torch.bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    slot = torch.cumsum(starts, 0) - 1
    return order, slot, torch.zeros_like(sorted_keys).scatter_(0, slot, sorted_keys)


class SparseRows:
    """The staging part of ``TokenLookupMixin`` (which owns ``W_lookup``)."""

    W_lookup: nn.Parameter
    cfg: Any

    def _init_sparse_rows(self, sparse: bool, trainable: bool) -> None:
        # The step's rows, staged. Not registered, so it is never saved; named_parameters()
        # yields it so SAELens's gradient clipping sees it.
        self.lookup_rows: nn.Parameter | None = None
        if sparse:
            object.__setattr__(self, "lookup_rows", nn.Parameter(
                self.W_lookup.detach().new_zeros(0, self.cfg.lookup_width), requires_grad=trainable))
        self._lookup_stage: tuple[torch.Tensor, ...] | None = None
        self._staged_version: int | None = None

    def _staged_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        stage = self._lookup_stage
        if stage is None or stage[0] is not ids:  # once per batch (Matryoshka reads it per level)
            stage = self.stage_lookup_rows(ids)
        return nn.functional.embedding(stage[1], self.lookup_rows)

    @torch.no_grad()
    def stage_lookup_rows(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage the distinct rows of ``ids`` for the next training forward (the trainer
        calls this before each step; a forward with other ids stages its own)."""
        assert self.lookup_rows is not None
        if self._staged_version is not None and self.lookup_rows._version != self._staged_version:
            # Something other than TokenizedAdam stepped the staged rows in place (e.g. a
            # plain torch.optim.Adam over sae.parameters()); its updates never reach W_lookup.
            raise RuntimeError(
                "the sparse lookup's staged rows were modified by an optimizer other than "
                "sae_lens_tokenized.training.TokenizedAdam, so W_lookup would silently never "
                "train. Train through TokenizedSAETrainingRunner / TokenizedSAETrainer, or set "
                "lookup_updates='dense' to use another optimizer."
            )
        flat = ids.reshape(-1).to(self.W_lookup.device)
        n = flat.numel()
        order, slot, rows = distinct_slots(flat)
        inverse = torch.empty_like(slot)
        inverse[order] = slot
        valid = torch.arange(n, device=flat.device) <= (slot[-1] if n else -1)
        if self.lookup_rows.shape[0] != n:  # the batch size changed (or the first batch)
            self.lookup_rows.data = self.W_lookup.new_empty(n, self.W_lookup.shape[1])
        torch.index_select(self.W_lookup.detach(), 0, rows, out=self.lookup_rows.data)
        self._staged_version = self.lookup_rows._version
        self.lookup_rows.grad = None
        stage = (ids, inverse.view(ids.shape), rows, valid)
        self._lookup_stage = stage
        return stage

    def take_lookup_stage(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The staged rows' token ids and validity mask, for the optimizer (once per step)."""
        if self._lookup_stage is None:
            raise RuntimeError(
                "lookup_rows has a gradient but no staged rows: a sparse lookup must be "
                "stepped once after each training forward (use TokenizedAdam)."
            )
        _, _, rows, valid = self._lookup_stage
        self._lookup_stage = None
        return rows, valid

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .to()/.cuda()/.half() move registered parameters; the staged rows follow W_lookup
        # (their content is per-step scratch). SAELens loads on the meta device first.
        out = super()._apply(fn, recurse)  # type: ignore[misc]
        rows = self.lookup_rows
        if rows is not None:
            fresh = self.W_lookup.detach().new_empty(0, self.W_lookup.shape[1])
            if rows.is_meta:
                object.__setattr__(self, "lookup_rows", nn.Parameter(fresh, requires_grad=rows.requires_grad))
            else:
                rows.data = fresh
            self._lookup_stage = None
            self._staged_version = None
        return out

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):  # type: ignore[override]
        yield from super().named_parameters(prefix, recurse, remove_duplicate)  # type: ignore[misc]
        if self.lookup_rows is not None:
            yield (prefix + "." if prefix else "") + "lookup_rows", self.lookup_rows



def stage_for_step(sae: Any, ids: torch.Tensor, prev: torch.Tensor | None) -> None:
    """Step 1, before SAELens's (possibly compiled) ``training_forward_pass``: stage the
    rows this batch reads (its tokens', or its pairs' for a bigram lookup)."""
    if sae.lookup_rows is not None and sae.lookup_rows.requires_grad:
        sae.stage_lookup_rows(sae.lookup_row_index(ids, prev))


class TokenizedAdam(Adam):
    """``Adam`` whose ``lazy_rows`` groups update a sparse lookup's touched rows only.

    Args:
        params: parameter groups, as for ``Adam``; the lookup group of a sparse lookup is
            ``{"params": [sae.lookup_rows], "lazy_rows": True, ...}``.
            ``"rowwise": True`` keeps one second moment per row (``lookup_updates="sparse_rowwise"``).
        sae: the tokenized SAE owning ``lookup_rows`` and ``W_lookup``.
        **kwargs: Adam's (lr, betas, eps); weight decay, amsgrad and maximize are not
            supported on a lazy group.
    """

    # devices whose allocator commits memory only where it is written: the moments of every
    # row are reserved there at once (module docstring)
    reserve_devices: tuple[str, ...] = ("cpu",)

    def __init__(self, params: Any, *, sae: Any, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.sae = sae
        self._rows_in_use_bound: dict[int, int] = {}  # host-side upper bound, per parameter
        self._host_step: dict[int, int] = {}  # state["step"] mirrored on the host
        for group, _ in self._lazy_params():
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("a lazy_rows group supports plain Adam only (no weight_decay/amsgrad/maximize)")
        # what this run asked for; a checkpoint's param_groups would overwrite it on load
        self._rowwise = [group.get("rowwise") for group in self.param_groups]
        self.register_load_state_dict_post_hook(TokenizedAdam._after_load)
        self.register_state_dict_post_hook(TokenizedAdam._rows_in_use_only)

    def _lazy_params(self) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
        for group in self.param_groups:
            if group.get("lazy_rows"):
                for p in group["params"]:
                    yield group, p

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if closure is not None:
            raise ValueError("TokenizedAdam does not take a closure")
        pending = []
        for group, p in self._lazy_params():
            if p.grad is not None:
                pending.append((p, p.grad, group))
                p.grad = None  # hidden from Adam's own step, restored below
        super().step()
        for p, grad, group in pending:
            self._lazy_rows_step(p, grad, group)
            p.grad = grad
        return None

    def _lazy_rows_step(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        W = self.sae.W_lookup
        rows, valid = self.sae.take_lookup_stage()
        vocab, n = W.shape[0], rows.numel()
        state = self.state[p]
        rowwise = bool(group.get("rowwise"))
        if not state:
            # slot 0 is scratch: padding positions read and write it, and it is never used
            state["step"] = torch.tensor(0.0)
            state["slot_of"] = torch.full((vocab + 1,), -1, dtype=torch.long, device=W.device)
            state["slot_of"][vocab] = 0  # padding positions are keyed to the extra id `vocab`
            state["rows_in_use"] = torch.ones((), dtype=torch.long, device=W.device)
            capacity = vocab + 1 if W.device.type in self.reserve_devices else 1
            state["exp_avg"] = W.new_empty(capacity, W.shape[1])
            # row-wise: one second moment per row, the mean of its squared gradient
            state["exp_avg_sq"] = W.new_empty(capacity, 1 if rowwise else W.shape[1])
            state["exp_avg"][0] = state["exp_avg_sq"][0] = 0
            self._rows_in_use_bound[id(p)] = 1
        self._ensure_capacity(p, state, n, vocab)

        key = torch.where(valid, rows, vocab)
        slot = state["slot_of"][key]
        new = slot < 0
        slot = torch.where(new, state["rows_in_use"] + torch.cumsum(new, 0) - 1, slot)
        state["slot_of"][key] = slot
        state["rows_in_use"] += new.sum()

        state["step"] += 1
        step = self._host_step[id(p)] + 1 if id(p) in self._host_step else int(state["step"].item())
        self._host_step[id(p)] = step
        beta1, beta2 = group["betas"]
        # Adam's formula, in Adam's order (torch.optim.adam._single_tensor_adam); a new row's
        # slot was never written, so its moments start at zero here
        fresh = new.unsqueeze(1)
        exp_avg = state["exp_avg"][slot].masked_fill_(fresh, 0).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][slot].masked_fill_(fresh, 0).mul_(beta2)
        if rowwise:
            exp_avg_sq.add_(grad.square().mean(1, keepdim=True), alpha=1 - beta2)
        else:
            exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"][slot] = exp_avg
        state["exp_avg_sq"][slot] = exp_avg_sq
        step_size = group["lr"] / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        # Padding positions (rows 0, scratch slot 0) add exactly zero: no position reads their
        # staged row, so their gradient is 0 and the scratch moments stay 0 forever. The
        # gathered first moments are stored above, so the update is made in their place
        # (the same operations in the same order: no two more batch-sized temporaries).
        W.index_add_(0, rows, exp_avg.div_(denom).mul_(-step_size).to(W.dtype))

    def _ensure_capacity(self, p: torch.Tensor, state: dict[str, Any], n: int, vocab: int) -> None:
        capacity = state["exp_avg"].shape[0]
        if capacity >= vocab + 1:
            return
        bound = self._rows_in_use_bound.get(id(p))
        if bound is None or bound + n > capacity:
            bound = int(state["rows_in_use"])  # the one host read, O(log) times per run
            if bound + n > capacity:
                # 1.5x, not 2x: the moments are most of what a sparse lookup adds beyond its
                # table, and a run touches rows ever more slowly, so doubling would mostly
                # reserve rows that are never used (growth stays O(log) copies).
                new_capacity = min(vocab + 1, max(capacity + capacity // 2, bound + 2 * n))
                for key in MOMENTS:
                    state[key] = self._resized(state[key], new_capacity, capacity)
        self._rows_in_use_bound[id(p)] = bound + n

    @staticmethod
    def _resized(moments: torch.Tensor, rows: int, keep: int) -> torch.Tensor:
        out = moments.new_empty(rows, moments.shape[1])  # rows past `keep`: zeroed where read
        out[:keep] = moments[:keep]
        return out

    def _rows_in_use_only(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        # A checkpoint holds the moments of the rows in use, not the reserved storage past them
        # (uninitialised). A new dict: Optimizer.state_dict() shares the live state's dicts.
        for index, st in state_dict["state"].items():
            if "slot_of" in st:
                n = int(st["rows_in_use"])
                state_dict["state"][index] = {**st, **{key: st[key][:n].clone() for key in MOMENTS}}
        return state_dict

    def _after_load(self) -> None:
        # Optimizer.load_state_dict casts every state tensor to the parameter's dtype;
        # the slot table and counters are integers (exact in float32 below 2**24 rows).
        # The loaded groups carry the checkpoint's "rowwise"; the run's config decides, and
        # state of the other kind is refused here, the one place it can come from.
        for group, rowwise in zip(self.param_groups, self._rowwise):
            if rowwise is not None:  # the groups that had the flag (the lookup's), as they had it
                group["rowwise"] = rowwise
        for group, p in self._lazy_params():
            state = self.state.get(p)
            if state:
                rowwise = bool(group.get("rowwise"))
                if state["exp_avg_sq"].shape[1] != (1 if rowwise else self.sae.W_lookup.shape[1]):
                    raise ValueError(
                        f"the lookup's optimizer state holds one second moment per {'element' if rowwise else 'row'} "
                        f"but its config asks for lookup_updates={'sparse_rowwise' if rowwise else 'sparse'}: resume "
                        "with the lookup_updates the checkpoint was trained with"
                    )
                state["slot_of"] = state["slot_of"].long()
                state["rows_in_use"] = state["rows_in_use"].long()
                if p.device.type in self.reserve_devices:  # reserve every row again, as a fresh run does
                    n = int(state["rows_in_use"])
                    for key in MOMENTS:
                        state[key] = self._resized(state[key], self.sae.W_lookup.shape[0] + 1, n)
        self._rows_in_use_bound.clear()
        self._host_step.clear()

    def lookup_memory_bytes(self) -> int:
        """Bytes the lookup's optimizer state holds: sparse, the moments of the rows in use
        (of the storage reserved on the CPU, only they are committed; on other devices, the
        grown capacity) and the slot table; dense, Adam's moments of the whole table."""
        total = 0
        for p in (self.sae.W_lookup, self.sae.lookup_rows):
            state = self.state.get(p, {}) if p is not None else {}
            for key, t in state.items():
                if not isinstance(t, torch.Tensor):
                    continue
                rows = t.shape[0] if t.ndim else 1
                if key in MOMENTS and "slot_of" in state and t.device.type in self.reserve_devices:
                    rows = int(state["rows_in_use"])
                total += rows * (t[0].numel() if t.ndim else 1) * t.element_size()
        return total
