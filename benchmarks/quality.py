"""Quality: each tokenized architecture against its SAELens base on SmolLM2-135M.

For every architecture, layer, sparsity level and seed, the SAELens base and its tokenized
version train on the same activations at the same hook, width, sparsity, lr and seed.
Two engines (--engine):

- ``multi`` (the frontier's): per seed, every (layer, sparsity level, architecture, side)
  trains in one ``TokenizedMultiSAETrainingRunner`` run, SAELens's multi-SAE runner: one LLM
  forward per batch over every layer, every SAE on the same batches in the same order.
  The run's token count (tokens the model embedded) is recorded beside the results.
- ``single``: each SAE through its own runner (SAELens's or ``TokenizedSAETrainingRunner``),
  on activations computed once per layer and served in the same order to each.
 Reports
held-out NMSE, CE added and KL (SAELens's run_evals), L0, dead latents, and the training
tokens the tokenized SAE needed to reach its base's final NMSE, and single-token latents.
Writes JSON, the training curves (quality.png) and, over several sparsity levels, the Pareto
frontier (pareto.png: held-out NMSE, CE added and tokens to the base's final NMSE, each
against L0, every architecture base vs tokenized, mean over seeds).

A sparsity level i sets k = --ks[i] (TopK, AbsTopK, BatchTopK, Matryoshka; matching
pursuit's max_iterations), l1_coefficient = --l1s[i] (Standard, Gated) and
l0_coefficient = --l0s[i] (JumpReLU); a single value serves every level.

    python benchmarks/quality.py --architectures topk jumprelu --layers 3 9 --training_tokens 100000
    python benchmarks/quality.py --engine multi --architectures topk --layers 3 9 --ks 8 16 32 64 128 \
        --l1s 5 --l0s 5 --seeds 0 1 --training_tokens 200000

``--merge`` makes one sweep of runs of the same command for other seeds or sparsity levels (a
seed, or a wider grid, per sitting), refusing runs whose other settings differ, or whose
tokenized SAEs were another method (``METHOD_FIELDS``).

``--tokenized_variants`` (multi engine) trains more tokenized SAEs beside each default one in
the same run, against the same base (a candidate default, measured on the same batches);
``--architecture_overrides`` sets config fields on both sides of an architecture:

    python benchmarks/quality.py --engine multi --architectures jumprelu --layers 9 --ks 32 --l0s 2 --l1s 10 \
        --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' \
        --tokenized_variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from matplotlib.ticker import NullFormatter

from render_results import sparsity  # benchmarks/: the sparsity labels the results page uses

from sae_lens_tokenized.workbench.settings import SPARSITY, CompareSettings
from sae_lens_tokenized.workbench.data import Workbench
from sae_lens_tokenized.workbench.data import HookData
from sae_lens_tokenized.workbench.runs import evaluate, tokens_to_reach, train_together, train_variant
from sae_lens_tokenized.workbench.report import command_line, write_json
from sae_lens_tokenized.analysis.plotting import new_figure, save_figure

#: tokenized-config fields whose default has moved (or may): recorded per SAE, and runs that
#: differ in one are not merged, since "tokenized" meant another method in each
METHOD_FIELDS = ("lookup_updates", "lookup_init_scale", "auxk_relu")
METRICS = ("nmse", "ce_added", "kl_div_with_sae", "l0", "dead_latents", "single_token_latents", "train_s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("single", "multi"), default="single",
                    help="multi: per seed, every SAE in one multi-SAE runner (one LLM forward per batch); "
                         "single: one runner per SAE on precomputed activations")
    ap.add_argument("--architectures", nargs="+", default=list(SPARSITY), choices=list(SPARSITY),
                    help="SAELens base architectures; each is compared with tokenized_<name>")
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--l1s", type=float, nargs="+", default=[5.0, 2.0])
    ap.add_argument("--l0s", type=float, nargs="+", default=[5.0, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--training_tokens", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lookup_lr", type=float, default=3e-2)
    ap.add_argument("--unigram_strategy", default="auto")
    ap.add_argument("--ce_batches", type=int, default=2, help="run_evals batches of 8x128 tokens")
    ap.add_argument("--curve_points", type=int, default=16, help="held-out NMSE evaluations along training")
    ap.add_argument("--eval_activations", type=int, default=20_000, help="held-out activations for NMSE")
    ap.add_argument("--tokenized_overrides", type=json.loads, default={},
                    help='config fields for every tokenized SAE, e.g. \'{"lookup_updates": "sparse_rowwise"}\'')
    ap.add_argument("--architecture_overrides", type=json.loads, default={},
                    help="config fields for both sides of an architecture, as JSON {architecture: fields}, e.g. "
                         "'{\"jumprelu\": {\"jumprelu_ste_to_input\": true}}'")
    ap.add_argument("--tokenized_variants", type=json.loads, default={},
                    help="multi engine: more tokenized SAEs beside each default one, in the same run, as JSON "
                         "{label: config overrides} (on top of --tokenized_overrides), e.g. "
                         "'{\"rowwise\": {\"lookup_updates\": \"sparse_rowwise\"}}'")
    ap.add_argument("--dataset", default=None, help="offline corpus (default: the Wikipedia introductions)")
    ap.add_argument("--out", default="benchmarks/results/quality")
    ap.add_argument("--replot", help="a quality_partial.json of a stopped run: summarise it and draw its figures, "
                                     "training nothing")
    ap.add_argument("--merge", nargs="+", metavar="QUALITY_JSON",
                    help="quality.json files of one sweep run for other --seeds or sparsity levels: one quality.json "
                         "(mean over the seeds) and its figures in --out, training nothing")
    args = ap.parse_args()
    if args.replot:
        return replot(Path(args.replot), Path(args.out))
    if args.merge:
        return merge([Path(f) for f in args.merge], Path(args.out))
    n_levels = max(map(len, (args.ks, args.l1s, args.l0s)))
    for name in ("ks", "l1s", "l0s"):  # one value serves every level (a TopK sweep needs no l1s)
        if len(getattr(args, name)) == 1:
            setattr(args, name, getattr(args, name) * n_levels)
    if not len(args.ks) == len(args.l1s) == len(args.l0s):
        ap.error("--ks, --l1s and --l0s give one value per sparsity level: pass as many of each, "
                 "or one value for every level")
    if args.tokenized_variants and args.engine != "multi":
        ap.error("--tokenized_variants trains beside the default in one multi-SAE run: add --engine multi")
    if unknown := set(args.architecture_overrides) - set(args.architectures):
        ap.error(f"--architecture_overrides names {sorted(unknown)}, not in --architectures {args.architectures}")
    for label in args.tokenized_variants:
        if label in ("base", "tokenized") or not label.isidentifier():
            ap.error(f"--tokenized_variants label {label!r}: use a name other than 'base' and 'tokenized', "
                     "made of letters, digits and underscores")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bench = Workbench.offline(dataset=args.dataset)
    runs: list[dict] = []
    curves: dict[tuple, list] = {}
    together: list[dict] = []  # the multi engine's runs: one per seed

    def layer_settings(layer: int) -> CompareSettings:
        return CompareSettings(hook_name=f"blocks.{layer}.hook_resid_pre", expansion=args.expansion,
                               training_tokens=args.training_tokens, batch=args.batch, lr=args.lr,
                               lookup_lr=args.lookup_lr, unigram_strategy=args.unigram_strategy,
                               n_eval_ce_batches=args.ce_batches, n_curve_points=args.curve_points,
                               n_eval_activations=args.eval_activations,
                               extra={name: fields for arch, fields in args.architecture_overrides.items()
                                      for name in (arch, f"tokenized_{arch}")})

    def settings_at(layer: int, level: int, seed: int) -> CompareSettings:
        return replace(layer_settings(layer), k=args.ks[level], l1_coefficient=args.l1s[level],
                       l0_coefficient=args.l0s[level], seed=seed)

    def record(arch: str, layer: int, level: int, seed: int, side: str, sae, curve, data: HookData,
               train_s: float | None, strategy) -> dict:
        s = settings_at(layer, level, seed)
        metrics = evaluate(sae, s, bench, data)
        curves[(arch, layer, level, seed, side)] = curve
        name = arch if side == "base" else f"tokenized_{arch}" + ("" if side == "tokenized" else f" ({side})")
        print(f"{name} L{layer} level {level} seed {seed}: NMSE {metrics['nmse']:.4f} CE added {metrics['ce_added']:.4f} "
              f"L0 {metrics['l0']:.1f} dead {metrics['dead_latents']}", flush=True)
        return {**metrics, "curve": curve, "train_s": train_s, "unigram_strategy": strategy,
                **{f: getattr(sae.cfg, f, None) for f in METHOD_FIELDS}}  # what "tokenized" meant on the day

    def finish(row: dict) -> None:
        reach = tokens_to_reach(row["tokenized"]["curve"], row["base"]["nmse"])
        row["tokens_to_reach_base_final_nmse"] = reach
        row["speedup"] = (args.training_tokens / reach) if reach else None
        row["reached_at_init"] = reach == 0  # the init alone already beats the base's end
        row["nmse_ratio"] = row["tokenized"]["nmse"] / row["base"]["nmse"]
        runs.append(row)
        write_json({"command": command_line(), "settings": vars(args), "runs": runs,
                    "runs_together": together}, out / "quality_partial.json")

    def new_row(arch: str, layer: int, level: int, seed: int) -> dict:
        return {"architecture": arch, "layer": layer, "level": level, "k": args.ks[level],
                "l1_coefficient": args.l1s[level], "l0_coefficient": args.l0s[level], "seed": seed}

    levels = range(len(args.ks))
    if args.engine == "multi":
        heldout = {layer: HookData(hook, None, bench.heldout(hook, args.eval_activations))
                   for layer in args.layers for hook in [layer_settings(layer).hook_name]}
        for seed in args.seeds:
            sides = {"base": {}, "tokenized": args.tokenized_overrides,
                     **{label: {**args.tokenized_overrides, **ov} for label, ov in args.tokenized_variants.items()}}
            members, overrides = {}, {}
            for layer in args.layers:
                for level in levels:
                    for arch in args.architectures:
                        for side, side_overrides in sides.items():
                            name = f"{side}_{arch}_L{layer}_{level}"
                            members[name] = (arch if side == "base" else f"tokenized_{arch}",
                                             settings_at(layer, level, seed))
                            if side != "base":
                                overrides[name] = side_overrides
            print(f"seed {seed}: {len(members)} SAEs in one multi-SAE run", flush=True)
            r = train_together(members, bench, {h.hook_name: h.eval for h in heldout.values()}, overrides)
            together.append({"seed": seed, "saes": len(members), "wall_s": r["wall_s"],
                             "tokens_embedded": r["tokens_embedded"], "activations_read": r["activations_read"],
                             "training_tokens": args.training_tokens})
            for layer in args.layers:
                for level in levels:
                    for arch in args.architectures:
                        row = new_row(arch, layer, level, seed)
                        for side in sides:
                            name = f"{side}_{arch}_L{layer}_{level}"
                            sae = r["saes"][name]
                            result = record(arch, layer, level, seed, side, sae, r["curves"][name], heldout[layer],
                                            None, getattr(sae.cfg, "unigram_strategy", None))
                            if side in ("base", "tokenized"):
                                row[side] = result
                            else:  # a --tokenized_variants SAE, against the same base
                                row.setdefault("variants", {})[side] = {
                                    **result, "overrides": sides[side], "nmse_ratio": result["nmse"] / row["base"]["nmse"],
                                    "tokens_to_reach_base_final_nmse": tokens_to_reach(result["curve"],
                                                                                       row["base"]["nmse"])}
                        finish(row)
    else:
        for layer in args.layers:
            data = bench.prepare(layer_settings(layer).hook_name, args.training_tokens, args.eval_activations)
            for level in levels:
                for arch in args.architectures:
                    for seed in args.seeds:
                        row = new_row(arch, layer, level, seed)
                        for side, variant in (("base", arch), ("tokenized", f"tokenized_{arch}")):
                            v = train_variant(variant, settings_at(layer, level, seed), bench, data,
                                              overrides=args.tokenized_overrides if side == "tokenized" else None)
                            row[side] = record(arch, layer, level, seed, side, v["sae"], v["curve"], data,
                                               v["train_s"], v["unigram_strategy"])
                        finish(row)

    summary = summarise(runs)
    result = {"command": command_line(), "settings": vars(args),
              "wall_time_s": time.perf_counter() - t_start, "summary": summary, "runs": runs,
              "runs_together": together}
    write_json(result, out / "quality.json")
    (out / "quality_partial.json").unlink(missing_ok=True)
    plot(curves, args, out / "quality.png")
    figures_and_table(runs, summary, out)


def replot(partial: Path, out: Path) -> None:
    """Summary, JSON and figures from the runs a stopped sweep had finished."""
    d = json.loads(partial.read_text())
    runs, summary = d["runs"], summarise(d["runs"])
    write_json({**{k: v for k, v in d.items() if k != "runs"}, "stopped_after_runs": len(runs),
                "replotted_with": command_line(), "summary": summary, "runs": runs}, out / "quality.json")
    figures_and_table(runs, summary, out)


def merge(files: list[Path], out: Path) -> None:
    """One sweep from runs of the same command for other seeds or other sparsity levels (a seed,
    or a wider grid, per sitting). Refused unless every other setting is the same, no SAE
    (architecture, layer, level, seed) comes twice, and every tokenized SAE trained with the
    same ``METHOD_FIELDS`` (their defaults moved, so the name alone is not trusted)."""
    ds = [json.loads(f.read_text()) for f in files]
    free = ("seeds", "ks", "l1s", "l0s", "out", "merge", "replot")
    same = lambda d: {k: v for k, v in d["settings"].items() if k not in free}  # noqa: E731
    for f, d in zip(files[1:], ds[1:]):
        if same(d) != same(ds[0]):
            diff = sorted(k for k in same(d).keys() | same(ds[0]).keys() if same(d).get(k) != same(ds[0]).get(k))
            raise SystemExit(f"--merge: {f} was run with other settings than {files[0]} ({', '.join(diff)}); "
                             "merge only runs of one command that differ in --seeds or the sparsity levels")
    level_of = lambda r: (r["k"], r["l1_coefficient"], r["l0_coefficient"])  # noqa: E731
    runs = [dict(r) for d in ds for r in d["runs"]]
    keys = [(r["architecture"], r["layer"], level_of(r), r["seed"]) for r in runs]
    if repeated := sorted({k for k in keys if keys.count(k) > 1}):
        raise SystemExit(f"--merge: {repeated[0]} (architecture, layer, (k, l1, l0), seed) repeats across the files; "
                         "merge runs of different seeds or sparsity levels")
    for field in METHOD_FIELDS:
        values = {side.get(field) for r in runs for side in (r["tokenized"], *(r.get("variants") or {}).values())}
        if len(values) > 1:
            raise SystemExit(f"--merge: the tokenized SAEs trained with different {field} {sorted(map(str, values))} "
                             "(a default moved between the runs, or a run set it); a mean over them would mix two methods")
    levels = sorted({level_of(r) for r in runs})
    for r in runs:
        r["level"] = levels.index(level_of(r))
    summary = summarise(runs)
    settings = {**ds[0]["settings"], "seeds": sorted({r["seed"] for r in runs}),
                **dict(zip(("ks", "l1s", "l0s"), map(list, zip(*levels))))}
    curves = {(r["architecture"], r["layer"], r["level"], r["seed"], side): sides[side]["curve"]
              for r in runs for sides in [{"base": r["base"], "tokenized": r["tokenized"], **(r.get("variants") or {})}]
              for side in sides}
    # a note on a piece (a field added after its run, say) stays with the sweep, naming its piece
    note = "; ".join(f"{f.parent.name}/{f.name}: {d['note']}" for f, d in zip(files, ds) if d.get("note"))
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, argparse.Namespace(**settings), out / "quality.png")
    write_json({"command": " && ".join(d["command"] for d in ds), "merged_with": command_line(),
                "settings": settings, "wall_time_s": sum(d["wall_time_s"] for d in ds),
                "summary": summary, "runs": runs, "runs_together": [t for d in ds for t in d["runs_together"]],
                **({"note": note} if note else {})},
               out / "quality.json")
    figures_and_table(runs, summary, out)


def figures_and_table(runs: list[dict], summary: list[dict], out: Path) -> None:
    """What every way of finishing a sweep (a run, --replot, --merge) draws and prints: the
    frontier over several sparsity levels (k, or an L1/L0 coefficient), the gap along training,
    and the table."""
    if len({r["level"] for r in runs}) > 1:
        pareto(summary, out / "pareto.png")
    gap_along_training(runs, out / "gap.png")
    print("\n" + table(summary))


def summarise(runs: list[dict]) -> list[dict]:
    summary = []
    keys = sorted({(r["architecture"], r["layer"], r["level"]) for r in runs}, key=lambda t: (t[0], t[1], t[2]))
    for arch, layer, level in keys:
        rs = [r for r in runs if (r["architecture"], r["layer"], r["level"]) == (arch, layer, level)]
        row = {"architecture": arch, "layer": layer, "level": level, "k": rs[0]["k"],
               "l1_coefficient": rs[0]["l1_coefficient"], "l0_coefficient": rs[0]["l0_coefficient"], "n_seeds": len(rs)}
        for side in ("base", "tokenized"):
            for m in METRICS:
                values = [r[side][m] for r in rs if r[side].get(m) is not None]  # train_s: per SAE in one engine only
                row[f"{m}_{side}"] = statistics.mean(values) if values else None
        speedups = [r["speedup"] for r in rs if r["speedup"]]
        row["speedup_mean"] = statistics.mean(speedups) if speedups else None
        row["reached_at_init"] = all(r.get("reached_at_init") for r in rs)
        row["nmse_ratio"] = statistics.mean(r["nmse_ratio"] for r in rs)
        row["strategy"] = rs[0]["tokenized"]["unigram_strategy"]
        for label in rs[0].get("variants", {}):  # --tokenized_variants: the same metrics, and the ratio to the base
            for m in (*METRICS, "nmse_ratio"):
                values = [r["variants"][label][m] for r in rs if r["variants"][label].get(m) is not None]
                row[f"{m}_{label}"] = statistics.mean(values) if values else None
        summary.append(row)
    return summary


def table(summary: list[dict]) -> str:
    lines = ["| architecture | hook | sparsity | NMSE base → tokenized | CE added base → tokenized | KL base → tokenized "
             "| L0 base / tokenized | dead base / tokenized | tokens to base's final NMSE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        level = sparsity(r)
        sp = (f"{r['speedup_mean']:.1f}× fewer" if r["speedup_mean"] else
              "at init" if r.get("reached_at_init") else "not reached")
        lines.append(
            f"| {r['architecture']} | L{r['layer']} | {level} | {r['nmse_base']:.3f} → {r['nmse_tokenized']:.3f} "
            f"| {r['ce_added_base']:.3f} → {r['ce_added_tokenized']:.3f} "
            f"| {r['kl_div_with_sae_base']:.3f} → {r['kl_div_with_sae_tokenized']:.3f} "
            f"| {r['l0_base']:.0f} / {r['l0_tokenized']:.0f} | {r['dead_latents_base']:.0f} / {r['dead_latents_tokenized']:.0f} | {sp} |")
        for label in variant_labels([r]):
            lines.append(
                f"| {r['architecture']} ({label}) | L{r['layer']} | {level} | {r['nmse_base']:.3f} → {r[f'nmse_{label}']:.3f} "
                f"| {r['ce_added_base']:.3f} → {r[f'ce_added_{label}']:.3f} "
                f"| {r['kl_div_with_sae_base']:.3f} → {r[f'kl_div_with_sae_{label}']:.3f} "
                f"| {r['l0_base']:.0f} / {r[f'l0_{label}']:.0f} | {r['dead_latents_base']:.0f} / {r[f'dead_latents_{label}']:.0f} | |")
    return "\n".join(lines)


def plot(curves, args, path) -> None:
    levels = range(len(args.ks))
    fig, axes = new_figure(len(args.layers) * len(levels), len(args.architectures), size=(4, 3))
    for i, (layer, level) in enumerate((lay, lev) for lay in args.layers for lev in levels):
        for j, arch in enumerate(args.architectures):
            ax = axes[i][j]
            for side, color in (("base", "tab:blue"), ("tokenized", "tab:orange"),
                                *zip(getattr(args, "tokenized_variants", None) or {}, ("tab:green", "tab:red", "tab:purple", "tab:brown"))):
                for seed in args.seeds:
                    if (arch, layer, level, seed, side) not in curves:  # a merged sweep: not every level has every seed
                        continue
                    xs, ys = zip(*curves[(arch, layer, level, seed, side)])
                    ax.plot(xs, ys, color=color, alpha=0.8, label=side if seed == args.seeds[0] else None)
            ax.set(title=f"{arch} L{layer} level {level}", xlabel="training tokens", ylabel="held-out NMSE", yscale="log")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    save_figure(fig, path, dpi=90)


def gap_along_training(runs: list[dict], path: Path) -> None:
    """tokenized / base held-out NMSE along training, mean over seeds: does the gap close,
    stay or grow as the run gets longer? (The lr is constant, so a base SAE's curve at T
    tokens is what a run of T tokens ends at; a tokenized run of T tokens is not the same,
    since its init sample is capped at T: read the ratio along one run, not across lengths.)"""
    fig, axes = new_figure(1, 1, size=(6, 4))
    ax = axes[0][0]
    groups = sorted({(r["architecture"], r["layer"], r["level"]) for r in runs})
    for arch, layer, level in groups:
        rs = [r for r in runs if (r["architecture"], r["layer"], r["level"]) == (arch, layer, level)]
        xs = [t for t, _ in rs[0]["base"]["curve"]]
        n = min(len(r[side]["curve"]) for r in rs for side in ("base", "tokenized"))
        xs = xs[:n]
        ratio = [statistics.mean(r["tokenized"]["curve"][i][1] / r["base"]["curve"][i][1] for r in rs) for i in range(n)]
        ax.plot(xs[1:], ratio[1:], "o-", label=f"{arch} L{layer} {sparsity(rs[0])}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(title="tokenized / base held-out NMSE along training", xlabel="training tokens", ylabel="NMSE ratio", xscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=90)


def variant_labels(summary: list[dict]) -> list[str]:
    """The --tokenized_variants labels a summary holds (each has an ``nmse_ratio_<label>``)."""
    return sorted({key.removeprefix("nmse_ratio_") for r in summary for key in r if key.startswith("nmse_ratio_")})


def pareto(summary: list[dict], path: Path) -> None:
    """Each metric against L0, one row per layer: base dashed, tokenized solid, per architecture
    (and each --tokenized_variants SAE dotted, with its own marker)."""
    layers = sorted({r["layer"] for r in summary})
    archs = sorted({r["architecture"] for r in summary})
    panels = (("nmse", "held-out NMSE", "log"), ("ce_added", "CE added (relative)", "log"))
    fig, axes = new_figure(len(layers), len(panels) + 1, size=(4.5, 3.5))
    for i, layer in enumerate(layers):
        for j, arch in enumerate(archs):
            rs = sorted((r for r in summary if r["layer"] == layer and r["architecture"] == arch), key=lambda r: r["l0_base"])
            color = f"C{j}"
            for col, (metric, label, scale) in enumerate(panels):
                ax = axes[i][col]
                for side, style, name in (("base", "o--", arch), ("tokenized", "o-", f"tokenized_{arch}"),
                                          *((v, f"{m}:", f"tokenized_{arch} {v}") for m, v in zip("s^vD", variant_labels(rs)))):
                    # each side's frontier in its own L0 order (a JumpReLU pair at one coefficient sits far apart)
                    pts = sorted((r[f"l0_{side}"], r[f"{metric}_{side}"]) for r in rs)
                    ax.plot(*zip(*pts), style, color=color, alpha=0.7 if side == "base" else 1.0, label=name)
                ax.set(title=f"L{layer}: {label} vs L0", xlabel="L0 (held-out)", ylabel=label, xscale="log", yscale=scale)
            ax = axes[i][len(panels)]
            pts = [(r["l0_tokenized"], r["speedup_mean"]) for r in rs if r["speedup_mean"]]
            if pts:
                ax.plot(*zip(*pts), "o-", color=color, label=f"tokenized_{arch}")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set(title=f"L{layer}: fewer tokens to the base's final NMSE", xlabel="L0 (held-out)",
                   ylabel="× fewer training tokens", xscale="log")
        for ax in axes[i]:
            ax.grid(alpha=0.3, which="both")
            lo, hi = ax.get_xlim()
            if hi > 10 * lo:  # matplotlib labels a log axis's minor ticks up to about 1.5 decades: they overlap
                ax.xaxis.set_minor_formatter(NullFormatter())
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    save_figure(fig, path, dpi=90)


if __name__ == "__main__":
    main()
