"""Train tokenized SAEs through SAELens: same config, same outputs, ids carried along.

``TokenizedSAETrainingRunner`` is SAELens's ``LanguageModelSAETrainingRunner``: its
``__init__`` and ``run`` are SAELens's own, called through ``super()``, with three classes
substituted where SAELens instantiates them (``_compat.runner_classes``):

1. the activation store is ``TokenizedActivationsStore`` (ids ride through SAELens's
   mixing buffer and prefetch thread beside their activations);
2. the trainer is ``TokenizedSAETrainer``: each step hands the batch's ids to the SAE, and
   the lookup gets its own Adam parameter group and learning rate (the authors trained it
   at 1e-2 against 1e-4 for the SAE);
3. the evaluator is ``TokenizedEvaluator`` (ids for evals from the model's input).

Before the store and the SAE are built, the config is checked against the model and
``d_vocab`` filled in; after, the lookup is initialised from the model's unigram table
(``lookup_init_scale * U``). Saving, checkpoints, resuming, wandb logging, evals,
interruption handling and compilation are SAELens's own code.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_lens import logger
from sae_lens.config import HfDataset, LanguageModelSAERunnerConfig
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner, LLMSaeEvaluator
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_tokenized._compat import guard_runner_init, runner_classes
from sae_lens_tokenized.models import device_of, vocab_size
from sae_lens_tokenized.lookup_stats import LookupStatistics
from sae_lens_tokenized.saes.lookup import (
    DATA_STRATEGY,
    PRECOMPUTED_STRATEGY,
    LookupTrainingConfig,
    TokenLookupMixin,
    default_init_scale,
)
from sae_lens_tokenized.splicing import token_ids_from
from sae_lens_tokenized.training.optim import TokenizedAdam
from sae_lens_tokenized.training.activations_store import (
    TokenIdsSideChannel,
    TokenizedActivationsStore,
    previous_ids_of_batch,
)
from sae_lens_tokenized.unigrams import (
    UnigramCacheError,
    UnigramStrategy,
    activations_at_hook,
    get_unigram_table,
    load_unigram_table_file,
    resolve_hook,
    sample_activations,
    select_unigram_strategy,
    table_metadata,
    unigram_fit,
    warn_if_sink,
)

class SpecialTokensNotExcludedWarning(UserWarning):
    """The training data holds special tokens that exclude_special_tokens=True keeps."""


def warn_unexcluded_special_tokens(tokenizer: Any, tokens: torch.Tensor, excluded: torch.Tensor | None) -> None:
    """Warn when ``exclude_special_tokens=True`` leaves special tokens of the data in.

    SAELens's ``True`` means the tokenizer's *structural* ids (bos/eos/pad/sep attributes).
    Document separators can be other special tokens: SmolLM2-Instruct's bos/eos are
    <|im_start|>/<|im_end|>, while its text separator is <|endoftext|> (id 0), so ``True``
    trains on every separator, a massive-norm sink (benchmarks/bos_positions.py).
    """
    if tokenizer is None:
        return
    excluded_ids = set() if excluded is None else set(excluded.tolist())
    present = set(torch.unique(tokens).tolist())
    special = set(tokenizer.all_special_ids)
    # added tokens flagged special (e.g. <|endoftext|> when bos/eos were reassigned)
    special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
    kept = sorted((present & special) - excluded_ids)
    if kept:
        names = ", ".join(f"{i} {tokenizer.convert_ids_to_tokens(i)!r}" for i in kept)
        warnings.warn(
            f"exclude_special_tokens=True excludes SAELens's structural ids {sorted(excluded_ids)}, "
            f"but the training data also holds the special token(s) {names}, which will be trained "
            f"on. To exclude them too, pass exclude_special_tokens="
            f"{sorted(excluded_ids | set(kept))}; to keep them silently, pass a list without them.",
            SpecialTokensNotExcludedWarning,
            stacklevel=3,
        )


#: sequences of the training data used to measure unigram strategies ('auto', sink check)
N_MEASURE_SEQUENCES = 8


class TokenizedSAETrainer(SAETrainer):  # type: ignore[type-arg]
    """SAELens's SAETrainer, feeding token ids to the SAE and a separate lookup lr."""

    def __init__(self, cfg: Any, sae: Any, data_provider: Any, **kwargs: Any):
        """``data_provider``: packed rows from a ``TokenizedActivationsStore`` (the store, or
        SAELens's ``PrefetchingIterator`` over it), or a ``TokenIdsSideChannel`` over them."""
        if not isinstance(sae, TokenLookupMixin):
            raise TypeError(f"{type(sae).__name__} is not a tokenized SAE")
        with_prev = sae.cfg.lookup_ngram == 2
        if not isinstance(data_provider, TokenIdsSideChannel):
            data_provider = TokenIdsSideChannel(data_provider, with_prev=with_prev)
        if data_provider.with_prev != with_prev:
            raise ValueError(
                f"the data provider {'carries' if data_provider.with_prev else 'does not carry'} previous "
                f"token ids but the SAE has lookup_ngram={sae.cfg.lookup_ngram}; build the store from "
                "a runner config whose sae is this SAE's config"
            )
        super().__init__(cfg=cfg, sae=sae, data_provider=data_provider, **kwargs)
        self.token_ids_channel = data_provider
        # Rebuild Adam with the lookup in its own group (SAETrainer builds
        # Adam(sae.parameters(), lr) in __init__; _compat.py entry 2). A sparse lookup's
        # group is its staged rows, updated lazily (training/optim.py); a dense lookup's is
        # W_lookup itself. A frozen lookup stays in its group with no grad, and the
        # optimizer skips it: it stays bitwise unchanged.
        lookup_lr = sae.cfg.lookup_lr if sae.cfg.lookup_lr is not None else cfg.lr
        sparse = sae.lookup_rows is not None
        lookup = sae.lookup_rows if sparse else sae.W_lookup
        other = [p for n, p in sae.named_parameters() if p is not sae.W_lookup and p is not sae.lookup_rows]
        self.optimizer = TokenizedAdam(
            [
                {"params": other, "lr": cfg.lr, "name": "sae"},
                {"params": [lookup], "lr": lookup_lr, "name": "lookup", "lazy_rows": sparse},
            ],
            sae=sae,
            lr=cfg.lr,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
        )
        self.lr_scheduler = get_lr_scheduler(
            cfg.lr_scheduler_name,
            lr=cfg.lr,
            optimizer=self.optimizer,
            warm_up_steps=cfg.lr_warm_up_steps,
            decay_steps=cfg.lr_decay_steps,
            training_steps=cfg.total_training_steps,
            lr_end=cfg.lr_end,
            num_cycles=cfg.n_restart_cycles,
        )
        # With normalize_activations="expected_average_only_in" the SAE trains on
        # activations multiplied by a factor estimated at the start of fit(); the lookup
        # was initialised from raw unigrams, so it is scaled by the same factor once.
        self._lookup_scale_pending = sae.cfg.normalize_activations == "expected_average_only_in"

    def step(self, batch: torch.Tensor):  # type: ignore[override]
        ids, prev = self.token_ids_channel.ids_for(batch)
        if batch.shape[-1] != self.sae.cfg.d_in:
            raise ValueError(
                f"training batch has width {batch.shape[-1]} but the SAE has d_in={self.sae.cfg.d_in}: "
                "the store packs a different number of id columns than this SAE reads (was it built "
                "for another SAE config, e.g. another lookup_ngram?)"
            )
        if self._lookup_scale_pending and self.activation_scaler.scaling_factor is not None:
            with torch.no_grad():
                self.sae.W_lookup.mul_(self.activation_scaler.scaling_factor)
            self._lookup_scale_pending = False
        # validated where they entered (the store), so binding them costs no host sync
        ids = ids.to(self.sae.device, non_blocking=True)
        if prev is not None:
            prev = prev.to(self.sae.device, non_blocking=True)
        with self.sae.token_ids(ids, prev_token_ids=prev, validated=True):
            if self.sae.lookup_rows is not None and self.sae.lookup_rows.requires_grad:
                # outside SAELens's (possibly compiled) training_forward_pass
                self.sae.stage_lookup_rows(self.sae.lookup_row_index(ids, prev))
            return super().step(batch)

    def load_trainer_state(self, checkpoint_path: Path | str) -> None:
        super().load_trainer_state(checkpoint_path)
        self._lookup_scale_pending = False  # the checkpointed lookup is already scaled


class TokenizedEvaluator(LLMSaeEvaluator):  # type: ignore[type-arg]
    """SAELens's evaluator with the SAE's ids taken from the model's input."""

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler) -> dict[str, Any]:
        # Hand SAELens the prefetcher itself so it pauses the producer thread during evals.
        inner = data_provider.source if isinstance(data_provider, TokenIdsSideChannel) else data_provider
        with token_ids_from(self.model, sae):
            return super().__call__(sae, inner, activation_scaler)


def check_against_model(model: Any, cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """Raise before any training if the config does not fit the model."""
    sae_cfg = cfg.sae
    resolve_hook(model, cfg.hook_name)
    model_vocab = vocab_size(model)
    if sae_cfg.d_vocab != model_vocab:
        raise ValueError(
            f"d_vocab={sae_cfg.d_vocab} but the model has d_vocab={model_vocab}; the lookup "
            f"needs one row per model token id. Set d_vocab={model_vocab} or leave it None."
        )
    probe = torch.zeros(1, 2, dtype=torch.long, device=device_of(model))
    width = activations_at_hook(model, probe, cfg.hook_name, cfg.hook_head_index).shape[-1]
    if width != sae_cfg.d_in:
        raise ValueError(
            f"d_in={sae_cfg.d_in} but activations at {cfg.hook_name!r} have width {width}; "
            f"set d_in={width}."
        )
    if sae_cfg.lookup_ngram == 2 and len(cfg.seqpos_slice) > 2 and cfg.seqpos_slice[2] not in (None, 1):
        raise ValueError(
            f"seqpos_slice={cfg.seqpos_slice} skips positions, so a position's previous token is not "
            "the one before it in the batch; a bigram lookup (lookup_ngram=2) needs a contiguous slice."
        )
    if (sae_cfg.init_lookup_from_unigrams and sae_cfg.unigram_table_path is None
            and sae_cfg.unigram_strategy not in ("auto", DATA_STRATEGY, PRECOMPUTED_STRATEGY)):
        strategy = UnigramStrategy.parse(sae_cfg.unigram_strategy)
        if not strategy.has_t:
            raise ValueError(
                f"unigram_strategy '{strategy}' contains no 't', so every lookup row would be "
                "the same vector; it is an analysis control, not an initialisation."
            )
        strategy.resolve(getattr(model, "tokenizer", None), model_vocab, str(cfg.model_name))


EXPLICIT_MATCH_FIELDS = ("model_fingerprint", "hook_name", "hook_head_index", "strategy", "d_vocab")


def unigram_table_strategy(path: str | Path) -> str | None:
    """The strategy a table file written by this package records (None for a plain file)."""
    _, meta = load_unigram_table_file(path)
    return meta.get("strategy") if meta.get("format", "").startswith("sae_lens_tokenized.unigrams") else None


def load_unigram_table(path: str | Path, model: Any, cfg: LanguageModelSAERunnerConfig[Any]) -> torch.Tensor:
    """A table the user named explicitly. A file written by this package carries metadata;
    if it says the table was computed for another model, hook or strategy, that is an error
    (never silently used). A plain safetensors file with a 'unigrams' tensor is accepted."""
    table, meta = load_unigram_table_file(path)
    if meta.get("format", "").startswith("sae_lens_tokenized.unigrams"):
        want = table_metadata(model, cfg.hook_name, meta["strategy"], cfg.hook_head_index, table.dtype)
        if cfg.sae.unigram_strategy not in ("auto", DATA_STRATEGY, PRECOMPUTED_STRATEGY):
            want["strategy"] = str(UnigramStrategy.parse(cfg.sae.unigram_strategy))
        wrong = [f"{k}: file {meta.get(k)!r} vs this run {want[k]!r}"
                 for k in EXPLICIT_MATCH_FIELDS if meta.get(k) != want[k]]
        if wrong:
            raise UnigramCacheError(f"unigram table {path} does not match this run: " + "; ".join(wrong))
    return table


def saved_lookup_rows(folder: str | Path) -> int:
    """Rows of ``W_lookup`` in a saved SAE or checkpoint folder (read from the weights)."""
    from safetensors import safe_open
    from sae_lens.constants import SAE_WEIGHTS_FILENAME

    with safe_open(str(Path(folder) / SAE_WEIGHTS_FILENAME), framework="pt") as f:
        return int(f.get_slice("W_lookup").get_shape()[0])


def _check_buffer(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    # SAELens would crash on the first batch with a bare "Buffer size must be >= batch size".
    buffer = cfg.n_batches_in_buffer * len(range(cfg.context_size)[slice(*cfg.seqpos_slice)])
    if buffer < cfg.train_batch_size_tokens:
        raise ValueError(
            f"the activation buffer holds n_batches_in_buffer * context_size = {buffer} "
            f"activations, fewer than train_batch_size_tokens={cfg.train_batch_size_tokens}; "
            "raise n_batches_in_buffer or lower train_batch_size_tokens."
        )


class TokenizedSAETrainingRunner(LanguageModelSAETrainingRunner):
    """``LanguageModelSAETrainingRunner`` for tokenized architectures.

    Args:
        cfg: an ordinary ``LanguageModelSAERunnerConfig`` whose ``sae`` is a tokenized
            training config (e.g. ``TokenizedJumpReLUTrainingSAEConfig``).
        override_dataset, override_model, override_sae: as in SAELens.
        unigram_table: a precomputed [d_vocab, d_in] table (overrides
            ``cfg.sae.unigram_table_path`` and the computation).

    The lookup is initialised from unigrams when the runner builds the SAE itself; an
    ``override_sae``, ``from_pretrained_path`` or ``resume_from_checkpoint`` keeps the
    lookup it brings.
    """

    #: The activation store class; a subclass of TokenizedActivationsStore may replace it.
    store_class: type[TokenizedActivationsStore] = TokenizedActivationsStore

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: HfDataset | None = None,
        override_model: Any | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        unigram_table: torch.Tensor | None = None,
    ):
        if not isinstance(cfg.sae, LookupTrainingConfig):
            raise TypeError(
                f"cfg.sae is a {type(cfg.sae).__name__}, not a tokenized SAE config; use e.g. "
                "TokenizedTopKTrainingSAEConfig, or SAELens's LanguageModelSAETrainingRunner "
                "for untokenized SAEs."
            )
        _check_buffer(cfg)
        self._unigram_table_arg = unigram_table
        fresh = override_sae is None and cfg.from_pretrained_path is None
        self._will_init = fresh and cfg.sae.init_lookup_from_unigrams and cfg.resume_from_checkpoint is None
        with runner_classes(ActivationsStore=self.store_class, LLMSaeEvaluator=TokenizedEvaluator):
            super().__init__(cfg, override_dataset, override_model, override_sae)
        if not isinstance(self.sae, TokenLookupMixin):
            raise TypeError(f"{type(self.sae).__name__} is not a tokenized SAE")
        if cfg.resume_from_checkpoint is not None and self.sae.cfg.lookup_ngram == 2:
            # the checkpointed lookup holds the bigram rows its init chose: size to them
            # before the trainer's optimizer takes W_lookup
            rows = saved_lookup_rows(cfg.resume_from_checkpoint) - self.sae.cfg.d_vocab
            self.sae.resize_bigram_rows(rows)
        self._init_lookup(self._will_init)
        self.sae.set_lookup_trainable(cfg.sae.train_lookup)

    def _compile_llm_if_needed(self) -> None:
        # SAELens's __init__ calls this right after self.model is set and before it builds
        # the store and the SAE (_compat.py entry 1): the one moment to check the config
        # against the model and size the lookup, before any work.
        self._prepare_for_model()
        super()._compile_llm_if_needed()

    def _prepare_for_model(self) -> None:
        cfg = self.cfg
        if cfg.sae.d_vocab is None:
            cfg.sae.d_vocab = vocab_size(self.model)
        check_against_model(self.model, cfg)
        table = self._unigram_table_arg
        self._table_strategy: str | None = None
        if table is None and cfg.sae.unigram_table_path is not None:
            table = load_unigram_table(cfg.sae.unigram_table_path, self.model, cfg)
            self._table_strategy = unigram_table_strategy(cfg.sae.unigram_table_path)
        if table is not None:
            expected = (cfg.sae.d_vocab, cfg.sae.d_in)
            if tuple(table.shape) != expected:
                raise ValueError(
                    f"the precomputed unigram table has shape {tuple(table.shape)} "
                    f"but this SAE needs [d_vocab, d_in] = {list(expected)}"
                )
            if self._will_init and cfg.sae.unigram_strategy == "auto":
                raise ValueError(
                    "unigram_strategy='auto' chooses the table itself, so it cannot be used with a "
                    "precomputed unigram table; pass the table's strategy.")
            if cfg.sae.lookup_init_prior != "mean":
                raise ValueError(
                    f"lookup_init_prior={cfg.sae.lookup_init_prior!r} builds the prior of data-estimated rows "
                    "from the model's unigrams, but a precomputed unigram table was given; drop the table or "
                    "set lookup_init_prior='mean'.")
            if cfg.sae.unigram_strategy == DATA_STRATEGY:
                # An explicit table wins over the default data estimate; record what it is.
                cfg.sae.unigram_strategy = self._table_strategy or PRECOMPUTED_STRATEGY
        self._unigram_table_arg = table

    def _sample_lookup_statistics(self) -> tuple[LookupStatistics, dict[str, Any]]:
        """Per-token (and per-bigram) sums over activations drawn from the training stream
        before training (they are not trained on): ``lookup_init_tokens`` of them, but never
        more than the run's ``training_tokens`` nor more than one pass over the dataset."""
        cfg, store = self.cfg, self.activations_store
        requested = cfg.sae.lookup_init_tokens
        target = min(requested, cfg.training_tokens)
        capped_by = "training_tokens" if target < requested else None
        stats = LookupStatistics(cfg.sae.d_vocab, cfg.sae.d_in, cfg.sae.lookup_ngram, device=self.sae.W_lookup.device)
        excluded = store.exclude_special_tokens
        drawn = skipped_first = 0
        desc = "lookup init: sampling activations" + (f" (capped at training_tokens={target:,})" if capped_by else "")
        with tqdm(total=target, desc=desc, unit="tok") as bar:
            while drawn < target:
                try:
                    acts, ids, *prev = store.get_raw_llm_batch_with_ids(raise_on_epoch_end=True)
                except StopIteration:  # the store rewinds; training starts the dataset anew
                    capped_by = "one pass over the dataset"
                    bar.set_postfix_str("the dataset ended: one pass sampled")
                    break
                drawn += len(ids)
                bar.update(len(ids))
                # Each sequence's first position is an attention sink in most LMs (massive
                # activations whatever the token): averaged in, one occurrence would swamp
                # its token's mean. Skipped here (a token seen only there gets the prior);
                # the lookup still trains on those positions.
                # (a bigram store already packed the previous ids; otherwise derive them)
                prev_ids = prev[0] if prev else previous_ids_of_batch(ids, store.store_batch_size_prompts)
                keep = prev_ids >= 0
                skipped_first += int((~keep).sum())
                if excluded is not None:
                    keep &= ~torch.isin(ids, excluded.to(ids.device))
                acts, ids, prev = acts[keep], ids[keep], [p[keep] for p in prev]
                stats.add(acts, ids, prev[0] if prev else None)
        if stats.n_tokens == 0:
            raise ValueError(
                f"the lookup init sampled {drawn} activations and none was usable (each sequence's first "
                "position is skipped, and so are excluded special tokens): the dataset is too small to "
                "estimate a lookup from. Use a prompt strategy (unigram_strategy='space,t') with lookup_ngram=1."
            )
        report = {"tokens_requested": requested, "tokens_drawn_from_training_stream": drawn,
                  "capped_by": capped_by, "first_positions_skipped": skipped_first, **stats.report()}
        logger.info(
            f"lookup init: estimated from {drawn:,} activations drawn from the training stream before "
            f"training (they are not trained on): {report}"
        )
        return stats, report

    def _lookup_prior(self, stats: LookupStatistics, measure_tokens: Any, exclude_ids: list[int]) -> torch.Tensor | None:
        """The prior of data-estimated rows (``lookup_init_prior``): ``None`` for the sample
        mean, else ``mean + (U - U_mean)`` from a prompt unigram table ``U``."""
        cfg = self.cfg
        prior = cfg.sae.lookup_init_prior
        if prior == "mean":
            self.unigram_report["lookup_init"]["prior"] = "mean"
            return None
        assert measure_tokens is not None  # a precomputed table with a unigram prior fails in _prepare_for_model
        report = None
        if prior == "auto":
            prior, report = select_unigram_strategy(self.model, cfg.hook_name, measure_tokens,
                                                    hook_head_index=cfg.hook_head_index, exclude_ids=exclude_ids)
            logger.info(f"lookup_init_prior='auto' chose '{prior}': {report}")
        table = get_unigram_table(self.model, cfg.hook_name, strategy=prior, hook_head_index=cfg.hook_head_index,
                                  cache_dir=cfg.sae.unigram_cache).to(stats.sums)
        counts = stats.counts.to(stats.sums)
        centre = (counts @ table) / counts.sum().clamp_min(1)
        unseen = int((stats.counts == 0).sum())
        self.unigram_report["lookup_init"]["prior"] = {
            "unigram_strategy": prior, "tokens_given_only_the_prior": unseen,
            **({"selection": report} if report is not None else {})}
        logger.info(f"lookup init: {unseen:,} tokens absent from the sample get their '{prior}' unigram, centred on "
                    "the sample mean, as their row")
        return stats.mean() + (table - centre)

    def _init_lookup(self, will_init: bool) -> None:
        cfg, table = self.cfg, self._unigram_table_arg
        self.unigram_report: dict[str, Any] = {}
        self.unigram_table: torch.Tensor | None = None
        if not will_init:
            return
        strategy = cfg.sae.unigram_strategy
        ngram = cfg.sae.lookup_ngram
        c = cfg.sae.lookup_init_pseudo_count
        stats = None
        measured = measure_tokens = None
        exclude_ids: list[int] = []
        if table is None:
            # measured first, so the measurement sequences are not in the init sample
            measure_tokens = self.activations_store.get_batch_tokens(N_MEASURE_SEQUENCES)
            excluded = self.activations_store.exclude_special_tokens
            exclude_ids = [] if excluded is None else excluded.tolist()
            if cfg.exclude_special_tokens is True:
                warn_unexcluded_special_tokens(self.model.tokenizer, measure_tokens, excluded)
            measured = sample_activations(self.model, measure_tokens, cfg.hook_name, cfg.hook_head_index,
                                          exclude_ids=exclude_ids)
        data_table = None  # per-token means of the sample (the "data" table)
        if strategy in ("auto", DATA_STRATEGY) or ngram == 2:
            stats, self.unigram_report["lookup_init"] = self._sample_lookup_statistics()
            data_table = stats.token_rows(self._lookup_prior(stats, measure_tokens, exclude_ids), c)
        if table is None:
            assert measured is not None
            if strategy == "auto":
                chosen, report = select_unigram_strategy(
                    self.model, cfg.hook_name, measure_tokens, hook_head_index=cfg.hook_head_index,
                    exclude_ids=exclude_ids, extra_tables={DATA_STRATEGY: data_table})
                logger.info(f"unigram_strategy='auto' chose '{chosen}': {report}")
                strategy = cfg.sae.unigram_strategy = self.sae.cfg.unigram_strategy = chosen
                self.unigram_report["unigram_strategy_selection"] = report
            if strategy == DATA_STRATEGY:
                assert stats is not None
                table = data_table
            else:
                table = get_unigram_table(
                    self.model, cfg.hook_name, strategy=strategy,
                    hook_head_index=cfg.hook_head_index, cache_dir=cfg.sae.unigram_cache,
                )
            # Guard the choice: compare the table with real activations of its tokens. (A
            # data-estimated table skips each sequence's first position, so it holds no
            # sink; on a small sample its unseen rows are the mean, which the measure would
            # misread as one.)
            fit = unigram_fit(table, *measured, strategy=strategy)
            if strategy != DATA_STRATEGY:
                warn_if_sink(fit, str(cfg.model_name), cfg.hook_name)
            self.unigram_report["unigram_fit"] = fit.as_dict()
        if cfg.sae.lookup_init_scale is None:
            cfg.sae.lookup_init_scale = self.sae.cfg.lookup_init_scale = default_init_scale(strategy)
        self.unigram_table = table
        self.sae.init_lookup_from_unigrams(table)
        if ngram == 2:
            assert stats is not None
            scale = self.sae.cfg.lookup_init_scale
            bigrams = stats.bigram_table(data_table, self.sae.cfg.lookup_bigram_rows,
                                         cfg.sae.lookup_bigram_min_count, cfg.sae.lookup_bigram_pseudo_count)
            # the SAE holds (and saves) the chosen rows only, not the whole budget
            self.sae.resize_bigram_rows(len(bigrams.keys))
            self.sae.set_bigram_rows(bigrams.keys, scale * bigrams.rows)
            self.unigram_report["lookup_init"].update(
                bigram_rows_used=len(bigrams.keys), bigram_row_budget=cfg.sae.lookup_bigram_rows,
                bigram_min_count=cfg.sae.lookup_bigram_min_count)
        for key, value in self.unigram_report.items():
            setattr(self.sae.cfg.metadata, key, value)

    def run(self):
        """Train the SAE: SAELens's ``run``, with the tokenized trainer."""
        with runner_classes(SAETrainer=TokenizedSAETrainer):
            return super().run()


#: What trains a tokenized SAE, for the errors of the entry points that cannot.
TRAINING_ENTRY_POINTS = (
    "sae_lens_tokenized.TokenizedSAETrainingRunner(cfg).run() (same config), or the CLI "
    "`sae-lens-tokenized train ...` (the same arguments as `python -m sae_lens.llm_sae_training_runner`)"
)


def refuse_tokenized_configs(runner: Any, cfg: Any) -> None:
    """Run first in SAELens's own runners (``_compat.py`` entry 17): a tokenized config
    there would load the model and fill the buffer, then fail at the first step, since
    SAELens's store drops each activation's token id. Refused before any of that."""
    if isinstance(runner, TokenizedSAETrainingRunner):
        return
    sae_cfgs = getattr(cfg, "saes", None)
    named = dict(sae_cfgs) if isinstance(sae_cfgs, dict) else {"sae": getattr(cfg, "sae", None)}
    tokenized = sorted(name for name, c in named.items() if isinstance(c, LookupTrainingConfig))
    if tokenized:
        what = "cfg.sae is" if "sae" in named and len(named) == 1 else f"cfg.saes {tokenized} are"
        raise TypeError(
            f"{what} a tokenized SAE config, which SAELens's {type(runner).__name__} cannot train: "
            "its activation store drops the token id of each activation, which the lookup needs "
            f"at every step. Train it with {TRAINING_ENTRY_POINTS}."
        )


def _guard_saelens_runners() -> None:
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner

    for runner_cls in (LanguageModelSAETrainingRunner, MultiSAETrainingRunner):
        guard_runner_init(runner_cls, refuse_tokenized_configs)


_guard_saelens_runners()
