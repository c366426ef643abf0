"""Lookup initialisation: from a model, its training stream and a config, a plan.

``plan_lookup_init`` decides every row a fresh lookup starts from and returns it as a
``LookupInitPlan`` (token rows, bigram rows, the resolved strategy and scale, and a
report for cfg.json); the runner only applies it (``plan.apply(sae)``). The strategies:

* a prompt table (``unigram_strategy="bos,t"``, ...): the model's activation for each
  token's prompt (Dooms & Wilhelm, Sec. 3; ``lookup_init.unigrams``), scaled by 0.5;
* ``"data"`` (the default): each token's mean activation over a sample of the training
  stream, shrunk toward a prior (``lookup_init.statistics``), and, with ``lookup_ngram=2``,
  rows for the sample's frequent (previous token, token) pairs;
* ``"auto"``: each candidate measured against real activations of its tokens
  (``lookup_init.fit``), the best kept.

The evidence behind these defaults is on the docs' "Lookup initialisation" page.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig
from tqdm.auto import tqdm

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.strategies import (
    DATA_STRATEGY,
    PRECOMPUTED_STRATEGY,
    UnigramStrategy,
    default_init_scale,
)
from sae_lens_tokenized.lookup_init.fit import sample_activations, select_unigram_strategy, unigram_fit, warn_if_sink
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics, previous_ids_of_batch
from sae_lens_tokenized.lookup_init.unigrams import (
    UnigramCacheError,
    get_unigram_table,
    load_unigram_table_file,
    table_metadata,
)
from sae_lens_tokenized.models import activations_at_hook, device_of, resolve_hook, vocab_size

#: sequences of the training data used to measure unigram strategies ('auto', sink check);
#: read before the init sample, so never part of it
N_MEASURE_SEQUENCES = 8


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


def resolve_precomputed_table(model: Any, cfg: Any, table: torch.Tensor | None,
                              will_init: bool) -> tuple[torch.Tensor | None, str | None]:
    """A table the user gave (``unigram_table=`` or ``unigram_table_path``), checked
    against the run before any work: ``(table, the strategy it records)`` or ``(None, None)``."""
    sae = cfg.sae
    strategy = None
    if table is None and sae.unigram_table_path is not None:
        table = load_unigram_table(sae.unigram_table_path, model, cfg)
        strategy = unigram_table_strategy(sae.unigram_table_path)
    if table is None:
        return None, None
    expected = (sae.d_vocab, sae.d_in)
    if tuple(table.shape) != expected:
        raise ValueError(
            f"the precomputed unigram table has shape {tuple(table.shape)} "
            f"but this SAE needs [d_vocab, d_in] = {list(expected)}"
        )
    if will_init and sae.unigram_strategy == "auto":
        raise ValueError(
            "unigram_strategy='auto' chooses the table itself, so it cannot be used with a "
            "precomputed unigram table; pass the table's strategy.")
    if sae.lookup_init_prior != "mean":
        raise ValueError(
            f"lookup_init_prior={sae.lookup_init_prior!r} builds the prior of data-estimated rows "
            "from the model's unigrams, but a precomputed unigram table was given; drop the table or "
            "set lookup_init_prior='mean'.")
    return table, strategy


@dataclass
class LookupInitPlan:
    """Every row a fresh lookup starts from, and what was resolved to get them.

    ``table`` [d_vocab, d_in] and ``bigram_rows`` [n, d_in] are unscaled; ``apply`` writes
    ``scale *`` them into the SAE, records ``strategy`` and ``scale`` in its config (so
    cfg.json says what was used) and ``report`` in its metadata."""

    table: torch.Tensor
    strategy: str
    scale: float
    bigram_keys: torch.Tensor | None = None
    bigram_rows: torch.Tensor | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def apply(self, sae: Any) -> None:
        sae.cfg.unigram_strategy = self.strategy
        sae.cfg.lookup_init_scale = self.scale
        sae.init_lookup_from_unigrams(self.table, self.scale)
        if self.bigram_keys is not None:
            assert self.bigram_rows is not None
            sae.resize_bigram_rows(len(self.bigram_keys))  # the chosen rows only, not the budget
            sae.set_bigram_rows(self.bigram_keys, self.scale * self.bigram_rows)
        for key, value in self.report.items():
            setattr(sae.cfg.metadata, key, value)


def plan_lookup_init(model: Any, store: Any, cfg: Any, table: torch.Tensor | None = None,
                     table_strategy: str | None = None, device: torch.device | str = "cpu") -> LookupInitPlan:
    """Decide a fresh lookup's rows (module docstring). ``store`` is the run's
    ``TokenizedActivationsStore``: the measurement sequences and the init sample are read
    from it, before training. ``table``: a precomputed table (``resolve_precomputed_table``)."""
    sae_cfg: LookupTrainingConfig = cfg.sae
    strategy = sae_cfg.unigram_strategy
    if table is not None and strategy == DATA_STRATEGY:
        strategy = table_strategy or PRECOMPUTED_STRATEGY  # an explicit table wins over the default
    report: dict[str, Any] = {}
    measure_tokens = measured = None
    exclude_ids: list[int] = []
    if table is None:
        # measured first, so the measurement sequences are not in the init sample
        measure_tokens = store.get_batch_tokens(N_MEASURE_SEQUENCES)
        excluded = store.exclude_special_tokens
        exclude_ids = [] if excluded is None else excluded.tolist()
        if cfg.exclude_special_tokens is True:
            warn_unexcluded_special_tokens(model.tokenizer, measure_tokens, excluded)
        measured = sample_activations(model, measure_tokens, cfg.hook_name, cfg.hook_head_index, exclude_ids=exclude_ids)
    stats = data_table = None
    if strategy in ("auto", DATA_STRATEGY) or sae_cfg.lookup_ngram == 2:
        stats, report["lookup_init"] = sample_lookup_statistics(store, cfg, device)
        prior = lookup_prior(model, cfg, stats, measure_tokens, exclude_ids, report["lookup_init"])
        data_table = stats.token_rows(prior, sae_cfg.lookup_init_pseudo_count)
    if table is None:
        assert measured is not None
        if strategy == "auto":
            strategy, selection = select_unigram_strategy(
                model, cfg.hook_name, measure_tokens, hook_head_index=cfg.hook_head_index,
                exclude_ids=exclude_ids, extra_tables={DATA_STRATEGY: data_table})
            logger.info(f"unigram_strategy='auto' chose '{strategy}': {selection}")
            report["unigram_strategy_selection"] = selection
        if strategy == DATA_STRATEGY:
            assert data_table is not None
            table = data_table
        else:
            table = get_unigram_table(model, cfg.hook_name, strategy=strategy,
                                      hook_head_index=cfg.hook_head_index, cache_dir=sae_cfg.unigram_cache)
        # Guard the choice: compare the table with real activations of its tokens. (A
        # data-estimated table skips each sequence's first position, so it holds no sink;
        # on a small sample its unseen rows are the mean, which the measure would misread
        # as one.)
        fit = unigram_fit(table, *measured, strategy=strategy)
        if strategy != DATA_STRATEGY:
            warn_if_sink(fit, str(cfg.model_name), cfg.hook_name)
        report["unigram_fit"] = fit.as_dict()
    scale = sae_cfg.lookup_init_scale if sae_cfg.lookup_init_scale is not None else default_init_scale(strategy)
    plan = LookupInitPlan(table=table, strategy=strategy, scale=scale, report=report)
    if sae_cfg.lookup_ngram == 2:
        assert stats is not None and data_table is not None
        bigrams = stats.bigram_table(data_table, sae_cfg.lookup_bigram_rows, sae_cfg.lookup_bigram_min_count,
                                     sae_cfg.lookup_bigram_pseudo_count)
        plan.bigram_keys, plan.bigram_rows = bigrams.keys, bigrams.rows
        report["lookup_init"].update(bigram_rows_used=len(bigrams.keys), bigram_row_budget=sae_cfg.lookup_bigram_rows,
                                     bigram_min_count=sae_cfg.lookup_bigram_min_count)
    return plan


def sample_lookup_statistics(store: Any, cfg: Any, device: torch.device | str = "cpu") -> tuple[LookupStatistics, dict[str, Any]]:
    """Per-token (and per-bigram) sums over activations drawn from the training stream
    before training (they are not trained on): ``lookup_init_tokens`` of them, but never
    more than the run's ``training_tokens`` nor more than one pass over the dataset."""
    sae_cfg = cfg.sae
    requested = sae_cfg.lookup_init_tokens
    target = min(requested, cfg.training_tokens)
    capped_by = "training_tokens" if target < requested else None
    stats = LookupStatistics(sae_cfg.d_vocab, sae_cfg.d_in, sae_cfg.lookup_ngram, device=device)
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
            # activations whatever the token): averaged in, one occurrence would swamp its
            # token's mean. Skipped here (a token seen only there gets the prior); the
            # lookup still trains on those positions. (A bigram store already packed the
            # previous ids; otherwise they are read off the batch's sequences.)
            prev_ids = prev[0] if prev else previous_ids_of_batch(ids, store.store_batch_size_prompts)
            keep = prev_ids >= 0
            skipped_first += int((~keep).sum())
            if excluded is not None:
                keep &= ~torch.isin(ids, excluded.to(ids.device))
            stats.add(acts[keep], ids[keep], prev[0][keep] if prev else None)
    if stats.n_tokens == 0:
        raise ValueError(
            f"the lookup init sampled {drawn} activations and none was usable (each sequence's first "
            "position is skipped, and so are excluded special tokens): the dataset is too small to "
            "estimate a lookup from. Use a prompt strategy (unigram_strategy='space,t') with lookup_ngram=1."
        )
    report = {"tokens_requested": requested, "tokens_drawn_from_training_stream": drawn,
              "capped_by": capped_by, "first_positions_skipped": skipped_first, **stats.report()}
    logger.info(f"lookup init: estimated from {drawn:,} activations drawn from the training stream before "
                f"training (they are not trained on): {report}")
    return stats, report


def lookup_prior(model: Any, cfg: Any, stats: LookupStatistics, measure_tokens: Any, exclude_ids: list[int],
                 report: dict[str, Any]) -> torch.Tensor | None:
    """The prior of data-estimated rows (``lookup_init_prior``): ``None`` for the sample
    mean, else ``mean + (U - U_mean)`` from a prompt unigram table ``U``."""
    prior = cfg.sae.lookup_init_prior
    if prior == "mean":
        report["prior"] = "mean"
        return None
    assert measure_tokens is not None  # a precomputed table with a unigram prior fails in resolve_precomputed_table
    selection = None
    if prior == "auto":
        prior, selection = select_unigram_strategy(model, cfg.hook_name, measure_tokens,
                                                   hook_head_index=cfg.hook_head_index, exclude_ids=exclude_ids)
        logger.info(f"lookup_init_prior='auto' chose '{prior}': {selection}")
    table = get_unigram_table(model, cfg.hook_name, strategy=prior, hook_head_index=cfg.hook_head_index,
                              cache_dir=cfg.sae.unigram_cache).to(stats.sums)
    counts = stats.counts.to(stats.sums)
    centre = (counts @ table) / counts.sum().clamp_min(1)
    unseen = int((stats.counts == 0).sum())
    report["prior"] = {"unigram_strategy": prior, "tokens_given_only_the_prior": unseen,
                       **({"selection": selection} if selection is not None else {})}
    logger.info(f"lookup init: {unseen:,} tokens absent from the sample get their '{prior}' unigram, centred on "
                "the sample mean, as their row")
    return stats.mean() + (table - centre)
