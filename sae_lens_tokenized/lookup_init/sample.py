"""The samples a lookup is initialised from, read from SAELens's store before training.

The init sample is the first ``lookup_init_tokens`` activations of the training stream
(never more than the run's ``training_tokens``, nor more than one pass over a finite
dataset). The store holds the batches it reads (``holding()``) and serves them to training
first, so the sample is trained on, not read twice. The measurement sequences (for
``"auto"`` and the sink check of a prompt table) are read only when an init needs them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import logger
from tqdm.auto import tqdm

from sae_lens_tokenized import parallel
from sae_lens_tokenized.lookup.ids import TOKEN_IDS_KEY
from sae_lens_tokenized.lookup.strategies import DATA_STRATEGY
from sae_lens_tokenized.lookup_init.statistics import LookupStatistics, previous_ids_of_batch

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


@dataclass
class SharedSample:
    """What every tokenized SAE at one hook may share: the measurement sequences (read
    first, never part of the sample) and the init sample's statistics with their report."""

    measure_tokens: torch.Tensor | None
    stats: LookupStatistics | None = None
    report: dict[str, Any] = field(default_factory=dict)


def needs_sample(sae_cfg: Any, strategy: str | None = None) -> bool:
    """Does this init read the init sample? For a data-estimated or ``auto`` table, and
    for bigram rows. ``strategy``: the one in force, where a precomputed table replaced
    the config's."""
    return (strategy or sae_cfg.unigram_strategy) in ("auto", DATA_STRATEGY) or sae_cfg.lookup_ngram == 2


def needs_measurement(sae_cfg: Any) -> bool:
    """Does this init read the measurement sequences? Only to choose a strategy (``auto``)
    or a prior (``lookup_init_prior="auto"``), or to check a prompt table for a sink; the
    default data estimate needs none, so every activation its run reads is trained on."""
    return sae_cfg.unigram_strategy != DATA_STRATEGY or sae_cfg.lookup_init_prior == "auto"


def sample_lookup_statistics(store: Any, cfg: Any, device: torch.device | str = "cpu", warn_special: bool = False,
                             tokenizer: Any = None, sums: torch.Tensor | None = None,
                             ) -> tuple[LookupStatistics, dict[str, Any]]:
    """Per-token (and per-bigram) sums over the first ``lookup_init_tokens`` activations of
    the training stream, never more than the run's ``training_tokens`` nor more than one
    pass over the dataset. The store holds the batches read (``store.holding()``) and
    serves them to training first: the sample is trained on, not read twice."""
    sae_cfg = cfg.sae
    requested = sae_cfg.lookup_init_tokens
    target = min(requested, cfg.training_tokens)
    capped_by = "training_tokens" if target < requested else None
    dp = parallel.current()
    if dp is not None:  # each rank samples its share of its own data; the sums are reduced below
        target = -(-target // dp.world)
    held = hasattr(store, "holding")  # the plugin's store (not a plain one a caller passes)
    reread = (lambda: (batch[0] for batch in store.held_batches_with_ids())) if held else None
    stats = LookupStatistics(sae_cfg.d_vocab, sae_cfg.lookup_width, sae_cfg.lookup_ngram, device=device, sums=sums,
                             reread=reread)
    excluded = store.exclude_special_tokens
    drawn = skipped_first = 0
    desc = "lookup init: sampling activations" + (f" (capped at training_tokens={target:,})" if capped_by else "")
    holding = store.holding(sae_cfg.lookup_init_hold, expected_rows=target) if held else contextlib.nullcontext()
    with tqdm(total=target, desc=desc, unit="tok") as bar, holding:
        while drawn < target:
            try:
                acts, ids, *prev = store.get_raw_llm_batch_with_ids(raise_on_epoch_end=True)
            except StopIteration:  # the store rewinds; training starts the dataset anew
                capped_by = "one pass over the dataset"
                bar.set_postfix_str("the dataset ended: one pass sampled")
                break
            if warn_special and drawn == 0:
                warn_unexcluded_special_tokens(tokenizer, ids, excluded)
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
            stats.add(acts, ids, prev[0] if prev else None, keep=keep)
    if dp is not None:
        stats.reduce_across(dp)
        drawn, skipped_first = (int(v) for v in dp.all_reduce_(torch.tensor([drawn, skipped_first]),
                                                               what="summing the init sample's size"))
    if stats.n_tokens == 0:
        raise ValueError(
            f"the lookup init sampled {drawn} activations and none was usable (each sequence's first "
            "position is skipped, and so are excluded special tokens): the dataset is too small to "
            "estimate a lookup from. Use a prompt strategy (unigram_strategy='space,t') with lookup_ngram=1."
        )
    report = {"tokens_requested": requested, "tokens_drawn_from_training_stream": drawn,
              "capped_by": capped_by, "first_positions_skipped": skipped_first,
              "trained_on": held, "held_on": sae_cfg.lookup_init_hold if held else None, **stats.report()}
    logger.info(f"lookup init: estimated from the first {drawn:,} activations of the training stream: {report}")
    return stats, report


def sample_multi_hook_statistics(store: Any, cfg: Any, sae_cfgs: dict[str, Any],
                                 hooks: set[str]) -> dict[str, SharedSample]:
    """The multi-SAE runner's init sample: one LLM forward per batch serves every hook.

    Every tokenized SAE at a hook shares that hook's statistics (each then builds its own
    rows with its own pseudo-counts, prior and bigram settings), so they must agree on what
    is sampled: ``lookup_init_tokens``. The sample is capped like the single runner's."""
    per_hook: dict[str, list[str]] = {}
    for name in sorted(sae_cfgs):  # a fixed order whatever the caller's
        per_hook.setdefault(cfg.hook_names_per_sae[name], []).append(name)
    wants = {}
    for hook, names in per_hook.items():
        sizes = {sae_cfgs[n].lookup_init_tokens for n in names}
        if len(sizes) > 1:
            raise ValueError(
                f"the tokenized SAEs {names} at {hook!r} share one init sample but ask for different "
                f"lookup_init_tokens {sorted(sizes)}; give them the same value (or train them separately).")
        needs = any(needs_sample(sae_cfgs[n]) for n in names)
        wants[hook] = (sizes.pop(), max(sae_cfgs[n].lookup_ngram for n in names), needs, names)
    places = {c.lookup_init_hold for c in sae_cfgs.values()}
    if len(places) > 1:
        raise ValueError(
            f"the tokenized SAEs {sorted(sae_cfgs)} share one init sample but ask to hold it in different places "
            f"(lookup_init_hold {sorted(places)}); give them the same value.")
    measure = (store.get_batch_tokens(N_MEASURE_SEQUENCES)
               if any(needs_measurement(c) for c in sae_cfgs.values()) else None)
    sampled = {h: w for h, w in wants.items() if w[2]}
    out = {h: SharedSample(measure) for h in hooks}
    if not sampled:
        return out
    requested = max(w[0] for w in sampled.values())
    target = min(requested, cfg.training_tokens)
    capped_by = "training_tokens" if target < requested else None
    d_vocab = sae_cfgs[next(iter(sampled.values()))[3][0]].d_vocab
    stats = {h: LookupStatistics(d_vocab, sae_cfgs[w[3][0]].lookup_width, w[1], reread=_held_at(store, h))
             for h, w in sampled.items()}
    excluded = store.exclude_special_tokens
    drawn = skipped_first = 0
    desc = "lookup init: sampling activations at " + ", ".join(sampled)
    hold = places.pop()
    with tqdm(total=target, desc=desc, unit="tok") as bar, store.holding(hold, expected_rows=target):
        while drawn < target:
            try:
                tokens = store.get_batch_tokens(raise_at_epoch_end=True)
            except StopIteration:
                capped_by = "one pass over the dataset"
                break
            acts = store.get_multi_hook_activations(tokens)
            packed = acts[TOKEN_IDS_KEY].reshape(-1, 2)
            prev, ids = packed[:, 0].long(), packed[:, 1].long()
            keep = prev >= 0
            skipped_first += int((~keep).sum())
            if excluded is not None:
                keep &= ~torch.isin(ids, excluded.to(ids.device))
            for hook, st in stats.items():
                a = acts[hook].reshape(len(ids), -1)
                st.add(a, ids, prev if st.ngram == 2 else None, keep=keep)
            drawn += len(ids)
            bar.update(len(ids))
    for hook, st in stats.items():
        st.expect_bigram_tables((sae_cfgs[n].lookup_bigram_rows, sae_cfgs[n].lookup_bigram_min_count)
                                for n in wants[hook][3] if sae_cfgs[n].lookup_ngram == 2)
        if st.n_tokens == 0:
            raise ValueError(f"the lookup init sampled {drawn} activations and none was usable at {hook!r}: "
                             "the dataset is too small to estimate a lookup from.")
        out[hook].stats = st
        out[hook].report = {"tokens_requested": requested, "tokens_drawn_from_training_stream": drawn,
                            "capped_by": capped_by, "first_positions_skipped": skipped_first, "trained_on": True,
                            "held_on": hold,
                            "shared_by": wants[hook][3], **st.report()}
    return out


def _held_at(store: Any, hook: str) -> Any:
    """The multi-hook store's held batches' activations at ``hook``, again (the bigrams'
    second pass)."""
    def reread() -> Iterator[torch.Tensor]:
        for _, acts in store.held_batches():
            yield acts[hook].reshape(acts[TOKEN_IDS_KEY].numel() // 2, -1)
    return reread
