"""What happens at the late jumps of a tokenized SAE's held-out NMSE (layer 9, low k).

Up to 0.3 the frontier (docs "Results", the frontier) had tokenized TopK at layer 9, k 16 and
32 jump late in a 200k-token run, in the same stretch of the stream on every seed, and TopK
on the same batches had none. This script trains tokenized TopK at each k (with ``--base``,
TopK beside it) in one multi-SAE run, at the frontier's settings. At every step of every SAE
it records the batch's NMSE, the dead latents, AuxK's loss, the share of negative values
among those AuxK decodes and the change of ``b_dec``; for the tokenized SAEs also:

* the batch's NMSE, for the positions whose lookup row is touched for the first time at
  this step (its lazy Adam moments start from zero there) and for the rest;
* how many rows are new, and the RMS of the lookup's update on the rows the step moved.

It also records held-out NMSE at more points than the frontier does (``--curve_points``).

``--row_bias_correction`` is a probe, not a method option. Each lookup row's Adam bias
correction then counts only the steps that touched that row. By default every step counts,
as in lazy Adam and SparseAdam, which ``TokenizedAdam`` follows. With the probe, a row first
touched at step t takes Adam's first step (``lr`` per element, in the gradient's direction)
instead of one scaled by the global step's corrections. The probe rescales each row of
``TokenizedAdam``'s update by ``(1 - b1^t) / (1 - b1^k) * sqrt((1 - b2^k) / (1 - b2^t))``,
with k the row's own count (exact up to Adam's eps), and leaves ``TokenizedAdam`` itself
unchanged. The same command with and without it tests whether the jumps come from rows first touched late.
``--lookup_lr`` and ``--aux_loss_coefficient`` (both sides' AuxK) test the step size and AuxK;
``--aux_acts`` what AuxK decodes (ReLU'd activations, the default since 0.4; SAELens's raw
pre-activations; or raw ones whose gradient is kept from ``b_dec``, a probe).

  python benchmarks/jumps.py --ks 16 32 --aux_acts raw --out benchmarks/results/jumps/default
  python benchmarks/jumps.py --ks 16 32 --row_bias_correction --aux_acts raw --out benchmarks/results/jumps/row_bias_correction
  python benchmarks/jumps.py --ks 16 32 --lookup_lr 0.01 --aux_acts raw --out benchmarks/results/jumps/lookup_lr_0.01
  python benchmarks/jumps.py --ks 16 32 --aux_loss_coefficient 0 --aux_acts raw --out benchmarks/results/jumps/auxk_0
  python benchmarks/jumps.py --plot benchmarks/results/jumps/{default,row_bias_correction,lookup_lr_0.01,auxk_0}/jumps.json \
      --out benchmarks/results/jumps
  python benchmarks/jumps.py --ks 16 32 --base --aux_acts raw --out benchmarks/results/jumps/auxk_raw_base
  python benchmarks/jumps.py --ks 16 32 --base --aux_acts raw_no_b_dec --out benchmarks/results/jumps/auxk_raw_no_b_dec_base
  python benchmarks/jumps.py --ks 16 32 --base --aux_acts relu --out benchmarks/results/jumps/auxk_relu_base
  python benchmarks/jumps.py --ks 16 32 --base --aux_acts relu --aux_loss_coefficient 1 --out benchmarks/results/jumps/auxk_relu_1_base
  python benchmarks/jumps.py --plot_auxk benchmarks/results/jumps/auxk_{raw,raw_no_b_dec,relu,relu_1}_base/jumps.json \
      --out benchmarks/results/jumps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes import topk_sae

from sae_lens_tokenized.lookup.sparse import TokenizedAdam
from sae_lens_tokenized.workbench import Workbench
from sae_lens_tokenized.workbench import runs as wruns
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.workbench.settings import CompareSettings

from render_results import jumps_label  # benchmarks/: one label for the table and the plot

#: per tokenized SAE (by id): its step records
LOG: dict[int, list[dict[str, Any]]] = {}


def probe_lazy_steps(row_bias_correction: bool) -> None:
    """Wrap ``TokenizedAdam._lazy_rows_step``: record the rows it moves and its update's RMS,
    and with ``row_bias_correction`` rescale each row's update to its own bias correction."""
    lazy_step = TokenizedAdam._lazy_rows_step

    def probed(self: TokenizedAdam, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        W = self.sae.W_lookup
        valid = self.sae._lookup_stage[3]
        counts = self.__dict__.setdefault("_probe_row_steps", torch.zeros(W.shape[0]))
        beta1, beta2 = group["betas"]
        index_add = W.index_add_
        record: dict[str, Any] = {}

        def index_add_(dim: int, rows: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            t = self._host_step[id(p)]
            if row_bias_correction:
                counts[rows[valid]] += 1
                k = counts[rows].clamp(min=1).unsqueeze(1)
                source = source * ((1 - beta1**t) / (1 - beta1**k) * ((1 - beta2**k) / (1 - beta2**t)).sqrt())
            record["update_rms"] = float(source[valid].pow(2).mean().sqrt())
            return index_add(dim, rows, source)

        W.index_add_ = index_add_  # type: ignore[method-assign]
        try:
            lazy_step(self, p, grad, group)
        finally:
            del W.index_add_
        LOG.setdefault(id(self.sae), [{}])[-1].update(record)

    TokenizedAdam._lazy_rows_step = probed  # type: ignore[method-assign]


def relu_aux_acts() -> None:
    """``--aux_acts relu`` for the base too: SAELens's TopK then decodes the top dead latents'
    activations after a ReLU, as the tokenized SAEs do by default (``auxk_relu``), instead of
    the raw pre-activations (negative wherever fewer than k_aux dead latents are positive)."""
    aux_acts = topk_sae.calculate_topk_aux_acts

    def relu_acts(k_aux: int, hidden_pre: torch.Tensor, dead_neuron_mask: torch.Tensor) -> torch.Tensor:
        return aux_acts(k_aux=k_aux, hidden_pre=hidden_pre, dead_neuron_mask=dead_neuron_mask).relu()

    topk_sae.calculate_topk_aux_acts = relu_acts


def aux_without_b_dec() -> None:
    """``--aux_acts raw_no_b_dec``, a probe on both sides: AuxK as SAELens computes it, but its
    gradient does not reach ``b_dec``. The pre-activations AuxK reads get ``(b_dec -
    b_dec.detach()) @ W_enc`` added (scaled as SAELens scales them): zero in value, and a
    gradient that cancels theirs through the encoder's input ``x - b_dec``."""
    aux_loss = topk_sae.TopKTrainingSAE.calculate_aux_loss

    def calculate_aux_loss(self: Any, step_input: Any, feature_acts: torch.Tensor, hidden_pre: torch.Tensor,
                           sae_out: torch.Tensor) -> dict[str, torch.Tensor]:
        cancel = (self.b_dec - self.b_dec.detach()) @ self.W_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            cancel = cancel * self.W_dec.norm(dim=-1)
        return aux_loss(self, step_input, feature_acts, hidden_pre + cancel, sae_out)

    topk_sae.TopKTrainingSAE.calculate_aux_loss = calculate_aux_loss  # type: ignore[method-assign]


def probe_trainer_steps(aux_relu: bool) -> None:
    """Wrap each trainer's ``step`` (as the workbench's curve recorder does): before it, which
    of the batch's rows are new; after it, the batch's NMSE at new and at seen rows."""
    recording_step = wruns._recording_step

    def probed(trainer: Any, curve: list, eval_data: tuple, thresholds: list[int]) -> Any:
        step = recording_step(trainer, curve, eval_data, thresholds)
        tokenized = hasattr(trainer, "token_ids_channel")

        def probed_step(batch: torch.Tensor) -> Any:
            sae, record = trainer.sae, {}
            if tokenized:
                ids, prev = trainer.token_ids_channel.ids_for(batch)
                rows = sae.lookup_row_index(ids, prev)
                state = trainer.optimizer.state.get(sae.lookup_rows) or {}
                new = (state["slot_of"][rows] < 0) if state else torch.ones_like(rows, dtype=torch.bool)
            LOG.setdefault(id(sae), []).append(record)
            dead_mask = trainer.dead_neurons.clone()  # the mask this step's AuxK sees
            b_dec = sae.b_dec.detach().clone()
            out = step(batch)
            with torch.no_grad():
                err = (out.sae_out - out.sae_in).pow(2).sum(-1) / out.sae_in.pow(2).sum(-1).clamp(min=1e-12)
                aux = out.losses.get("auxiliary_reconstruction_loss")
                dead = int(dead_mask.sum())
                record.update({"samples": int(trainer.n_training_samples), "nmse": float(err.mean()), "dead": dead,
                               "aux_loss": float(aux) if aux is not None else None,
                               "b_dec_step": float((sae.b_dec - b_dec).norm())})
                if dead:  # the values AuxK decodes: the top k_aux dead pre-activations, as SAELens picks them
                    k_aux = min(out.sae_in.shape[-1] // 2, dead)
                    picked = torch.where(dead_mask[None], out.hidden_pre.detach(), -torch.inf).topk(k_aux).values
                    if aux_relu:
                        picked = picked.relu()
                    record.update({"aux_negative": float((picked < 0).float().mean()),
                                   "aux_act_rms": float(picked.pow(2).mean().sqrt())})
            if tokenized:
                record.update({
                    "new_rows": int(torch.unique(rows[new]).numel()), "new_positions": int(new.sum()),
                    "nmse_new": float(err[new].mean()) if new.any() else None,
                    "nmse_seen": float(err[~new].mean()) if (~new).any() else None})
            return out

        return probed_step

    wruns._recording_step = probed


def four_panels() -> tuple[Any, Any, Any]:
    """matplotlib (headless) and a figure of four panels side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 5.6))
    return matplotlib, fig, axes


def save_panels(matplotlib: Any, fig: Any, axes: Any, path: Path, legend_height: float, ncol: int = 4) -> None:
    """Token counts in thousands on every panel, one legend (the first panel's) under them."""
    for ax in axes:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, legend_height, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def plot(files: list[Path], path: Path) -> None:
    """Held-out NMSE along training, and per step the new rows and the lookup update's RMS,
    one colour per run and one line style per k."""
    matplotlib, fig, axes = four_panels()
    for colour, f in zip(("C0", "C3", "C2", "C4"), files):
        d = json.loads(f.read_text())
        label = jumps_label(d["settings"])
        tokenized = [name for name in d["steps"] if name.startswith("tokenized")]
        for style, name in zip(("-", "--", ":"), tokenized):
            curve, k = d["curves"][name], name.split("_k")[-1]
            axes[0].plot([t for t, _ in curve], [v for _, v in curve], style, color=colour, label=f"{label}, k {k}")
            steps = d["steps"][name]
            axes[2].plot([s["samples"] for s in steps], [s.get("update_rms") for s in steps], style, color=colour,
                         lw=0.8, label=f"{label}, k {k}")
        name, steps = tokenized[-1], d["steps"][tokenized[-1]]
        axes[3].plot([s["samples"] for s in steps], [s["nmse_new"] for s in steps], color=colour, lw=0.8)
        axes[3].plot([s["samples"] for s in steps], [s["nmse_seen"] for s in steps], ":", color=colour, lw=0.8)
        axes[1].plot([s["samples"] for s in steps], [s["new_rows"] for s in steps], color="0.3", lw=0.8)
    axes[0].set(title="held-out NMSE (tokenized TopK)", xlabel="training tokens", yscale="log")
    axes[1].set(title="lookup rows first touched, per step", xlabel="training tokens", yscale="log")
    axes[2].set(title="RMS of the lookup's update, per step", xlabel="training tokens", yscale="log")
    axes[3].set(title=f"the batch's NMSE at k {name.split('_k')[-1]}:\nrows first touched (solid), the rest (dotted)",
                xlabel="training tokens", yscale="log")
    axes[3].title.set_fontsize(9)
    save_panels(matplotlib, fig, axes, path, legend_height=0.14)


def plot_auxk(files: list[Path], path: Path) -> None:
    """For runs with TopK beside (``--base``): held-out NMSE, and per step the dead latents,
    the share of negative values among those AuxK decodes and the change of ``b_dec``; one
    colour per run, one line style per SAE."""
    matplotlib, fig, axes = four_panels()
    for colour, f in zip(("C3", "C0", "C2", "C4"), files):
        d = json.loads(f.read_text())
        label = jumps_label(d["settings"])
        for style, name in zip(("-", "--", ":", "-."), d["steps"]):
            steps, curve = d["steps"][name], d["curves"][name]
            tag = f"{label}: {name.replace('tokenized_topk', 'tokenized').replace('_k', ', k ')}"
            axes[0].plot([t for t, _ in curve], [v for _, v in curve], style, color=colour, label=tag)
            x = [s["samples"] for s in steps]
            axes[1].plot(x, [s["dead"] for s in steps], style, color=colour, lw=0.8)
            axes[2].plot(x, [s.get("aux_negative") for s in steps], style, color=colour, lw=0.8)
            axes[3].plot(x, [s["b_dec_step"] for s in steps], style, color=colour, lw=0.8)
    axes[0].set(title="held-out NMSE", xlabel="training tokens", yscale="log")
    axes[1].set(title="dead latents (50 steps without firing)", xlabel="training tokens")
    axes[2].set(title="share of negative values among those AuxK decodes", xlabel="training tokens")
    axes[3].set(title="change of b_dec in one step (L2)", xlabel="training tokens", yscale="log")
    save_panels(matplotlib, fig, axes, path, legend_height=0.27, ncol=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--training_tokens", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curve_points", type=int, default=32)
    ap.add_argument("--row_bias_correction", action="store_true")
    ap.add_argument("--lookup_lr", type=float, default=CompareSettings.lookup_lr)
    ap.add_argument("--aux_loss_coefficient", type=float, help="AuxK's coefficient (default: the config's)")
    ap.add_argument("--aux_acts", choices=("relu", "raw", "raw_no_b_dec"), default="relu",
                    help="what AuxK decodes, on both sides: the dead latents' ReLU'd pre-activations (the "
                         "tokenized SAEs' default, auxk_relu), SAELens's raw ones, or the raw ones with "
                         "AuxK's gradient kept from b_dec (a probe)")
    ap.add_argument("--base", action="store_true", help="train TopK beside each tokenized SAE")
    ap.add_argument("--plot", type=Path, nargs="+", help="draw these runs' jumps.json side by side, and stop")
    ap.add_argument("--plot_auxk", type=Path, nargs="+", help="draw these --base runs' AuxK side, and stop")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.plot:
        return plot(args.plot, args.out / "jumps.png")
    if args.plot_auxk:
        return plot_auxk(args.plot_auxk, args.out / "auxk.png")
    probe_lazy_steps(args.row_bias_correction)
    probe_trainer_steps(args.aux_acts == "relu")
    if args.aux_acts == "relu":
        relu_aux_acts()
    if args.aux_acts == "raw_no_b_dec":
        aux_without_b_dec()
    bench = Workbench.offline()
    hook = f"blocks.{args.layer}.hook_resid_pre"
    aux = {"aux_loss_coefficient": args.aux_loss_coefficient} if args.aux_loss_coefficient is not None else {}
    extra = {"topk": aux, "tokenized_topk": aux | {"auxk_relu": args.aux_acts == "relu"}}
    members = {f"{arch}_k{k}": (arch, CompareSettings(hook_name=hook, k=k, training_tokens=args.training_tokens,
                                                       seed=args.seed, n_curve_points=args.curve_points,
                                                       lookup_lr=args.lookup_lr, extra=extra))
               for k in args.ks for arch in (("topk", "tokenized_topk") if args.base else ("tokenized_topk",))}
    r = wruns.train_together(members, bench, {hook: bench.heldout(hook)})
    out = {"command": command_line(), "settings": vars(args) | {"out": str(args.out)},
           "curves": r["curves"], "steps": {name: LOG.get(id(sae), []) for name, sae in r["saes"].items()},
           "d_sae": {name: sae.cfg.d_sae for name, sae in r["saes"].items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(out, args.out / "jumps.json")
    for name, curve in r["curves"].items():
        print(name, " ".join(f"{v:.3f}" for _, v in curve))


if __name__ == "__main__":
    main()
