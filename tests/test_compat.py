"""The SAELens behaviour each ``_compat.py`` entry relies on, checked by running it.

Test names start with the entry they check (entry 9's trainer counters: test_data_parallel.py). Entry 3 (where reconstructions happen) is
checked over all architectures in test_architectures.py (zero-lookup parity and the
per-term gradient identity); entry 5 (SAELens's argument parser) by
test_offline_and_cli.py::test_cli_parses_saelens_arguments_plus_tokenized_ones; entry 7
(TransformerLens's generate) by test_generate.py; entry 8 (SAEBench) by test_saebench.py.
"""

import itertools
import pytest
import torch
from sae_lens import llm_sae_training_runner as saelens_runner
from sae_lens.training.mixing_buffer import mixing_buffer
from sae_lens.training.prefetch import PrefetchingIterator

from helpers import runner_cfg
from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized._compat import MAX_PACKABLE_TOKEN_ID, runner_classes
from sae_lens_tokenized.training.activations_store import (
    TokenIdsSideChannel,
    TokenizedActivationsStore,
    pack_token_ids,
    unpack_token_ids,
)
from sae_lens_tokenized.training.trainer import TokenizedEvaluator, TokenizedSAETrainer

RESID = "blocks.1.hook_resid_pre"


def test_1_config_is_checked_and_sized_from_the_model_before_the_store_is_built(model, dataset, monkeypatch):
    built = []
    original = TokenizedActivationsStore.from_config.__func__

    def spy(cls, *args, **kwargs):
        built.append(cls)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(TokenizedActivationsStore, "from_config", classmethod(spy))
    bad = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=48, d_sae=64, k=4), RESID, 10_000)
    with pytest.raises(ValueError, match="d_in=48"):
        TokenizedSAETrainingRunner(bad, override_model=model, override_dataset=dataset)
    assert built == [], "the store was built before the config was checked against the model"
    good = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 10_000)
    runner = TokenizedSAETrainingRunner(good, override_model=model, override_dataset=dataset)
    assert built == [TokenizedActivationsStore]
    assert runner.sae.cfg.d_vocab == model.cfg.d_vocab  # d_vocab came from the model
    assert runner.sae.W_lookup.shape == (model.cfg.d_vocab + runner.sae.cfg.lookup_bigram_rows, 32)


def test_2_rebuilt_optimizer_holds_every_parameter_once_and_the_schedule_drives_both_groups(model, dataset):
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_lr=0.02), RESID, 20_000,
                     lr=1e-3, lr_scheduler_name="cosineannealing", lr_end=1e-5)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    trainer = TokenizedSAETrainer(cfg=cfg.to_sae_trainer_config(), sae=runner.sae,
                                  data_provider=runner.activations_store)
    in_groups = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    # every parameter that gets a gradient, once (a sparse lookup trains its staged rows;
    # W_lookup itself gets no gradient and is updated by the optimizer from those rows)
    trained = [p for p in runner.sae.parameters() if p.requires_grad]
    assert sorted(map(id, in_groups)) == sorted(map(id, trained))
    assert any(p is runner.sae.lookup_rows for p in trained) and not runner.sae.W_lookup.requires_grad
    ratios = []
    for _ in range(10):
        trainer.step(next(trainer.data_provider))
        sae_lr, lookup_lr = (g["lr"] for g in trainer.optimizer.param_groups)
        ratios.append(lookup_lr / sae_lr)
    assert sae_lr < 1e-3  # the schedule moved
    # and moved both groups alike (SAELens's cosine floor lr_end is absolute, shared by both
    # groups, hence not exactly 20x late in a schedule)
    assert ratios == pytest.approx([20.0] * 10, rel=1e-3)


def test_4_ids_ride_saelens_mixing_buffer_exactly_up_to_the_packing_limit():
    n = 4096
    acts = torch.randn(n, 8)
    ids = torch.randint(MAX_PACKABLE_TOKEN_ID - 1000, MAX_PACKABLE_TOKEN_ID, (n,))
    rows = {}
    for a, i in zip(acts, ids):
        rows[float(a[0])] = int(i)
    batches = mixing_buffer(buffer_size=2048, batch_size=512,
                            activations_loader=iter(pack_token_ids(acts, ids).split(1024)))
    seen = 0
    for packed in batches:
        a, i = unpack_token_ids(packed)
        assert all(rows[float(x)] == int(t) for x, t in zip(a[:, 0], i))
        seen += len(i)
    assert seen >= 2048
    with pytest.raises(ValueError, match="too large"):
        pack_token_ids(acts[:1], torch.tensor([MAX_PACKABLE_TOKEN_ID]))
    with pytest.raises(ValueError, match=r"ids in \[3, 9\] but the lookup has d_vocab=8"):
        pack_token_ids(acts[:2], torch.tensor([3, 9]), d_vocab=8)
    # a buffer that stopped being float32 (bf16 holds integers exactly only below 257)
    lowered = pack_token_ids(acts[:2], torch.tensor([3, 70_001])).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="not float32"):
        unpack_token_ids(lowered)


def test_1_evals_pause_the_prefetch_thread_behind_the_side_channel(model, dataset, monkeypatch):
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 10_000)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    assert isinstance(runner.evaluator, TokenizedEvaluator)
    # A finite source, drained below: SAELens 6.53's producer thread has no close() and would
    # otherwise keep running forwards on the shared model while later tests use it.
    prefetcher = PrefetchingIterator(itertools.islice(iter(runner.activations_store), 2), prefetch=1)
    paused = []
    original = PrefetchingIterator.paused

    def spy(self):
        paused.append(self)
        return original(self)

    monkeypatch.setattr(PrefetchingIterator, "paused", spy)
    from sae_lens.training.activation_scaler import ActivationScaler

    runner._set_sae_metadata()  # as SAELens's run() does before evals
    runner.evaluator(runner.sae, TokenIdsSideChannel(prefetcher), ActivationScaler())
    assert paused == [prefetcher]
    assert len(list(prefetcher)) <= 2  # the producer has put its sentinel: no more forwards


def test_1_runner_classes_substitutes_only_subclasses_and_always_restores(model, dataset):
    stock = saelens_runner.ActivationsStore, saelens_runner.SAETrainer
    with pytest.raises(RuntimeError, match="not a base of"):
        with runner_classes(SAETrainer=TokenizedActivationsStore):
            pass
    with pytest.raises(KeyError):
        with runner_classes(ActivationsStore=TokenizedActivationsStore):
            assert saelens_runner.ActivationsStore is TokenizedActivationsStore
            raise KeyError("boom")
    assert (saelens_runner.ActivationsStore, saelens_runner.SAETrainer) == stock
    # and the real runner ends up with the tokenized store and trainer
    cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 2_048)
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    assert type(runner.activations_store) is TokenizedActivationsStore
    trainers = []
    init = TokenizedSAETrainer.__init__

    def spy(self, *a, **kw):
        trainers.append(self)
        init(self, *a, **kw)

    TokenizedSAETrainer.__init__ = spy
    try:
        runner.run()
    finally:
        TokenizedSAETrainer.__init__ = init
    assert len(trainers) == 1
    assert (saelens_runner.ActivationsStore, saelens_runner.SAETrainer) == stock


def test_6_evals_results_have_the_layout_of_saelens_own_evals(model, dataset, tmp_path, monkeypatch):
    """`sae-lens-tokenized evals` writes SAELens's result layout (`multiple_evals`), built
    from the same functions. SAELens's own multiple_evals runs here with its Hub lookups
    pointed at a tiny model and a saved plain TopK SAE; the two results must have the same
    keys at every level, so a change of SAELens's layout fails here."""
    import sae_lens.evals as saelens_evals
    from sae_lens import SAE, TopKSAE, TopKSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_tokenized.integrations.evals import evaluate

    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=64, k=4))
    sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name = RESID, "tiny"
    sae.cfg.metadata.prepend_bos, sae.cfg.metadata.context_size = True, 32
    sae.cfg.metadata.model_from_pretrained_kwargs = {}  # as SAELens's runner records it
    sae.save_model(str(tmp_path / "topk"))
    from_sae = ActivationsStore.from_sae.__func__
    monkeypatch.setattr(saelens_evals, "get_saes_from_regex", lambda *a: [("rel", "topk", 0.0, 0.0)])
    monkeypatch.setattr(saelens_evals.SAE, "from_pretrained", classmethod(
        lambda cls, release, sae_id, device="cpu", **kw: SAE.load_from_disk(str(tmp_path / sae_id))))
    monkeypatch.setattr(saelens_evals.HookedTransformer, "from_pretrained_no_processing",
                        classmethod(lambda cls, *a, **kw: model))
    monkeypatch.setattr(saelens_evals.ActivationsStore, "from_sae", classmethod(
        lambda cls, m, s, **kw: from_sae(cls, m, s, **{**kw, "dataset": dataset})))
    theirs = saelens_evals.multiple_evals("rel", "topk", n_eval_reconstruction_batches=1,
                                          n_eval_sparsity_variance_batches=1, eval_batch_size_prompts=2,
                                          ctx_lens=[32], output_dir=str(tmp_path / "eval_results"))[0]
    ours = evaluate([str(tmp_path / "topk")], model=model, datasets=[dataset], ctx_lens=[32],
                    batch_size_prompts=2, n_eval_reconstruction_batches=1, n_eval_sparsity_variance_batches=1)[0]

    def layout(d):
        return {k: layout(v) for k, v in d.items()} if isinstance(d, dict) else None

    assert layout(ours) == layout(theirs)
    assert ours["metrics"]["sparsity"]["l0"] == pytest.approx(theirs["metrics"]["sparsity"]["l0"])


class _NoDataset(torch.utils.data.IterableDataset):
    """A dataset that fails on its first read: nothing may read it before the refusal."""

    def __iter__(self):
        raise AssertionError("the dataset was read")


@pytest.mark.parametrize("entry", ["runner", "cli", "multi"])
def test_1_saelens_own_runners_refuse_a_tokenized_config_before_any_work(model, entry, monkeypatch):
    """SAELens's runners would load the model, fill the buffer, then fail at the first
    step (no ids reach the SAE). The refusal comes first and names what trains it."""
    from sae_lens import LanguageModelSAETrainingRunner, TopKTrainingSAEConfig
    from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig

    loaded, forwards = [], []
    monkeypatch.setattr(saelens_runner, "load_model", lambda *a, **k: loaded.append(a) or model)
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    tokenized = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)
    try:
        match = r"TokenizedMultiSAETrainingRunner\(cfg\)" if entry == "multi" else \
            r"TokenizedSAETrainingRunner\(cfg\).*sae-lens-tokenized train"
        with pytest.raises(TypeError, match=match):
            if entry == "runner":
                LanguageModelSAETrainingRunner(runner_cfg(tokenized, RESID, 10_000), override_dataset=_NoDataset())
            elif entry == "cli":  # what `python -m sae_lens.llm_sae_training_runner` runs
                saelens_runner._run_cli(["--architecture", "tokenized_topk", "--model_name", "tiny",
                                         "--hook_name", RESID, "--d_in", "32", "--d_sae", "64"])
            else:
                MultiSAETrainingRunner(MultiSAETrainingRunnerConfig(
                    saes={"plain": TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), "tok": tokenized},
                    hook_names=RESID, model_name="tiny", dataset_path="unused", training_tokens=10_000,
                    context_size=32, device="cpu"), override_dataset=_NoDataset())
    finally:
        handle.remove()
    assert loaded == [] and forwards == []
    # the guard passes plain configs through to SAELens unchanged
    plain = runner_cfg(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 10_000)
    from helpers import token_dataset

    assert LanguageModelSAETrainingRunner(plain, override_model=model, override_dataset=token_dataset()).sae is not None


def test_9_a_rank_share_retargets_saelens_reading_to_its_shard_of_the_dataset(model, dataset):
    from datasets.distributed import split_dataset_by_node
    from sae_lens import TopKTrainingSAEConfig

    from sae_lens_tokenized.parallel import DataParallel
    from sae_lens_tokenized.training.activations_store import ShardedActivationsStore

    cfg = runner_cfg(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), RESID, 10_000)
    store = ShardedActivationsStore.from_config(model, cfg, override_dataset=dataset)
    assert torch.equal(store.get_batch_tokens()[0], dataset[0]["tokens"])  # a single process reads row 0 on
    store = ShardedActivationsStore.from_config(model, cfg, override_dataset=dataset)
    store.take_rank_share(DataParallel(rank=1, world=2))
    shard = split_dataset_by_node(dataset, rank=1, world_size=2)
    assert len(shard) < len(dataset) and not torch.equal(shard[0]["tokens"], dataset[0]["tokens"])
    batches = torch.cat([store.get_batch_tokens() for _ in range(2)])
    assert torch.equal(batches, torch.stack([shard[i]["tokens"] for i in range(len(batches))]))
    assert store.train_batch_size_tokens == cfg.train_batch_size_tokens // 2
