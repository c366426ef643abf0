"""Per-training-step time and memory: each tokenized architecture vs its SAELens base.

Every variant is trained by SAELens's own ``SAETrainer.step`` (tokenized ones through
``TokenizedSAETrainer``) on the same synthetic batches, token ids drawn Zipf-like as in
text. Variants are interleaved round-robin within one process, so drift in machine load
hits all of them alike; the ratio ``tokenized / base`` is the result. ``--dense`` adds the
dense-lookup variant (``lookup_updates="dense"``, plain Adam over the whole table), and
``--rowwise`` the lazy lookup with one second moment per row (``"sparse_rowwise"``).
``--bigram`` times the default lookup instead of a unigram one: ``lookup_ngram=2`` with
the budget's bigram rows assigned to the batches' most frequent pairs (ids drawn as
sequences, so every position has a previous token), as the data-estimated init leaves it.

``--memory`` instead runs each variant (of the first architecture) in a fresh process and
reports the peak resident memory a few training steps add on top of the built SAE, plus
the bytes the lookup owns (table, gradient, optimizer state).

    python benchmarks/step_time.py --d_vocab 50257 --d_in 768 --d_sae 6144 --batch 2048 --dense
    python benchmarks/step_time.py --d_vocab 262144 --d_in 2304 --d_sae 9216 --batch 1024 --memory \\
        --architectures topk --dense
    python benchmarks/step_time.py --bigram --architectures topk --d_vocab 50257 --d_in 256 --d_sae 2048 \\
        --batch 4096 --steps 30
    python benchmarks/step_time.py --bigram --rowwise --architectures topk --d_vocab 50257 --d_in 256 \\
        --d_sae 2048 --batch 4096 --steps 30 --out benchmarks/results/step_time_bigram_rowwise_V50257.json
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from tqdm import tqdm

import sae_lens_tokenized
from sae_lens_tokenized.workbench.settings import SPARSITY, CompareSettings, sae_config
from sae_lens_tokenized.training.activations_store import pack_token_ids
from sae_lens_tokenized.lookup.ids import bigram_keys, previous_token_ids
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer

SEQUENCE = 128  # --bigram: ids are drawn as sequences of this length (previous tokens within)


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
    # inverse-CDF sampling of p(r) ~ 1/r without a d_vocab-sized multinomial per call
    cdf = torch.cumsum(1.0 / torch.arange(1, d_vocab + 1, dtype=torch.float64), 0)
    u = torch.rand(n, generator=gen, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u).clamp_max(d_vocab - 1)


def variants(arch: str, dense: bool, rowwise: bool = False) -> list[str]:
    return ([arch, f"tokenized_{arch}"] + ([f"tokenized_{arch}/dense"] if dense else [])
            + ([f"tokenized_{arch}/sparse_rowwise"] if rowwise else []))


def build(variant: str, args: argparse.Namespace, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    arch, _, mode = variant.partition("/")
    settings = CompareSettings(k=args.k, expansion=args.d_sae // args.d_in,
                               extra={arch: {"lookup_updates": mode or "sparse"}} if arch.startswith("tokenized_") else {})
    cfg = sae_config(arch, settings, args.d_in, args.d_vocab, {"lookup_ngram": 2 if args.bigram else 1}
                     if arch.startswith("tokenized_") else None)
    from sae_lens.registry import get_sae_training_class

    sae = get_sae_training_class(arch)[0](cfg)
    tcfg = trainer_cfg(args.batch, len(batches))
    if not arch.startswith("tokenized_"):
        return SAETrainer(cfg=tcfg, sae=sae, data_provider=iter([x for x, _ in batches]))
    with torch.no_grad():
        sae.W_lookup.normal_(std=0.1)
    if not args.bigram:
        return TokenizedSAETrainer(cfg=tcfg, sae=sae, data_provider=iter([pack_token_ids(x, t) for x, t in batches]))
    prevs = [previous_token_ids(t.view(-1, SEQUENCE)).reshape(-1) for _, t in batches]
    keys, counts = torch.unique(torch.cat([bigram_keys(p, t, args.d_vocab) for p, (_, t) in zip(prevs, batches)]),
                                return_counts=True)
    counts[keys < 0] = 0
    top = keys[torch.argsort(counts, descending=True)[: sae.cfg.lookup_bigram_rows]]
    top = top[top >= 0].sort().values
    sae.resize_bigram_rows(len(top))
    sae.set_bigram_rows(top, torch.randn(len(top), args.d_in) * 0.1)
    return TokenizedSAETrainer(cfg=tcfg, sae=sae, data_provider=iter(
        [pack_token_ids(x, t, prev_token_ids=p) for (x, t), p in zip(batches, prevs)]))


def make_batches(args: argparse.Namespace, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(args.batch, args.d_in, generator=gen), zipf_ids(args.batch, args.d_vocab, gen))
            for _ in range(n)]


def lookup_bytes(trainer: Any) -> dict[str, int]:
    """What the lookup owns: the table, its gradient while a step runs (a dense lookup's is
    the whole table; a sparse one's the staged rows), and its optimizer state."""
    sae = trainer.sae
    if not hasattr(sae, "W_lookup"):
        return {}
    table = sae.W_lookup.numel() * sae.W_lookup.element_size()
    rows = sae.lookup_rows
    gradient = table if rows is None else rows.numel() * rows.element_size()
    return {"table": table, "gradient_during_step": gradient, "optimizer_state": trainer.optimizer.lookup_memory_bytes()}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def memory_child(variant: str, args: argparse.Namespace, queue: Any) -> None:
    torch.manual_seed(0)
    batches = make_batches(args, args.memory_steps)
    trainer = build(variant, args, batches)
    base = rss_bytes()
    for _ in range(args.memory_steps):
        trainer.step(next(trainer.data_provider))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    owned = lookup_bytes(trainer)
    queue.put({"built_rss": base, "peak_rss": peak, "added_by_training": peak - base, "lookup_owned": owned})


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = {}
    for variant in variants(args.architectures[0], args.dense, args.rowwise):
        queue = ctx.Queue()
        proc = ctx.Process(target=memory_child, args=(variant, args, queue))
        proc.start()
        out[variant] = queue.get()
        proc.join()
        print(f"{variant:32s} training adds {out[variant]['added_by_training'] / 2**30:.2f} GiB "
              f"(lookup owns {sum(out[variant]['lookup_owned'].values()) / 2**30:.2f} GiB: {out[variant]['lookup_owned']})")
    return out


class _Part(list):
    pending: list[float]


def time_parts(trainer: Any) -> dict[str, _Part]:
    """Time the lookup's own parts of each step, by wrapping them on this trainer's
    instances: the bigram row lookup, staging the step's rows, and lazy Adam's row update."""
    sae, opt = trainer.sae, trainer.optimizer
    out: dict[str, _Part] = {}
    for name, owner, attr in (("row_index", sae, "lookup_row_index"), ("stage_rows", sae, "stage_lookup_rows"),
                              ("lazy_adam_rows", opt, "_lazy_rows_step")):
        fn, part = getattr(owner, attr), _Part()
        part.pending = []

        def timed(*a: Any, _fn: Any = fn, _part: _Part = part, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out_ = _fn(*a, **kw)
            _part.pending.append(time.perf_counter() - t0)
            return out_

        setattr(owner, attr, timed)
        out[name] = part
    return out


def run_time(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    n = args.warmup + args.steps
    batches = make_batches(args, n)
    result: dict[str, Any] = {}
    for arch in args.architectures:
        names = variants(arch, args.dense, args.rowwise)
        trainers = {v: build(v, args, batches) for v in names}
        parts = {v: time_parts(trainers[v]) for v in names if v != arch}
        times: dict[str, list[float]] = {v: [] for v in names}
        for step in tqdm(range(n), desc=f"{arch} step time", leave=False):
            for v in names:  # round robin
                trainer = trainers[v]
                batch = next(trainer.data_provider)
                t0 = time.perf_counter()
                trainer.step(batch)
                if step >= args.warmup:
                    times[v].append(time.perf_counter() - t0)
                for part in parts.get(v, {}).values():  # one entry per step
                    if step >= args.warmup:
                        part.append(sum(part.pending))
                    part.pending.clear()
        med = {v: statistics.median(t) for v, t in times.items()}
        result[arch] = {"median_step_s": med, "all_step_s": times,
                        "ratio_vs_base": {v: med[v] / med[arch] for v in names[1:]},
                        # the lookup's own parts of a step (inside the step's time above)
                        "median_part_s": {v: {k: statistics.median(p) for k, p in ps.items()} for v, ps in parts.items()}}
        print(f"{arch:22s} base {med[arch]:.3f}s  " + "  ".join(
            f"{v} {med[v]:.3f}s ({med[v] / med[arch]:.3f}x)" for v in names[1:]), flush=True)
        del trainers, trainer  # a dense lookup at V=256k holds ~9 GB: free it before the next
        gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--architectures", nargs="+", default=list(SPARSITY), choices=list(SPARSITY))
    ap.add_argument("--d_in", type=int, default=768)
    ap.add_argument("--d_sae", type=int, default=6144)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--d_vocab", type=int, default=50257)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dense", action="store_true", help="also time the dense lookup (lookup_updates='dense')")
    ap.add_argument("--rowwise", action="store_true",
                    help="also time lookup_updates='sparse_rowwise' (one second moment per row)")
    ap.add_argument("--bigram", action="store_true", help="the default lookup: bigram rows for the frequent pairs")
    ap.add_argument("--memory", action="store_true", help="peak memory per variant instead of step time")
    ap.add_argument("--memory_steps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    measured = run_memory(args) if args.memory else run_time(args)
    kind = ("memory" if args.memory else "time") + ("_bigram" if args.bigram else "")
    out = Path(args.out or f"benchmarks/results/step_{kind}_V{args.d_vocab}.json")
    argv = " ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
                    if k != "out" and v is not False)
    result = {
        "command": "python benchmarks/step_time.py " + argv.replace(" True", ""),
        "config": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads, device cpu",
        "sae_lens_tokenized": sae_lens_tokenized.__version__,
        "results": measured,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
