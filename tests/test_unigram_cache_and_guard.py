"""The unigram cache (hits, misses on every field, corruption), the sink guard and 'auto'."""

import json
import warnings

import pytest
import torch

from sae_lens_tokenized import METHOD_LOOKUP
from safetensors.torch import save_file
from sae_lens import SAE

import sae_lens_tokenized.lookup_init.unigrams as U
from helpers import runner_cfg, tiny_model
from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.lookup_init.unigrams import (
    UnigramCacheError,
    get_unigram_table,
    load_unigram_table_file,
)
from sae_lens_tokenized.lookup_init.fit import (
    UnigramSinkWarning,
    sample_activations,
    select_unigram_strategy,
    unigram_fit,
    warn_if_sink,
)

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture
def counting(monkeypatch):
    calls = []
    real = U.compute_unigram_tables

    def counted(*a, **k):  # every table computation goes through compute_unigram_tables
        calls.append(a[2] if len(a) > 2 else k.get("strategy"))
        return real(*a, **k)

    monkeypatch.setattr(U, "compute_unigram_tables", counted)
    return calls


def test_cache_hit_and_miss_on_each_field(tmp_path, counting, monkeypatch):
    model = tiny_model()
    t1 = get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    t2 = get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    assert torch.equal(t1, t2) and len(counting) == 1  # hit
    get_unigram_table(model, HOOK, "space,t", cache_dir=tmp_path, show_progress=False)  # strategy
    get_unigram_table(model, "blocks.0.hook_resid_pre", "bos,t", cache_dir=tmp_path, show_progress=False)  # hook
    get_unigram_table(model, HOOK, "bos,t", hook_head_index=None, cache_dir=tmp_path, show_progress=False)
    assert len(counting) == 3
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] += 1.0  # other weights: fingerprint changes
    t3 = get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    assert len(counting) == 4 and not torch.equal(t3, t1)
    other = tiny_model(seed=1)  # another model of the same name and shape
    get_unigram_table(other, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    assert len(counting) == 5
    monkeypatch.setattr(U, "_library_versions", lambda: "sae-lens 99")  # library upgrade
    get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    assert len(counting) == 6


def test_metadata_fields_are_checked_on_explicit_load(tmp_path):
    model = tiny_model()
    meta = U.table_metadata(model, HOOK, "bos,t", None, torch.float32)
    path = U.save_unigram_table(tmp_path / "t.safetensors", torch.randn(512, 32), meta)
    load_unigram_table_file(path, expect=meta)
    for field, value in [("model_name", "other"), ("d_vocab", "1000"), ("dtype", "bfloat16"),
                         ("hook_name", "x"), ("strategy", "t"), ("model_fingerprint", "0")]:
        with pytest.raises(UnigramCacheError, match=field):
            load_unigram_table_file(path, expect={**meta, field: value})


def test_corrupted_cache_is_detected_and_recomputed(tmp_path, counting):
    model = tiny_model()
    get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(UnigramCacheError, match="corrupted or truncated"):
        load_unigram_table_file(path)
    with pytest.warns(UserWarning, match="recomputing"):
        get_unigram_table(model, HOOK, "bos,t", cache_dir=tmp_path, show_progress=False)
    assert len(counting) == 2
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the tensor data: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(UnigramCacheError, match="checksum"):
        load_unigram_table_file(path)


def test_runner_refuses_an_explicit_table_computed_for_another_hook(tmp_path, dataset):
    model = tiny_model()
    meta = U.table_metadata(model, "blocks.0.hook_resid_pre", "bos,t", None, torch.float32)
    path = U.save_unigram_table(tmp_path / "t.safetensors", torch.randn(512, 32), meta)
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, unigram_table_path=str(path)), HOOK, 8_000)
    with pytest.raises(UnigramCacheError, match="hook_name"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)


# ------------------------------------------------------------ the guard and 'auto' ---------
def sink_model():
    """A model whose position 0 carries a massive activation (a planted attention sink)."""
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.W_pos[0] += 200 * torch.randn(model.cfg.d_model)
    return model


def test_fit_flags_a_sink_table_and_not_a_good_one(dataset):
    model = sink_model()
    tokens = torch.stack([dataset[i]["tokens"] for i in range(4)])
    acts, ids = sample_activations(model, tokens, "blocks.0.hook_resid_pre")
    good = U.compute_unigram_table(model, "blocks.0.hook_resid_pre", "bos,t", show_progress=False)
    sink = U.compute_unigram_table(model, "blocks.0.hook_resid_pre", "t", show_progress=False)  # t at position 0
    assert not unigram_fit(good, acts, ids, "bos,t").looks_like_a_sink()
    fit = unigram_fit(sink, acts, ids, "t")
    assert fit.looks_like_a_sink() and fit.norm_ratio > 10 and fit.sink_fraction > 0.9
    with pytest.warns(UnigramSinkWarning, match="attention sink"):
        warn_if_sink(fit, "sink-model", "blocks.0.hook_resid_pre")


def test_large_rows_that_match_their_tokens_activations_are_not_a_sink():
    """Tokens with genuinely massive activations mid-sequence (SmolLM2 L3 has one on 6% of
    positions) get large data-estimated rows; that is right, and must not warn."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (4000,))
    means = torch.randn(50, 16)
    means[3] *= 20  # token 3's activations are huge, and it is frequent
    ids[::10] = 3
    acts = means[ids] + 0.3 * torch.randn(4000, 16)
    fit = unigram_fit(means, acts, ids, "data")
    assert fit.sink_fraction > 0.05  # oversized by the norm rule ...
    assert fit.nmse < fit.nmse_of_mean and not fit.looks_like_a_sink()  # ... but a good fit
    # rows far larger than the activations they stand for are a sink
    assert unigram_fit(10 * means, acts, ids, "t").looks_like_a_sink()


def test_auto_avoids_the_sink_and_is_recorded_in_cfg_json(tmp_path, dataset):
    model = sink_model()
    tokens = torch.stack([dataset[i]["tokens"] for i in range(4)])
    chosen, report = select_unigram_strategy(model, "blocks.0.hook_resid_pre", tokens)
    assert chosen != "t" and report["t"]["nmse"] > 10 * report[chosen]["nmse"]

    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, unigram_strategy="auto", lookup_init_tokens=4096),
                     "blocks.0.hook_resid_pre", 4_096, output_path=str(tmp_path / "sae"))
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert saved["unigram_strategy"] not in ("auto", "t")
    assert "t" in saved["metadata"]["unigram_strategy_selection"]
    assert SAE.load_from_disk(tmp_path / "sae").cfg.unigram_strategy == saved["unigram_strategy"]


def test_runner_warns_when_the_chosen_strategy_is_a_sink(dataset):
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, unigram_strategy="t"),
                     "blocks.0.hook_resid_pre", 4_096)
    with pytest.warns(UnigramSinkWarning):
        TokenizedSAETrainingRunner(cfg, override_model=sink_model(), override_dataset=dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnigramSinkWarning)
        for kw in (METHOD_LOOKUP, {}):  # the method's bos,t, and the default data estimate (which
            # leaves each sequence's first position, the sink, out of its means)
            cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, **kw), "blocks.0.hook_resid_pre", 4_096)
            TokenizedSAETrainingRunner(cfg, override_model=sink_model(), override_dataset=dataset)


def test_plain_safetensors_table_without_metadata_is_accepted(tmp_path, dataset):
    model = tiny_model()
    save_file({"unigrams": torch.ones(512, 32)}, tmp_path / "plain.safetensors")
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, unigram_table_path=str(tmp_path / "plain.safetensors")), HOOK, 4_096)
    r = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    assert torch.equal(r.sae.W_lookup.data[:512], torch.full((512, 32), 0.5))
