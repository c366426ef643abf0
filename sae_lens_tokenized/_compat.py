"""Every place this plugin relies on a detail of SAELens that is not public API.

Written against sae-lens 6.54.12 and tested on 6.53.0 (the supported range is declared in
pyproject.toml). ``tests/test_compat.py`` checks the *behaviour* each entry relies on by
running SAELens's real code path, so an SAELens release that changes one fails there
instead of silently changing what a tokenized SAE does. docs/upstream-seams.md proposes
the public seams that would retire these entries.

1. ``LanguageModelSAETrainingRunner.__init__`` calls ``self._compile_llm_if_needed()``
   right after ``self.model`` is set and before it builds the store and the SAE. The
   tokenized runner checks its config against the model and fills ``d_vocab`` there.
2. ``SAETrainer.__init__`` builds ``self.optimizer = Adam(sae.parameters(), lr)`` and
   ``self.lr_scheduler`` (via ``sae_lens.training.optim.get_lr_scheduler``); the tokenized
   trainer rebuilds both (``TokenizedAdam``, an ``Adam`` subclass) to give the lookup its
   own parameter group.
3. Gated's auxiliary loss reconstructs ``relu(pi_gate) W_dec + b_dec`` outside ``decode``;
   ``TokenizedGatedTrainingSAE.calculate_aux_loss`` writes SAELens's two aux terms (its
   L1 on the gate path, and that reconstruction with the lookup added) in one pass.
4. Every SAELens reconstruction (each ``decode``, Matryoshka's ``_iterable_decode``) ends
   in ``self.run_time_activation_norm_fn_out(...)``, an instance attribute set in
   ``SAE.__init__``; ``TokenLookupMixin`` wraps it to add ``W_lookup[t]``.
5. The store's activation buffer is float32 whatever the model dtype
   (``ActivationsStore.get_activations``); ids ride in it as an extra float32 column,
   exact below 2**24 (``MAX_PACKABLE_TOKEN_ID``). ``get_raw_llm_batch`` returns
   ``(activations, token_ids)``, and the rest of the store's pipeline (special-token
   filter, epochs, ``mixing_buffer``) works on whatever rows it returns.
6. ``LLMSaeEvaluator`` pauses the data provider during evals only if it *is* a
   ``PrefetchingIterator`` (isinstance); the tokenized evaluator hands it the inner one.
7. The runner instantiates its store, evaluator and trainer by the module-global names
   ``ActivationsStore``, ``LLMSaeEvaluator`` and ``SAETrainer`` in
   ``sae_lens.llm_sae_training_runner``, with no parameter to choose them;
   ``runner_classes`` substitutes subclasses for the duration of one call.
8. The CLI reuses SAELens's private argument parser
   ``sae_lens.llm_sae_training_runner._parse_cfg_args(args)``, so
   ``sae-lens-tokenized train`` takes exactly SAELens's arguments.
9. ``PrefetchingIterator.close()`` exists from sae-lens 6.54 (SAELens's own ``run`` calls
   it where it exists).
10. ``SAETrainer._train_step`` runs one ``training_forward_pass``, ``backward``,
    ``clip_grad_norm_(sae.parameters(), 1.0)`` and ``optimizer.step()`` per batch. A sparse
    lookup stages its rows before the forward (``TokenizedSAETrainer.step``), shows them to
    the clip through ``sae.parameters()`` and consumes them in ``TokenizedAdam.step``;
    ``tests/test_lookup_updates.py`` checks the clip sees the dense gradient's norm and the
    step equals dense Adam's.
11. ``get_raw_llm_batch`` returns ``store_batch_size_prompts`` equal-length sequences
    flattened row by row, from the model and from a cache alike; a bigram lookup's store
    reads each position's previous token from that layout
    (``activations_store.previous_ids_of_batch``). ``tests/test_data_init_and_bigrams.py``
    matches every shuffled row to its position in the corpus, live and cached.
12. SAELens's loader (``read_sae_components_from_disk``) casts every saved tensor to the
    SAE's dtype, integers included; a bigram lookup therefore stores its pair ids as
    base-256 digits, exact in any float dtype (``TokenLookupMixin._store_bigram_ids``;
    tested in bfloat16). Not a reliance: the digits load exactly whether or not SAELens
    casts them.
13. ``sae-lens-tokenized evals`` (``evals.py``) assembles each result in the layout of
    ``sae_lens.evals.multiple_evals`` (unique_id, sae_set, sae_id, eval_cfg, metrics,
    feature_metrics, sae_cfg), because that function only loads SAEs from SAELens's
    pretrained list; the metrics themselves come from SAELens's ``run_evals``.
    ``tests/test_compat.py`` runs SAELens's ``multiple_evals`` and compares the layouts.

16. (TransformerLens 2.16-3.9) ``HookedTransformer.generate`` (and ``generate_stream``)
    embeds the prompt, then each sampled token, *outside* ``forward``, and runs
    ``forward`` directly on the residual (``start_at_layer=0``), the newest position only
    when it uses its KV cache. No module hook sees where a generation starts or which
    positions a step runs, so ``generation_events`` brackets each call for the captures in
    ``splicing.py`` (they then build the sequence from the embeds). Tested in
    ``tests/test_generate.py`` against forwards with explicit ids.

17. SAELens's own runners (``LanguageModelSAETrainingRunner``, which its CLI
    ``python -m sae_lens.llm_sae_training_runner`` runs, and ``MultiSAETrainingRunner``)
    accept any registered training config and build no seam to refuse one. Given a
    tokenized config they would load the model, fill the buffer, and fail at the first
    step (no ids reach the SAE). ``guard_runner_init`` wraps each ``__init__`` with a check
    that runs before anything else (``tests/test_compat.py`` runs SAELens's CLI entry).

Two entries rely on SAEBench (written against sae-bench 0.6.0, ``SAEBENCH_WRITTEN_AGAINST``),
which has no seam for either; ``tests/test_saebench.py`` runs its real code for each.

14. Sparse probing resolves each of ``dataset_names`` through the module attributes
    ``sae_bench.sae_bench_utils.dataset_utils.get_multi_label_train_test_data`` (Hub
    downloads) and ``dataset_info.chosen_classes_per_dataset``, looked up at call time;
    ``saebench_local_dataset`` answers one extra name from texts in memory.
15. RAVEL's ``train_mdbm`` builds ``MDBM`` by its module-global name in
    ``sae_bench.evals.ravel.mdbm``; the MDBM's hook decodes ``[B, D]`` rows taken at
    ``base_pos_B``, and only ``MDBM.forward`` sees both those positions and the input ids.
    ``ravel_position_ids`` substitutes a subclass whose ``forward`` supplies the ids (and
    previous ids) at ``base_pos_B`` to the SAE for that call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import sae_lens

WRITTEN_AGAINST = "6.54.12"
SAEBENCH_WRITTEN_AGAINST = "0.6.0"
SAE_LENS_VERSION = sae_lens.__version__

# entry 5
MAX_PACKABLE_TOKEN_ID = 2**24

_runner_lock = threading.RLock()


@contextlib.contextmanager
def runner_classes(**replacements: type) -> Iterator[None]:
    """Entry 7: inside the block, SAELens's training runner instantiates the given
    subclasses in place of ``ActivationsStore`` / ``LLMSaeEvaluator`` / ``SAETrainer``.

    Each replacement must subclass what SAELens has under that name, so a renamed or
    moved class is an error here, not a silently stock run. The substitution is
    process-wide for the block, so blocks are serialised by a lock.
    """
    from sae_lens import llm_sae_training_runner as module

    with _runner_lock:
        saved = {}
        for name, cls in replacements.items():
            current = getattr(module, name, None)
            if not (isinstance(current, type) and issubclass(cls, current)):
                raise RuntimeError(
                    f"sae_lens.llm_sae_training_runner.{name} is {current!r}, not a base of "
                    f"{cls.__name__}: this SAELens ({SAE_LENS_VERSION}) no longer builds its "
                    f"runner the way sae-lens-tokenized (written against {WRITTEN_AGAINST}) "
                    "expects. Install a supported sae-lens (see pyproject.toml)."
                )
            saved[name] = current
        try:
            for name, cls in replacements.items():
                setattr(module, name, cls)
            yield
        finally:
            for name, cls in saved.items():
                setattr(module, name, cls)


_generation_listeners: list[Callable[[Any, bool], None]] = []
_generation_saved: dict[str, Any] = {}
GENERATE_METHODS = ("generate", "generate_stream")


def _bracketed(method: Callable[..., Any]) -> Callable[..., Any]:
    def notify(model: Any, started: bool) -> None:
        for listener in list(_generation_listeners):
            listener(model, started)

    if inspect.isgeneratorfunction(method):  # generate_stream: bracket the whole iteration
        @functools.wraps(method)
        def stream(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            notify(self, True)
            try:
                yield from method(self, *args, **kwargs)
            finally:
                notify(self, False)

        return stream

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        notify(self, True)
        try:
            return method(self, *args, **kwargs)
        finally:
            notify(self, False)

    return call


@contextlib.contextmanager
def generation_events(listener: Callable[[Any, bool], None]) -> Iterator[None]:
    """Entry 16: inside the block, ``listener(model, True)`` / ``(model, False)`` bracket
    every ``HookedTransformer.generate`` / ``generate_stream`` call (process-wide while any
    block is open; the methods are restored when the last one closes)."""
    from transformer_lens import HookedTransformer

    with _runner_lock:
        if not _generation_listeners:
            for name in GENERATE_METHODS:
                if hasattr(HookedTransformer, name):
                    _generation_saved[name] = HookedTransformer.__dict__.get(name)
                    setattr(HookedTransformer, name, _bracketed(getattr(HookedTransformer, name)))
        _generation_listeners.append(listener)
    try:
        yield
    finally:
        with _runner_lock:
            _generation_listeners.remove(listener)
            if not _generation_listeners:
                for name, saved in _generation_saved.items():
                    if saved is None:
                        delattr(HookedTransformer, name)
                    else:
                        setattr(HookedTransformer, name, saved)
                _generation_saved.clear()


_RUNNER_GUARDS: dict[str, Callable[[Any, Any], None]] = {}


def guard_runner_init(runner_cls: type, check: Callable[[Any, Any], None]) -> None:
    """Entry 17: ``check(runner, cfg)`` runs first in every ``runner_cls(cfg, ...)``.
    Idempotent: a second call (a reload of this package) replaces the check, never wraps
    twice."""
    key = f"{runner_cls.__module__}.{runner_cls.__qualname__}"
    _RUNNER_GUARDS[key] = check
    if getattr(runner_cls.__init__, "_sae_lens_tokenized_guard", False):
        return
    original = runner_cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, cfg: Any, *args: Any, **kwargs: Any) -> None:
        _RUNNER_GUARDS[key](self, cfg)
        original(self, cfg, *args, **kwargs)

    __init__._sae_lens_tokenized_guard = True  # type: ignore[attr-defined]
    runner_cls.__init__ = __init__  # type: ignore[method-assign]


def _saebench_attribute(module: Any, name: str, kind: type | None = None) -> Any:
    current = getattr(module, name, None)
    if current is None or (kind is not None and not isinstance(current, kind)):
        import importlib.metadata

        raise RuntimeError(
            f"{module.__name__}.{name} is {current!r}: this SAEBench "
            f"({importlib.metadata.version('sae-bench')}) is not laid out the way sae-lens-tokenized "
            f"(written against sae-bench {SAEBENCH_WRITTEN_AGAINST}) expects. Install sae-bench 0.6."
        )
    return current


@contextlib.contextmanager
def saebench_local_dataset(name: str, train: dict[str, list[str]], test: dict[str, list[str]]) -> Iterator[None]:
    """Entry 14: inside the block, SAEBench's sparse probing reads dataset ``name`` from
    ``train``/``test`` (texts by class) instead of the Hub. Process-wide, serialised."""
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils

    original = _saebench_attribute(dataset_utils, "get_multi_label_train_test_data")
    classes = _saebench_attribute(dataset_info, "chosen_classes_per_dataset", dict)

    def get_data(dataset_name: str, *args: Any, **kwargs: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        if dataset_name == name:
            return {c: list(t) for c, t in train.items()}, {c: list(t) for c, t in test.items()}
        return original(dataset_name, *args, **kwargs)

    with _runner_lock:
        dataset_utils.get_multi_label_train_test_data = get_data
        classes[name] = sorted(train)
        try:
            yield
        finally:
            dataset_utils.get_multi_label_train_test_data = original
            classes.pop(name, None)


@contextlib.contextmanager
def ravel_position_ids(*saes: Any) -> Iterator[None]:
    """Entry 15: inside the block, SAEBench's RAVEL MDBM gives ``saes`` the token ids (and
    previous ids) at the positions its hook decodes. Process-wide, serialised."""
    import sae_bench.evals.ravel.mdbm as module
    import torch

    base = _saebench_attribute(module, "MDBM", type)
    targets = tuple(saes)

    class PositionIdsMDBM(base):  # type: ignore[misc, valid-type]
        def forward(self, base_encoding_BL: Any, source_encoding_BL: Any, base_pos_B: torch.Tensor,
                    source_pos_B: torch.Tensor, training_mode: bool = False) -> Any:
            if not any(self.sae is sae for sae in targets):
                return super().forward(base_encoding_BL, source_encoding_BL, base_pos_B, source_pos_B, training_mode)
            ids = base_encoding_BL["input_ids"]
            rows = torch.arange(ids.shape[0], device=ids.device)
            pos = torch.as_tensor(base_pos_B, device=ids.device).long()
            before = (pos - 1).clamp(min=0)
            has_prev = pos > 0
            mask = base_encoding_BL.get("attention_mask") if hasattr(base_encoding_BL, "get") else None
            if mask is not None:  # left padding: the first real token has no previous token
                has_prev &= mask.to(ids.device)[rows, before].bool()
            prev = torch.where(has_prev, ids[rows, before], torch.full_like(pos, -1))
            with self.sae.token_ids(ids[rows, pos], prev_token_ids=prev):
                return super().forward(base_encoding_BL, source_encoding_BL, base_pos_B, source_pos_B, training_mode)

    with _runner_lock:
        module.MDBM = PositionIdsMDBM
        try:
            yield
        finally:
            module.MDBM = base
