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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig

from sae_lens_tokenized.lookup.config import LookupTrainingConfig
from sae_lens_tokenized.lookup.strategies import (
    DATA_STRATEGY,
    DEFAULT_INIT_SCALE,
    PRECOMPUTED_STRATEGY,
    UnigramStrategy,
    UnigramStrategyError,
)
from sae_lens_tokenized.lookup_init.fit import sample_activations, select_unigram_strategy, unigram_fit, warn_if_sink
from sae_lens_tokenized.lookup_init.sample import (
    N_MEASURE_SEQUENCES,
    SharedSample,
    needs_measurement,
    needs_sample,
    sample_lookup_statistics,
    warn_unexcluded_special_tokens,
)
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics
from sae_lens_tokenized.lookup_init.unigrams import (
    UnigramCacheError,
    get_unigram_table,
    load_unigram_table_file,
    table_metadata,
)
from sae_lens_tokenized.models import activations_at_hook, device_of, resolve_hook, vocab_size

def check_against_model(model: Any, cfg: LanguageModelSAERunnerConfig[Any], table_given: bool = False) -> None:
    """Raise before any training if the config does not fit the model (``table_given``: the
    runner was handed a precomputed unigram table)."""
    check_sae_against_model(model, cfg.sae, cfg.hook_name, cfg.hook_head_index, cfg.seqpos_slice,
                            model_name=str(cfg.model_name), table_given=table_given)


def check_sae_against_model(model: Any, sae_cfg: Any, hook_name: str, hook_head_index: int | None,
                            seqpos_slice: Any, model_name: str = "the model", name: str | None = None,
                            table_given: bool = False) -> None:
    """One tokenized SAE config against the model it will train on (``name``: its key in a
    multi-SAE config, for the message; ``table_given``: a precomputed table was handed to
    the runner, which then is the prior's unigrams too)."""
    where = f"cfg.saes[{name!r}]: " if name is not None else ""
    resolve_hook(model, hook_name)
    model_vocab = vocab_size(model)
    if sae_cfg.d_vocab != model_vocab:
        raise ValueError(
            f"{where}d_vocab={sae_cfg.d_vocab} but the model has d_vocab={model_vocab}; the lookup "
            f"needs one row per model token id. Set d_vocab={model_vocab} or leave it None."
        )
    probe = torch.zeros(1, 2, dtype=torch.long, device=device_of(model))
    width = activations_at_hook(model, probe, hook_name, hook_head_index).shape[-1]
    if width != sae_cfg.d_in:
        raise ValueError(
            f"{where}d_in={sae_cfg.d_in} but activations at {hook_name!r} have width {width}; "
            f"set d_in={width}."
        )
    if sae_cfg.lookup_ngram == 2 and len(seqpos_slice) > 2 and seqpos_slice[2] not in (None, 1):
        raise ValueError(
            f"{where}seqpos_slice={seqpos_slice} skips positions, so a position's previous token is not "
            "the one before it in the batch; a bigram lookup (lookup_ngram=2) needs a contiguous slice."
        )
    if (sae_cfg.init_lookup_from_unigrams and sae_cfg.unigram_table_path is None
            and sae_cfg.unigram_strategy not in ("auto", DATA_STRATEGY, PRECOMPUTED_STRATEGY)):
        strategy = UnigramStrategy.parse(sae_cfg.unigram_strategy)
        if not strategy.has_t:
            raise ValueError(
                f"{where}unigram_strategy '{strategy}' contains no 't', so every lookup row would be "
                "the same vector; it is an analysis control, not an initialisation."
            )
        strategy.resolve(getattr(model, "tokenizer", None), model_vocab, model_name)
    prior = getattr(sae_cfg, "lookup_init_prior", "mean")
    own_table = not table_given and sae_cfg.unigram_table_path is None  # else a given table is U (lookup_prior)
    if sae_cfg.init_lookup_from_unigrams and needs_sample(sae_cfg) and own_table and prior not in ("mean", "auto"):
        try:
            UnigramStrategy.parse(prior).resolve(getattr(model, "tokenizer", None), model_vocab, model_name)
        except UnigramStrategyError as e:
            raise ValueError(
                f"{where}lookup_init_prior={prior!r} (the prior of data-estimated rows) cannot be built for "
                f"this model: {e}. Set lookup_init_prior to a prompt strategy it can build (e.g. 'bos,t', or a "
                "literal token id such as '220,t'), 'auto', or 'mean' (the sample mean).") from e


EXPLICIT_MATCH_FIELDS = ("model_fingerprint", "hook_name", "hook_head_index", "strategy", "d_vocab")


def lookup_hook(cfg: Any) -> str:
    """Where the lookup's rows live: the SAE's hook, or a transcoder's output hook (its
    lookup is part of the reconstructed output). Unigram tables, the data sample's rows,
    and the measurements that choose or check a table are all taken there."""
    return getattr(cfg.sae, "hook_name_out", None) or cfg.hook_name


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
        want = table_metadata(model, lookup_hook(cfg), meta["strategy"], cfg.hook_head_index, table.dtype)
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
    expected = (sae.d_vocab, sae.lookup_width)
    if tuple(table.shape) != expected:
        raise ValueError(
            f"the precomputed unigram table has shape {tuple(table.shape)} "
            f"but this SAE needs [d_vocab, {sae.lookup_width_name}] = {list(expected)}"
        )
    if will_init and sae.unigram_strategy == "auto":
        raise ValueError(
            "unigram_strategy='auto' chooses the table itself, so it cannot be used with a "
            "precomputed unigram table; pass the table's strategy.")
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
                     table_strategy: str | None = None, device: torch.device | str = "cpu",
                     shared: SharedSample | None = None, sums: torch.Tensor | None = None) -> LookupInitPlan:
    """Decide a fresh lookup's rows (module docstring). ``store`` is the run's
    ``TokenizedActivationsStore``: the measurement sequences and the init sample are read
    from it, before training. ``table``: a precomputed table (``resolve_precomputed_table``).
    ``shared``: the measurement and statistics already taken at this SAE's hook (the
    multi-SAE runner samples once per hook); then nothing is read from ``store``.
    ``sums``: where to accumulate a fresh sample's per-token sums (the single runner passes
    the lookup's own token rows: the data table is then computed in place, and ``plan.table``
    is that memory)."""
    sae_cfg: LookupTrainingConfig = cfg.sae
    hook = lookup_hook(cfg)
    strategy = sae_cfg.unigram_strategy
    if table is not None and strategy == DATA_STRATEGY:
        strategy = table_strategy or PRECOMPUTED_STRATEGY  # an explicit table wins over the default
    report: dict[str, Any] = {}
    measure_tokens = measured = None
    excluded = store.exclude_special_tokens
    exclude_ids: list[int] = [] if excluded is None else excluded.tolist()
    if table is None and needs_measurement(sae_cfg):
        # measured first, so the measurement sequences are not in the init sample
        measure_tokens = (shared.measure_tokens if shared is not None and shared.measure_tokens is not None
                          else store.get_batch_tokens(N_MEASURE_SEQUENCES))
        if cfg.exclude_special_tokens is True:
            warn_unexcluded_special_tokens(model.tokenizer, measure_tokens, excluded)
        measured = sample_activations(model, measure_tokens, hook, cfg.hook_head_index, exclude_ids=exclude_ids)
    stats = data_table = None
    if needs_sample(sae_cfg, strategy):
        if shared is not None and shared.stats is not None:
            stats, report["lookup_init"] = shared.stats, dict(shared.report)
        else:
            stats, report["lookup_init"] = sample_lookup_statistics(
                store, cfg, device, warn_special=measure_tokens is None and cfg.exclude_special_tokens is True,
                tokenizer=getattr(model, "tokenizer", None), sums=sums)
        prior = lookup_prior(model, cfg, stats, measure_tokens, exclude_ids, report["lookup_init"], given=table)
        # a sample of its own (not shared by a multi runner's SAEs at this hook): its sums
        # become the table in place, so no second [d_vocab, d_in] table is held
        data_table = stats.token_rows(prior, sae_cfg.lookup_init_pseudo_count, consume=shared is None)
    if table is None:
        if strategy == "auto":
            strategy, selection = select_unigram_strategy(
                model, hook, measure_tokens, hook_head_index=cfg.hook_head_index,
                exclude_ids=exclude_ids, extra_tables={DATA_STRATEGY: data_table})
            logger.info(f"unigram_strategy='auto' chose '{strategy}': {selection}")
            report["unigram_strategy_selection"] = selection
        if strategy == DATA_STRATEGY:
            assert data_table is not None
            table = data_table
        else:
            table = get_unigram_table(model, hook, strategy=strategy,
                                      hook_head_index=cfg.hook_head_index, cache_dir=sae_cfg.unigram_cache)
        # Guard the choice: compare the table with real activations of its tokens. (A
        # data-estimated table skips each sequence's first position, so it holds no sink;
        # on a small sample its unseen rows are the mean, which the measure would misread
        # as one.)
        if measured is not None:
            fit = unigram_fit(table, *measured, strategy=strategy)
            if strategy != DATA_STRATEGY:
                warn_if_sink(fit, str(cfg.model_name), hook)
            report["unigram_fit"] = fit.as_dict()
    scale = sae_cfg.lookup_init_scale if sae_cfg.lookup_init_scale is not None else DEFAULT_INIT_SCALE
    plan = LookupInitPlan(table=table, strategy=strategy, scale=scale, report=report)
    if sae_cfg.lookup_ngram == 2:
        assert stats is not None and data_table is not None
        bigrams = stats.bigram_table(data_table, sae_cfg.lookup_bigram_rows, sae_cfg.lookup_bigram_min_count,
                                     sae_cfg.lookup_bigram_pseudo_count)
        plan.bigram_keys, plan.bigram_rows = bigrams.keys, bigrams.rows
        report["lookup_init"].update(bigram_rows_used=len(bigrams.keys), bigram_row_budget=sae_cfg.lookup_bigram_rows,
                                     bigram_min_count=sae_cfg.lookup_bigram_min_count)
    return plan


def lookup_prior(model: Any, cfg: Any, stats: LookupStatistics, measure_tokens: Any, exclude_ids: list[int],
                 report: dict[str, Any], given: torch.Tensor | None = None) -> torch.Tensor | None:
    """The prior of data-estimated rows (``lookup_init_prior``): ``None`` for the sample
    mean, else ``mean + (U - U_mean)`` from a prompt unigram table ``U``: the user's
    precomputed table where one was ``given`` (it is the model's unigrams this run trusts,
    and costs no forward), else the strategy's table (cached per model and hook)."""
    prior = cfg.sae.lookup_init_prior
    hook = lookup_hook(cfg)
    if prior == "mean":
        report["prior"] = "mean"
        return None
    selection = None
    if given is not None:
        prior, table = PRECOMPUTED_STRATEGY, given.to(stats.sums, copy=True)
    else:
        if prior == "auto":
            assert measure_tokens is not None  # needs_measurement(): "auto" is measured
            prior, selection = select_unigram_strategy(model, hook, measure_tokens,
                                                       hook_head_index=cfg.hook_head_index, exclude_ids=exclude_ids)
            logger.info(f"lookup_init_prior='auto' chose '{prior}': {selection}")
        # a fresh tensor (computed, or read from the cache), centred in place below: the
        # init holds one [d_vocab, d_in] table beside the sums
        table = get_unigram_table(model, hook, strategy=prior, hook_head_index=cfg.hook_head_index,
                                  cache_dir=cfg.sae.unigram_cache).to(stats.sums)
    counts = stats.counts.to(stats.sums)
    centre = (counts @ table) / counts.sum().clamp_min(1)
    unseen = int((stats.counts == 0).sum())
    report["prior"] = {"unigram_strategy": prior, "tokens_given_only_the_prior": unseen,
                       **({"selection": selection} if selection is not None else {})}
    logger.info(f"lookup init: {unseen:,} tokens absent from the sample get their '{prior}' unigram, centred on "
                "the sample mean, as their row")
    return table.sub_(centre).add_(stats.mean())
