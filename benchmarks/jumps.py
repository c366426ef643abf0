"""What happens at the late jumps of a tokenized SAE's held-out NMSE (layer 9, low k).

At today's defaults, the frontier (docs "Results", the frontier) has tokenized TopK at layer
9, k 16 and 32 jump late in a 200k-token run, in the same stretch of the stream on every
seed, and TopK on the same batches has none. This script trains tokenized TopK at
each k (with ``--base``, TopK beside it) in one multi-SAE run, at the frontier's settings.
At every step of every tokenized SAE it records:

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
``--lookup_lr`` and ``--aux_loss_coefficient`` (both sides' AuxK) test the step size and AuxK.

  python benchmarks/jumps.py --ks 16 32 --out benchmarks/results/jumps/default
  python benchmarks/jumps.py --ks 16 32 --row_bias_correction --out benchmarks/results/jumps/row_bias_correction
  python benchmarks/jumps.py --ks 16 32 --lookup_lr 0.01 --out benchmarks/results/jumps/lookup_lr_0.01
  python benchmarks/jumps.py --ks 16 32 --aux_loss_coefficient 0 --out benchmarks/results/jumps/auxk_0
  python benchmarks/jumps.py --plot benchmarks/results/jumps/{default,row_bias_correction,lookup_lr_0.01,auxk_0}/jumps.json \
      --out benchmarks/results/jumps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

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


def probe_trainer_steps() -> None:
    """Wrap each trainer's ``step`` (as the workbench's curve recorder does): before it, which
    of the batch's rows are new; after it, the batch's NMSE at new and at seen rows."""
    recording_step = wruns._recording_step

    def probed(trainer: Any, curve: list, eval_data: tuple, thresholds: list[int]) -> Any:
        step = recording_step(trainer, curve, eval_data, thresholds)
        if not hasattr(trainer, "token_ids_channel"):
            return step

        def probed_step(batch: torch.Tensor) -> Any:
            sae = trainer.sae
            ids, prev = trainer.token_ids_channel.ids_for(batch)
            rows = sae.lookup_row_index(ids, prev)
            state = trainer.optimizer.state.get(sae.lookup_rows) or {}
            new = (state["slot_of"][rows] < 0) if state else torch.ones_like(rows, dtype=torch.bool)
            LOG.setdefault(id(sae), []).append({})
            out = step(batch)
            with torch.no_grad():
                err = (out.sae_out - out.sae_in).pow(2).sum(-1) / out.sae_in.pow(2).sum(-1).clamp(min=1e-12)
            LOG[id(sae)][-1].update({
                "samples": int(trainer.n_training_samples), "new_rows": int(torch.unique(rows[new]).numel()),
                "new_positions": int(new.sum()), "nmse": float(err.mean()),
                "nmse_new": float(err[new].mean()) if new.any() else None,
                "nmse_seen": float(err[~new].mean()) if (~new).any() else None})
            return out

        return probed_step

    wruns._recording_step = probed


def plot(files: list[Path], path: Path) -> None:
    """Held-out NMSE along training, and per step the new rows and the lookup update's RMS,
    one colour per run and one line style per k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 5.2))
    for colour, f in zip(("C0", "C3", "C2", "C4"), files):
        d = json.loads(f.read_text())
        label = jumps_label(d["settings"])
        for style, name in zip(("-", "--", ":"), d["steps"]):  # the tokenized SAEs
            curve, k = d["curves"][name], name.split("_k")[-1]
            axes[0].plot([t for t, _ in curve], [v for _, v in curve], style, color=colour, label=f"{label}, k {k}")
            steps = d["steps"][name]
            axes[2].plot([s["samples"] for s in steps], [s.get("update_rms") for s in steps], style, color=colour,
                         lw=0.8, label=f"{label}, k {k}")
        name, steps = list(d["steps"].items())[-1]
        axes[3].plot([s["samples"] for s in steps], [s["nmse_new"] for s in steps], color=colour, lw=0.8)
        axes[3].plot([s["samples"] for s in steps], [s["nmse_seen"] for s in steps], ":", color=colour, lw=0.8)
        axes[1].plot([s["samples"] for s in steps], [s["new_rows"] for s in steps], color="0.3", lw=0.8)
    axes[0].set(title="held-out NMSE (tokenized TopK)", xlabel="training tokens", yscale="log")
    axes[1].set(title="lookup rows first touched, per step", xlabel="training tokens", yscale="log")
    axes[2].set(title="RMS of the lookup's update, per step", xlabel="training tokens", yscale="log")
    axes[3].set(title=f"the batch's NMSE at k {name.split('_k')[-1]}:\nrows first touched (solid), the rest (dotted)",
                xlabel="training tokens", yscale="log")
    axes[3].title.set_fontsize(9)
    for ax in axes:
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


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
    ap.add_argument("--base", action="store_true", help="train TopK beside each tokenized SAE")
    ap.add_argument("--plot", type=Path, nargs="+", help="draw these runs' jumps.json side by side, and stop")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.plot:
        return plot(args.plot, args.out / "jumps.png")
    probe_lazy_steps(args.row_bias_correction)
    probe_trainer_steps()
    bench = Workbench.offline()
    hook = f"blocks.{args.layer}.hook_resid_pre"
    aux = {"aux_loss_coefficient": args.aux_loss_coefficient} if args.aux_loss_coefficient is not None else {}
    extra = {"topk": aux, "tokenized_topk": aux}
    members = {f"{arch}_k{k}": (arch, CompareSettings(hook_name=hook, k=k, training_tokens=args.training_tokens,
                                                       seed=args.seed, n_curve_points=args.curve_points,
                                                       lookup_lr=args.lookup_lr, extra=extra))
               for k in args.ks for arch in (("topk", "tokenized_topk") if args.base else ("tokenized_topk",))}
    r = wruns.train_together(members, bench, {hook: bench.heldout(hook)})
    out = {"command": command_line(), "settings": vars(args) | {"out": str(args.out)},
           "curves": r["curves"], "steps": {name: LOG.get(id(sae), []) for name, sae in r["saes"].items()
                                            if name.startswith("tokenized")}}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(out, args.out / "jumps.json")
    for name, curve in r["curves"].items():
        print(name, " ".join(f"{v:.3f}" for _, v in curve))


if __name__ == "__main__":
    main()
