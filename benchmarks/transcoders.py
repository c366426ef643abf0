"""Tokenized vs plain TopK transcoders on SmolLM2: MLP0, a middle and a late layer.

For each layer: the MLP's input (``blocks.L.ln2.hook_normalized``) and output
(``blocks.L.hook_mlp_out``). Both transcoders train through the plugin's runner on the
same text, with the same k, width, lr, batch and seed, from one ordinary SAELens runner
config each. Reported, on held-out text:

- the share of the MLP output's variance that the tokenized transcoder's lookup explains
  alone, at its init (token and bigram rows estimated from the training stream);
- NMSE at the output along training and at the end, and tokens to reach the plain
  transcoder's final NMSE;
- CE loss added when the transcoder replaces the MLP's output;
- live latents (16+ firings on the held-out text); single-token latents (the share of
  live latents whose top activations are on one token) and single-previous-token latents
  (top activations right after one token): what is left is context.

    python benchmarks/transcoders.py --layers 0 15 27 --training_tokens 100000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from sae_lens_tokenized import (
    TokenizedSAETrainingRunner,
    TokenizedTopKTrainingTranscoderConfig,
    TopKTrainingTranscoderConfig,
    token_ids_from,
)
from sae_lens_tokenized.analysis.latents import single_token_latents
from sae_lens_tokenized.analysis.plotting import new_figure, save_figure
from sae_lens_tokenized.lookup.ids import previous_token_ids
from sae_lens_tokenized.metrics import nmse_per_activation
from sae_lens_tokenized.saes import changed_defaults
from sae_lens_tokenized.models import activations_at_hooks
from sae_lens_tokenized.training.trainer import TokenizedSAETrainer
from sae_lens_tokenized.training.transcoders import TranscoderSteps
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.workbench.runs import quiet_workbench_notices, tokens_to_reach
from sae_lens_tokenized.workbench.settings import CompareSettings, runner_config


@torch.no_grad()
def heldout_pairs(bench: Workbench, hook_in: str, hook_out: str, n_rows: int):
    """(input, output, ids, previous ids) at held-out positions, special tokens dropped."""
    tokens = bench.heldout_ds[:n_rows]["tokens"]
    acts = activations_at_hooks(bench.model, tokens, [hook_in, hook_out])
    keep = ~torch.isin(tokens, bench.special_ids).reshape(-1)
    flat = [acts[hook_in].reshape(-1, acts[hook_in].shape[-1]), acts[hook_out].reshape(-1, acts[hook_out].shape[-1]),
            tokens.reshape(-1), previous_token_ids(tokens).reshape(-1)]
    return [t[keep].float() if t.is_floating_point() else t[keep] for t in flat], tokens


@torch.no_grad()
def transcoder_nmse(tc, x, y, ids, prev, chunk: int = 4096) -> float:
    was = tc.training
    tc.eval()
    total = 0.0
    for i in range(0, len(ids), chunk):
        s = slice(i, i + chunk)
        ctx = tc.token_ids(ids[s], prev_token_ids=prev[s]) if hasattr(tc, "W_lookup") else contextlib.nullcontext()
        with ctx:
            total += float(nmse_per_activation(tc(x[s]), y[s]).sum())
    tc.train(was)
    return total / len(ids)


@torch.no_grad()
def lookup_share(tc, y, ids, prev) -> float:
    """1 - |y - lookup|^2 / |y - mean y|^2 over held-out outputs: what the lookup alone explains."""
    with tc.token_ids(ids, prev_token_ids=prev):
        lookup = tc.lookup_bias(ids.shape)
    return 1 - float((y - lookup).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


@torch.no_grad()
def ce_added(model, tc, tokens) -> float:
    clean = float(model(tokens, return_type="loss"))
    ctx = token_ids_from(model, tc) if hasattr(tc, "W_lookup") else contextlib.nullcontext()
    with ctx:
        spliced = float(model.run_with_saes(tokens, saes=[tc], return_type="loss"))
    return spliced - clean


class Curve:
    """Held-out NMSE at evenly spaced sample counts, before the step that passes each."""

    eval_data: list[torch.Tensor]
    thresholds: list[int]
    curve: list[tuple[int, float]]

    def step(self, batch):
        while self.thresholds and self.n_training_samples >= self.thresholds[0]:
            self.thresholds.pop(0)
            self.curve.append((self.n_training_samples, transcoder_nmse(self.sae, *self.eval_data)))
        return super().step(batch)


def train(tokenized: bool, s: CompareSettings, bench: Workbench, hook_out: str, eval_data, n_points: int = 12):
    d = bench.model.cfg.d_model
    kw = {"d_in": d, "d_out": d, "d_sae": d * s.expansion, "k": s.k, "hook_name_out": hook_out}
    # the plain side at the defaults the tokenized TopK changes (its AuxK coefficient): the
    # two differ by the lookup alone
    sae_cfg = (TokenizedTopKTrainingTranscoderConfig(**kw) if tokenized
               else TopKTrainingTranscoderConfig(**kw, **changed_defaults("tokenized_topk")))
    curve: list[tuple[int, float]] = []
    step = s.training_tokens // n_points
    shared = {"eval_data": eval_data, "thresholds": [step * i for i in range(n_points)], "curve": curve}
    runner_cls = type("CurveRunner", (TokenizedSAETrainingRunner,), {
        "trainer_class": type("T", (Curve, TokenizedSAETrainer), shared),
        "plain_trainer_class": type("P", (Curve, TranscoderSteps), shared)})
    cfg = runner_config(s, sae_cfg, bench.model.cfg.model_name, None, bench.dataset_name)
    torch.manual_seed(s.seed)  # the same init draws for both, whatever ran before (as workbench.runs does)
    with quiet_workbench_notices():
        runner = runner_cls(cfg, override_model=bench.model, override_dataset=bench.train_ds)
    share = lookup_share(runner.sae, *eval_data[1:]) if tokenized else None
    t0 = time.perf_counter()
    torch.manual_seed(s.seed)
    tc = runner.run()
    final = transcoder_nmse(tc, *eval_data)
    curve.append((s.training_tokens, final))
    return tc.eval(), {"nmse": final, "curve": curve, "lookup_share_at_init": share,
                       "train_seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[0, 15, 27])
    ap.add_argument("--training_tokens", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--heldout_rows", type=int, default=64)
    ap.add_argument("--ce_rows", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/transcoders")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench = Workbench.offline()
    rows = []
    fig, axes = new_figure(1, len(args.layers), size=(5, 4))
    for ax, layer in zip(list(axes[0]), args.layers):
        hook_in, hook_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
        s = CompareSettings(hook_name=hook_in, training_tokens=args.training_tokens, k=args.k)
        eval_data, eval_tokens = heldout_pairs(bench, hook_in, hook_out, args.heldout_rows)
        ce_tokens = eval_tokens[: args.ce_rows]
        row = {"layer": layer, "hook_name": hook_in, "hook_name_out": hook_out}
        for tokenized in (False, True):
            tc, r = train(tokenized, s, bench, hook_out, eval_data)
            r["ce_added"] = ce_added(bench.model, tc, ce_tokens)
            r.update(single_token_latents(tc, eval_data[0], eval_data[2], prev=eval_data[3]))
            by_prev = single_token_latents(tc, eval_data[0], eval_data[2], prev=eval_data[3], labels=eval_data[3])
            r["single_previous_token_latents"] = by_prev["single_token_latents"]
            r["single_previous_token_fraction_of_live"] = by_prev["single_token_fraction_of_live"]
            row["tokenized" if tokenized else "plain"] = r
            ax.plot(*zip(*r["curve"]), label="tokenized" if tokenized else "plain", ls="-" if tokenized else "--")
        row["tokens_to_plain_final"] = tokens_to_reach(row["tokenized"]["curve"], row["plain"]["nmse"])
        rows.append(row)
        ax.set(title=f"MLP {layer}", xlabel="training tokens", ylabel="held-out NMSE at the MLP output", yscale="log")
        ax.legend()
        print(json.dumps({k: v for k, v in row.items()}, default=str)[:600], flush=True)
        write_json({"command": command_line(),
                    "settings": {**vars(args), "expansion": s.expansion, "batch": s.batch, "lr": s.lr},
                    "model": bench.model.cfg.model_name, "dataset": bench.dataset_name, "layers": rows},
                   out / "transcoders.json")
    save_figure(fig, out / "transcoders.png")


if __name__ == "__main__":
    main()
