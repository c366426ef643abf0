"""What the default tokenized SAE (data-estimated table + bigram rows) costs beyond
SAELens's TopK, trained the way a user trains it: through the runners, end to end.

Each variant trains in a fresh subprocess on the same tiny random TransformerLens model
(``d_vocab`` as given, ``d_model = d_in``) and the same synthetic token stream (Zipf
tokens with repeated pairs, so the data-estimated bigram rows have something to choose).
A sampling thread records the process's resident memory with the phase the run is in
(model built, lookup init, training), and every ``trainer.step`` is timed.

Reported, tokenized / TopK: the median step time (steps after the first ``--warmup``);
the peak resident memory each run adds beyond its built model and data; and the bytes the
lookup owns at the end (the table, its optimizer state). The step-time *ratio* from
separate processes drifts with machine load; ``benchmarks/step_time.py --bigram`` gives
the interleaved in-process ratio.

    python benchmarks/default_cost.py --d_vocab 50257
    python benchmarks/default_cost.py --d_vocab 262144
    python benchmarks/default_cost.py --d_vocab 262144 --lookup_init_hold memory
    python benchmarks/default_cost.py --d_vocab 50257 --lookup_updates sparse_rowwise
    python benchmarks/default_cost.py --d_vocab 50257 --glibc_mmap_threshold 131072

``--glibc_mmap_threshold`` fixes glibc's mmap threshold in both runs (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``). By default glibc raises it after a large block is freed, so
later blocks come from the heap and freed ones stay resident: the run's peak then counts
memory the process no longer uses. Fixing it separates what a run holds from what the
allocator keeps.

At the last step (when the lookup's state is largest) each run also records where its
memory is: the step's exact peak, and what stays resident after it by mapping (anonymous:
tensors; heap: glibc's arena, before and after ``malloc_trim``; files: library code). The
summary's ``last_step_extra`` is tokenized minus TopK per part, beside the lookup's own parts
(the table, its optimizer state, the staged rows), so what is neither is located.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def high_water_mark() -> int:
    """The kernel's peak RSS of this process since the last reset (VmHWM): exact, where the
    sampling thread can miss a transient between two samples."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (proc(5), /proc/pid/clear_refs)


def resident_by_kind() -> dict[str, int]:
    """Resident bytes by mapping (/proc/self/smaps): ``heap`` (glibc's arena: small blocks,
    and the free ones it has not returned), ``anonymous`` (large blocks: tensors above
    glibc's mmap threshold), ``files`` (the libraries' code and data)."""
    kinds = {"heap": 0, "anonymous": 0, "files": 0, "other": 0}
    kind = "other"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if not head[0].endswith(":"):  # a mapping's header: range, perms, offset, dev, inode[, path]
                path = head[5].strip() if len(head) > 5 else ""
                kind = ("heap" if path == "[heap]" else "anonymous" if not path
                        else "files" if path.startswith("/") else "other")
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1]) * 1024
    return kinds


def malloc_trim() -> bool:
    """Return the heap's free blocks to the system (glibc's ``malloc_trim(0)``), so what stays
    resident is what the process holds."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


class PhaseMemory:
    """Peak RSS per phase: sampled every few milliseconds by a thread, and the kernel's exact
    high-water mark (reset at each phase)."""

    def __init__(self) -> None:
        self.phase = "build"
        self.peaks: dict[str, int] = {}
        self.exact_peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss())
            time.sleep(0.005)

    def enter(self, phase: str) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss())
        self.exact_peaks[self.phase] = max(self.exact_peaks.get(self.phase, 0), high_water_mark())
        reset_high_water_mark()
        now = time.perf_counter()
        self.seconds[self.phase] = now - self._since
        self.phase, self._since = phase, now

    def stop(self) -> dict[str, int]:
        self.enter("end")
        self._stop = True
        self._thread.join()
        return self.peaks


def token_stream(n_seq: int, ctx: int, d_vocab: int, seed: int) -> torch.Tensor:
    """Zipf tokens where a token is often followed by its 'usual' successor, as in text."""
    gen = torch.Generator().manual_seed(seed)
    cdf = torch.cumsum(1.0 / torch.arange(1, d_vocab + 1, dtype=torch.float64), 0)
    zipf = torch.searchsorted(cdf, torch.rand(n_seq, ctx, generator=gen, dtype=torch.float64) * cdf[-1])
    zipf = zipf.clamp_max(d_vocab - 1)
    successor = torch.randperm(d_vocab, generator=gen)
    follow = torch.rand(n_seq, ctx, generator=gen) < 0.3
    out = zipf.clone()
    for p in range(1, ctx):
        out[:, p] = torch.where(follow[:, p], successor[out[:, p - 1]], zipf[:, p])
    return out


def child(variant: str, args: argparse.Namespace, queue: Any) -> None:
    try:
        queue.put(train_one(variant, args))
    except BaseException as e:  # noqa: BLE001  (the parent reports it instead of waiting forever)
        queue.put({"error": f"{type(e).__name__}: {e}"})
        raise


def train_one(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    mem = PhaseMemory()
    from datasets import Dataset
    from sae_lens import HookedSAETransformer, LanguageModelSAERunnerConfig, LoggingConfig
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig
    from transformer_lens import HookedTransformerConfig

    import sae_lens_tokenized  # noqa: F401
    from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig

    model = HookedSAETransformer(HookedTransformerConfig(
        n_layers=1, d_model=args.d_in, d_head=32, n_heads=args.d_in // 32, d_mlp=2 * args.d_in,
        n_ctx=args.context_size, d_vocab=args.d_vocab, act_fn="gelu", seed=0))
    n_seq = (args.training_tokens + 64 * args.batch) // args.context_size
    dataset = Dataset.from_dict({"tokens": token_stream(n_seq, args.context_size, args.d_vocab, 1).tolist()})
    common = dict(d_in=args.d_in, d_sae=args.d_sae, k=args.k)
    sae_cfg = (TopKTrainingSAEConfig(**common) if variant == "topk" else
               TokenizedTopKTrainingSAEConfig(**common, d_vocab=args.d_vocab, lookup_init_tokens=args.lookup_init_tokens,
                                              lookup_init_hold=args.lookup_init_hold,
                                              lookup_init_prior=args.lookup_init_prior,
                                              lookup_updates=args.lookup_updates))
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg, model_name="tiny", hook_name="blocks.0.hook_resid_post", dataset_path="synthetic",
        is_dataset_tokenized=True, context_size=args.context_size, prepend_bos=False,
        training_tokens=args.training_tokens, train_batch_size_tokens=args.batch,
        n_batches_in_buffer=max(8, args.batch // args.context_size), store_batch_size_prompts=8,
        lr=3e-4, device="cpu", logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
        n_checkpoints=0, save_final_checkpoint=False, output_path=None, dead_feature_window=10**9, feature_sampling_window=10**9,
    )
    built = rss()
    mem.enter("runner init (model forwards; tokenized: lookup init)")
    runner_cls = LanguageModelSAETrainingRunner if variant == "topk" else TokenizedSAETrainingRunner
    runner = runner_cls(cfg, override_dataset=dataset, override_model=model)
    times: list[float] = []
    from sae_lens.training.sae_trainer import SAETrainer
    original = SAETrainer.step
    last_step = -(-args.training_tokens // args.batch)  # SAELens steps until the run's tokens are trained
    last: dict[str, Any] = {}

    def timed(self: Any, batch: torch.Tensor) -> Any:
        if not times:
            mem.enter("training")
        if len(times) + 1 == last_step:  # the last step, when the lookup's state is largest: its own peak
            mem.exact_peaks["training"] = max(mem.exact_peaks.get("training", 0), high_water_mark())
            reset_high_water_mark()
            last["rss_before"] = rss()
        t0 = time.perf_counter()
        out = original(self, batch)
        times.append(time.perf_counter() - t0)
        if len(times) == last_step:
            last.update(exact_peak=high_water_mark(), rss_after=rss(), by_kind=resident_by_kind())
            last["trimmed"] = malloc_trim()
            last["rss_after_trim"], last["by_kind_after_trim"] = rss(), resident_by_kind()
            rows = getattr(self.sae, "lookup_rows", None)
            if rows is not None:  # the step's staged rows (kept between steps); its gradient lives in the step
                last["staged_rows_bytes"] = rows.numel() * rows.element_size()
        return out

    SAETrainer.step = timed  # type: ignore[method-assign]
    trainer_ref: dict[str, Any] = {}
    run_trainer = runner.run_trainer_with_interruption_handling

    def keep(trainer: Any) -> Any:
        trainer_ref["t"] = trainer
        return run_trainer(trainer)

    runner.run_trainer_with_interruption_handling = keep  # type: ignore[method-assign]
    sae = runner.run()
    peaks = mem.stop()
    owned: dict[str, int] = {}
    if hasattr(sae, "W_lookup"):
        owned["table"] = sae.W_lookup.numel() * sae.W_lookup.element_size()
        owned["optimizer_state"] = trainer_ref["t"].optimizer.lookup_memory_bytes()
        owned["bigram_rows"] = int(sae.cfg.lookup_bigram_rows)
        owned["held_sample_tokens"] = int(runner.unigram_report["lookup_init"]["tokens_drawn_from_training_stream"])
    return {"built_rss": built, "phase_peak_rss": peaks, "phase_s": mem.seconds, "added_peak": max(peaks.values()) - built,
            "phase_exact_peak_rss": mem.exact_peaks, "added_exact_peak": max(mem.exact_peaks.values()) - built,
            "step_s": times, "lookup_owned": owned, "steps": len(times), "last_step": last}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d_vocab", type=int, default=131072)
    ap.add_argument("--d_in", type=int, default=256)
    ap.add_argument("--d_sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--context_size", type=int, default=128)
    ap.add_argument("--training_tokens", type=int, default=400_000)
    ap.add_argument("--lookup_init_tokens", type=int, default=500_000, help="the default")
    ap.add_argument("--lookup_init_hold", default="disk", choices=["disk", "memory"], help="the default: disk")
    ap.add_argument("--lookup_init_prior", default="0,t",
                    help="the default's prompt prior, 'space,t', with token 0 as the space: the random model has no tokenizer")
    ap.add_argument("--lookup_updates", default="sparse", choices=["sparse", "sparse_rowwise"],
                    help="sparse: lazy Adam per element; sparse_rowwise (the package default) keeps one second moment per row")
    ap.add_argument("--glibc_mmap_threshold", type=int, default=None,
                    help="fix glibc's mmap and trim thresholds (bytes) in both runs; default: glibc's dynamic threshold")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=None)
    ap.add_argument("--code", default="this checkout", help="what code ran (e.g. a commit), recorded in the results")
    args = ap.parse_args()
    if args.glibc_mmap_threshold is not None:  # read by glibc at process start: the spawned children
        os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = str(args.glibc_mmap_threshold)
    ctx = mp.get_context("spawn")
    out: dict[str, Any] = {}
    for variant in ("topk", "tokenized_topk"):
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(variant, args, queue))
        proc.start()
        out[variant] = queue.get()
        proc.join()
        if "error" in out[variant]:
            raise SystemExit(f"{variant} failed: {out[variant]['error']}")
        r = out[variant]
        r["median_step_s"] = statistics.median(r["step_s"][args.warmup:])
        print(f"{variant:16s} median step {r['median_step_s']:.3f}s, adds {r['added_peak'] / 2**20:.0f} MiB "
              f"at peak; phases (MiB above built): " + ", ".join(
                  f"{k}: {(v - r['built_rss']) / 2**20:.0f}" for k, v in r["phase_peak_rss"].items())
              + f"; exact peak adds {r['added_exact_peak'] / 2**20:.0f} MiB", flush=True)
    tok, base = out["tokenized_topk"], out["topk"]
    lookup_bytes = args.d_vocab * args.d_in * 4
    summary = {
        "step_ratio": tok["median_step_s"] / base["median_step_s"],
        "extra_peak_bytes": tok["added_peak"] - base["added_peak"],
        "lookup_table_bytes_V_d": lookup_bytes,
        "extra_peak_over_V_d_4": (tok["added_peak"] - base["added_peak"]) / lookup_bytes,
        # the kernel's high-water marks (VmHWM): transients between the thread's samples included
        "extra_exact_peak_bytes": tok["added_exact_peak"] - base["added_exact_peak"],
        "extra_exact_peak_over_lookup_table": (tok["added_exact_peak"] - base["added_exact_peak"])
        / tok["lookup_owned"]["table"],
        "lookup_owned_bytes": tok["lookup_owned"],
        # the init sample, held until trained on: n * (d_in + 2) float32 (the packed rows),
        # in memory or on disk (lookup_init_hold)
        "held_sample_bytes": tok["lookup_owned"]["held_sample_tokens"] * (args.d_in + 2) * 4,
        "lookup_init_hold": args.lookup_init_hold,
        "lookup_updates": args.lookup_updates,
        "glibc_mmap_threshold": args.glibc_mmap_threshold,
    }
    lt, lb = tok["last_step"], base["last_step"]
    if lt and lb:  # where the extra is at the last step (tokenized minus TopK, bytes)
        owned = tok["lookup_owned"]
        summary["last_step_extra"] = {
            "exact_peak": lt["exact_peak"] - lb["exact_peak"],
            "resident_after": lt["rss_after"] - lb["rss_after"],
            **{f"{k}_after": lt["by_kind"][k] - lb["by_kind"][k] for k in ("anonymous", "heap", "files")},
            "heap_after_malloc_trim": lt["by_kind_after_trim"]["heap"] - lb["by_kind_after_trim"]["heap"],
            # resident beyond the lookup's own parts, once the heap's free blocks are returned
            "table_and_state": owned["table"] + owned["optimizer_state"],
            "staged_rows": lt.get("staged_rows_bytes", 0),
        }
        e = summary["last_step_extra"]
        e["in_the_step"] = e["exact_peak"] - e["resident_after"]  # the step's transients (its gradient, Adam's rows)
        e["anonymous_beyond_table_state_and_staged_rows"] = e["anonymous_after"] - e["table_and_state"] - e["staged_rows"]
    print(json.dumps(summary, indent=1))
    suffix = ("" if args.lookup_init_hold == "disk" else f"_{args.lookup_init_hold}") + (
        "" if args.lookup_updates == "sparse" else f"_{args.lookup_updates}") + (
        "" if args.glibc_mmap_threshold is None else "_fixed_mmap")
    path = Path(args.out or f"benchmarks/results/default_cost_V{args.d_vocab}{suffix}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    for r in out.values():
        r.pop("step_s")
    argv = " ".join(f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "threads", "code") and v is not None)
    path.write_text(json.dumps({
        "command": f"python benchmarks/default_cost.py {argv}", "config": vars(args),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, cpu",
        "summary": summary, "results": out}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
