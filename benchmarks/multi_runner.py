"""One multi-SAE run against one run per SAE: LLM forwards and wall time, in one process.

Four SAEs on SmolLM2-135M (offline): a tokenized TopK (the defaults) and SAELens's TopK at
each of two hooks. (a) all four through ``TokenizedMultiSAETrainingRunner``, one LLM
forward per batch; (b) each through its own runner (``TokenizedSAETrainingRunner`` or
SAELens's ``LanguageModelSAETrainingRunner``). The tokens the model embedded are counted
with a hook on its embedding; the ratio (b)/(a) is what the multi runner saves.

    python benchmarks/multi_runner.py --training_tokens 40000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig, TopKTrainingSAEConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from sae_lens_tokenized import TokenizedMultiSAETrainingRunner, TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig
from sae_lens_tokenized.integrations.offline import SMOLLM2, WIKI_DATASET, load_offline_dataset, load_offline_model
from sae_lens_tokenized.workbench import command_line, count_embedded_tokens, quiet_workbench_notices, write_json

OUT = Path(__file__).resolve().parent / "results" / "multi_runner.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs=2, default=[3, 9])
    ap.add_argument("--training_tokens", type=int, default=40_000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_offline_model(SMOLLM2)
    data = load_offline_dataset(WIKI_DATASET, model.tokenizer, 128, "train")
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in args.layers]
    common = dict(model_name=SMOLLM2, dataset_path=WIKI_DATASET, context_size=128, prepend_bos=False,
                  training_tokens=args.training_tokens, train_batch_size_tokens=1024, n_batches_in_buffer=16,
                  store_batch_size_prompts=8, lr=3e-3, device="cpu", seed=0, logger=LoggingConfig(log_to_wandb=False),
                  checkpoint_path=None, n_checkpoints=0, output_path=None)

    def sae_cfgs() -> dict[str, object]:
        out = {}
        for layer in args.layers:
            out[f"tokenized_L{layer}"] = TokenizedTopKTrainingSAEConfig(d_in=576, d_sae=4608, k=args.k)
            out[f"topk_L{layer}"] = TopKTrainingSAEConfig(d_in=576, d_sae=4608, k=args.k)
        return out

    results: dict[str, dict[str, float]] = {}
    with count_embedded_tokens(model) as embedded:
        t0 = time.perf_counter()
        cfg = MultiSAETrainingRunnerConfig(saes=sae_cfgs(), hook_names={n: hooks[0] if n.endswith(f"L{args.layers[0]}")
                                                                         else hooks[1] for n in sae_cfgs()}, **common)
        with quiet_workbench_notices():
            TokenizedMultiSAETrainingRunner(cfg, override_model=model, override_dataset=data).run()
        results["one multi-SAE run"] = {"tokens_embedded": embedded.total, "wall_s": time.perf_counter() - t0}

    with count_embedded_tokens(model) as embedded:
        t0 = time.perf_counter()
        for name, sae_cfg in sae_cfgs().items():
            hook = hooks[0] if name.endswith(f"L{args.layers[0]}") else hooks[1]
            single = LanguageModelSAERunnerConfig(sae=sae_cfg, hook_name=hook, is_dataset_tokenized=True, **common)
            runner_cls = TokenizedSAETrainingRunner if name.startswith("tokenized") else LanguageModelSAETrainingRunner
            with quiet_workbench_notices():
                runner_cls(single, override_model=model, override_dataset=data).run()
        results["one run per SAE"] = {"tokens_embedded": embedded.total, "wall_s": time.perf_counter() - t0}
    a, b = results["one multi-SAE run"], results["one run per SAE"]
    summary = {
        "command": command_line(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "saes": list(sae_cfgs()), "hooks": hooks,
        "results": results,
        "ratio_tokens_embedded": b["tokens_embedded"] / a["tokens_embedded"],
        "ratio_wall": b["wall_s"] / a["wall_s"],
    }
    write_json(summary, args.out)
    print(summary)


if __name__ == "__main__":
    main()
