"""Supply token ids to tokenized SAEs from the model's own input.

SAELens splices an SAE into a model as a hook that calls ``sae.decode(sae.encode(x))``
(``run_evals``, ``HookedSAETransformer.run_with_saes``): the SAE never sees the tokens.
``token_ids_from(model, *saes)`` captures the tokens of every forward pass of ``model``
(a pre-hook on its embedding) and lets the SAEs read them::

    with token_ids_from(model, sae):
        logits = model.run_with_saes(tokens, saes=[sae])
        metrics, _ = run_evals(sae, store, model, ActivationScaler())
        text = model.generate("The capital of France is", max_new_tokens=5)  # with sae spliced

Which ids an SAE call gets (never those of another input, silently):

1. Activations the model produced (every TransformerLens hook point's output, the
   modules the SAEs' ``hook_name`` names, and what ``run_with_cache`` returns of them)
   get the ids of the forward that produced them, even after later forwards; latents
   ``sae.encode`` made from them keep those ids for ``sae.decode``.
2. Any other tensor (one the caller computed) gets the ids of the latest forward, which
   must match its shape; a forward that skips the embedding (``start_at_layer``) leaves
   none, and the SAE raises. So to decode computed activations of an *earlier* input,
   pass ``token_ids=``.
3. A forward that continues a sequence from a KV cache (``generate``; Hugging Face
   ``past_key_values`` / ``cache``; TransformerLens ``past_kv_cache``) runs only the new positions:
   they get their own ids, and a bigram lookup their true previous tokens.

Tools that build their own model (SAEBench, ``python -m sae_lens.evals``) never hand it
over; ``token_ids_from_any_model(sae)`` captures the ids of whichever model runs while it
is active (TransformerLens, TransformerBridge, Hugging Face, SAELens's HookedProxyLM), with
the same rules; any other module run at top level clears the latest ids (rule 2).

``error_term_mode(sae)`` is for formulas that decode without a forward pass and add the
error term, ``decode(f') + x - decode(f)`` (SAEBench's SCR/TPP and unlearning, SAELens's
``use_error_term``): the lookup cancels there exactly, so inside the block decode leaves
it out and needs no ids. Anywhere else it would change reconstructions, so it is never
implied: only this explicit block turns it on.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from transformer_lens.hook_points import HookPoint

from sae_lens_tokenized._compat import generation_events
from sae_lens_tokenized.models import _hf_model, embedding_module
from sae_lens_tokenized.lookup.ids import CapturedIds
from sae_lens_tokenized.lookup.mixin import TokenLookupMixin


class _ForwardStarts:
    """When does a new forward of a model start? Its ids must be cleared then.

    A call ``model(...)`` starts one. But TransformerLens's ``run_with_hooks`` calls
    ``model.forward(...)`` directly, which no module hook sees; then the model's top-level
    submodules run one after another without the model around them. They run in the
    order they were registered (embed, pos_embed, blocks, ln_final, unembed), so a
    submodule at or before the last one seen means the model started over: a new forward.
    """

    def __init__(self, model: nn.Module):
        self.order = {id(m): i for i, m in enumerate(self.units(model))}
        self.last = -1

    @staticmethod
    def units(model: nn.Module) -> list[nn.Module]:
        """What ``model.forward`` calls itself: its children, and the items of container
        children (``blocks``). Their own submodules run inside them, in no fixed order."""
        out: list[nn.Module] = []
        for child in model.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
                out.extend(child.children())
            else:
                out.append(child)
        return out

    def after_full_forward(self) -> None:
        """After ``model(...)`` ran every submodule: any submodule run next starts anew."""
        self.last = len(self.order)

    def restarted(self, submodule: nn.Module) -> bool:
        i = self.order.get(id(submodule))
        if i is None:
            return False
        restarted, self.last = i <= self.last, i
        return restarted


def _cached_positions(cache: Any) -> int:
    """Positions a KV cache already holds (0 when empty or unknown)."""
    if cache is None:
        return 0
    length = getattr(cache, "get_seq_length", None)  # Hugging Face Cache objects
    if callable(length):
        return int(length())
    keys = getattr(cache, "past_keys", None)  # one TransformerLens cache entry
    if isinstance(keys, torch.Tensor):
        return int(keys.shape[1])
    try:  # a TransformerLens cache (entries by layer) or a legacy tuple of (key, value)
        first = cache[0]
    except (TypeError, IndexError, KeyError):
        return 0
    if isinstance(first, (tuple, list)) and first and isinstance(first[0], torch.Tensor):
        return int(first[0].shape[-2])
    return _cached_positions(first) if first is not cache else 0


def continues_a_sequence(kwargs: dict[str, Any]) -> bool:
    """Does a forward called with these keyword arguments run only the new positions of a
    sequence whose earlier positions sit in a KV cache?"""
    # Hugging Face: past_key_values (transformers 4), cache (5); TransformerLens: past_kv_cache
    # (a model call), past_kv_cache_entry (a block's)
    for name in ("past_key_values", "cache", "past_kv_cache", "past_kv_cache_entry"):
        if _cached_positions(kwargs.get(name)) > 0:
            return True
    position = kwargs.get("cache_position")
    return isinstance(position, torch.Tensor) and position.numel() > 0 and int(position.reshape(-1)[0]) > 0


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        yield from (t for t in output if isinstance(t, torch.Tensor))


def _storage(tensor: torch.Tensor) -> Any | None:
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or meta tensors have none
        return None


def _forget(entries: dict[int, Any], key: int, ref: Any) -> None:
    if entries.get(key, (None,))[0] is ref:
        del entries[key]


class _Capture:
    """The ids a capture holds: the latest forward's, and which forward produced each
    activation still in memory (by storage, held weakly). The SAEs read them through
    ``ids_of`` / ``remember`` (``TokenIdSource``); ``_ModelTracker`` feeds them."""

    def __init__(self) -> None:
        self._current: CapturedIds | None = None
        self._previous: CapturedIds | None = None
        self._continuing = False
        self._generating = 0
        self._provenance: dict[int, tuple[Any, CapturedIds]] = {}
        self._handles: list[Any] = []
        self._model_name: str | None = None

    # ---- what a model's forwards tell the capture
    def _new_forward(self, model_name: str, continuing: bool) -> None:
        self._model_name = model_name
        if self._generating:  # generate's forwards extend the sequence its embeds build
            return
        if not continuing:
            self._previous, self._current = self._current, None
        self._continuing = continuing

    def _late_continuation(self) -> None:
        """A block's KV cache entry showed this forward continues the previous sequence."""
        cur, prev = self._current, self._previous
        if (self._generating or cur is None or prev is None or cur.own != cur.seq.shape[-1]
                or prev.seq.shape[:-1] != cur.seq.shape[:-1]):
            return
        self._current = CapturedIds(torch.cat([prev.seq, cur.seq.to(prev.seq.device)], -1), cur.own)

    def _take_tokens(self, args: Any) -> None:
        tokens = args[0] if args else None
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.ndim == 0:
            return  # only integer tensors are ids; embeddings of floats are not
        cur = self._current
        if self._continuing and cur is not None and cur.seq.shape[:-1] == tokens.shape[:-1]:
            self._current = CapturedIds(torch.cat([cur.seq, tokens.to(cur.seq.device)], -1), tokens.shape[-1])
        else:
            self._current = CapturedIds(tokens, tokens.shape[-1])

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._current is not None:
            for tensor in _tensors(output):
                self.remember(tensor, self._current)

    def _on_generate(self, model: nn.Module, started: bool) -> None:
        if started:
            self._generating += 1
            self._previous, self._current, self._continuing = None, None, True
            self._model_name = type(model).__name__
        else:
            self._generating -= 1
            self._continuing = bool(self._generating)

    # ---- TokenIdSource (what the SAEs call)
    def ids_of(self, tensor: torch.Tensor | None) -> CapturedIds | None:
        if tensor is not None:
            storage = _storage(tensor)
            entry = self._provenance.get(id(storage)) if storage is not None else None
            if entry is not None and entry[0]() is storage:
                return entry[1]
        return self._current

    def remember(self, tensor: torch.Tensor, ids: CapturedIds) -> None:
        storage = _storage(tensor)
        if storage is None:
            return
        key = id(storage)
        entry = self._provenance.get(key)
        if entry is not None and entry[0]() is storage:
            return  # the forward that produced it keeps it (a later one may only pass it through)
        ref = weakref.ref(storage, functools.partial(_forget, self._provenance, key))
        self._provenance[key] = (ref, ids)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._current = self._previous = None
        self._provenance.clear()


class _ModelTracker:
    """Hooks on one model that tell a ``_Capture`` where its forwards start, whether they
    continue a cached sequence, which ids they embed and which activations they produce."""

    def __init__(self, capture: _Capture, model: nn.Module, hook_names: set[str]):
        self.capture = capture
        self.name = type(model).__name__
        self.starts = _ForwardStarts(model)
        self.in_call = False
        self.units = {id(u) for u in _ForwardStarts.units(model)}
        embed = embedding_module(model)
        recorded = {id(m): m for m in model.modules() if isinstance(m, HookPoint)}
        for owner in {id(model): model, id(_hf_model(model)): _hf_model(model)}.values():
            for name in hook_names:  # the SAEs' own hook points on a Hugging Face model
                with contextlib.suppress(AttributeError, TypeError):
                    module = owner.get_submodule(name)
                    recorded[id(module)] = module
        capture._handles += [
            model.register_forward_pre_hook(self._on_call, with_kwargs=True),
            model.register_forward_hook(self._on_call_end, always_call=True),
            *(unit.register_forward_pre_hook(self._on_unit, with_kwargs=True)
              for unit in _ForwardStarts.units(model)),
            embed.register_forward_pre_hook(lambda module, args: capture._take_tokens(args)),
            *(module.register_forward_hook(capture._record) for module in recorded.values()),
        ]

    def _on_call(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self.in_call = True
        self.capture._new_forward(self.name, continues_a_sequence(kwargs))

    def _on_call_end(self, module: nn.Module, args: Any, output: Any) -> None:
        self.in_call = False
        self.starts.after_full_forward()

    def _on_unit(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        continuing = continues_a_sequence(kwargs)
        if not self.in_call and self.starts.restarted(module):
            # a unit run outside model(...): model.forward(...) was called directly
            self.capture._new_forward(self.name, continuing)
        elif continuing:
            self.capture._late_continuation()


def _hook_names(saes: tuple[Any, ...]) -> set[str]:
    return {name for sae in saes if (name := getattr(getattr(sae.cfg, "metadata", None), "hook_name", None))}


class ModelTokenCapture(_Capture):
    """Holds the tokens of ``model``'s forward passes (see module docstring)."""

    def __init__(self, model: nn.Module, saes: tuple[Any, ...] = ()):
        super().__init__()
        self._model = model
        self._model_name = type(model).__name__
        _ModelTracker(self, model, _hook_names(saes))

    def _on_generate(self, model: nn.Module, started: bool) -> None:
        if model is self._model:
            super()._on_generate(model, started)

    def describe(self) -> str:
        return f"token_ids_from({type(self._model).__name__})"


class AnyModelTokenCapture(_Capture):
    """Holds the tokens of whichever model runs (module docstring).

    Two process-wide module hooks (torch's ``register_module_forward_pre_hook`` and
    ``register_module_forward_hook(always_call=True)``) track the depth of nested forwards.
    A module run at depth 0 that has a token embedding (``.embed`` or
    ``get_input_embeddings()``) is a model: from then on a ``_ModelTracker`` watches it,
    as ``token_ids_from`` would (a ``generate`` call introduces its model the same way).
    Any other module run at top level (a probe, a model without an embedding) clears the
    latest ids, so a computed tensor then gets none rather than stale ones. The SAEs' own
    modules are not counted, so ``sae.encode``/``sae.decode`` after ``run_with_cache``
    keep the ids of the forward that produced the activations.
    """

    def __init__(self, saes: tuple[Any, ...]):
        super().__init__()
        self._sae_modules = {id(m) for sae in saes for m in sae.modules()}
        self._names = _hook_names(saes)
        self._depth = 0
        self._trackers: weakref.WeakKeyDictionary[nn.Module, _ModelTracker | None] = weakref.WeakKeyDictionary()
        self._units: set[int] = set()
        self._handles = [
            register_module_forward_pre_hook(self._on_forward_start),
            register_module_forward_hook(self._on_forward_end, always_call=True),
        ]

    def _tracker(self, module: nn.Module) -> _ModelTracker | None:
        """The tracker of ``module`` if it is a model (has a token embedding), else None."""
        if module not in self._trackers:
            try:
                tracker: _ModelTracker | None = _ModelTracker(self, module, self._names)
            except TypeError:
                tracker = None
            else:
                self._units |= tracker.units
            self._trackers[module] = tracker
        return self._trackers[module]

    def _on_forward_start(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._sae_modules:
            return
        if self._depth == 0 and id(module) not in self._units:
            known = module in self._trackers
            tracker = self._tracker(module)
            if tracker is None:  # not a model: whatever it computes, the ids are not its
                self._previous, self._current, self._model_name = None, None, type(module).__name__
            elif not known:  # first sight: its own hooks start with its next call
                self._new_forward(tracker.name, continuing=False)
                tracker.in_call = True
        self._depth += 1

    def _on_forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in self._sae_modules:
            return
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            tracker = self._trackers.get(module)
            if tracker is not None and tracker.in_call:  # first sight: close its call as its hook would
                tracker.in_call = False
                tracker.starts.after_full_forward()

    def _on_generate(self, model: nn.Module, started: bool) -> None:
        if started:
            self._tracker(model)
        super()._on_generate(model, started)

    def describe(self) -> str:
        model = f" (last model: {self._model_name})" if self._model_name else ""
        return f"token_ids_from_any_model(){model}"


def _check_tokenized(saes: tuple[Any, ...], what: str) -> None:
    if not saes:
        raise ValueError(f"{what} needs at least one tokenized SAE")
    for sae in saes:
        if not isinstance(sae, TokenLookupMixin):
            raise TypeError(
                f"{type(sae).__name__} is not a tokenized SAE; only tokenized SAEs take token ids"
            )


@contextlib.contextmanager
def _attached(capture: _Capture, saes: tuple[Any, ...]) -> Iterator[Any]:
    """The SAEs read their ids from ``capture`` until the block ends; then it unhooks."""
    for sae in saes:
        sae.attach_token_id_source(capture)
    try:
        with generation_events(capture._on_generate):
            yield capture
    finally:
        for sae in saes:
            sae.detach_token_id_source(capture)
        capture.close()


@contextlib.contextmanager
def token_ids_from_any_model(*saes: Any) -> Iterator[AnyModelTokenCapture]:
    """Within the block, the SAEs take their ids from whichever model last ran a forward.

    For tools that build their own model (SAEBench, ``python -m sae_lens.evals``)::

        with token_ids_from_any_model(sae):
            run_the_tool(sae)

    Prefer ``token_ids_from(model, sae)`` when you hold the model."""
    _check_tokenized(saes, "token_ids_from_any_model(*saes)")
    with _attached(AnyModelTokenCapture(saes), saes) as capture:
        yield capture


@contextlib.contextmanager
def error_term_mode(*saes: Any) -> Iterator[None]:
    """Within the block, ``decode`` leaves the lookup out (and needs no token ids).

    Only for callers that add the error term, ``decode(f_edited) + (x - decode(f))``:
    the lookup is added to both decodes and cancels exactly, so the result equals the
    one with ids (to float rounding). SAEBench's SCR/TPP ablate features this way on
    cached activations, where no forward pass could supply ids. ``encode`` is unchanged
    (Matching Pursuit's encoder reads the lookup and still needs ids)."""
    _check_tokenized(saes, "error_term_mode(*saes)")
    for sae in saes:
        sae._lookup_cancelled += 1
    try:
        yield
    finally:
        for sae in saes:
            sae._lookup_cancelled -= 1


@contextlib.contextmanager
def token_ids_from(model: nn.Module, *saes: Any) -> Iterator[ModelTokenCapture]:
    """Within the block, the given tokenized SAEs take their ids from ``model``'s input."""
    _check_tokenized(saes, "token_ids_from(model, *saes)")
    with _attached(ModelTokenCapture(model, saes), saes) as capture:
        yield capture
