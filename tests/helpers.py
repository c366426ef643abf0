"""Tiny real TransformerLens models with a real tokenizer, built offline in seconds.

The tokenizer is a byte-level BPE trained here on English text taken from the Python
standard library's docstrings (no download, no data package).
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile

import torch
from datasets import Dataset

SPECIALS = ["<|endoftext|>", "<|pad|>"]


@functools.lru_cache(maxsize=1)
def stdlib_text() -> list[str]:
    docs: list[str] = []
    for mod in sorted(m for m in sys.stdlib_module_names if not m.startswith("_")):
        if mod in {"antigravity", "this", "idlelib", "turtledemo", "tkinter", "test"}:
            continue
        try:
            module = importlib.import_module(mod)
        except Exception:  # noqa: BLE001
            continue
        for obj in [module, *vars(module).values()]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in docs:
                docs.append(doc)
        if len(docs) > 3000:
            break
    return docs


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(stdlib_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    # TransformerLens reloads the tokenizer by name_or_path, so give it a folder.
    folder = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    fast.save_pretrained(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def tiny_model(seed: int = 0, n_layers: int = 2, d_model: int = 32, vocab_size: int = 512):
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    tokenizer = tiny_tokenizer(vocab_size)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        d_head=8,
        n_heads=d_model // 8,
        d_mlp=4 * d_model,
        n_ctx=128,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
        model_name=f"tiny-{n_layers}l-{d_model}d",
        device="cpu",
    )
    model = HookedSAETransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


def token_dataset(context_size: int = 32, n_rows: int | None = None, skip: int = 0) -> Dataset:
    """Pretokenized rows (column 'tokens'), each starting with BOS, from stdlib docs."""
    tokenizer = tiny_tokenizer()
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for doc in stdlib_text()[skip:]:
        ids.extend(tokenizer.encode(doc) + [tokenizer.eos_token_id])
    body = context_size - 1
    rows = [[bos, *ids[i : i + body]] for i in range(0, len(ids) - body, body)]
    if n_rows is not None:
        rows = rows[:n_rows]
    ds = Dataset.from_dict({"tokens": rows})
    ds.set_format(type="torch", columns=["tokens"])  # as SAELens's store sets it anyway
    return ds


def runner_cfg(sae_cfg, hook_name: str, training_tokens: int, **overrides):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    kwargs = dict(
        sae=sae_cfg,
        model_name="tiny",
        hook_name=hook_name,
        dataset_path="unused-override",
        is_dataset_tokenized=True,
        context_size=32,
        prepend_bos=True,
        training_tokens=training_tokens,
        train_batch_size_tokens=256,
        n_batches_in_buffer=16,
        store_batch_size_prompts=8,
        lr=3e-3,
        device="cpu",
        seed=0,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        n_checkpoints=0,
        output_path=None,
        eval_batch_size_prompts=4,
        n_eval_batches=2,
    )
    kwargs.update(overrides)
    # The data-estimated init draws 500k activations by default; the tiny test corpus has
    # ~11k tokens, so tests draw 4k unless they ask for a size.
    if getattr(sae_cfg, "lookup_init_tokens", None) == 500_000:
        sae_cfg.lookup_init_tokens = 4096
    return LanguageModelSAERunnerConfig(**kwargs)


def nmse(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """Method's NMSE: sum (x_hat - x)^2 / sum x^2 per activation, averaged."""
    from sae_lens_tokenized.metrics import nmse as method_nmse

    return method_nmse(x_hat, x)


def cache_prior_tables(model, *hook_names: str) -> None:
    """Compute (and cache) the default prior's unigram table at each hook. A test that
    counts the LLM forwards of a run calls this first, so that what it counts is the run's
    own reads whatever ran before it: the prior's table is a fixed cost per model and hook,
    cached across runs (``lookup_init_prior``)."""
    from sae_lens_tokenized import TokenizedTopKTrainingSAEConfig
    from sae_lens_tokenized.lookup_init.unigrams import get_unigram_tables

    strategy = TokenizedTopKTrainingSAEConfig(d_in=1, d_sae=1, k=1).lookup_init_prior
    get_unigram_tables(model, list(hook_names), strategy=strategy, cache_dir=True)
