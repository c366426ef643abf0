"""Unigram strategy templates and tables."""

import pytest
import torch

from sae_lens_tokenized import UnigramStrategy, UnigramStrategyError, compute_unigram_table
from sae_lens_tokenized.lookup.strategies import BUILTIN_STRATEGIES

HOOK = "blocks.1.hook_resid_pre"


@pytest.mark.parametrize(
    "spec, items",
    [
        ("bos,t", ("bos", "t")),
        (" BOS , t ", ("bos", "t")),
        (["bos", "t"], ("bos", "t")),
        ([220, "t"], (220, "t")),
        ("220,t", (220, "t")),
        ("space,space,t", ("space", "space", "t")),
        ("bos,37", ("bos", 37)),
        ("t", ("t",)),
    ],
)
def test_parse(spec, items):
    s = UnigramStrategy.parse(spec)
    assert s.items == items
    assert UnigramStrategy.parse(str(s)) == s


@pytest.mark.parametrize("spec, match", [("", "empty"), ("bos,,t", "empty"), ("cls,t", "unknown item"), ([1.5, "t"], "bad item"), ("auto", "auto")])
def test_parse_errors(spec, match):
    with pytest.raises(UnigramStrategyError, match=match):
        UnigramStrategy.parse(spec)


def test_resolve(model):
    tok = model.tokenizer
    space = tok.encode(" ", add_special_tokens=False)[0]
    assert UnigramStrategy.parse("bos,t").resolve(tok, 512) == [tok.bos_token_id, None]
    assert UnigramStrategy.parse("space,space,t").resolve(tok, 512) == [space, space, None]
    assert UnigramStrategy.parse("eos,7").resolve(tok, 512) == [tok.eos_token_id, 7]
    with pytest.raises(UnigramStrategyError, match="out of range for tiny"):
        UnigramStrategy.parse("600,t").resolve(tok, 512, "tiny")
    with pytest.raises(UnigramStrategyError, match="has no tokenizer"):
        UnigramStrategy.parse("bos,t").resolve(None, 512)


@pytest.mark.parametrize("strategy", [*BUILTIN_STRATEGIES, "17,t", "bos,17"])
def test_table_matches_direct_per_token_computation(model, strategy):
    table = compute_unigram_table(model, HOOK, strategy, batch_size=100, show_progress=False)
    assert table.shape == (model.cfg.d_vocab, model.cfg.d_model)
    template = UnigramStrategy.parse(strategy).resolve(model.tokenizer, model.cfg.d_vocab)
    for t in [0, 5, 99, 100, 311, 511]:  # across batch boundaries
        prompt = torch.tensor([[t if i is None else i for i in template]])
        _, cache = model.run_with_cache(prompt, names_filter=[HOOK])
        torch.testing.assert_close(table[t], cache[HOOK][0, -1], rtol=1e-5, atol=1e-5)


def test_embedding_hook_unigrams_are_the_embedding(model):
    table = compute_unigram_table(model, "hook_embed", "bos,t", show_progress=False)
    torch.testing.assert_close(table, model.W_E.detach())


def test_token_subset(model):
    ids = torch.tensor([3, 9])
    table = compute_unigram_table(model, HOOK, token_ids=ids, show_progress=False)
    assert table[[0, 1, 2]].abs().sum() == 0 and table[ids].abs().sum() > 0


def test_tables_for_several_hooks_come_from_one_pass_per_batch_and_equal_single_hook_tables(model, tmp_path):
    from sae_lens_tokenized.lookup_init.unigrams import compute_unigram_tables, get_unigram_tables

    hooks = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
    forwards = []
    handle = model.embed.register_forward_hook(lambda *a: forwards.append(1))
    try:
        tables = compute_unigram_tables(model, hooks, "bos,t", batch_size=128, show_progress=False)
    finally:
        handle.remove()
    assert len(forwards) == 4  # 512 tokens / 128 per batch: one forward per batch for all hooks
    for hook in hooks:
        torch.testing.assert_close(tables[hook], compute_unigram_table(model, hook, "bos,t", show_progress=False))
    # cached per hook: a second call reads the files and runs no forward at all
    first = get_unigram_tables(model, hooks, "bos,t", cache_dir=tmp_path, show_progress=False)
    handle = model.embed.register_forward_hook(lambda *a: forwards.append(1))
    try:
        again = get_unigram_tables(model, hooks, "bos,t", cache_dir=tmp_path, show_progress=False)
    finally:
        handle.remove()
    assert len(forwards) == 4
    for hook in hooks:
        assert torch.equal(first[hook], again[hook]) and torch.equal(first[hook], tables[hook])
