"""One rank of a data-parallel test run, started by ``torchrun`` from test_data_parallel.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dp_worker.py MODE OUT [ARGS]

Each mode does what a user's script does under torchrun and writes what the test checks
into OUT (``torch.save``, rank 0 unless said otherwise). The same functions run in the test
process itself (one process, no process group) for the single-process reference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import runner_cfg, tiny_model, token_dataset  # noqa: E402
from sae_lens_tokenized import parallel  # noqa: E402
from sae_lens_tokenized.training.activations_store import pack_token_ids  # noqa: E402

D_IN, D_VOCAB, GLOBAL_BATCH = 32, 512, 256
RESID = "blocks.1.hook_resid_pre"


def make_sae(arch: str):
    from sae_lens_tokenized import TokenizedJumpReLUTrainingSAE, TokenizedJumpReLUTrainingSAEConfig
    from sae_lens_tokenized import TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig

    torch.manual_seed(0)
    if arch == "topk":
        sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(d_in=D_IN, d_sae=512, k=1, d_vocab=D_VOCAB,
                                                                      lookup_bigram_rows=256))
    else:
        sae = TokenizedJumpReLUTrainingSAE(TokenizedJumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=64, d_vocab=D_VOCAB,
                                                                          lookup_bigram_rows=256))
    g = torch.Generator().manual_seed(1)
    keys = torch.randperm(D_VOCAB * 8, generator=g)[:200].sort().values  # pairs among the first 8 prev ids
    sae.set_bigram_rows(keys, torch.randn(len(keys), D_IN, generator=g))
    with torch.no_grad():
        sae.W_lookup[:D_VOCAB] = torch.randn(D_VOCAB, D_IN, generator=g)
    return sae


def global_batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        ids = torch.randint(0, D_VOCAB, (GLOBAL_BATCH,), generator=g)
        prev = torch.randint(-1, 8, (GLOBAL_BATCH,), generator=g)  # often a chosen pair, sometimes none
        out.append(pack_token_ids(torch.randn(GLOBAL_BATCH, D_IN, generator=g) * 3, ids, D_VOCAB, prev))
    return out


def train_steps(arch: str, steps: int) -> dict[str, torch.Tensor]:
    """``steps`` trainer steps on this rank's share of fixed global batches; the state after."""
    from sae_lens_tokenized.training import TokenizedSAETrainer

    dp = parallel.current()
    rank, world = (dp.rank, dp.world) if dp else (0, 1)
    sae = make_sae(arch)
    share = GLOBAL_BATCH // world
    batches = [b[rank * share:(rank + 1) * share] for b in global_batches(steps)]
    # dead_feature_window=2: latents go dead within the run, so the TopK auxiliary loss reads
    # the combined firing statistics
    cfg = runner_cfg(sae.cfg, RESID, GLOBAL_BATCH * steps, lr=3e-3, dead_feature_window=2, feature_sampling_window=4)
    trainer = TokenizedSAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=iter(batches))
    for _ in range(steps):
        trainer.step(next(trainer.data_provider))
        trainer.n_training_steps += 1
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    lazy = trainer.optimizer.state[sae.lookup_rows]
    touched = (lazy["slot_of"][:-1] >= 0).nonzero().squeeze(1)
    state["adam.touched"] = touched
    state["adam.exp_avg"] = lazy["exp_avg"][lazy["slot_of"][touched]]
    state["adam.exp_avg_sq"] = lazy["exp_avg_sq"][lazy["slot_of"][touched]]
    state["trainer.n_training_samples"] = torch.tensor(trainer.n_training_samples)
    state["trainer.act_freq_scores"] = trainer.act_freq_scores.clone()
    state["trainer.n_forward_passes_since_fired"] = trainer.n_forward_passes_since_fired.clone()
    return state


def statistics(ngram: int = 2):
    """Lookup statistics over this rank's half of a fixed sample, reduced across ranks."""
    from sae_lens_tokenized.lookup_init.statistics import LookupStatistics

    dp = parallel.current()
    g = torch.Generator().manual_seed(3)
    n = 4000
    acts, ids = torch.randn(n, D_IN, generator=g), torch.randint(0, 64, (n,), generator=g)
    prev = torch.randint(-1, 64, (n,), generator=g)
    stats = LookupStatistics(D_VOCAB, D_IN, ngram)
    if dp is None:
        stats.add(acts, ids, prev, keep=prev >= 0)
    else:
        part = slice(dp.rank * n // dp.world, (dp.rank + 1) * n // dp.world)
        stats.add(acts[part], ids[part], prev[part], keep=prev[part] >= 0)
        stats.reduce_across(dp)
    rows = stats.token_rows()
    table = stats.bigram_table(rows, budget=300, min_count=2)
    return {"rows": rows, "counts": stats.counts, "keys": table.keys, "bigram_rows": table.rows,
            "bigram_counts": table.counts, "n_tokens": torch.tensor(stats.n_tokens)}


def runner(out: Path, **overrides) -> None:
    """The plugin's runner, as a user's script runs it under torchrun."""
    from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig

    model_seed = overrides.pop("model_seed", 0)
    hook = RESID
    if overrides.pop("transcoder", False):  # MLP 1's input -> its output, the lookup in output space
        from sae_lens_tokenized import TokenizedTopKTrainingTranscoderConfig

        hook = "blocks.1.ln2.hook_normalized"
        sae_cfg = TokenizedTopKTrainingTranscoderConfig(d_in=D_IN, d_out=D_IN, d_sae=64, k=4, lookup_bigram_min_count=1,
                                                        hook_name_out="blocks.1.hook_mlp_out")
    elif overrides.pop("plain", False):
        from sae_lens import TopKTrainingSAEConfig

        sae_cfg = TopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4)
    else:
        sae_cfg = TokenizedTopKTrainingSAEConfig(d_in=D_IN, d_sae=64, k=4, lookup_bigram_min_count=1)
    kw = dict(output_path=str(out / "sae"), checkpoint_path=str(out / "checkpoints"), n_checkpoints=1)
    kw.update(overrides)
    cfg = runner_cfg(sae_cfg, hook, 6144, **kw)
    data = token_dataset()
    r = TokenizedSAETrainingRunner(cfg, override_model=tiny_model(seed=model_seed), override_dataset=data)
    dp = r.data_parallel
    first = r.activations_store.dataset[0]["tokens"]
    info = {"rank": dp.rank if dp else 0, "world": dp.world if dp else 1,
            "rows": len(r.activations_store.dataset), "total_rows": len(data), "first_row": first.tolist(),
            "local_batch": r.activations_store.train_batch_size_tokens,
            "lookup_at_init": getattr(r.sae, "W_lookup", torch.zeros(0)).detach().clone(),
            "checkpoint_path": r.cfg.checkpoint_path}
    sae = r.run()
    info["trained_lookup"] = getattr(sae, "W_lookup", torch.zeros(0)).detach().clone()
    info["W_dec"] = sae.W_dec.detach().clone()
    torch.save(info, out / f"rank{info['rank']}.pt")


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if mode == "runner":  # every rank writes here, and must not wait for rank 0's SAE to create it
        out.mkdir(parents=True, exist_ok=True)
    parallel.init_from_env("cpu")
    dp = parallel.current()
    rank = dp.rank if dp else 0
    if mode == "steps":
        state = train_steps(args["arch"], args["steps"])
        if rank == 0:
            torch.save(state, out)
    elif mode == "stats":
        state = statistics()
        torch.save(state, Path(str(out) + f".rank{rank}"))
    elif mode == "runner":
        hang = rank == int(args.pop("hang_on_rank", -1))
        if hang or rank == int(args.pop("die_on_rank", -1)):
            from sae_lens_tokenized.training import data_parallel

            step = data_parallel.DataParallelSAETrainer.step

            def dying_step(self, batch):  # a rank whose process ends abruptly (or hangs) mid-run
                if self.n_training_steps == 3:
                    if hang:
                        time.sleep(3600)
                    os._exit(7)
                return step(self, batch)

            data_parallel.DataParallelSAETrainer.step = dying_step
        if rank == 1 and "rank1_overrides" in args:
            args.update(args.pop("rank1_overrides"))
        args.pop("rank1_overrides", None)
        runner(out, **args)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
