"""Sparse (lazy, row-wise) lookup updates against dense Adam, through SAELens's trainer.

What must hold (training/optim.py): from the same state the first step is the same
(SAELens's gradient clipping sees the same norm); later, rows a step does not touch stay
put and keep their moments (lazy Adam); the optimizer state grows with the rows touched,
never with d_vocab, whether its storage is reserved at once (the CPU) or grown by copying (a
GPU); checkpoints carry it; the step reads nothing back to the host.
"""

import copy

import pytest
import torch
from sae_lens import LanguageModelSAETrainingRunner, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import runner_cfg
from sae_lens_tokenized import (
    TokenizedSAETrainingRunner,
    TokenizedTopKTrainingSAE,
    TokenizedTopKTrainingSAEConfig,
)
from sae_lens_tokenized.training import TokenizedAdam, TokenizedSAETrainer
from sae_lens_tokenized.training.activations_store import pack_token_ids

RESID = "blocks.1.hook_resid_pre"


def sae_cfg(updates: str = "sparse", **kw):
    # a unigram lookup: these tests compare sparse and dense updates of token rows
    return TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=512, lookup_updates=updates, lookup_ngram=1, **kw)


def trainer_for(sae, batches, **cfg_kw):
    cfg = runner_cfg(sae.cfg, RESID, 10_000, lr=3e-3, **cfg_kw)
    return TokenizedSAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=iter(batches))


def packed_batches(n_steps: int, batch: int = 256, vocab: int = 512, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [pack_token_ids(torch.randn(batch, 32, generator=g) * 3, torch.randint(0, vocab, (batch,), generator=g))
            for _ in range(n_steps)]


def sparse_and_dense_pair(updates: str = "sparse"):
    torch.manual_seed(0)
    sparse = TokenizedTopKTrainingSAE(sae_cfg(updates))
    with torch.no_grad():
        sparse.W_lookup.normal_()
    dense = TokenizedTopKTrainingSAE(sae_cfg("dense"))
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


def one_step(trainer):
    return trainer.step(next(trainer.data_provider))


@pytest.fixture(params=["reserved", "grown"])
def storage(request, monkeypatch):
    """The lazy moments' two storages: every row reserved at once, uncommitted (the CPU's), or
    grown by copying as rows are touched (a GPU's; forced here on the CPU)."""
    if request.param == "grown":
        monkeypatch.setattr(TokenizedAdam, "reserve_devices", ())
    return request.param


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_sparse_and_dense_take_the_same_first_step_with_the_same_clipped_norm(monkeypatch, storage):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        norms.append(float(clip(params, max_norm, *a, **kw)))
        return norms[-1]

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    sparse, dense = sparse_and_dense_pair()
    batches = packed_batches(1)
    for sae in (sparse, dense):
        one_step(trainer_for(sae, batches))
    assert norms[0] > 1.0, "the clip must be active for this test to mean something"
    assert norms[0] == pytest.approx(norms[1], rel=1e-6)  # the staged rows' norm is the dense gradient's
    sd_sparse, sd_dense = sparse.state_dict(), dense.state_dict()
    assert set(sd_sparse) == set(sd_dense)
    for name in sd_dense:
        torch.testing.assert_close(sd_sparse[name], sd_dense[name], rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(sd_sparse["W_lookup"], sparse_and_dense_pair()[0].W_lookup), "the lookup did not move"


@pytest.mark.parametrize("updates", ["sparse", "sparse_rowwise"])
def test_lazy_semantics_untouched_rows_stay_put_and_keep_their_moments(updates, storage):
    sparse, dense = sparse_and_dense_pair(updates)
    first = pack_token_ids(torch.randn(256, 32) * 3, torch.randint(0, 100, (256,)))
    second = pack_token_ids(torch.randn(256, 32) * 3, torch.randint(100, 200, (256,)))
    trainers = [trainer_for(sae, [first, second]) for sae in (sparse, dense)]
    for t in trainers:
        one_step(t)
    after_first = sparse.W_lookup.detach().clone(), dense.W_lookup.detach().clone()
    for t in trainers:
        one_step(t)
    first_rows = first[:, -1].long().unique()
    # sparse: rows of the first batch only are not touched by the second step
    assert torch.equal(sparse.W_lookup[first_rows], after_first[0][first_rows])
    # dense Adam keeps moving them on their momentum
    assert not torch.allclose(dense.W_lookup[first_rows], after_first[1][first_rows])
    # rows never touched: unchanged in both
    assert torch.equal(sparse.W_lookup[300:], after_first[0][300:])
    state = trainers[0].optimizer.state[sparse.lookup_rows]
    assert int(state["rows_in_use"]) == 1 + len(first_rows) + len(second[:, -1].long().unique())
    # the scratch slot that padding positions use stays exactly zero, so they update nothing
    assert not state["exp_avg"][0].any() and not state["exp_avg_sq"][0].any()


def test_lookup_memory_follows_the_rows_touched_not_d_vocab(storage):
    vocab = 200_000
    torch.manual_seed(0)
    cfg = TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=vocab, lookup_ngram=1)
    sae = TokenizedTopKTrainingSAE(cfg)
    trainer = trainer_for(sae, packed_batches(6, vocab=300))
    for _ in range(6):
        one_step(trainer)
    assert sae.W_lookup.grad is None  # no dense [d_vocab, d_in] gradient, ever
    state = trainer.optimizer.state[sae.lookup_rows]
    assert int(state["rows_in_use"]) <= 301
    capacity = state["exp_avg"].shape[0]
    # grown: capacity ~ rows touched + a few batches; reserved: every row, of which only the
    # rows in use are ever written (the next test: only they are committed)
    if storage == "reserved":
        assert capacity == vocab + 1
    else:
        assert capacity <= 8 * 256
    moments_in_use = int(state["rows_in_use"]) * (32 + 1) * 4
    slot_table = (vocab + 1) * 8
    held = trainer.optimizer.lookup_memory_bytes()
    assert held - slot_table == pytest.approx(moments_in_use if storage == "reserved" else capacity * 33 * 4, abs=16)
    dense_bytes = 3 * vocab * 32 * 4  # dense Adam: gradient + two moments
    assert held < 0.1 * dense_bytes


def test_reserved_moments_commit_memory_only_for_the_rows_written():
    # every row's moments reserved at once, but the kernel backs only the pages written: the
    # rows in use. Zero-filled storage (new_zeros) would commit all of it, on the first step.
    vocab = 1_000_000
    torch.manual_seed(0)
    sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, d_vocab=vocab, lookup_ngram=1))
    trainer = trainer_for(sae, packed_batches(3, vocab=300))
    one_step(trainer)  # builds Adam's state of the SAE's own (small) parameters
    state = trainer.optimizer.state[sae.lookup_rows]
    reserved = sum(state[k].numel() * state[k].element_size() for k in ("exp_avg", "exp_avg_sq"))
    assert reserved >= vocab * 33 * 4  # every row is reserved ...
    del trainer.optimizer.state[sae.lookup_rows]  # ... and reserved again by the next step
    trainer.optimizer._rows_in_use_bound.clear()
    trainer.optimizer._host_step.clear()
    before = rss_bytes()
    one_step(trainer)
    slot_table = (vocab + 1) * 8  # written in full (every entry starts at -1)
    assert rss_bytes() - before < slot_table + 0.1 * reserved


def test_a_new_row_s_moments_start_at_zero_whatever_its_storage_held(storage):
    # the storage past the rows in use is never initialised: poison it, and the run must not change
    runs = []
    for poison in (False, True):
        torch.manual_seed(0)
        sae = TokenizedTopKTrainingSAE(sae_cfg("sparse_rowwise"))
        first = pack_token_ids(torch.randn(256, 32) * 3, torch.randint(0, 100, (256,)))
        second = pack_token_ids(torch.randn(256, 32) * 3, torch.randint(50, 200, (256,)))
        trainer = trainer_for(sae, [first, second])
        one_step(trainer)
        if poison:
            state = trainer.optimizer.state[sae.lookup_rows]
            n = int(state["rows_in_use"])
            assert state["exp_avg"].shape[0] > n
            state["exp_avg"][n:] = float("nan")
            state["exp_avg_sq"][n:] = 1e30
        one_step(trainer)
        runs.append(sae.W_lookup.detach().clone())
    assert not runs[1].isnan().any()
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("updates", ["sparse", "sparse_rowwise"])
def test_a_checkpoint_carries_the_lazy_state_and_resuming_continues_exactly(tmp_path, updates, storage):
    batches = packed_batches(5, vocab=300)
    torch.manual_seed(0)
    straight = TokenizedTopKTrainingSAE(sae_cfg(updates))
    resumed_sae = copy.deepcopy(straight)
    t = trainer_for(straight, batches)
    for _ in range(5):
        one_step(t)
    t1 = trainer_for(resumed_sae, batches[:3])
    for _ in range(3):
        one_step(t1)
        t1.n_training_steps += 1
    t1.save_checkpoint("ckpt", base_path=tmp_path)
    # the checkpoint holds the moments of the rows in use, not the storage reserved past them
    (lazy,) = [st for st in torch.load(tmp_path / "ckpt" / "trainer_state.pt")["optimizer"]["state"].values()
               if "slot_of" in st]
    in_use = int(lazy["rows_in_use"])
    assert lazy["exp_avg"].shape[0] == lazy["exp_avg_sq"].shape[0] == in_use
    assert t1.optimizer.state[resumed_sae.lookup_rows]["exp_avg"].shape[0] > in_use  # the live state is untouched
    # a fresh process: SAE and trainer rebuilt from the checkpoint alone
    reloaded = TokenizedTopKTrainingSAE.load_from_disk(tmp_path / "ckpt")
    t2 = trainer_for(reloaded, batches[3:])
    t2.load_trainer_state(tmp_path / "ckpt")
    assert t2.optimizer.state[reloaded.lookup_rows]["slot_of"].dtype == torch.long
    assert t2.optimizer.state[reloaded.lookup_rows]["exp_avg_sq"].shape[1] == (1 if updates == "sparse_rowwise" else 32)
    for _ in range(2):
        one_step(t2)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_rowwise_moves_each_row_along_its_gradient_by_lr_in_rms_and_holds_half_the_moments(monkeypatch):
    # partial row-wise Adam (FBGEMM): the first step of a row is -lr * g / rms(g), where
    # Adam's is -lr * sign(g) per element; the SAE's own parameters step exactly as Adam
    grads = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        params = list(params)
        norm = clip(params, max_norm, *a, **kw)
        grads.append({id(p): p.grad.clone() for p in params if p.grad is not None})
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    rowwise, dense = sparse_and_dense_pair("sparse_rowwise")
    start = rowwise.W_lookup.detach().clone()
    batches = packed_batches(1)
    trainers = [trainer_for(sae, batches) for sae in (rowwise, dense)]
    for t in trainers:
        one_step(t)
    g = grads[1][id(dense.W_lookup)]  # the clipped dense gradient: what the staged rows hold
    touched = torch.unique(batches[0][:, -1].long())
    lr = trainers[0].optimizer.param_groups[1]["lr"]
    eps = trainers[0].optimizer.param_groups[1]["eps"]
    rms = g[touched].square().mean(1, keepdim=True).sqrt()
    expected = start[touched] - lr * g[touched] / (rms + eps)
    torch.testing.assert_close(rowwise.W_lookup.detach()[touched], expected, rtol=1e-5, atol=1e-6)
    untouched = torch.ones(512, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(rowwise.W_lookup.detach()[untouched], start[untouched])
    # ... which is not Adam's step: the row-wise one scales each element by its gradient
    assert not torch.allclose(rowwise.W_lookup.detach(), dense.W_lookup.detach(), atol=1e-4)
    for name, value in dense.state_dict().items():
        if name != "W_lookup":
            torch.testing.assert_close(rowwise.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # memory: one second moment per row
    sparse, _ = sparse_and_dense_pair("sparse")
    t_sparse = trainer_for(sparse, batches)
    one_step(t_sparse)
    s_rw, s_sp = trainers[0].optimizer.state[rowwise.lookup_rows], t_sparse.optimizer.state[sparse.lookup_rows]
    assert s_rw["exp_avg"].shape == s_sp["exp_avg"].shape
    assert s_rw["exp_avg_sq"].shape == (s_sp["exp_avg_sq"].shape[0], 1)
    assert trainers[0].optimizer.lookup_memory_bytes() < 0.6 * t_sparse.optimizer.lookup_memory_bytes()


@pytest.mark.parametrize("saved, resumed", [("sparse", "sparse_rowwise"), ("sparse_rowwise", "sparse")])
def test_resuming_with_the_other_second_moment_is_an_error_before_any_row_moves(tmp_path, monkeypatch, saved, resumed):
    batches = packed_batches(3, vocab=300)
    torch.manual_seed(0)
    sae = TokenizedTopKTrainingSAE(sae_cfg(saved))
    t = trainer_for(sae, batches)
    one_step(t)
    t.save_checkpoint("ckpt", base_path=tmp_path)
    other = TokenizedTopKTrainingSAE(sae_cfg(resumed))
    other.load_state_dict(sae.state_dict())
    t2 = trainer_for(other, batches[1:])
    before = other.W_lookup.detach().clone()
    stepped = []
    monkeypatch.setattr(type(t2.optimizer), "_lazy_rows_step", lambda *a: stepped.append(a))
    # refused where the state comes in, so no step can take it
    with pytest.raises(ValueError, match="resume with the lookup_updates the checkpoint was trained with"):
        t2.load_trainer_state(tmp_path / "ckpt")
    assert torch.equal(other.W_lookup.detach(), before) and not stepped


class SyncCounter(TorchDispatchMode):
    """Counts the ops that read a device value back to the host (a sync on a GPU)."""

    SYNCING = ("_local_scalar_dense", "equal", "is_nonzero", "nonzero", "unique", "masked_select", "item")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if any(name.startswith(s) for s in self.SYNCING):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_a_tokenized_training_step_adds_no_host_sync_over_saelens_topk(model, dataset):
    kw = dict(d_in=32, d_sae=64, k=4)
    tok = TokenizedSAETrainingRunner(runner_cfg(TokenizedTopKTrainingSAEConfig(**kw), RESID, 10_000),
                                     override_model=model, override_dataset=dataset)
    base = LanguageModelSAETrainingRunner(runner_cfg(TopKTrainingSAEConfig(**kw), RESID, 10_000),
                                          override_model=model, override_dataset=dataset)
    trainers = {
        "tokenized": TokenizedSAETrainer(cfg=tok.cfg.to_sae_trainer_config(), sae=tok.sae,
                                         data_provider=tok.activations_store),
        "base": SAETrainer(cfg=base.cfg.to_sae_trainer_config(), sae=base.sae,
                           data_provider=base.activations_store),
    }
    syncs = {}
    for name, trainer in trainers.items():
        one_step(trainer)  # first step allocates optimizer state
        batch = next(trainer.data_provider)  # the LLM forward (and id check) happen here
        with SyncCounter() as counter:
            trainer.step(batch)
        syncs[name] = sorted(counter.ops)
    assert syncs["tokenized"] == syncs["base"]


def test_compile_sae_trains_the_lookup_exactly_as_eager(model, dataset):
    # SAELens compiles sae.training_forward_pass (compile_sae=True); the rows are staged
    # by the trainer outside it, so the compiled graph only reads them.
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        cfg = runner_cfg(TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4, lookup_ngram=1), RESID, 2 * 256,
                         compile_sae=compiled)
        runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
        start = runner.sae.W_lookup.detach().clone()
        sae = runner.run()
        assert hasattr(sae.training_forward_pass, "_torchdynamo_orig_callable") == compiled
        runs[compiled] = (start, sae.W_lookup.detach().clone())
    (start, eager), (start_c, compiled) = runs[False], runs[True]
    assert torch.equal(start, start_c)
    assert not torch.equal(eager, start)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_another_optimizer_stepping_the_staged_rows_is_an_error_not_a_silently_frozen_lookup():
    # e.g. a hand-written loop with torch.optim.Adam(sae.parameters()), or a runner that
    # builds plain Adam: its updates would land in the scratch rows and never in W_lookup
    from sae_lens.saes.sae import TrainStepInput

    sae = TokenizedTopKTrainingSAE(sae_cfg())
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x, ids = torch.randn(64, 32), torch.randint(0, 512, (64,))
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    with sae.token_ids(ids):
        sae.training_forward_pass(step).loss.backward()
    opt.step()
    with pytest.raises(RuntimeError, match="other than sae_lens_tokenized.training.TokenizedAdam"):
        with sae.token_ids(ids):
            sae.training_forward_pass(step)
    # the dense lookup is the documented way to use another optimizer
    dense = TokenizedTopKTrainingSAE(sae_cfg("dense"))
    opt = torch.optim.Adam(dense.parameters(), lr=1e-3)
    for _ in range(2):
        with dense.token_ids(ids):
            dense.training_forward_pass(step).loss.backward()
        opt.step()
        opt.zero_grad()
    # Adam's first step moves every touched row by lr in each coordinate with a gradient,
    # and no other row: exactly the rows this batch's ids read
    moved = (dense.W_lookup.detach() != 0).any(1)
    assert torch.equal(moved.nonzero().squeeze(1), torch.unique(ids))
