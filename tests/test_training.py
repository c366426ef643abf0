"""Training through SAELens: alignment of ids, the lookup's training, quality, errors."""

import copy
import itertools
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from sae_lens import SAE, LanguageModelSAETrainingRunner, TopKTrainingSAEConfig
from sae_lens.training.prefetch import PrefetchingIterator

from helpers import nmse, runner_cfg, token_dataset, tiny_model
from sae_lens_tokenized import (
    TokenizedSAETrainingRunner,
    TokenizedTopKSAE,
    TokenizedTopKTrainingSAEConfig,
    UnigramStrategyError,
    compute_unigram_table,
    token_ids_from,
)
from sae_lens_tokenized import METHOD_LOOKUP
from sae_lens_tokenized.training.activations_store import TokenizedActivationsStore
from sae_lens_tokenized.lookup_init.unigrams import UnigramCacheError
from sae_lens_tokenized.models import activations_at_hook

EMBED = "hook_embed"  # activation == W_E[token]: the token explains everything
RESID = "blocks.1.hook_resid_pre"


def tok_cfg(model, **kw):
    kw.setdefault("d_sae", 64)
    kw.setdefault("k", 4)
    return TokenizedTopKTrainingSAEConfig(d_in=model.cfg.d_model, **kw)


# ---------------------------------------------------------------- alignment ------------
@pytest.mark.parametrize("prefetch", [False, True])
def test_every_activation_reaches_the_trainer_with_its_own_token(model, dataset, prefetch):
    # exactly the path SAELens's run() builds: the store, or a PrefetchingIterator over it,
    # as the trainer's data provider (here behind the side channel the trainer adds)
    from sae_lens_tokenized.training.activations_store import TokenIdsSideChannel

    cfg = runner_cfg(tok_cfg(model, d_vocab=model.cfg.d_vocab), EMBED, 20_000)
    store = TokenizedActivationsStore.from_config(model, cfg, override_dataset=dataset)
    # a finite source, drained below: SAELens 6.53's producer thread has no close() and would
    # otherwise keep running forwards on the shared model while later tests use it
    provider = PrefetchingIterator(itertools.islice(iter(store), 12), prefetch=2) if prefetch else store
    channel = TokenIdsSideChannel(provider, with_prev=store.carries_prev)
    seen = []
    for _ in range(12):  # several buffer refills: rows are shuffled across LLM batches
        acts = next(channel)
        ids = channel.token_ids_for(acts)
        # at hook_embed the activation *is* the embedding row of its token
        assert torch.equal(acts, model.W_E[ids]), "ids and activations were shuffled apart"
        seen.append(ids)
    if prefetch:
        assert list(provider) == []  # the producer has finished: no more forwards
    ids = torch.cat(seen)
    # and the stream really is shuffled (not trivially in order)
    assert not torch.equal(ids[:32], dataset[0]["tokens"][:32])


def test_exclude_special_tokens_removes_bos_positions(model, dataset):
    bos = model.tokenizer.bos_token_id
    for exclude, expect_bos in [(False, True), (True, False)]:
        cfg = runner_cfg(tok_cfg(model, d_vocab=512), EMBED, 20_000, exclude_special_tokens=exclude)
        store = TokenizedActivationsStore.from_config(model, cfg, override_dataset=dataset)
        ids = torch.cat([next(store.iter_with_token_ids())[1] for _ in range(4)])
        assert bool((ids == bos).any()) is expect_bos


def test_special_tokens_that_true_leaves_in_are_named_with_the_fix(dataset):
    import warnings

    from transformers import AutoTokenizer

    from sae_lens_tokenized.training.runner import SpecialTokensNotExcludedWarning

    # SmolLM2-Instruct's case: bos/eos are chat markers, the text separator is another
    # special token, so SAELens's exclude_special_tokens=True keeps every separator.
    model = tiny_model()
    model.tokenizer = AutoTokenizer.from_pretrained(model.tokenizer.name_or_path)  # not the shared one
    model.tokenizer.bos_token = model.tokenizer.eos_token = "<|pad|>"
    sep, pad = model.tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>"])
    cfg = runner_cfg(tok_cfg(model), EMBED, 2_000, exclude_special_tokens=True)
    with pytest.warns(SpecialTokensNotExcludedWarning, match=rf"exclude_special_tokens=\[{min(sep, pad)}, {max(sep, pad)}\]"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    cfg = runner_cfg(tok_cfg(model), EMBED, 2_000, exclude_special_tokens=[sep, pad])
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecialTokensNotExcludedWarning)
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)


# ------------------------------------------------------- end to end -----------------------
def test_train_save_load_evaluate_splice(tmp_path, model, dataset):
    from sae_lens import run_evals
    from sae_lens.evals import EvalConfig
    from sae_lens.training.activation_scaler import ActivationScaler

    out = tmp_path / "sae"
    cfg = runner_cfg(
        tok_cfg(model), RESID, 30_000, output_path=str(out), checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1
    )
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    assert runner.sae.cfg.d_vocab == model.cfg.d_vocab  # taken from the model
    trained = runner.run()
    assert sorted(os.listdir(out)) == ["cfg.json", "runner_cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    ckpts = list((tmp_path / "ckpt").rglob("sae_weights.safetensors"))
    assert ckpts, "no checkpoint written"

    loaded = SAE.load_from_disk(out)
    assert isinstance(loaded, TokenizedTopKSAE)
    assert loaded.cfg.metadata.hook_name == RESID
    assert torch.equal(loaded.W_lookup, trained.W_lookup)
    tokens = torch.stack([dataset[-i]["tokens"] for i in range(1, 5)])
    x = activations_at_hook(model, tokens, RESID)
    torch.testing.assert_close(loaded(x, token_ids=tokens), trained(x, token_ids=tokens), rtol=1e-5, atol=1e-5)

    eval_cfg = EvalConfig(n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=2,
                          compute_ce_loss=True, compute_variance_metrics=True)
    with token_ids_from(model, loaded):
        metrics, _ = run_evals(loaded, runner.activations_store, model, ActivationScaler(), eval_cfg)
        logits = model.run_with_saes(tokens, saes=[loaded])
    # SAELens's evals see the lookup: the same SAE without it explains much less
    no_lookup = copy.deepcopy(loaded)
    with torch.no_grad():
        no_lookup.W_lookup.zero_()
    with token_ids_from(model, no_lookup):
        without, _ = run_evals(no_lookup, runner.activations_store, model, ActivationScaler(), eval_cfg)
    ev, ev0 = (m["reconstruction_quality"]["explained_variance"] for m in (metrics, without))
    assert ev > ev0 + 0.1, (ev, ev0)
    assert logits.shape == (4, 32, model.cfg.d_vocab)


def test_evals_during_training_with_wandb_offline(tmp_path, model, dataset, monkeypatch):
    from sae_lens import LoggingConfig

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []
    cfg = runner_cfg(
        tok_cfg(model), RESID, 8_000,
        logger=LoggingConfig(log_to_wandb=True, wandb_log_frequency=5, eval_every_n_wandb_logs=1),
    )
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    original = runner.evaluator.__class__.__call__

    def spy(self, *a, **k):
        result = original(self, *a, **k)
        calls.append(result)
        return result

    monkeypatch.setattr(runner.evaluator.__class__, "__call__", spy)
    runner.run()
    assert calls and "ce_loss_score" in calls[0]["model_performance_preservation"]


# ------------------------------------------------------- the lookup -------------------------
def test_lookup_is_initialised_from_unigrams_and_moves_when_trained(model, dataset):
    cfg = runner_cfg(tok_cfg(model, **METHOD_LOOKUP), RESID, 20_000)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    u = compute_unigram_table(model, RESID, "bos,t", show_progress=False)
    assert torch.equal(runner.sae.W_lookup.data, 0.5 * u)
    init = runner.sae.W_lookup.detach().clone()
    sae = runner.run()
    moved = (sae.W_lookup.detach() - init).norm(dim=-1)
    assert (moved > 1e-3).sum() > 50, "the lookup did not train"


def test_frozen_lookup_stays_bitwise_put_while_the_rest_trains(model, dataset):
    cfg = runner_cfg(tok_cfg(model, train_lookup=False), RESID, 20_000)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    init = runner.sae.W_lookup.detach().clone()
    w_enc = runner.sae.W_enc.detach().clone()
    sae = runner.run()
    assert torch.equal(sae.W_lookup.detach(), init)
    assert not torch.equal(sae.W_enc.detach(), w_enc)


@pytest.mark.parametrize("updates", ["sparse_rowwise", "sparse"])
def test_lookup_has_its_own_learning_rate(model, dataset, updates):
    # Adam's first step moves every parameter entry with a gradient by about its lr, and
    # the row-wise lookup moves each touched row by its lr in RMS: run one real step through
    # SAELens's trainer and read each group's lr off the weights.
    from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

    cfg = runner_cfg(tok_cfg(model, lookup_lr=0.02, lookup_updates=updates), RESID, 20_000, lr=1e-4,
                     lr_warm_up_steps=0)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    trainer = TokenizedSAETrainer(cfg=cfg.to_sae_trainer_config(), sae=runner.sae,
                                  data_provider=runner.activations_store)
    before = {n: p.detach().clone() for n, p in runner.sae.state_dict().items()}
    trainer.step(next(trainer.data_provider))
    moved = {n: (p.detach() - before[n]).abs() for n, p in runner.sae.state_dict().items()}
    rows = moved["W_lookup"][moved["W_lookup"].sum(-1) > 0]
    lookup_step = rows.pow(2).mean(-1).sqrt().median()  # each touched row's RMS step
    enc_step = moved["W_enc"][moved["W_enc"] > 0].median()
    assert lookup_step / enc_step == pytest.approx(0.02 / 1e-4, rel=0.2)


# ------------------------------------------------------- quality (planted) ----------------
class ShuffledIdsStore(TokenizedActivationsStore):
    """A deliberately broken store: ids permuted within each LLM batch."""

    def get_raw_llm_batch(self, raise_on_epoch_end=False):
        packed, ids = super().get_raw_llm_batch(raise_on_epoch_end)
        packed[:, -1] = packed[torch.randperm(len(ids)), -1]
        return packed, ids


def _heldout_nmse(sae, model, hook, tokenized):
    tokens = torch.stack([token_dataset()[-i]["tokens"] for i in range(1, 33)])[:, 1:]  # skip BOS
    x = activations_at_hook(model, tokens, hook)
    with torch.no_grad():
        x_hat = sae(x, token_ids=tokens) if tokenized else sae(x)
    return nmse(x_hat, x)


@pytest.mark.slow
def test_tokenized_beats_topk_where_the_token_explains_the_activation(model, dataset):
    budget = dict(hook_name=EMBED, training_tokens=120_000)
    base = dict(d_in=model.cfg.d_model, d_sae=64, k=4)

    def train(sae_cfg, runner_cls, **kw):
        torch.manual_seed(0)
        cfg = runner_cfg(sae_cfg, budget["hook_name"], budget["training_tokens"])
        return runner_cls(cfg, override_model=model, override_dataset=dataset, **kw).run()

    topk = train(TopKTrainingSAEConfig(**base), LanguageModelSAETrainingRunner)
    tok = train(TokenizedTopKTrainingSAEConfig(**base), TokenizedSAETrainingRunner)

    class ShuffledRunner(TokenizedSAETrainingRunner):
        store_class = ShuffledIdsStore

    shuffled = train(TokenizedTopKTrainingSAEConfig(**base, init_lookup_from_unigrams=False, lookup_ngram=1), ShuffledRunner)

    n_topk = _heldout_nmse(topk, model, EMBED, False)
    n_tok = _heldout_nmse(tok, model, EMBED, True)
    n_shuf = _heldout_nmse(shuffled, model, EMBED, True)
    print(f"held-out NMSE: topk {n_topk:.4f} tokenized {n_tok:.4f} shuffled-ids {n_shuf:.4f}")
    assert n_tok < 0.02, "a trained lookup should reconstruct the embedding almost exactly"
    assert n_tok < 0.1 * n_topk
    assert n_shuf > 10 * n_tok, "with misaligned ids the tokenized SAE must lose its edge"


# ------------------------------------------------------- bad input --------------------------
@pytest.mark.parametrize(
    "kw, runner_kw, match",
    [
        (dict(d_vocab=1000), {}, "d_vocab=1000 but the model has d_vocab=512"),
        (dict(d_in=48), {}, "d_in=48 but activations at"),
        ({}, dict(unigram_table=torch.zeros(10, 32)), r"unigram table has shape \(10, 32\)"),
        ({}, dict(hook_name="blocks.1.hook_resid_prex"), "no hook point 'blocks.1.hook_resid_prex'"),
        (dict(unigram_strategy="bos,7"), {}, "contains no 't'"),
        (dict(unigram_strategy="bos,t,99999"), {}, "out of range"),
        ({}, dict(train_batch_size_tokens=4096), "buffer holds"),
        (dict(unigram_strategy="auto"), dict(unigram_table=torch.zeros(512, 32)), "'auto' chooses the table itself"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, model, dataset, kw, runner_kw, match):
    sae_kw = dict(d_in=model.cfg.d_model, d_sae=64, k=4)
    sae_kw.update(kw)
    hook = runner_kw.pop("hook_name", RESID)
    table = runner_kw.pop("unigram_table", None)
    out = tmp_path / "out"
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(**sae_kw), hook, 10_000, output_path=str(out), **runner_kw)
    with pytest.raises((ValueError, UnigramStrategyError), match=match):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset, unigram_table=table).run()
    assert not out.exists()


def test_precomputed_table_from_file(tmp_path, model, dataset):
    u = torch.randn(model.cfg.d_vocab, model.cfg.d_model)
    save_file({"unigrams": u}, tmp_path / "u.safetensors")
    cfg = runner_cfg(tok_cfg(model, unigram_table_path=str(tmp_path / "u.safetensors")), RESID, 10_000)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    # an explicit table wins over the default data estimate, and is recorded as such
    assert torch.equal(runner.sae.W_lookup.data[: model.cfg.d_vocab], 0.5 * u)
    assert runner.sae.cfg.unigram_strategy == "precomputed" and runner.sae.cfg.lookup_init_scale == 0.5
    save_file({"table": u}, tmp_path / "bad.safetensors")
    cfg = runner_cfg(tok_cfg(model, unigram_table_path=str(tmp_path / "bad.safetensors")), RESID, 10_000)
    with pytest.raises(UnigramCacheError, match="no tensor named 'unigrams'"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)


def test_model_without_bos_gets_a_clear_error(dataset):
    model = tiny_model()
    model.tokenizer.bos_token = None
    cfg = runner_cfg(tok_cfg(model, **METHOD_LOOKUP), RESID, 10_000)
    with pytest.raises(UnigramStrategyError, match="needs a BOS token"):
        TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    cfg = runner_cfg(tok_cfg(model, unigram_strategy="space,t"), RESID, 10_000)
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)


def test_expected_average_only_in_scales_the_lookup_consistently(tmp_path, model, dataset):
    cfg = runner_cfg(tok_cfg(model, normalize_activations="expected_average_only_in"), EMBED, 60_000,
                     output_path=str(tmp_path / "sae"), n_batches_for_norm_estimate=5)
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.normalize_activations == "none"  # folded
    assert _heldout_nmse(loaded, model, EMBED, True) < 0.05


def test_a_plain_config_trains_in_the_plugins_runner_exactly_as_in_saelens(model, dataset):
    # one runner for both sides of a comparison (and for data parallelism, which SAELens
    # lacks): in one process a plain config is SAELens's own run, weight for weight
    cfg = runner_cfg(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 4096)
    torch.manual_seed(0)
    ours = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    torch.manual_seed(0)
    theirs = LanguageModelSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    assert type(ours) is type(theirs)
    for name, p in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], p), name


def test_resume_from_checkpoint_restores_lookup_and_its_optimizer_group(tmp_path, model, dataset, monkeypatch):
    from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

    cfg = runner_cfg(tok_cfg(model, lookup_lr=0.02), RESID, 20_000, lr=1e-3,
                     checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1)
    TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    (ckpt,) = [p.parent for p in (tmp_path / "ckpt").rglob("trainer_state.pt")]
    saved = torch.load(ckpt / "trainer_state.pt")["optimizer"]
    saved_lookup = SAE.load_from_disk(ckpt).W_lookup.detach().clone()
    # the checkpoint holds the lookup's own Adam group, with moments only for seen tokens
    assert [g["name"] for g in saved["param_groups"]] == ["sae", "lookup"]
    assert saved["param_groups"][1]["lr"] == 0.02 and saved["param_groups"][0]["lr"] == 1e-3
    lookup_index = saved["param_groups"][1]["params"][0]
    lazy = saved["state"][lookup_index]
    # lazy Adam state: moments for the rows seen so far only, not [d_vocab, d_in]
    assert 1 < int(lazy["rows_in_use"]) <= saved_lookup.shape[0] + 1
    assert lazy["exp_avg"].shape[1] == saved_lookup.shape[1]
    assert (lazy["slot_of"][:-1] >= 0).sum() == int(lazy["rows_in_use"]) - 1

    restored = {}
    load = TokenizedSAETrainer.load_trainer_state

    def spy(self, path):
        load(self, path)
        restored["optimizer"] = copy.deepcopy(self.optimizer.state_dict())  # training goes on in place
        restored["lookup_is_staged_rows"] = self.optimizer.param_groups[1]["params"][0] is self.sae.lookup_rows

    monkeypatch.setattr(TokenizedSAETrainer, "load_trainer_state", spy)
    cfg2 = runner_cfg(tok_cfg(model, lookup_lr=0.02), RESID, 30_000, lr=1e-3, resume_from_checkpoint=str(ckpt),
                      output_path=str(tmp_path / "out"))
    runner = TokenizedSAETrainingRunner(cfg2, override_model=model, override_dataset=dataset)
    assert runner.unigram_report == {}  # no fresh init when resuming
    sae = runner.run()
    # the resumed trainer got exactly the checkpoint's optimizer state, lookup group included
    assert restored["lookup_is_staged_rows"]
    for key in ("exp_avg", "exp_avg_sq", "slot_of", "rows_in_use"):
        assert torch.equal(restored["optimizer"]["state"][lookup_index][key], lazy[key]), key
    assert restored["optimizer"]["param_groups"] == saved["param_groups"]
    assert not torch.equal(sae.W_lookup.detach(), saved_lookup)  # and it trained on from there


def test_side_channel_refuses_a_foreign_batch():
    from sae_lens_tokenized.training.activations_store import TokenIdsSideChannel

    from sae_lens_tokenized.training.activations_store import pack_token_ids

    channel = TokenIdsSideChannel(iter([pack_token_ids(torch.zeros(2, 3), torch.tensor([1, 2]))] * 3))
    batch = next(channel)
    with pytest.raises(RuntimeError, match="did not come from"):
        channel.token_ids_for(batch.clone())
    assert torch.equal(channel.token_ids_for(batch), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match="already used"):
        channel.token_ids_for(batch)


def test_the_runner_never_changes_the_users_config_and_records_what_it_resolved(tmp_path, model, dataset):
    sae_cfg = tok_cfg(model, unigram_strategy="auto")
    cfg = runner_cfg(sae_cfg, RESID, 2048, output_path=str(tmp_path / "out"))
    before = copy.deepcopy(cfg.sae)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    runner.run()
    assert cfg.sae == before and cfg.sae.d_vocab is None and cfg.sae.unigram_strategy == "auto"
    saved = json.loads((tmp_path / "out" / "cfg.json").read_text())
    ran = json.loads((tmp_path / "out" / "runner_cfg.json").read_text())
    chosen = runner.unigram_report["unigram_strategy_selection"]
    assert saved["d_vocab"] == model.cfg.d_vocab and saved["unigram_strategy"] in chosen
    assert saved["lookup_init_scale"] == runner.sae.cfg.lookup_init_scale is not None
    assert ran["sae"]["d_vocab"] == model.cfg.d_vocab and ran["sae"]["unigram_strategy"] == saved["unigram_strategy"]
