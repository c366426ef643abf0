"""Tokenized SAEs next to plain ones in SAELens's MultiSAETrainingRunner: one LLM forward
per batch, every id aligned through SAELens's shared shuffle, statistics shared per hook,
every activation read trained on, resume, and bad input refused before any work."""

import copy
import json

import pytest
import torch
from sae_lens import SAE, LoggingConfig, TopKTrainingSAEConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from helpers import cache_prior_tables, runner_cfg, token_dataset
from sae_lens_tokenized import TokenizedMultiSAETrainingRunner, TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.training.held_batches import HeldBatches
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

EMBED, RESID0 = "hook_embed", "blocks.0.hook_resid_pre"  # W_E[t]; W_E[t] + W_pos[p]
CTX = 32


def multi_cfg(saes, hooks, tmp_path=None, training_tokens=4096, **kw):
    args = dict(saes=saes, hook_names=hooks, model_name="tiny", dataset_path="unused", context_size=CTX,
                training_tokens=training_tokens, train_batch_size_tokens=256, n_batches_in_buffer=16,
                store_batch_size_prompts=8, lr=3e-3, device="cpu", seed=0, logger=LoggingConfig(log_to_wandb=False),
                output_path=str(tmp_path / "out") if tmp_path else None, checkpoint_path=None, n_checkpoints=0)
    args.update(kw)
    return MultiSAETrainingRunnerConfig(**args)


def tok(**kw):
    kw.setdefault("lookup_init_tokens", 2048)
    return TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, **kw)


def test_tokenized_and_plain_saes_train_together_with_every_id_aligned(tmp_path, model, dataset, monkeypatch):
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]] = []
    step = TokenizedSAETrainer.step

    def record(self, batch):
        ids, prev = self.token_ids_channel.ids_for(batch)
        seen.append((batch.detach().clone(), ids.clone(), None if prev is None else prev.clone(), self.sae.cfg.lookup_ngram))
        return step(self, batch)

    monkeypatch.setattr(TokenizedSAETrainer, "step", record)
    cfg = multi_cfg({"tok_embed": tok(lookup_ngram=1), "plain_embed": TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4),
                     "tok_resid": tok()}, {"tok_embed": EMBED, "plain_embed": EMBED, "tok_resid": RESID0}, tmp_path)
    user_cfg = copy.deepcopy(cfg)
    saes = TokenizedMultiSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    assert cfg.saes == user_cfg.saes  # the user's config is not modified
    W_E, W_pos = model.W_E.detach(), model.W_pos.detach()[:CTX]
    # every (position, previous token, token) of the corpus, to check bigram alignment
    corpus = {(p, int(r[p - 1]), int(r[p])) for r in token_dataset()["tokens"] for p in range(1, CTX)}
    unigram = [s for s in seen if s[3] == 1]
    bigram = [s for s in seen if s[3] == 2]
    assert len(unigram) == len(bigram) == 16  # 4096 tokens / 256 per step, each SAE every step
    for batch, ids, _, _ in unigram:  # at hook_embed an activation is exactly its token's embedding
        torch.testing.assert_close(batch, W_E[ids])
    shuffled = False
    for batch, ids, prev, _ in bigram:  # at resid_pre: W_E[t] + W_pos[p]; p tells the position
        pos = torch.cdist(batch - W_E[ids], W_pos).argmin(1)
        torch.testing.assert_close(batch, W_E[ids] + W_pos[pos])
        assert torch.equal(prev < 0, pos == 0)  # a context's first position has no previous token
        assert all((int(p), int(a), int(b)) in corpus for p, a, b in zip(pos, prev, ids) if p > 0)
        shuffled |= not bool((pos[1:] >= pos[:-1]).all())
    assert shuffled  # the rows went through SAELens's mixing buffer
    tokens = torch.stack([dataset[i]["tokens"] for i in range(2)])
    for name, cls in (("tok_embed", "TokenizedTopKSAE"), ("plain_embed", "TopKSAE"), ("tok_resid", "TokenizedTopKSAE")):
        loaded = SAE.load_from_disk(tmp_path / "out" / name)
        assert type(loaded).__name__ == cls
        x = model.run_with_cache(tokens, names_filter=[cfg.hook_names[name]])[1][cfg.hook_names[name]]
        ids = {"token_ids": tokens} if cls.startswith("Tokenized") else {}
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, **ids), saes[name].eval()(x, **ids), rtol=1e-4, atol=1e-4)
    # each tokenized SAE trained its lookup in its own group
    assert not torch.equal(saes["tok_resid"].W_lookup, torch.zeros_like(saes["tok_resid"].W_lookup))


def test_the_init_sample_is_read_once_for_every_sae_at_a_hook_and_trained_on(tmp_path, model, dataset, monkeypatch):
    cache_prior_tables(model, RESID0, EMBED)
    embedded = []
    handle = model.embed.register_forward_pre_hook(lambda m, args: embedded.append(args[0].numel()))
    rereads = []  # the bigrams' second passes over the held sample
    held_batches = HeldBatches.held_batches
    monkeypatch.setattr(HeldBatches, "held_batches", lambda self: rereads.append(1) or held_batches(self))
    try:
        cfg = multi_cfg({"a": tok(), "b": tok(lookup_bigram_min_count=3), "c": tok(lookup_ngram=1),
                         "d": tok(lookup_init_pseudo_count=2.0)},
                        {"a": RESID0, "b": RESID0, "c": EMBED, "d": RESID0}, tmp_path)
        runner = TokenizedMultiSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        # four tokenized SAEs, two hooks: one sample of 2048 activations from one forward per
        # batch serves all of them (plus a 2-token probe per SAE that checks its config)
        assert sum(embedded) == 2048 + 4 * 2
        reports = runner.unigram_reports
        assert reports["a"]["lookup_init"]["shared_by"] == ["a", "b", "d"] == reports["b"]["lookup_init"]["shared_by"]
        assert reports["b"]["lookup_init"]["bigram_rows_used"] < reports["a"]["lookup_init"]["bigram_rows_used"]
        # a and d choose the same pairs (same budget and min_count): one second pass serves
        # both, and b's own min_count costs one more
        assert len(rereads) == 2
        assert torch.equal(runner.saes["d"].bigram_pairs(), runner.saes["a"].bigram_pairs())
        assert not torch.allclose(runner.saes["d"].W_lookup, runner.saes["a"].W_lookup)  # its own shrinkage
        init_a = runner.saes["a"].W_lookup.detach().clone(), runner.saes["a"].bigram_pairs()
        init_d = runner.saes["d"].W_lookup.detach().clone()
        saes = runner.run()
    finally:
        handle.remove()
    # the shared statistics give what one SAE's own run gives (its token and bigram rows are
    # the sample's means: test_data_init_and_bigrams), the bigrams' second pass included,
    # which reads the held sample again at this hook
    single = TokenizedSAETrainingRunner(runner_cfg(tok(), RESID0, 4096), override_model=model,
                                        override_dataset=dataset).sae
    assert reports["a"]["lookup_init"]["bigram_rows_used"] > 0
    torch.testing.assert_close(init_a[0], single.W_lookup.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(init_a[1], single.bigram_pairs())
    single_d = TokenizedSAETrainingRunner(runner_cfg(tok(lookup_init_pseudo_count=2.0), RESID0, 4096),
                                          override_model=model, override_dataset=dataset).sae
    torch.testing.assert_close(init_d, single_d.W_lookup.detach(), rtol=1e-5, atol=1e-6)
    counts = json.loads((tmp_path / "out" / "a" / "cfg.json").read_text())["metadata"]["activations"]
    # the sample was the start of the training stream: read once, trained on
    buffer = cfg.n_batches_in_buffer * CTX
    assert counts["trained_on"] == 4096 and 0 <= counts["read"] - counts["trained_on"] < buffer
    assert counts["read"] == sum(embedded) - 4 * 2
    assert saes["a"].cfg.metadata.activations == counts


def test_resume_in_the_multi_runner_restores_each_lookup_and_its_optimizer(tmp_path, model, dataset):
    cfg = multi_cfg({"t": tok(), "p": TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)}, {"t": RESID0, "p": RESID0},
                    checkpoint_path=str(tmp_path / "ckpt"), n_checkpoints=1)
    TokenizedMultiSAETrainingRunner(cfg, override_model=model, override_dataset=dataset).run()
    (ckpt,) = [p.parent.parent for p in (tmp_path / "ckpt").rglob("trainer_state.pt") if p.parent.name == "t"]
    saved_lookup = SAE.load_from_disk(ckpt / "t").W_lookup.detach().clone()
    saved_state = torch.load(ckpt / "t" / "trainer_state.pt")["optimizer"]
    resumed_cfg = multi_cfg({"t": tok(), "p": TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)}, {"t": RESID0, "p": RESID0},
                            training_tokens=6144, resume_from_checkpoint=str(ckpt))
    runner = TokenizedMultiSAETrainingRunner(resumed_cfg, override_model=model, override_dataset=dataset)
    assert runner.saes["t"].W_lookup.shape == saved_lookup.shape  # sized to the checkpoint's rows
    restored = {}
    from sae_lens_tokenized.training import multi_runner

    fit = multi_runner.TokenizedMultiSAETrainer.fit

    def spy(self):
        restored["lookup"] = self.saes["t"].W_lookup.detach().clone()
        restored["state"] = copy.deepcopy(self.trainers["t"].optimizer.state_dict())
        return fit(self)

    multi_runner.TokenizedMultiSAETrainer.fit = spy
    try:
        saes = runner.run()
    finally:
        multi_runner.TokenizedMultiSAETrainer.fit = fit
    assert torch.equal(restored["lookup"], saved_lookup)
    lookup_group = saved_state["param_groups"][1]["params"][0]
    for key in ("exp_avg", "exp_avg_sq", "slot_of", "rows_in_use"):
        assert torch.equal(restored["state"]["state"][lookup_group][key], saved_state["state"][lookup_group][key])
    assert not torch.equal(saes["t"].W_lookup.detach(), saved_lookup)  # and it trained on


@pytest.mark.parametrize("saes, hooks, match", [
    ({"t": tok(d_vocab=100)}, {"t": RESID0}, r"cfg.saes\['t'\]: d_vocab=100 but the model has d_vocab=512"),
    ({"a": tok(), "b": tok(lookup_init_tokens=4096)}, {"a": RESID0, "b": RESID0},
     r"share one init sample but ask for different lookup_init_tokens \[2048, 4096\]"),
    ({"a": tok(), "b": tok(lookup_init_hold="memory")}, {"a": RESID0, "b": EMBED},
     r"share one init sample but ask to hold it in different places \(lookup_init_hold \['disk', 'memory'\]\)"),
])
def test_bad_multi_configs_are_refused_before_training(model, dataset, saes, hooks, match, monkeypatch):
    monkeypatch.setattr(TokenizedSAETrainer, "step", lambda *a: pytest.fail("training started"))
    with pytest.raises(ValueError, match=match):
        TokenizedMultiSAETrainingRunner(multi_cfg(saes, hooks), override_model=model, override_dataset=dataset).run()


def test_a_workbench_sweep_trains_in_one_multi_runner_run_with_a_heldout_curve_per_sae(model, dataset):
    """The frontier's engine (benchmarks/quality.py --engine multi): every SAE of a sweep, at
    two hooks, from one LLM forward per batch, each with its own held-out NMSE along training."""
    from dataclasses import replace

    from sae_lens_tokenized.workbench.data import Workbench
    from sae_lens_tokenized.workbench.runs import heldout_nmse, train_together
    from sae_lens_tokenized.workbench.settings import CompareSettings

    cache_prior_tables(model, RESID0, "blocks.1.hook_resid_pre")
    bench = Workbench(model, dataset, token_dataset(skip=40), "tiny corpus")
    s = CompareSettings(hook_name=RESID0, expansion=2, k=4, training_tokens=2048, batch=256, context_size=CTX,
                        n_curve_points=3, n_eval_activations=256, lookup_init_tokens=1024)
    hooks = (RESID0, "blocks.1.hook_resid_pre")
    heldout = {h: bench.heldout(h, 256) for h in hooks}
    members = {f"{arch}_{h}_k{k}": (arch, replace(s, hook_name=h, k=k))
               for h in hooks for k in (4, 8) for arch in ("topk", "tokenized_topk")}
    r = train_together(members, bench, heldout)
    # eight SAEs, one forward per batch: the model embedded the run's activations once (plus a
    # 2-token probe per tokenized config); one run per SAE would embed eight times as many
    assert r["tokens_embedded"] == r["activations_read"] + 4 * 2
    assert 2048 <= r["activations_read"] < 2048 + 32 * CTX  # the run, plus at most SAELens's buffer
    for name, (arch, ms) in members.items():
        curve, sae = r["curves"][name], r["saes"][name]
        tokens = [t for t, _ in curve]
        assert tokens[0] == 0 and tokens[-1] == 2048 and len(tokens) == 3 + 2
        assert all(a < b for a, b in zip(tokens, tokens[1:]))
        # each point is this SAE on its own hook's held-out activations, as it trained
        assert curve[-1][1] == heldout_nmse(sae, *heldout[ms.hook_name])
        assert len({v for _, v in curve}) == len(curve)
        assert (sae.cfg.k, type(sae).__name__) == (ms.k, "TokenizedTopKTrainingSAE" if arch.startswith("tok")
                                                           else "TopKTrainingSAE")
    with pytest.raises(ValueError, match=r"member 'b' has other run settings than 'a'.*train the others in another run"):
        train_together({"a": ("topk", s), "b": ("topk", replace(s, lr=1e-3))}, bench, heldout)
