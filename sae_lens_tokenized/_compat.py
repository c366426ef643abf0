"""Every place this plugin relies on a detail of its hosts that is not public API.

Written against sae-lens 6.54.12 and tested on 6.53.0 (the supported range is declared in
pyproject.toml); TransformerLens 2.16-3.9; sae-bench 0.6.0. Each entry is one seam the
host lacks; docs/upstream-seams.md proposes it (the section named in brackets). The tests
named check the *behaviour* each entry relies on by running the host's real code path,
so a release that changes one fails there instead of silently changing what a tokenized
SAE does.

1. **SAELens's runners build their parts themselves** [§1, §2]. ``LanguageModelSAETrainingRunner``
   instantiates its store, evaluator and trainer by the module-global names
   ``ActivationsStore``, ``LLMSaeEvaluator`` and ``SAETrainer`` in
   ``sae_lens.llm_sae_training_runner`` (``MultiSAETrainingRunner``: ``ActivationsStore``,
   ``MultiSAEEvaluator`` and ``MultiSAETrainer`` in ``sae_lens.multi_sae_training_runner``,
   built in that order, the store before the SAEs); ``runner_classes`` substitutes
   subclasses for one call. ``MultiSAETrainer`` keeps one ``SAETrainer`` per SAE in
   ``trainers`` and calls each one's public ``step`` with its hook's batch. Its ``__init__`` calls ``self._compile_llm_if_needed()`` after ``self.model`` is
   set and before it builds the store and the SAE: the tokenized runner checks its config
   against the model and fills ``d_vocab`` there. Neither runner (nor
   ``MultiSAETrainingRunner``) can refuse a config it cannot train: ``guard_runner_init``
   wraps their ``__init__`` so a tokenized config is refused before any work. (The
   evaluator pauses a prefetching provider only if it *is* a ``PrefetchingIterator``; the
   tokenized evaluator hands it the inner one, which is right whatever the check.)
   Tests: ``test_compat.py::test_1_*``.
2. **SAETrainer's optimizer and step** [§3, §7]. ``SAETrainer.__init__`` builds
   ``self.optimizer = Adam(sae.parameters(), lr)`` and ``self.lr_scheduler``; the tokenized
   trainer rebuilds both (``TokenizedAdam``, an ``Adam`` subclass) with the lookup in its
   own group. Its ``_train_step`` runs one forward, ``backward``,
   ``clip_grad_norm_(sae.parameters(), 1.0)`` and ``optimizer.step()`` per batch: a sparse
   lookup stages its rows before the forward, shows them to the clip through
   ``sae.parameters()`` and consumes them in ``TokenizedAdam.step``. Tests:
   ``test_compat.py::test_2_*``, ``test_lookup_updates.py`` (the clip sees the dense
   gradient's norm; the step equals dense Adam's).
3. **Where reconstructions happen** [§4]. Every SAELens reconstruction (each ``decode``,
   Matryoshka's ``_iterable_decode``) ends in ``self.run_time_activation_norm_fn_out``, an
   instance attribute set in ``SAE.__init__``; ``TokenLookupMixin`` wraps it to add the
   lookup. The exception, Gated's auxiliary loss, reconstructs
   ``relu(pi_gate) W_dec + b_dec`` outside ``decode``: ``TokenizedGatedTrainingSAE``
   writes SAELens's two aux terms with the lookup added. Tests: ``test_architectures.py``
   (zero-lookup parity over every architecture, the per-term gradient identity).
4. **The store's batch contract** [§5]. ``ActivationsStore.get_raw_llm_batch`` returns
   ``(activations, token_ids)`` for ``store_batch_size_prompts`` equal-length sequences
   flattened row by row (live and cached); the buffer is float32 whatever the model dtype;
   the rest of the store (special-token filter, epochs, ``mixing_buffer``, prefetch) works
   on whatever rows it returns. Ids ride as an extra float32 column (exact below 2**24,
   ``MAX_PACKABLE_TOKEN_ID``) and a bigram lookup reads previous tokens off the row
   layout. In multi-hook mode a batch is ``get_batch_tokens()`` then
   ``get_multi_hook_activations(those tokens)``, flattened and filtered entry by entry
   (``_get_filtered_multi_hook_llm_batch``), and ``get_multi_hook_data_loader`` shuffles the
   entries it lists with ``multi_hook_concat_split_iter`` over
   ``_iterate_filtered_multi_hook_activations()``: the ids ride as one more entry, and held
   batches (the init sample) are served through that pair. Tests:
   ``test_compat.py::test_4_*``, ``test_data_init_and_bigrams.py`` (every shuffled row
   matched to its corpus position, live and cached), ``test_multi_runner.py``.
5. **SAELens's CLI parser** [§13]. ``sae-lens-tokenized train`` reuses the private
   ``sae_lens.llm_sae_training_runner._parse_cfg_args(args)``, so it takes exactly
   SAELens's arguments. Test: ``test_offline_and_cli.py::test_cli_parses_saelens_arguments_plus_tokenized_ones``.
6. **SAELens's evals result layout** [§10]. ``sae-lens-tokenized evals`` assembles each
   result in the layout of ``sae_lens.evals.multiple_evals`` (which only loads SAEs from
   SAELens's pretrained list); the metrics are SAELens's ``run_evals``. Test:
   ``test_compat.py::test_6_*`` runs ``multiple_evals`` and compares the layouts.
7. **TransformerLens's generate** [§12]. ``HookedTransformer.generate`` (and
   ``generate_stream``) embeds the prompt, then each sampled token, *outside* ``forward``,
   and runs ``forward`` directly on the residual, only the newest position when it uses
   its KV cache. No module hook sees where a generation starts, so ``generation_events``
   brackets each call for the captures in ``splicing.py``. Test: ``test_generate.py``.
8. **SAEBench's module globals** [§11] (sae-bench 0.6.0, ``SAEBENCH_WRITTEN_AGAINST``).
   Two evals resolve a module-global name at call time, and this swaps it for a block:
   sparse probing's ``dataset_utils.get_multi_label_train_test_data`` and
   ``dataset_info.chosen_classes_per_dataset`` (``saebench_local_dataset``: one extra
   dataset from texts in memory), and RAVEL's ``MDBM`` class, whose ``forward`` alone sees
   both the decoded positions ``base_pos_B`` and the input ids (``ravel_position_ids``: a
   subclass supplies the ids at those positions). Tests: ``test_saebench.py``.
9. **Data parallelism: where the store reads and what the trainer counts** [§14].
   ``ActivationsStore`` reads sequences from ``self.dataset`` (through the generator
   ``_iterate_tokenized_sequences``, which ``iterable_sequences`` holds) and cached rows from
   ``self.cached_activation_dataset``; ``RankShare`` replaces both with this rank's shard
   after ``from_config``, before anything is read. ``SAETrainer.step`` adds the batch to
   ``n_training_samples`` and updates ``act_freq_scores`` and ``n_forward_passes_since_fired``
   from the forward's activations, and ``n_frac_active_samples`` from the trainer config's
   ``train_batch_size_samples`` (the global batch); ``DataParallelSAETrainer`` combines the
   first three across ranks after SAELens's step. Tests:
   ``test_compat.py::test_9_*``, ``test_cached_activations.py::test_a_rank_share_*``,
   ``test_data_parallel.py`` (the counters equal one process's).
10. **Where the store runs the model** [§15]. ``ActivationsStore.get_activations`` runs
   ``self.model.run_with_cache(tokens, names_filter=[hook_name], stop_at_layer=...)`` once
   per LLM batch and keeps only ``hook_name``'s activations; a transcoder's store
   (``training/transcoders.py``) shadows ``run_with_cache`` on the model for that one call
   to request the output hook too (a ``HookedProxyLM`` stops the forward once every
   requested hook has run; a ``HookedTransformer`` stops at the input hook's block).
   Tests: ``test_transcoders.py::test_rows_carry_*`` (TransformerLens) and
   ``::test_a_transcoder_trains_on_a_hugging_face_model_mlp`` (each row's target is the
   MLP of its input).
11. **What the TopK family's AuxK reads** [§16]. ``TopKTrainingSAE.calculate_aux_loss`` (and
   BatchTopK's, inherited, and Matryoshka's) reads ``hidden_pre`` only to pick the top
   ``k_aux`` dead latents and decode their values (``calculate_topk_aux_acts``, raw
   pre-activations); ``saes/auxk.py`` passes ``hidden_pre.relu()`` so they decode as the
   paper's activations. Tests: ``test_auxk.py`` (SAELens's own loss and gradients where
   every pick is positive; zero decode and no gradient where every pick is negative).
12. **The text of SAELens's model-loading advice** (6.53-6.54, ``SAE.__init__``: "This SAE
   has non-empty model_from_pretrained_kwargs"). ``integrations.offline.load_saved_sae``
   hides it by that text where this package's loaders already follow it. Tests:
   ``test_offline_and_cli.py::test_load_saved_sae_hides_only_the_advice_its_loaders_already_follow``
   (quiet for the runner's kwargs, the advice back for others; a reworded warning fails it).
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

# entry 4
MAX_PACKABLE_TOKEN_ID = 2**24

_runner_lock = threading.RLock()


@contextlib.contextmanager
def runner_classes(module_name: str = "sae_lens.llm_sae_training_runner", **replacements: type) -> Iterator[None]:
    """Entry 1: inside the block, the SAELens module ``module_name`` instantiates the given
    subclasses in place of the classes it names (``ActivationsStore``, ``LLMSaeEvaluator``
    and ``SAETrainer`` in the single-SAE runner; ``ActivationsStore``, ``MultiSAEEvaluator``
    and ``MultiSAETrainer`` in ``sae_lens.multi_sae_training_runner``).

    Each replacement must subclass what SAELens has under that name, so a renamed or
    moved class is an error here, not a silently stock run. The substitution is
    process-wide for the block, so blocks are serialised by a lock.
    """
    import importlib

    module = importlib.import_module(module_name)
    with _runner_lock:
        saved = {}
        for name, cls in replacements.items():
            current = getattr(module, name, None)
            if not (isinstance(current, type) and issubclass(cls, current)):
                raise RuntimeError(
                    f"{module_name}.{name} is {current!r}, not a base of "
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
    """Entry 7: inside the block, ``listener(model, True)`` / ``(model, False)`` bracket
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
    """Entry 1: ``check(runner, cfg)`` runs first in every ``runner_cls(cfg, ...)``.
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
    """Entry 8: inside the block, SAEBench's sparse probing reads dataset ``name`` from
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
    """Entry 8: inside the block, SAEBench's RAVEL MDBM gives ``saes`` the token ids (and
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
