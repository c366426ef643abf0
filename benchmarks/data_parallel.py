"""Data-parallel training on CPU with gloo: throughput of 1 vs 2 processes, and what the
lookup's sync sends per step against a dense all-reduce of the whole table.

1. Throughput: the plugin's runner trains the default tokenized TopK SAE on SmolLM2-135M
   (offline Wikipedia introductions) once in one process (all cores) and once under
   ``torchrun --nproc_per_node 2`` (one thread per rank), same config, same global batch.
   Reported: training tokens per second over the whole run (LLM forwards, the init
   sample, every step), and the ratio.
2. Communication: per step, the sparse lookup sync all-gathers each rank's staged row ids
   and row gradients (``world * local_batch * (d_in * 4 + 8)`` bytes gathered), where a
   dense lookup would all-reduce the ``d_vocab * d_in * 4``-byte gradient. Computed at
   V=262,144, d_in=2,304 and measured (median time of each collective, 2 gloo processes).

    python benchmarks/data_parallel.py                # both parts
    python benchmarks/data_parallel.py --part comm    # one part
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from sae_lens_tokenized.workbench.report import command_line

OUT = Path("benchmarks/results/data_parallel.json")


def train_worker(args: argparse.Namespace) -> None:
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig, parallel
    from sae_lens_tokenized.integrations.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model

    parallel.init_from_env("cpu")
    model = load_offline_model(SMOLLM2)
    dataset = load_offline_dataset(WIKI_DATASET, model.tokenizer, 128, "train")
    cfg = LanguageModelSAERunnerConfig(
        sae=TokenizedTopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=4096, k=32),
        model_name="smollm2-135m", hook_name=f"blocks.{args.layer}.hook_resid_pre", dataset_path="offline",
        is_dataset_tokenized=True, context_size=128, training_tokens=args.tokens, train_batch_size_tokens=1024,
        n_batches_in_buffer=16, store_batch_size_prompts=8, lr=3e-4, device="cpu", seed=0,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, n_checkpoints=0, output_path=None)
    cfg.sae.lookup_init_tokens = args.tokens // 4
    runner = TokenizedSAETrainingRunner(cfg, override_model=model, override_dataset=dataset)
    t0 = time.perf_counter()
    runner.run()
    wall = time.perf_counter() - t0
    dp = parallel.current()
    if dp is None or dp.is_main:
        Path(args.result).write_text(json.dumps({"wall_s": wall}))


def comm_worker(args: argparse.Namespace) -> None:
    from sae_lens_tokenized import parallel

    dp = parallel.init_from_env("cpu")
    assert dp is not None
    V, d, n = args.vocab, args.d_in, args.local_batch
    g = torch.Generator().manual_seed(dp.rank)
    rows = torch.randint(0, V, (n,), generator=g).sort().values
    grads = torch.randn(n, d, generator=g)
    valid = torch.ones(n, dtype=torch.bool)
    sparse, dense = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        parallel.union_rows(dp, rows, valid, grads)
        sparse.append(time.perf_counter() - t)
    table = torch.zeros(V, d)
    for _ in range(max(2, args.repeats // 3)):
        t = time.perf_counter()
        dp.all_reduce_(table)
        dense.append(time.perf_counter() - t)
    if dp.is_main:
        Path(args.result).write_text(json.dumps({"sparse_s": sparse, "dense_s": dense}))


def torchrun(argv: list[str], nproc: int, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        subprocess.run([sys.executable, __file__, *argv], env=env, check=True)
    else:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(nproc), __file__, *argv], env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "throughput", "comm"], default="all")
    ap.add_argument("--worker", choices=["train", "comm"])
    ap.add_argument("--result")
    ap.add_argument("--tokens", type=int, default=40_960)
    ap.add_argument("--layer", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--d_in", type=int, default=2304)
    ap.add_argument("--local_batch", type=int, default=2048, help="a rank's share of a 4096-token global batch")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    if args.worker == "train":
        return train_worker(args)
    if args.worker == "comm":
        return comm_worker(args)
    cores = os.cpu_count() or 1
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    commands = [c for c in out.get("command", "").split(" && ") if c and f"--part {args.part}" not in c]
    out["command"] = " && ".join([*commands, command_line()])
    scratch = Path("benchmarks/results/.data_parallel_scratch.json")
    if args.part in ("all", "throughput"):
        base = ["--worker", "train", "--result", str(scratch), "--tokens", str(args.tokens), "--layer", str(args.layer)]
        torchrun(base, 1, cores)
        one = json.loads(scratch.read_text())["wall_s"]
        torchrun(base, 2, max(1, cores // 2))
        two = json.loads(scratch.read_text())["wall_s"]
        out["throughput"] = {
            "setting": f"SmolLM2-135M blocks.{args.layer}.hook_resid_pre, default tokenized TopK d_sae 4096 k 32, "
                       f"{args.tokens} training tokens, global batch 1024, init sample {args.tokens // 4}, "
                       f"{cores} CPU cores",
            "one_process": {"threads": cores, "wall_s": one, "tokens_per_s": args.tokens / one},
            "two_gloo_ranks": {"threads_each": max(1, cores // 2), "wall_s": two, "tokens_per_s": args.tokens / two},
            "speedup": one / two,
        }
    if args.part in ("all", "comm"):
        V, d, n, w = args.vocab, args.d_in, args.local_batch, 2
        comm = ["--worker", "comm", "--result", str(scratch), "--vocab", str(V), "--d_in", str(d),
                "--local_batch", str(n), "--repeats", str(args.repeats)]
        torchrun(comm, 2, max(1, cores // 2))
        t = json.loads(scratch.read_text())
        sparse_bytes = w * n * (d * 4 + 8)
        dense_bytes = V * d * 4
        out["communication"] = {
            "setting": f"V={V}, d_in={d}, {w} ranks, local batch {n} (global {w * n}), float32, gloo on CPU",
            "lookup_sync_bytes_gathered_per_rank": sparse_bytes,
            "dense_allreduce_bytes_per_rank": dense_bytes,
            "bytes_ratio_dense_over_sparse": dense_bytes / sparse_bytes,
            "lookup_sync_median_s": statistics.median(t["sparse_s"]),
            "dense_allreduce_median_s": statistics.median(t["dense_s"]),
            "time_ratio_dense_over_sparse": statistics.median(t["dense_s"]) / statistics.median(t["sparse_s"]),
        }
    scratch.unlink(missing_ok=True)
    OUT.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
