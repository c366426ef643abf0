"""Unigram tables: the model's activation for a token seen (almost) without context.

The unigram of token t under a strategy is the activation at the hook, at the last
position, of a short prompt built from a template (Dooms & Wilhelm, Sec. 3; the follow-up
note "Massive activations and why <bos> is important"); the templates are
``sae_lens_tokenized.lookup.strategies``. Tables are computed for the whole vocabulary in
batches, with the forward stopped after the deepest hook, and cached on disk with
metadata that must match before a table is reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


from sae_lens_tokenized.lookup.strategies import UnigramStrategy
from sae_lens_tokenized.models import activations_at_hooks, device_of, model_label, resolve_hook, vocab_size

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
    from sae_lens_tokenized._paths import cache_dir

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
