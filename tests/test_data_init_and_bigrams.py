"""The lookup estimated from the data (``unigram_strategy="data"``) and bigram lookups
(``lookup_ngram=2``): estimates equal direct means, ids and previous ids stay aligned
through SAELens's shuffling buffer and its activation cache, round trips are exact, and
bad settings fail before any work."""

import json
import os
import sys

import pytest
import torch
from sae_lens import SAE

from helpers import cache_prior_tables, runner_cfg, token_dataset
from sae_lens_tokenized import (
    TokenIdsError,
    TokenizedSAETrainingRunner,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
    token_ids_from,
)
from sae_lens_tokenized.lookup.ids import previous_token_ids
from sae_lens_tokenized.models import activations_at_hook

RESID1 = "blocks.1.hook_resid_pre"  # after attention: depends on the previous tokens
# The default data estimate reads no measurement sequences: its sample is the start of the
# training stream (a strategy measurement, for "auto" or a prompt table, would read 8 first)
CTX = 32


def data_cfg(model, tokens: int = 2048, **kw):
    # scale 1.0: these tests check the estimate itself (test_the_default_init_is_half_the_estimate: the scale)
    base = dict(d_in=model.cfg.d_model, d_sae=64, k=4, unigram_strategy="data", lookup_init_tokens=tokens,
                lookup_init_pseudo_count=0.0, lookup_bigram_pseudo_count=0.0, lookup_init_prior="mean",
                lookup_init_scale=1.0)
    base.update(kw)
    return runner_cfg(TokenizedTopKTrainingSAEConfig(**base), RESID1, 8_192)


def sample_rows(dataset, n_tokens):
    """The dataset rows the runner's init sample holds: the first ones."""
    n_seq = n_tokens // CTX
    return torch.stack([dataset[i]["tokens"] for i in range(n_seq)])


def direct_means(model, tokens, hook=RESID1):
    acts = activations_at_hook(model, tokens, hook).reshape(-1, model.cfg.d_model)
    ids, prev = tokens.reshape(-1), previous_token_ids(tokens).reshape(-1)
    return acts, ids, prev


def later_positions(acts, ids, prev):
    """Each sequence's first position (an attention sink) is left out of the estimate."""
    keep = prev >= 0
    return acts[keep], ids[keep], prev[keep]


def test_data_init_is_the_per_token_mean_of_the_sample_and_unseen_tokens_get_the_prior(model, dataset):
    runner = TokenizedSAETrainingRunner(data_cfg(model), override_model=model, override_dataset=dataset)
    report = runner.unigram_report["lookup_init"]
    assert report["tokens_drawn_from_training_stream"] == 2048 and report["first_positions_skipped"] == 2048 // CTX
    acts, ids, _ = later_positions(*direct_means(model, sample_rows(dataset, 2048)))
    W = runner.sae.W_lookup.detach()[: model.cfg.d_vocab]  # the token rows
    seen = torch.unique(ids)
    for t in seen[:: max(len(seen) // 40, 1)]:
        torch.testing.assert_close(W[t], acts[ids == t].mean(0), atol=1e-4, rtol=1e-4)
    unseen = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
    unseen[seen] = False
    assert unseen.any()
    torch.testing.assert_close(W[unseen], acts.mean(0).expand(int(unseen.sum()), -1), atol=1e-4, rtol=1e-4)


def test_the_default_init_is_half_the_estimate_token_and_pair_rows_alike(model, dataset):
    """Left unset, the scale is 0.5 for the data estimate as for a prompt table, on every row
    (the full estimate lost to TopK at high k: docs Results, "The lookup's init scale")."""
    full = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2), override_model=model, override_dataset=dataset)
    default = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2, lookup_init_scale=None),
                                         override_model=model, override_dataset=dataset)
    assert default.sae.cfg.lookup_init_scale == 0.5  # resolved, and saved so in cfg.json
    assert default.sae.cfg.lookup_bigram_rows > 0
    torch.testing.assert_close(default.sae.W_lookup.detach(), 0.5 * full.sae.W_lookup.detach())


def test_pseudo_count_shrinks_rare_tokens_toward_the_mean(model, dataset):
    runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_init_pseudo_count=3.0), override_model=model,
                                        override_dataset=dataset)
    acts, ids, _ = later_positions(*direct_means(model, sample_rows(dataset, 2048)))
    t = torch.unique(ids)[3]
    n = int((ids == t).sum())
    expected = (acts[ids == t].sum(0) + 3.0 * acts.mean(0)) / (n + 3.0)
    torch.testing.assert_close(runner.sae.W_lookup[t].detach(), expected, atol=1e-4, rtol=1e-4)


def test_by_default_a_pair_gets_a_row_only_when_the_sample_holds_it_twice(model, dataset):
    # One occurrence is one activation: as a row it memorises that activation's context, and
    # held-out reconstruction got worse on small data (docs "Results", defaults checked)
    runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2, lookup_bigram_rows=4000),
                                        override_model=model, override_dataset=dataset)
    sae = runner.sae
    assert sae.cfg.lookup_bigram_min_count == 2
    _, ids, prev = direct_means(model, sample_rows(dataset, 2048))
    counts: dict[tuple[int, int], int] = {}
    for p, t in zip(prev.tolist(), ids.tolist()):
        if p >= 0:
            counts[(p, t)] = counts.get((p, t), 0) + 1
    twice = {pair for pair, n in counts.items() if n >= 2}
    assert twice and len(twice) < len(counts)  # the sample has both kinds
    pairs = sae.bigram_pairs()
    chosen = {(int(p), int(t)) for p, t in pairs[pairs[:, 0] >= 0]}
    assert chosen == twice
    # a pair seen once reads its token's own row
    tokens = sample_rows(dataset, 2048)
    rows = sae.lookup_row_index(tokens)
    once = torch.tensor([[counts.get((p, t), 0) == 1 for p, t in zip([-1, *row[:-1].tolist()], row.tolist())]
                         for row in tokens])
    assert once.any()
    assert torch.equal(rows[once], tokens[once])


def test_bigram_rows_are_the_pair_means_of_the_sample(model, dataset):
    runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2, lookup_bigram_rows=4000,
                                                 lookup_bigram_min_count=1),
                                        override_model=model, override_dataset=dataset)
    sae = runner.sae
    acts, ids, prev = direct_means(model, sample_rows(dataset, 2048))
    pairs = sae.bigram_pairs()
    used = pairs[:, 0] >= 0
    distinct = {(int(p), int(t)) for p, t in zip(prev, ids) if p >= 0}
    assert int(used.sum()) == len(distinct) == runner.unigram_report["lookup_init"]["bigram_rows_used"]
    V = model.cfg.d_vocab
    for row in used.nonzero().squeeze(1)[::37]:
        p, t = (int(v) for v in pairs[row])
        where = (prev == p) & (ids == t)
        torch.testing.assert_close(sae.W_lookup[V + row].detach(), acts[where].mean(0), atol=1e-4, rtol=1e-4)
    # and the forward reads them: with ids [batch, pos] the previous tokens come from pos
    tokens = sample_rows(dataset, 2048)[:4]
    x = activations_at_hook(model, tokens, RESID1)
    rows = sae.lookup_row_index(tokens)
    assert torch.equal(rows[:, 0], tokens[:, 0])  # position 0: no previous token, its token's row
    assert (rows[:, 1:] >= V).all()  # every later pair of the sample has a row
    with torch.no_grad():
        assert torch.equal(sae.lookup_bias(tokens.shape, tokens), sae.W_lookup[rows])
    with torch.no_grad():
        explicit = sae(x.reshape(-1, x.shape[-1]), token_ids=tokens.reshape(-1),
                       prev_token_ids=previous_token_ids(tokens).reshape(-1))
        assert torch.equal(sae(x, token_ids=tokens).reshape(explicit.shape), explicit)
        with token_ids_from(model, sae):  # spliced: both ids from the model's input
            model.run_with_cache(tokens, names_filter=RESID1)
            assert torch.equal(sae(x).reshape(explicit.shape), explicit)


def _match(acts, ref_acts):
    d = torch.cdist(acts, ref_acts, compute_mode="donot_use_mm_for_euclid_dist")
    dist, idx = d.min(1)
    return dist, idx


def test_ids_and_previous_ids_stay_aligned_through_saelens_shuffling_buffer(model, dataset):
    runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2, lookup_bigram_rows=1000),
                                        override_model=model, override_dataset=dataset)
    store = runner.activations_store
    ref = torch.stack([dataset[i]["tokens"] for i in range(0, 400)])
    ref_acts, ref_ids, ref_prev = direct_means(model, ref)
    stream = store.iter_with_token_ids()
    for _ in range(3):
        acts, ids, prev = next(stream)
        dist, idx = _match(acts, ref_acts)
        assert float(dist.max()) < 1e-4, "an activation the store yielded is not in the corpus"
        assert torch.equal(ids, ref_ids[idx]), "token ids came apart from their activations"
        assert torch.equal(prev, ref_prev[idx]), "previous-token ids came apart from their activations"
        assert (prev == -1).any() and (prev >= 0).any()  # both kinds of position were shuffled in


def test_a_step_trains_the_bigram_rows_it_reads_and_no_others(model, dataset):
    from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

    cfg = data_cfg(model, lookup_ngram=2, lookup_bigram_rows=4000)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    sae = runner.sae
    trainer = TokenizedSAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=runner.activations_store)
    before = sae.W_lookup.detach().clone()
    batch = next(trainer.data_provider)
    ids, prev = trainer.token_ids_channel._pending[1], trainer.token_ids_channel._pending[2]
    read = torch.unique(sae.lookup_row_index(ids, prev))
    trainer.step(batch)
    moved = ((sae.W_lookup.detach() - before).abs().sum(1) > 0).nonzero().squeeze(1)
    assert torch.equal(moved, read), "exactly the rows the batch read must move"
    assert (read >= model.cfg.d_vocab).sum() > 0  # bigram rows among them


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_load_round_trip_keeps_every_bigram_exact(tmp_path, dtype):
    V = 600
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, d_vocab=V, lookup_ngram=2,
                                                                  lookup_bigram_rows=50))
    g = torch.Generator().manual_seed(0)
    keys = torch.randperm(V * V, generator=g)[:40].sort().values
    sae.set_bigram_rows(keys, torch.randn(40, 16, generator=g))
    with torch.no_grad():
        sae.W_lookup[:V].normal_()
    sae.save_inference_model(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["lookup_ngram"] == 2 and cfg["lookup_bigram_rows"] == 50
    loaded = SAE.load_from_disk(tmp_path / "sae", dtype=dtype)
    assert torch.equal(loaded.bigram_pairs(), sae.bigram_pairs())  # ids survive any float dtype
    assert int((loaded.bigram_pairs()[:, 0] >= 0).sum()) == 40
    ids = torch.randint(0, V, (3, 20), generator=g)
    ids[0, 5], ids[0, 6] = keys[0] // V, keys[0] % V  # plant a known pair
    x = torch.randn(3, 20, 16, generator=g)
    assert torch.equal(loaded.lookup_row_index(ids), sae.lookup_row_index(ids))
    assert int(sae.lookup_row_index(ids)[0, 6]) == V
    if dtype == "float32":
        for name in ("W_lookup", "lookup_bigram_ids"):  # (SAELens folds W_dec norms on save)
            assert torch.equal(loaded.state_dict()[name], sae.state_dict()[name]), name
        with torch.no_grad():  # the inference class computes the same output (to float rounding)
            torch.testing.assert_close(loaded(x, token_ids=ids), sae(x, token_ids=ids))


def test_hub_round_trip_with_bigram_rows(tmp_path, hub):
    from sae_lens_tokenized.integrations.hub import load_from_hub, push_to_hub

    V = 300
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, d_vocab=V, lookup_ngram=2,
                                                                  lookup_bigram_rows=20))
    sae.set_bigram_rows(torch.tensor([5, 301, 4000, 89_999]), torch.randn(4, 16))
    with torch.no_grad():
        sae.W_lookup[:V].normal_()
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = "blocks.1.hook_resid_pre", "gpt2"
    sae.save_inference_model(tmp_path / "b")
    push_to_hub({"bigram": tmp_path / "b"}, "user/bigram")
    remote = load_from_hub("user/bigram", "bigram")
    local = SAE.load_from_disk(tmp_path / "b")
    for name, t in local.state_dict().items():
        assert torch.equal(remote.state_dict()[name], t), name  # bitwise, bigram ids included
    assert torch.equal(remote.bigram_pairs(), sae.bigram_pairs())
    card = hub.files("user/bigram")["README.md"].decode()
    assert "bigram lookup" in card and "| lookup_ngram | 2 |" in card and "| lookup_bigram_rows | 20 |" in card


@pytest.mark.parametrize("kw, match", [
    (dict(lookup_ngram=3), "lookup_ngram=3 is not supported"),
    (dict(lookup_ngram=2, lookup_bigram_rows=-1), "needs a bigram row count >= 0"),
    (dict(lookup_ngram=1, lookup_bigram_rows=10), "only applies to lookup_ngram=2"),
    (dict(lookup_ngram=2, init_lookup_from_unigrams=False), "needs init_lookup_from_unigrams=True"),
    (dict(lookup_init_tokens=0), "lookup_init_tokens must be > 0"),
    (dict(lookup_init_scale=-1.0), "lookup_init_scale must be"),
    (dict(lookup_init_prior="median"), "lookup_init_prior must be 'mean', 'auto' or a prompt strategy"),
])
def test_bad_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TokenizedTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, d_vocab=100, **kw)


def test_bigram_sae_without_previous_ids_is_a_clear_error():
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=16, d_sae=32, k=4, d_vocab=100, lookup_ngram=2,
                                                                  lookup_bigram_rows=8))
    x, ids = torch.randn(6, 16), torch.randint(0, 100, (6,))
    sae(x, token_ids=ids)  # no pair has a row yet: previous tokens cannot change anything
    sae.set_bigram_rows(torch.tensor([5 * 100 + 7]), torch.randn(1, 16))
    with pytest.raises(TokenIdsError, match="needs its previous token too"):
        sae(x, token_ids=ids)
    with pytest.raises(TokenIdsError, match="prev_token_ids must be an integer tensor of the ids' shape"):
        sae(x, token_ids=ids, prev_token_ids=ids[:3])
    with pytest.raises(TokenIdsError, match="prev_token_ids out of range"):
        sae(x, token_ids=ids, prev_token_ids=torch.full((6,), 100))
    sae(x, token_ids=ids, prev_token_ids=torch.full((6,), -1))  # -1: no previous token, reads the token row


def test_bigram_lookup_rejects_a_strided_position_slice(model, dataset):
    cfg = data_cfg(model, lookup_ngram=2)
    cfg.seqpos_slice = (1, None, 2)
    with pytest.raises(ValueError, match="needs a contiguous slice"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)


def test_analysis_covers_bigram_rows(model, dataset):
    from sae_lens_tokenized.analysis import lookup_analysis

    runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_ngram=2, lookup_bigram_rows=4000,
                                                 lookup_bigram_min_count=1),
                                        override_model=model, override_dataset=dataset)
    tokens = sample_rows(dataset, 2048)[:16]  # pairs the lookup was estimated on
    out = lookup_analysis(runner.sae, None, model, tokens, RESID1)
    b = out["bigrams"]
    assert b["bigram_rows_used"] == runner.unigram_report["lookup_init"]["bigram_rows_used"]
    assert b["positions_reading_a_bigram_row"] == 1.0  # every pair after position 0 has a row
    assert b["last_bigram_detection"] > 0.5
    with torch.no_grad():  # shuffled bigram rows: detection collapses
        V = model.cfg.d_vocab
        runner.sae.W_lookup[V:] = runner.sae.W_lookup[V:][torch.randperm(runner.sae.cfg.lookup_bigram_rows)]
    assert lookup_analysis(runner.sae, None, model, tokens, RESID1)["bigrams"]["last_bigram_detection"] < 0.5 * b["last_bigram_detection"]


def test_a_saelens_cache_carries_previous_ids_for_a_bigram_lookup(tmp_path):
    from sae_lens.load_model import HookedProxyLM

    from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
    from test_cached_activations import CONTEXT, cached_cfg, make_cache
    from test_hf_models import tiny_llama

    hf, tok = tiny_llama()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    hook = "model.layers.0"
    path = make_cache(folder, tmp_path / "cache", hook=hook)
    proxy = HookedProxyLM(hf, tok)
    cfg = cached_cfg(path, hook=hook, d_vocab=len(tok), lookup_ngram=2, lookup_bigram_rows=100)
    store = TokenizedActivationsStore.from_config(proxy, cfg, override_dataset=token_dataset(CONTEXT))
    assert store.cached_activation_dataset is not None and store.carries_prev
    ref = torch.stack([token_dataset(CONTEXT)[i]["tokens"] for i in range(64)])
    ref_acts = activations_at_hook(proxy, ref, hook).reshape(-1, 32).float()
    ref_ids, ref_prev = ref.reshape(-1), previous_token_ids(ref).reshape(-1)
    for acts, ids, prev in [next(store.iter_with_token_ids()) for _ in range(3)]:
        dist, idx = _match(acts, ref_acts)
        assert float(dist.max()) < 1e-4
        assert torch.equal(ids, ref_ids[idx]) and torch.equal(prev, ref_prev[idx])


def test_rows_follow_ids_changed_in_place_and_are_not_kept_after_the_scope():
    V = 50
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=8, d_sae=16, k=2, d_vocab=V, lookup_ngram=2,
                                                                  lookup_bigram_rows=4))
    sae.set_bigram_rows(torch.tensor([1 * V + 2]), torch.ones(1, 8))
    ids = torch.tensor([[1, 2, 3]])
    assert sae.lookup_row_index(ids).tolist() == [[1, V, 3]]
    ids[0, 0] = 7  # a reused buffer: the pair (1, 2) is gone
    assert sae.lookup_row_index(ids).tolist() == [[7, 2, 3]]
    with sae.token_ids(ids):
        sae.lookup_bias(torch.Size([1, 3]))
    assert sae._rows_memo is None


def test_auto_measures_the_data_estimate_beside_the_prompts(model, dataset):
    cfg = data_cfg(model, unigram_strategy="auto")
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    report = runner.unigram_report["unigram_strategy_selection"]
    assert "data" in report and "bos,t" in report
    scored = {k: v["nmse"] for k, v in report.items() if "nmse" in v}
    assert runner.sae.cfg.unigram_strategy == min(scored, key=scored.__getitem__)
    assert runner.sae.cfg.lookup_init_scale == 1.0  # as data_cfg set it, whichever strategy won


@pytest.mark.parametrize("prior", ["bos,t", None])  # None: the default, "space,t"
def test_a_unigram_prior_gives_unseen_tokens_their_own_centred_unigram(model, dataset, prior):
    from sae_lens_tokenized import compute_unigram_table

    sae_cfg = TokenizedTopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=64, k=4, lookup_init_tokens=2048,
                                             lookup_init_pseudo_count=2.0, lookup_bigram_pseudo_count=0.0,
                                             lookup_init_scale=1.0, **({} if prior is None else {"lookup_init_prior": prior}))
    cfg = runner_cfg(sae_cfg, RESID1, 8_192)
    strategy = sae_cfg.lookup_init_prior
    assert strategy == (prior or "space,t")
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    acts, ids, _ = later_positions(*direct_means(model, sample_rows(dataset, 2048)))
    U = compute_unigram_table(model, RESID1, strategy, show_progress=False)
    counts = torch.bincount(ids, minlength=model.cfg.d_vocab).float()
    prior = acts.mean(0) + U - (counts @ U) / counts.sum()
    W = runner.sae.W_lookup.detach()[: model.cfg.d_vocab]
    unseen = counts == 0
    assert unseen.any()
    torch.testing.assert_close(W[unseen], prior[unseen], atol=1e-4, rtol=1e-4)  # each its own row
    assert not torch.allclose(W[unseen][0], W[unseen][1])
    t = int(torch.unique(ids)[3])  # a seen token shrinks toward its own prior
    n = int(counts[t])
    torch.testing.assert_close(W[t], (acts[ids == t].sum(0) + 2.0 * prior[t]) / (n + 2.0), atol=1e-4, rtol=1e-4)
    recorded = runner.sae.cfg.metadata.lookup_init["prior"]
    assert recorded["unigram_strategy"] == strategy and recorded["tokens_given_only_the_prior"] == int(unseen.sum())


def test_with_a_precomputed_table_the_prior_is_that_table_and_costs_no_forward(model, dataset, monkeypatch):
    from sae_lens_tokenized.lookup_init import plan

    monkeypatch.setattr(plan, "get_unigram_table", lambda *a, **k: pytest.fail("a unigram table was computed"))
    table = torch.randn(model.cfg.d_vocab, model.cfg.d_model)
    # a prior strategy this model cannot build is no reason to refuse: the table is the prior's U
    for prior in ("space,t", "99999,t"):
        runner = TokenizedSAETrainingRunner(data_cfg(model, lookup_init_prior=prior), override_model=model,
                                            override_dataset=dataset, unigram_table=table)
        assert runner.sae.cfg.unigram_strategy == "precomputed"  # the table is the token rows
        recorded = runner.sae.cfg.metadata.lookup_init["prior"]
        assert recorded["unigram_strategy"] == "precomputed" and recorded["tokens_given_only_the_prior"] > 0


def test_a_prior_the_model_cannot_build_is_refused_before_any_work(model, dataset):
    embedded = []
    handle = model.embed.register_forward_pre_hook(lambda m, args: embedded.append(args[0].numel()))
    try:
        with pytest.raises(ValueError, match=r"(?s)lookup_init_prior='99999,t'.*out of range.*'mean'"):
            TokenizedSAETrainingRunner(data_cfg(model, lookup_init_prior="99999,t"), override_model=model,
                                       override_dataset=dataset)
    finally:
        handle.remove()
    assert sum(embedded) <= 2  # the config probe at most: no sample was read


# ------------------------------------------------------------------ proportion (issue 18)
def test_the_init_sample_never_exceeds_the_run_nor_one_pass_over_the_data(model):
    cache_prior_tables(model, RESID1)
    embedded = []
    handle = model.embed.register_forward_pre_hook(lambda m, args: embedded.append(args[0].numel()))
    try:
        cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_tokens=20_000),
                         RESID1, 2048)
        runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=token_dataset())
        report = runner.sae.cfg.metadata.lookup_init  # recorded in cfg.json
        assert report["tokens_requested"] == 20_000
        assert report["tokens_drawn_from_training_stream"] == 2048 and report["capped_by"] == "training_tokens"
        # the model ran on the sample and the config probe, nothing more (no measurement: the
        # default data estimate needs none)
        assert sum(embedded) == 2048 + 2

        small = token_dataset(n_rows=24)  # 768 tokens
        cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_tokens=50_000),
                         RESID1, 100_000)
        report = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=small).unigram_report["lookup_init"]
        assert report["capped_by"] == "one pass over the dataset"
        assert report["tokens_drawn_from_training_stream"] == 24 * CTX
    finally:
        handle.remove()


def test_a_trained_bigram_lookup_saves_only_the_rows_its_init_chose(tmp_path, model, dataset):
    from sae_lens_tokenized.training.runner import saved_lookup_rows

    sae_cfg = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)  # the default budget
    cfg = runner_cfg(sae_cfg, RESID1, 4096, output_path=str(tmp_path / "out"))
    sae = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    used = sae.cfg.metadata.lookup_init["bigram_rows_used"]
    V = model.cfg.d_vocab
    assert 0 < used < sae_cfg.lookup_bigram_rows == 65_536  # the user's config keeps its budget
    assert saved_lookup_rows(tmp_path / "out") == V + used
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.lookup_bigram_rows == used and (loaded.bigram_pairs() >= 0).all()
    stored = sum(t.numel() * t.element_size() for t in loaded.state_dict().values())
    assert (tmp_path / "out" / "sae_weights.safetensors").stat().st_size <= stored + 4096  # + the header
    assert stored < (V + sae_cfg.lookup_bigram_rows) * 32 * 4 / 10  # the budget's rows alone were 10x that
    tokens = torch.stack([dataset[i]["tokens"] for i in range(2)])
    x = activations_at_hook(model, tokens, RESID1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, token_ids=tokens), sae.eval()(x, token_ids=tokens))


def test_a_data_estimated_table_never_raises_the_sink_alarm(model, dataset, monkeypatch):
    """The sink check is about prompt prefixes that are attention sinks; a data table skips
    each sequence's first position, and on a small sample its unseen rows (the mean) can
    measure like a sink: no warning the user could act on."""
    import warnings

    from sae_lens_tokenized.lookup_init.fit import UnigramFit, UnigramSinkWarning

    monkeypatch.setattr(UnigramFit, "looks_like_a_sink", lambda self: True)  # whatever the measure says
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnigramSinkWarning)
        TokenizedSAETrainingRunner(runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID1, 2048),
                                   override_model=model, override_dataset=dataset)
    with pytest.warns(UnigramSinkWarning):  # a prompt strategy is still checked
        TokenizedSAETrainingRunner(runner_cfg(TokenizedTopKTrainingSAEConfig(
            d_in=32, d_sae=64, k=4, unigram_strategy="bos,t", lookup_ngram=1), RESID1, 2048),
            override_model=model, override_dataset=dataset)


def test_the_init_sample_is_the_start_of_the_training_stream_and_is_trained_on(tmp_path, model, dataset):
    """Every activation read is trained on: the init sample is held and served to training
    first, so a run reads its training tokens plus what SAELens's buffer still holds at
    the end, not the sample on top."""
    cache_prior_tables(model, RESID1)
    seen = []
    handle = model.embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].numel()))
    try:
        cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_tokens=2048), RESID1,
                         4096, output_path=str(tmp_path / "out"))
        runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        runner.run()
    finally:
        handle.remove()
    counts = json.loads((tmp_path / "out" / "cfg.json").read_text())["metadata"]["activations"]
    buffer = cfg.n_batches_in_buffer * CTX
    assert counts["trained_on"] == 4096 and 0 <= counts["read"] - counts["trained_on"] < buffer
    assert sum(seen) == counts["read"] + 2  # every LLM forward is counted (+ the config probe)
    assert runner.activations_store.held_activations == 0  # the held sample was all served


def test_the_init_sample_waits_on_disk_and_trains_exactly_as_if_held_in_memory(tmp_path, model, dataset, monkeypatch):
    """The default's memory (issue 20, item 6): the held init sample is the largest part of
    the default that does not scale with the lookup, so by default it waits in an unnamed
    temporary file under TMPDIR, closed once training has taken it. The run must be the
    memory run, weight for weight, and leave nothing behind."""
    import tempfile

    from sae_lens_tokenized.lookup_init.statistics import LookupStatistics

    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))  # what TMPDIR sets
    weights = {}
    for hold in ("memory", "disk"):
        torch.manual_seed(0)
        cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_tokens=2048,
                                                        lookup_init_hold=hold), RESID1, 4096)
        runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        store = runner.activations_store
        held = [item for item, _ in store._held]
        assert runner.unigram_report["lookup_init"]["held_on"] == hold
        assert list(spill.iterdir()) == []  # never a named file, so nothing can be left behind
        if hold == "disk":  # the whole sample is in the file under TMPDIR, and nothing of it in memory
            fd = store._spill.file.fileno()
            assert os.readlink(f"/proc/self/fd/{fd}").startswith(str(spill))
            assert os.fstat(fd).st_size >= 2048 * (32 + 2) * 4
            assert len(held) == 2048 // (8 * CTX) and not any(isinstance(b, (tuple, torch.Tensor)) for b in held)
            assert store.held_activations == 2048
        else:
            assert store._spill is None and all(isinstance(b, tuple) for b in held)
        weights[hold] = {k: v.detach().clone() for k, v in runner.run().state_dict().items()}
        assert store.held_activations == 0 and store._spill is None  # served, and the file closed
    for k, v in weights["memory"].items():
        assert torch.equal(v, weights["disk"][k]), k
    # the bigrams' second pass reads the batches again instead of keeping them
    stats = LookupStatistics(50, 4, ngram=2, reread=lambda: iter(()))
    stats.add(torch.randn(8, 4), torch.arange(8), torch.arange(8) - 1)
    assert stats._batches[0][0] is None
    with pytest.raises(RuntimeError, match="re-reading the init sample gave no rows for batch 0"):
        stats.bigram_table(torch.zeros(50, 4), budget=4)


def test_too_little_disk_for_the_init_sample_stops_before_writing_it(tmp_path, model, dataset, monkeypatch):
    import shutil
    import tempfile

    from sae_lens_tokenized.training import held_batches
    from sae_lens_tokenized.training.held_batches import HeldBatchesError

    spill = tmp_path / "tmp"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    real = shutil.disk_usage
    monkeypatch.setattr(held_batches.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=2048 * 34 * 4 // 2))  # half the sample fits
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_tokens=2048), RESID1, 4096)
    with pytest.raises(HeldBatchesError, match=r"(?s)2,048 activations.*TMPDIR.*lookup_init_hold='memory'"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    assert list(spill.iterdir()) == []  # not a byte written
    with pytest.raises(ValueError, match=r"lookup_init_hold must be one of \('disk', 'memory'\)"):
        TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_init_hold="gpu")


_HOLD_AND_STOP = """
import os, signal, sys, torch
from sae_lens_tokenized.training.held_batches import HeldBatches
store = HeldBatches()
with store.holding("disk", expected_rows=8):
    store._keep_if_holding(torch.zeros(4, 3), 4)
    store._keep_if_holding(torch.ones(4, 3), 4)
fd = store._spill.file.fileno()
print(os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size, flush=True)
if sys.argv[2] == "served":
    assert torch.equal(store._next_held(), torch.zeros(4, 3)) and torch.equal(store._next_held(), torch.ones(4, 3))
    assert store._spill is None
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
print("still running", flush=True)
"""


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("when", ["held", "served"])
def test_a_run_stopped_by_a_signal_leaves_no_init_sample_on_disk(tmp_path, signal_name, when):
    """A cluster's job cancel or torchrun stopping the ranks that did not fail (SIGTERM), the
    out-of-memory killer (SIGKILL): the process ends without Python's cleanup, and the held
    sample (gigabytes at a large width) must not stay in TMPDIR."""
    import signal
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _HOLD_AND_STOP, signal_name, when], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=120)
    assert proc.returncode == -getattr(signal, signal_name), proc.stderr
    path, size = proc.stdout.split("\n")[0].rsplit(" ", 1)
    assert path.startswith(str(tmp_path)) and int(size) >= 2 * 4 * 3 * 4  # the sample was written there
    assert "still running" not in proc.stdout
    # no byte of it stays (a library's empty folders, such as wandb's media folder, may)
    assert [f for f in tmp_path.rglob("*") if f.is_file()] == []


def test_bigram_statistics_hold_counts_per_pair_and_rows_only_for_the_chosen_pairs():
    """The default's memory (issue 20, item 6): while sampling, a bigram lookup's statistics
    keep an int64 key and count per distinct pair, never a d_in row (a 500k sample has
    hundreds of thousands of pairs); rows are summed afterwards for the chosen pairs only.
    The result must still be each chosen pair's exact mean over the kept rows."""
    from sae_lens_tokenized.lookup_init.statistics import LookupStatistics

    V, d, n_batches, N = 97, 64, 6, 2000
    gen = torch.Generator().manual_seed(0)
    stats = LookupStatistics(V, d, ngram=2)
    all_acts, all_ids, all_prev, all_keep = [], [], [], []
    for _ in range(n_batches):
        ids = torch.randint(0, V, (N,), generator=gen)
        prev = torch.randint(-1, V, (N,), generator=gen)
        prev[ids % 7 == 0] = 3  # a few frequent pairs (3, t)
        acts = torch.randn(N, d, generator=gen)
        keep = torch.rand(N, generator=gen) > 0.2
        stats.add(acts, ids, prev, keep=keep)
        all_acts.append(acts), all_ids.append(ids), all_prev.append(prev), all_keep.append(keep)
    acts, ids, prev, keep = (torch.cat(t) for t in (all_acts, all_ids, all_prev, all_keep))
    distinct = len({(int(p), int(t)) for p, t, k in zip(prev, ids, keep) if k and p >= 0})
    assert distinct > 2000
    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                yield from tensors(item)

    given = {id(a) for a in all_acts}  # the caller's batches, referenced for the second pass
    own = [t for t in tensors(list(vars(stats).values())) if id(t) not in given]
    own_row_floats = sum(t.numel() for t in own if t.dim() == 2)
    assert own_row_floats == V * d  # the token sums: no row per pair
    pair_bytes = sum(k.numel() * k.element_size() + c.numel() * c.element_size() for k, c in stats._pair_counts)
    assert pair_bytes <= 16 * distinct * 2  # counts, at most one uncompacted copy

    table = stats.bigram_table(stats.token_rows(None, 0.0), budget=12, min_count=2, pseudo_count=0.0)
    assert len(table.keys) == 12 and table.n_distinct_seen == distinct
    for key, row, count in zip(table.keys, table.rows, table.counts):
        p, t = divmod(int(key), V)
        where = keep & (prev == p) & (ids == t)
        assert int(where.sum()) == int(count) >= 2
        torch.testing.assert_close(row, acts[where].mean(0), atol=1e-5, rtol=1e-5)
    # the budget keeps the most frequent pairs
    counts = {}
    for p, t, k in zip(prev.tolist(), ids.tolist(), keep.tolist()):
        if k and p >= 0:
            counts[p * V + t] = counts.get(p * V + t, 0) + 1
    assert min(table.counts.tolist()) >= sorted(counts.values(), reverse=True)[11]
    # and the token rows are the kept rows' means
    seen = torch.bincount(ids[keep], minlength=V) > 0
    t0 = int(ids[keep][0])
    torch.testing.assert_close(stats.token_rows(None, 0.0)[t0], acts[keep & (ids == t0)].mean(0), atol=1e-5, rtol=1e-5)
    assert seen.sum() == (stats.counts > 0).sum()
