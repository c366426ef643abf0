"""The tokenized trainer's optimizer: SAELens's Adam, plus lazy row-wise Adam for the lookup.

``TokenizedAdam`` is ``torch.optim.Adam`` over the SAE's parameter groups. A group marked
``lazy_rows=True`` holds a sparse lookup's ``lookup_rows`` (see ``saes/lookup.py``): the
step's distinct rows, staged from ``W_lookup`` by the forward. For that group each step

* takes the rows' gradient (already clipped by SAELens's ``clip_grad_norm_``, which saw it
  among ``sae.parameters()``),
* applies Adam to those rows only, with moments kept per token id and allocated the first
  time a row is touched, and
* writes the updated rows back into ``W_lookup``.

Semantics: lazy Adam, as ``torch.optim.SparseAdam`` and TF's LazyAdam: a row's moments
decay only on steps that touch it, the bias correction counts every step, and an
untouched row does not move (dense Adam keeps moving it on its momentum). From equal
states the first step equals dense Adam's exactly (moments start at zero).

Cost per step is O(rows in the batch * d_in) whatever d_vocab is. The moments grow with
the distinct tokens seen: 2 * touched * d_in floats plus an int64 slot per vocabulary row,
instead of 3 * d_vocab * d_in for dense Adam's gradient and moments. No step reads a
value back to the host, except to grow the moment storage, which happens O(log) times
(capacity doubles; a host-side upper bound on the rows in use decides when to check).

Everything lives in ``optimizer.state``, so SAELens's checkpoints save it and resuming
restores it (``state_dict``/``load_state_dict``, SAELens's own calls).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.optim import Adam


class TokenizedAdam(Adam):
    """``Adam`` whose ``lazy_rows`` groups update a sparse lookup's touched rows only.

    Args:
        params: parameter groups, as for ``Adam``; the lookup group of a sparse lookup is
            ``{"params": [sae.lookup_rows], "lazy_rows": True, ...}``.
        sae: the tokenized SAE owning ``lookup_rows`` and ``W_lookup``.
        **kwargs: Adam's (lr, betas, eps); weight decay, amsgrad and maximize are not
            supported on a lazy group.
    """

    def __init__(self, params: Any, *, sae: Any, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.sae = sae
        self._rows_in_use_bound: dict[int, int] = {}  # host-side upper bound, per parameter
        self._host_step: dict[int, int] = {}  # state["step"] mirrored on the host
        for group, _ in self._lazy_params():
            if group["weight_decay"] or group["amsgrad"] or group["maximize"]:
                raise ValueError("a lazy_rows group supports plain Adam only (no weight_decay/amsgrad/maximize)")
        self.register_load_state_dict_post_hook(TokenizedAdam._after_load)

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
        if not state:
            # slot 0 is scratch: padding positions read and write it, and it is never used
            state["step"] = torch.tensor(0.0)
            state["slot_of"] = torch.full((vocab + 1,), -1, dtype=torch.long, device=W.device)
            state["slot_of"][vocab] = 0  # padding positions are keyed to the extra id `vocab`
            state["rows_in_use"] = torch.ones((), dtype=torch.long, device=W.device)
            state["exp_avg"] = torch.zeros(1, W.shape[1], dtype=W.dtype, device=W.device)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
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
        # Adam's formula, in Adam's order (torch.optim.adam._single_tensor_adam)
        exp_avg = state["exp_avg"][slot].lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"][slot].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"][slot] = exp_avg
        state["exp_avg_sq"][slot] = exp_avg_sq
        step_size = group["lr"] / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        # Padding positions (rows 0, scratch slot 0) add exactly zero: no position reads their
        # staged row, so their gradient is 0 and the scratch moments stay 0 forever.
        W.index_add_(0, rows, (exp_avg / denom * -step_size).to(W.dtype))

    def _ensure_capacity(self, p: torch.Tensor, state: dict[str, Any], n: int, vocab: int) -> None:
        capacity = state["exp_avg"].shape[0]
        if capacity >= vocab + 1:
            return
        bound = self._rows_in_use_bound.get(id(p))
        if bound is None or bound + n > capacity:
            bound = int(state["rows_in_use"])  # the one host read, O(log) times per run
            if bound + n > capacity:
                new_capacity = min(vocab + 1, max(2 * capacity, bound + 4 * n))
                for key in ("exp_avg", "exp_avg_sq"):
                    old = state[key]
                    grown = old.new_zeros(new_capacity, old.shape[1])
                    grown[:capacity] = old
                    state[key] = grown
        self._rows_in_use_bound[id(p)] = bound + n

    def _after_load(self) -> None:
        # Optimizer.load_state_dict casts every state tensor to the parameter's dtype;
        # the slot table and counters are integers (exact in float32 below 2**24 rows).
        for _, p in self._lazy_params():
            state = self.state.get(p)
            if state:
                state["slot_of"] = state["slot_of"].long()
                state["rows_in_use"] = state["rows_in_use"].long()
        self._rows_in_use_bound.clear()
        self._host_step.clear()

    def lookup_memory_bytes(self) -> int:
        """Bytes of the lookup's optimizer state, sparse (moments of the rows touched, slot
        table) or dense (Adam's moments of the whole table)."""
        lookup = [p for p in (self.sae.W_lookup, self.sae.lookup_rows) if p is not None]
        return sum(t.numel() * t.element_size() for p in lookup for t in self.state.get(p, {}).values()
                   if isinstance(t, torch.Tensor))
