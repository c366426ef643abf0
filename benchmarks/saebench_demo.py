"""SAEBench 0.6 on the demo's two SAEs (SAELens TopK vs tokenized TopK, SmolLM2-135M L3).

Needs an environment with sae-bench 0.6 (its pins: datasets<4, numpy<2), e.g. the second
environment of .ci/run. The Hub is unreachable here, so SAEBench's evals get the offline
SmolLM2 (``load_offline_model``) where they would download it, and held-out Wikipedia text
for core; nothing else of SAEBench is changed. Each SAE runs under ``saebench_mode``.

    sae-lens-tokenized demo --out /tmp/sltok-demo
    python benchmarks/saebench_demo.py --demo /tmp/sltok-demo --out benchmarks/results/saebench_demo
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="/tmp/sltok-demo", help="folder written by `sae-lens-tokenized demo`")
    p.add_argument("--evals", nargs="+", default=["core", "absorption"], choices=["core", "absorption"])
    p.add_argument("--core_batches", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/saebench_demo")
    args = p.parse_args()

    import sae_lens_tokenized  # noqa: F401
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE

    from sae_lens_tokenized.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model
    from sae_lens_tokenized.saebench import saebench_mode
    from sae_lens_tokenized.saes.lookup import TokenLookupMixin

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_offline_model(SMOLLM2)
    results: dict = {"command": "python benchmarks/saebench_demo.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()), "saes": {}}
    t0 = time.perf_counter()
    for name in ("sae_topk", "sae_tokenized"):
        sae = SAE.load_from_disk(str(Path(args.demo) / name))
        sae.fold_W_dec_norm()  # SAEBench expects unit decoder rows (outputs unchanged)
        sae = load_and_format_sae("demo", sae, "cpu")[1]

        def mode(eval_name: str, sae=sae):
            return saebench_mode(eval_name, sae) if isinstance(sae, TokenLookupMixin) else contextlib.nullcontext()

        r: dict = {}
        if "core" in args.evals:
            from sae_bench.evals.core.eval_config import CoreEvalConfig
            from sae_bench.evals.core.main import run_evals
            from sae_lens.training.activations_store import ActivationsStore

            ds = load_offline_dataset(WIKI_DATASET, model.tokenizer, context_size=128, split="heldout")
            store = ActivationsStore.from_sae(model, sae, context_size=128, dataset=ds)
            cfg = CoreEvalConfig(model_name=SMOLLM2, batch_size_prompts=8, n_eval_reconstruction_batches=args.core_batches,
                                 n_eval_sparsity_variance_batches=args.core_batches, compute_kl=True, compute_ce_loss=True,
                                 compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True)
            with mode("core"), torch.no_grad():
                r["core"] = run_evals(sae, store, model, cfg)[0]
            print(name, "core", json.dumps(r["core"], indent=1)[:600])
        if "absorption" in args.evals:
            from sae_bench.evals.absorption import main as absorption
            from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

            # offline: the model SAEBench would download is the one already loaded
            absorption.HookedTransformer.from_pretrained_no_processing = lambda *a, **k: model
            cfg = AbsorptionEvalConfig(model_name=SMOLLM2)
            with mode("absorption"):
                res = absorption.run_eval(cfg, [("demo", sae)], "cpu", str(out / f"absorption_{name}"), force_rerun=True)
            r["absorption"] = next(iter(res.values()))["eval_result_metrics"] if res else None
            print(name, "absorption", r["absorption"])
        results["saes"][name] = r
    results["wall_time_s"] = time.perf_counter() - t0
    (out / "saebench_demo.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "table.md").write_text(core_table(results))
    print(core_table(results))
    print(f"wrote {out / 'saebench_demo.json'} and table.md")


CORE_ROWS = (("reconstruction_quality", "explained_variance"), ("reconstruction_quality", "mse"),
             ("reconstruction_quality", "cossim"), ("model_performance_preservation", "ce_loss_score"),
             ("model_performance_preservation", "ce_loss_with_sae"), ("model_behavior_preservation", "kl_div_score"),
             ("model_behavior_preservation", "kl_div_with_sae"), ("shrinkage", "l2_ratio"), ("sparsity", "l0"))


def core_table(results: dict) -> str:
    saes = [n for n in ("sae_topk", "sae_tokenized") if "core" in results["saes"].get(n, {})]
    if not saes:
        return ""
    lines = ["| SAEBench core | " + " | ".join(saes) + " |", "|---" * (len(saes) + 1) + "|"]
    for group, key in CORE_ROWS:
        vals = [results["saes"][n]["core"].get(group, {}).get(key) for n in saes]
        lines.append(f"| {group}.{key} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
