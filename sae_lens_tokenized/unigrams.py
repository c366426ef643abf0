"""Unigram tables: the model's activation for a token seen (almost) without context.

The unigram of token t under a strategy is the activation at the hook, at the last
position, of a short prompt built from a template (Dooms & Wilhelm, Sec. 3; the follow-up
note "Massive activations and why <bos> is important"). Template items:

* ``t``: the token itself;
* ``bos``, ``eos``, ``pad``: the tokenizer's special tokens;
* ``space``: the tokenizer's single-space token;
* an integer: that literal token id.

Strings are comma-separated: ``"bos,t"`` (the method's default), ``"t"``, ``"t,t"``,
``"space,t"``, ``"space,space,t"``, ``"220,t"`` ([X, t]) and the control ``"bos,220"`` (no
t: the same prompt for every row). Lists work too: ``["bos", "t"]``, ``[220, "t"]``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


from sae_lens_tokenized.metrics import nmse, nmse_per_activation
from sae_lens_tokenized.models import (  # noqa: F401  (activations_at_hook, resolve_hook re-exported)
    activations_at_hook,
    activations_at_hooks,
    device_of,
    model_label,
    resolve_hook,
    vocab_size,
)

SPECIAL_ITEMS = ("bos", "eos", "pad", "space")
#: The strategies this package knows by name, in the order ``auto`` prefers them on ties
#: (the method's default first). One list for auto, the analyses and the benchmarks.
STRATEGIES = ("bos,t", "space,t", "t,t", "space,space,t", "eos,t", "t")
BUILTIN_STRATEGIES = STRATEGIES


class UnigramStrategyError(ValueError):
    """A unigram strategy cannot be parsed or resolved for a model."""


@dataclass(frozen=True)
class UnigramStrategy:
    """A parsed template. ``items`` holds 't', special names, or ints."""

    items: tuple[str | int, ...]

    @classmethod
    def parse(cls, strategy: str | Sequence[str | int] | UnigramStrategy) -> UnigramStrategy:
        if isinstance(strategy, UnigramStrategy):
            return strategy
        if isinstance(strategy, str):
            if strategy.strip() == "auto":
                raise UnigramStrategyError(
                    "strategy 'auto' is chosen by measurement (select_unigram_strategy), "
                    "not parsed as a template"
                )
            raw: list[str | int] = [p.strip() for p in strategy.split(",")]
        else:
            raw = list(strategy)
        if not raw or any(p == "" for p in raw):
            raise UnigramStrategyError(
                f"empty unigram strategy template {strategy!r}; use e.g. 'bos,t' or ['bos', 't']"
            )
        items: list[str | int] = []
        for p in raw:
            if isinstance(p, bool):
                raise UnigramStrategyError(f"bad item {p!r} in unigram strategy {strategy!r}")
            if isinstance(p, int):
                items.append(p)
                continue
            if not isinstance(p, str):
                raise UnigramStrategyError(f"bad item {p!r} in unigram strategy {strategy!r}")
            low = p.strip().lower()
            if low.lstrip("-").isdigit():
                items.append(int(low))
            elif low == "t" or low in SPECIAL_ITEMS:
                items.append(low)
            else:
                raise UnigramStrategyError(
                    f"unknown item {p!r} in unigram strategy {strategy!r}: items are 't', "
                    f"{', '.join(repr(s) for s in SPECIAL_ITEMS)} or a token id"
                )
        return cls(tuple(items))

    @property
    def has_t(self) -> bool:
        return "t" in self.items

    def __str__(self) -> str:
        return ",".join(str(i) for i in self.items)

    def resolve(self, tokenizer: Any, d_vocab: int, model_label: str = "the model") -> list[int | None]:
        """Token ids of the template, ``None`` standing for t. Raises naming template and model."""
        out: list[int | None] = []
        for item in self.items:
            if item == "t":
                out.append(None)
            elif isinstance(item, int):
                if not 0 <= item < d_vocab:
                    raise UnigramStrategyError(
                        f"unigram strategy '{self}': token id {item} is out of range for "
                        f"{model_label} (d_vocab={d_vocab})"
                    )
                out.append(item)
            else:
                out.append(_special_id(item, tokenizer, self, model_label))
                if out[-1] is not None and not 0 <= out[-1] < d_vocab:  # type: ignore[operator]
                    raise UnigramStrategyError(
                        f"unigram strategy '{self}': {item} id {out[-1]} is out of range for "
                        f"{model_label} (d_vocab={d_vocab})"
                    )
        return out


def _special_id(item: str, tokenizer: Any, strategy: UnigramStrategy, model_label: str) -> int:
    if tokenizer is None:
        raise UnigramStrategyError(
            f"unigram strategy '{strategy}' uses '{item}' but {model_label} has no tokenizer; "
            "use literal token ids (e.g. '0,t') or the strategy 't'"
        )
    if item == "space":
        ids = tokenizer.encode(" ", add_special_tokens=False)
        if len(ids) != 1:
            raise UnigramStrategyError(
                f"unigram strategy '{strategy}': {model_label}'s tokenizer encodes ' ' as "
                f"{len(ids)} tokens {ids}, not one; use a literal token id instead of 'space'"
            )
        return int(ids[0])
    token_id = getattr(tokenizer, f"{item}_token_id", None)
    if token_id is None:
        alternatives = "'space,t' or 't'" if item == "bos" else "'bos,t' or 'space,t'"
        raise UnigramStrategyError(
            f"unigram strategy '{strategy}' needs a {item.upper()} token but {model_label}'s "
            f"tokenizer has none ({item}_token_id is None); choose another strategy, e.g. "
            f"{alternatives}, or a literal token id"
        )
    return int(token_id)


@torch.no_grad()
def compute_unigram_tables(
    model: Any,
    hook_names: Sequence[str],
    strategy: str | Sequence[str | int] | UnigramStrategy = "bos,t",
    batch_size: int = 1024,
    hook_head_index: int | None = None,
    token_ids: torch.Tensor | None = None,
    show_progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """The [d_vocab, d_in] unigram table of ``model`` at each of ``hook_names``.

    Row t is the activation at the last position of the strategy's prompt for t. The whole
    vocabulary is run in batches of ``batch_size`` prompts; each batch is one forward
    pass that stops right after the deepest hook, whatever the number of hooks (a user
    training SAEs at every layer gets all tables for the cost of one table at the last
    layer). Only the last position of each hook is kept, so memory is
    O(batch_size * prompt_len * d_model) plus the tables. ``token_ids`` restricts the
    computation to those rows (others are left zero).
    """
    hook_names = list(dict.fromkeys(hook_names))
    for name in hook_names:
        resolve_hook(model, name)
    d_vocab = vocab_size(model)
    parsed = UnigramStrategy.parse(strategy)
    template = parsed.resolve(getattr(model, "tokenizer", None), d_vocab, model_label(model))
    device = device_of(model)
    rows = torch.arange(d_vocab, device=device) if token_ids is None else token_ids.to(device)
    tables: dict[str, torch.Tensor] = {}
    where = hook_names[0] if len(hook_names) == 1 else f"{len(hook_names)} hooks"
    for start in tqdm(
        range(0, len(rows), batch_size),
        total=math.ceil(len(rows) / batch_size),
        desc=f"Unigrams [{parsed}] at {where}",
        disable=not show_progress,
    ):
        t = rows[start : start + batch_size]
        prompt = torch.stack(
            [t if item is None else torch.full_like(t, item) for item in template], dim=1
        )
        for name, act in activations_at_hooks(model, prompt, hook_names, hook_head_index).items():
            act = act[:, -1]
            if name not in tables:
                tables[name] = torch.zeros(d_vocab, act.shape[-1], dtype=dtype, device=act.device)
            tables[name][t.to(act.device)] = act.to(dtype)
    return tables


def compute_unigram_table(
    model: Any,
    hook_name: str,
    strategy: str | Sequence[str | int] | UnigramStrategy = "bos,t",
    batch_size: int = 1024,
    hook_head_index: int | None = None,
    token_ids: torch.Tensor | None = None,
    show_progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The [d_vocab, d_in] unigram table of ``model`` at ``hook_name`` (see
    ``compute_unigram_tables``, which computes several hooks in one pass)."""
    return compute_unigram_tables(model, [hook_name], strategy, batch_size, hook_head_index,
                                  token_ids, show_progress, dtype)[hook_name]


# =========================================================================== quality ===
# Is a table a good initialisation for a lookup? The activation a lookup row stands in for
# is the token's activation in ordinary text, so compare with that directly.

AUTO_CANDIDATES = STRATEGIES


@dataclass
class UnigramFit:
    """How well unigram rows match the real activations of their tokens.

    ``nmse``: mean over positions of |x - U_t|^2 / |x|^2 (the method's NMSE of the unigram
    used as a reconstruction; >1 is worse than predicting zero); ``nmse_median`` the same,
    median. ``nmse_of_mean``: the mean activation's NMSE, a baseline. ``cosine``: mean
    cos(x, U_t). ``norm_ratio``: mean |U_t| / mean |x| over positions (frequency-weighted:
    a sink on a frequent token counts as often as it occurs). ``sink_fraction``: share of
    positions whose token's unigram is over 4x the median activation norm; ``sink_tokens``
    the most frequent of those tokens.
    """

    strategy: str
    nmse: float
    nmse_median: float
    nmse_of_mean: float
    cosine: float
    norm_ratio: float
    sink_fraction: float
    sink_tokens: list[int]
    n_positions: int

    def looks_like_a_sink(self) -> bool:
        # Large rows alone are not the problem: some tokens really have massive activations
        # mid-sequence, and their data-estimated rows are rightly large (SmolLM2 L3: 6% of
        # positions, NMSE 0.44 against the mean's 0.59). A sink table is large *and* a worse
        # reconstruction than the mean activation.
        oversized = self.norm_ratio > 2.0 or self.sink_fraction > 0.05
        return oversized and self.nmse > self.nmse_of_mean

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sample_activations(
    model: Any,
    tokens: torch.Tensor,
    hook_name: str,
    hook_head_index: int | None = None,
    skip_first: int = 1,
    exclude_ids: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations [N, d_in], token ids [N]) from real sequences, position 0 skipped."""
    acts = activations_at_hook(model, tokens, hook_name, hook_head_index)[:, skip_first:]
    ids = tokens[:, skip_first:].to(acts.device)
    keep = ~torch.isin(ids, torch.tensor(list(exclude_ids), dtype=ids.dtype, device=ids.device))
    return acts[keep].float(), ids[keep]


def unigram_fit(
    table: torch.Tensor, acts: torch.Tensor, ids: torch.Tensor, strategy: str = ""
) -> UnigramFit:
    """Compare table rows with the activations of their tokens (see ``UnigramFit``)."""
    u = table.to(acts.device, torch.float32)[ids]
    per = nmse_per_activation(u, acts)
    u_norm, x_norm = u.norm(dim=-1), acts.norm(dim=-1)
    sink = u_norm > 4 * x_norm.median()
    sink_ids, counts = torch.unique(ids[sink], return_counts=True)
    return UnigramFit(
        strategy=strategy,
        nmse=float(per.mean()),
        nmse_median=float(per.median()),
        nmse_of_mean=nmse(acts.mean(0).expand_as(acts), acts),
        cosine=float(torch.nn.functional.cosine_similarity(acts, u, dim=-1).mean()),
        norm_ratio=float(u_norm.mean() / x_norm.mean().clamp_min(1e-12)),
        sink_fraction=float(sink.float().mean()),
        sink_tokens=[int(i) for i in sink_ids[counts.argsort(descending=True)][:10]],
        n_positions=int(len(ids)),
    )


def warn_if_sink(fit: UnigramFit, model_label: str, hook_name: str) -> None:
    if fit.looks_like_a_sink():
        warnings.warn(
            f"unigram strategy '{fit.strategy}' on {model_label} at {hook_name} looks like an "
            f"attention sink: weighted by frequency its unigrams have {fit.norm_ratio:.1f}x the "
            f"norm of ordinary activations, {fit.sink_fraction:.0%} of positions get a sink-sized "
            f"unigram (token ids {fit.sink_tokens[:5]}), and as reconstructions they give NMSE "
            f"{fit.nmse:.2f} (the mean activation: {fit.nmse_of_mean:.2f}). A lookup initialised "
            "from it starts far off. Try "
            "unigram_strategy='auto' (measures the candidates and picks the best) or 'space,t'.",
            UnigramSinkWarning,
            stacklevel=2,
        )


class UnigramSinkWarning(UserWarning):
    """A unigram table looks like an attention sink rather than ordinary activations."""


def select_unigram_strategy(
    model: Any,
    hook_name: str,
    sample_tokens: torch.Tensor,
    candidates: Sequence[str] = AUTO_CANDIDATES,
    hook_head_index: int | None = None,
    exclude_ids: Sequence[int] = (),
    extra_tables: dict[str, torch.Tensor] | None = None,
) -> tuple[str, dict[str, dict[str, Any]]]:
    """``strategy='auto'``: measure each resolvable candidate on real sequences, pick the best.

    ``extra_tables``: further candidates given as ready tables (the runner passes the
    data-estimated table as ``"data"``), measured the same way after the prompt ones.

    Only the rows of tokens that occur in ``sample_tokens`` are computed, so this costs a
    few small forward passes, not a vocabulary sweep per candidate. Best = lowest
    ``UnigramFit.nmse``. Returns (chosen strategy, {strategy: measurement}).
    """
    acts, ids = sample_activations(model, sample_tokens, hook_name, hook_head_index, exclude_ids=exclude_ids)
    if len(ids) == 0:
        raise ValueError("no positions left to measure unigram strategies on")
    rows = torch.unique(ids)
    label = model_label(model)
    report: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        try:
            UnigramStrategy.parse(cand).resolve(getattr(model, "tokenizer", None), vocab_size(model), label)
        except UnigramStrategyError as e:
            report[cand] = {"skipped": str(e)}
            continue
        table = compute_unigram_table(model, hook_name, cand, hook_head_index=hook_head_index,
                                      token_ids=rows, show_progress=False)
        report[cand] = unigram_fit(table, acts, ids, cand).as_dict()
    for name, table in (extra_tables or {}).items():
        report[name] = unigram_fit(table, acts, ids, name).as_dict()
    scored = {k: v["nmse"] for k, v in report.items() if "nmse" in v}
    if not scored:
        raise UnigramStrategyError(f"no candidate unigram strategy resolves for {label}: {report}")
    return min(scored, key=scored.__getitem__), report


# =========================================================================== cache =====
class UnigramCacheError(RuntimeError):
    """A cached unigram table is corrupted or does not match what was asked for."""


def model_fingerprint(model: nn.Module) -> str:
    """A cheap, stable fingerprint of a model's weights.

    Hashes every parameter's name, shape and dtype, plus its first 4,096 values and a
    strided sample of up to 65,536 more: different checkpoints differ there, and hashing
    all of a large model's weights would cost seconds to minutes per lookup.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        stride = max(1, flat.numel() // 65536)
        sample = torch.cat([flat[:4096], flat[::stride][:65536]]).to("cpu", torch.float32)
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


def _library_versions() -> str:
    import sae_lens
    import transformer_lens  # noqa: F401
    from importlib.metadata import version

    return f"sae-lens {sae_lens.__version__}; transformer-lens {version('transformer-lens')}; torch {torch.__version__}"


def table_metadata(
    model: Any, hook_name: str, strategy: str, hook_head_index: int | None, dtype: torch.dtype
) -> dict[str, str]:
    return {
        "format": "sae_lens_tokenized.unigrams/1",
        "model_name": model_label(model),
        "model_fingerprint": model_fingerprint(model),
        "hook_name": hook_name,
        "hook_head_index": str(hook_head_index),
        "strategy": str(UnigramStrategy.parse(strategy)),
        "d_vocab": str(vocab_size(model)),
        "dtype": str(dtype).replace("torch.", ""),
        "library_versions": _library_versions(),
    }


# The fields that must match for a cached table to be reused (versions too: a library
# upgrade that changes a forward pass must not silently reuse an old table).
MATCH_FIELDS = ("model_name", "model_fingerprint", "hook_name", "hook_head_index", "strategy",
                "d_vocab", "dtype", "library_versions")


def save_unigram_table(path: str | Path, table: torch.Tensor, metadata: dict[str, str]) -> Path:
    """Write a table with its metadata and a content checksum (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.contiguous().cpu()
    meta = dict(metadata, sha256=hashlib.sha256(table.numpy().tobytes()).hexdigest(),
                shape=f"{tuple(table.shape)}")
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    save_file({"unigrams": table}, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_unigram_table_file(path: str | Path, expect: dict[str, str] | None = None) -> tuple[torch.Tensor, dict[str, str]]:
    """Load and verify a table file; raise ``UnigramCacheError`` on corruption or mismatch."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unigram table {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if "unigrams" not in f.keys():
                raise UnigramCacheError(
                    f"{path} has no tensor named 'unigrams' (found {sorted(f.keys())}); save the "
                    "table with safetensors.torch.save_file({'unigrams': table}, path)"
                )
            table = f.get_tensor("unigrams")
    except UnigramCacheError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors raises several types on bad files)
        raise UnigramCacheError(f"unigram table {path} is corrupted or truncated: {e}") from e
    if "sha256" in meta and hashlib.sha256(table.contiguous().numpy().tobytes()).hexdigest() != meta["sha256"]:
        raise UnigramCacheError(f"unigram table {path} is corrupted: its checksum does not match")
    if expect is not None:
        wrong = {k: (meta.get(k), expect[k]) for k in MATCH_FIELDS if k in expect and meta.get(k) != expect[k]}
        if wrong:
            details = "; ".join(f"{k}: file has {a!r}, wanted {b!r}" for k, (a, b) in wrong.items())
            raise UnigramCacheError(f"unigram table {path} was computed for something else ({details})")
    return table, meta


def default_cache_dir() -> Path:
    from sae_lens_tokenized.offline import cache_dir

    return cache_dir() / "unigrams"


def get_unigram_tables(
    model: Any,
    hook_names: Sequence[str],
    strategy: str | Sequence[str | int] = "bos,t",
    hook_head_index: int | None = None,
    cache_dir: str | Path | None | bool = True,
    batch_size: int = 1024,
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """``compute_unigram_tables`` with an on-disk cache, one file per hook.

    A cached table is reused only if every field in ``MATCH_FIELDS`` matches; otherwise,
    or if the file is corrupted (checksum), it is recomputed and rewritten. The tables not
    in the cache are computed together, in one pass over the vocabulary.
    ``cache_dir=True`` uses ``default_cache_dir()``; ``False``/``None`` disables caching.
    """
    strategy_str = str(UnigramStrategy.parse(strategy))
    dtype = torch.float32
    hook_names = list(dict.fromkeys(hook_names))
    if cache_dir is False or cache_dir is None:
        return compute_unigram_tables(model, hook_names, strategy_str, batch_size, hook_head_index,
                                      show_progress=show_progress, dtype=dtype)
    folder = default_cache_dir() if cache_dir is True else Path(cache_dir)
    tables: dict[str, torch.Tensor] = {}
    to_compute: dict[str, tuple[Path, dict[str, str]]] = {}
    for hook_name in hook_names:
        meta = table_metadata(model, hook_name, strategy_str, hook_head_index, dtype)
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
        safe_hook = hook_name.replace("/", "_")
        path = folder / f"{meta['model_name'].replace('/', '_')}__{safe_hook}__{key}.safetensors"
        if path.is_file():
            try:
                tables[hook_name], _ = load_unigram_table_file(path, expect=meta)
                continue
            except UnigramCacheError as e:
                warnings.warn(f"{e}; recomputing it", stacklevel=2)
        to_compute[hook_name] = (path, meta)
    if to_compute:
        computed = compute_unigram_tables(model, list(to_compute), strategy_str, batch_size, hook_head_index,
                                          show_progress=show_progress, dtype=dtype)
        for hook_name, (path, meta) in to_compute.items():
            save_unigram_table(path, computed[hook_name], meta)
            tables[hook_name] = computed[hook_name]
    return {name: tables[name] for name in hook_names}


def get_unigram_table(
    model: Any,
    hook_name: str,
    strategy: str | Sequence[str | int] = "bos,t",
    hook_head_index: int | None = None,
    cache_dir: str | Path | None | bool = True,
    batch_size: int = 1024,
    show_progress: bool = True,
) -> torch.Tensor:
    """The unigram table at one hook, cached (see ``get_unigram_tables``)."""
    return get_unigram_tables(model, [hook_name], strategy, hook_head_index, cache_dir, batch_size,
                              show_progress)[hook_name]
