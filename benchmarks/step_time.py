"""Per-training-step time: tokenized TopK vs SAELens TopK, side by side in one process.

Both SAEs are trained by SAELens's own SAETrainer.step (the tokenized one through
TokenizedSAETrainer, with the lookup in its own Adam group), on the same synthetic batches
(token ids drawn Zipf-like, as in text). Variants are interleaved round-robin so drift in
machine load hits all of them alike. A second pass times the phases of a step
(forward, backward, grad clipping, optimizer step) to show where the overhead goes.

    python benchmarks/step_time.py                      # 768/12288/30/4096, V=50257
    python benchmarks/step_time.py --d_in 64 --d_sae 256 --k 8 --batch 512 --d_vocab 2000 --steps 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from sae_lens import LoggingConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

import sae_lens_tokenized
from sae_lens_tokenized import TokenizedTopKTrainingSAE, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.training.activations_store import pack_token_ids
from sae_lens_tokenized.training.runner import TokenizedSAETrainer


def trainer_cfg(batch: int, steps: int) -> SAETrainerConfig:
    return SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        total_training_samples=batch * (steps + 10), device="cpu", autocast=False,
        lr=3e-4, lr_end=3e-5, lr_scheduler_name="constant", lr_warm_up_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1,
        train_batch_size_samples=batch, dead_feature_window=1000, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=10,
    )


def zipf_ids(n: int, d_vocab: int, gen: torch.Generator) -> torch.Tensor:
    weights = 1.0 / torch.arange(1, d_vocab + 1, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d_in", type=int, default=768)
    ap.add_argument("--d_sae", type=int, default=12288)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--d_vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/step_time.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    n_batches = args.warmup + args.steps
    batches = [(torch.randn(args.batch, args.d_in), zipf_ids(args.batch, args.d_vocab, gen)) for _ in range(n_batches)]
    cfg = trainer_cfg(args.batch, n_batches)

    def make(kind: str):
        if kind == "topk":
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k))
            feed = iter([b for b, _ in batches])
            return SAETrainer(cfg=cfg, sae=sae, data_provider=feed), None
        sae = TokenizedTopKTrainingSAE(TokenizedTopKTrainingSAEConfig(
            d_in=args.d_in, d_sae=args.d_sae, k=args.k, d_vocab=args.d_vocab, train_lookup=(kind == "tokenized")))
        with torch.no_grad():
            sae.W_lookup.normal_(std=0.1)
        trainer = TokenizedSAETrainer(cfg=cfg, sae=sae, data_provider=iter([pack_token_ids(*b) for b in batches]))
        return trainer, trainer.token_ids_channel

    kinds = ["topk", "tokenized", "tokenized_frozen_lookup"]
    trainers = {k: make(k) for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for step in range(n_batches):
        for kind in kinds:  # round robin
            trainer, _ = trainers[kind]
            batch = next(trainer.data_provider)
            t0 = time.perf_counter()
            trainer.step(batch)
            dt = time.perf_counter() - t0
            if step >= args.warmup:
                times[kind].append(dt)

    # Phase breakdown: the same operations SAETrainer._train_step performs, timed apart.
    phases: dict[str, dict[str, float]] = {}
    for kind in kinds:
        trainer, _ = make(kind)
        sae = trainer.sae
        acc = {"forward": [], "backward": [], "clip_grad_norm": [], "optimizer_step": []}
        for i in range(min(4, n_batches)):
            x, ids = batches[i]
            ctx = sae.token_ids(ids) if kind != "topk" else contextlib.nullcontext()
            with ctx:
                t0 = time.perf_counter()
                out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=trainer.dead_neurons,
                                                               n_training_steps=i, is_logging_step=False))
                t1 = time.perf_counter()
                out.loss.backward()
                t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            t3 = time.perf_counter()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad()
            t4 = time.perf_counter()
            if i >= 1:
                for name, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    acc[name].append(dt)
        phases[kind] = {name: statistics.median(v) for name, v in acc.items()}

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python benchmarks/step_time.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "config": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, device cpu",
        "sae_lens_tokenized": sae_lens_tokenized.__version__,
        "median_step_s": med,
        "all_step_s": times,
        "ratio_vs_topk": {k: med[k] / med["topk"] for k in kinds},
        "phase_median_s": phases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("median step (s): " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print("ratio vs SAELens TopK: " + ", ".join(f"{k} {v:.3f}x" for k, v in result["ratio_vs_topk"].items()))
    for kind, ph in phases.items():
        print(f"  {kind:24s} " + "  ".join(f"{n} {v:.3f}s" for n, v in ph.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
