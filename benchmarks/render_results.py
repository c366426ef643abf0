"""Render the committed benchmark results (benchmarks/results/**.json) as Markdown tables.

The documentation's result tables are produced here, from the JSON the benchmark scripts
wrote, never typed by hand: ``docs/hooks.py`` replaces each ``<!-- results: NAME -->``
marker in a docs page with ``RENDERERS[NAME]()`` at build time. Run it to print them:

    python benchmarks/render_results.py            # every table
    python benchmarks/render_results.py demo speed  # some
    python benchmarks/render_results.py --readme   # refresh README.md's result block(s)

README.md holds its headline table between ``<!-- results: NAME -->`` and
``<!-- /results -->``; ``--readme`` rewrites it, and a test checks it is current.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
#: SAELens architecture names as the results page writes them
ARCHITECTURE_NAMES = {"topk": "TopK", "batchtopk": "BatchTopK", "matryoshka_batchtopk": "Matryoshka BatchTopK",
                      "jumprelu": "JumpReLU", "standard": "Standard (ReLU, L1)", "gated": "Gated", "abstopk": "AbsTopK",
                      "matching_pursuit": "Matching pursuit"}


def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def command(data: dict[str, Any]) -> str:
    """The command(s) that made a result; a merged sweep's runs, then the merge."""
    cmd = " && ".join(c for c in (data.get("command"), data.get("merged_with")) if c)
    return f"\n\nCommand: `{cmd}`" if cmd else ""


def f4(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def f3(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def mib(b: float) -> str:
    return f"{round(b / 2**20):,}"  # round() first: no "-0" for a difference of a few pages


def times(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}×"


def reached(speedup: float | None, at_init: bool) -> str:
    """Fewer training tokens to the base's final NMSE; ``at_init``: the init alone was
    already there (no ratio), else no speedup means the run never got there."""
    return "at init" if at_init else "not reached" if speedup is None else times(speedup)


# --------------------------------------------------------------------------- renderers ---
def demo(name: str = "demo/results.json") -> str:
    """The demo's two SAEs (``./run.sh demo``)."""
    d = load(name)
    r = d["results"]
    sides = list(r)
    rows_spec = [
        ("NMSE (held-out)", "nmse", f4), ("explained variance", "explained_variance", f4),
        ("CE loss score (recovered)", "ce_loss_score", f4), ("CE added (relative)", "ce_added", f4),
        ("KL with SAE", "kl_div_with_sae", f4), ("L0", "l0", lambda v: f"{v:.1f}"),
        ("dead latents (held-out)", "dead_latents", str),
        ("single-token latents (of live)", "single_token_fraction_of_live", f3),
        ("training wall time (s)", "train_s", lambda v: f"{v:.0f}"),
        ("lookup init sample (tokens)", "init_sample_tokens", lambda v: f"{v:,}" if v else "-"),
    ]
    rows = [[label] + [fmt(r[s][key]) if r[s].get(key) is not None else "" for s in sides] for label, key, fmt in rows_spec]
    rows.append(["tokens to reach TopK's final NMSE", f"{d['settings']['training_tokens']:,}",
                 f"{d['tokens_to_reach_topk_final_nmse']:,}"])
    rows.append(["fewer training tokens to TopK's final NMSE", "1.0×", d["speedup"].replace("x", "×")])
    if "speedup_counting_every_activation" in d:  # the init sample is the start of the training stream
        rows.append(["the same, counting every activation read", "1.0×",
                     d["speedup_counting_every_activation"].replace("x", "×")])
    else:  # runs before 0.2: the sample was read before training and not trained on
        rows.append(["the same, counting the init sample (read before training, not trained on)", "1.0×",
                     d["speedup_counting_init_sample"].replace("x", "×")])
    s = d["settings"]
    note = (f"\n\n`{s['hook_name']}`, width {s['expansion']}×, k {s['k']}, {s['training_tokens']:,} training tokens, "
            f"batch {s['batch']}, lr {s['lr']}, lookup lr {s['lookup_lr']}, seed {s['seed']}"
            + (f", AuxK coefficient {' / '.join(f'{r[side][aux]:g}' for side in sides)}"
               if all((aux := "aux_loss_coefficient") in r[side] for side in sides) else "")
            + "".join(f", lookup init scale {r[side]['lookup_init_scale']:g}" for side in sides if "lookup_init_scale" in r[side])
            + f"; wall time {d['wall_time_s'] / 60:.1f} min.")
    return table([""] + sides, rows) + note


def lookup_prior_demo() -> str:
    """The demo with ``lookup_init_prior="space,t"`` (``--lookup_init_prior space,t``)."""
    return demo("lookup_prior_demo/results.json")


def lookup_alone() -> str:
    """Held-out NMSE of the lookup alone (``x ≈ row(t)``), by init (benchmarks/lookup_init.py)."""
    d = load("lookup_init.json")
    hooks = list(d["layers"])
    samples = sorted({int(k.split("=")[1]) for h in hooks for k in d["layers"][h] if k.startswith("sample=")})

    def at(h: str, s: int, key: str) -> Any:
        v = d["layers"][h][f"sample={s}"].get(key)
        return v["nmse"] if isinstance(v, dict) else v

    rows = [["mean activation (no lookup)", *(f3(d["layers"][h]["mean_activation"]) for h in hooks)]]
    for strat in ("bos,t", "space,t"):
        for scale, label in (("scale_0.5", "scale 0.5"), ("scale_lsq", "least-squares scale")):
            rows.append([f"prompt `{strat}`, {label}", *(f3(d["layers"][h][f"prompt[{strat}]"][scale]) for h in hooks)])
    for key, label in (("data prior=mean c=0.5", "data (prior: mean, c 0.5)"),
                       ("data prior=space,t c=0.5", "data (prior: `space,t`, c 0.5)"),
                       ("bigram budget=65536 min_count=1 c=2", "data + bigram rows (65,536, min count 1)"),
                       ("bigram budget=65536 min_count=2 c=2", "data + bigram rows (65,536, min count 2)")):
        rows.append([f"{label}, sample " + " / ".join(f"{s // 1000}k" for s in samples),
                     *(" / ".join(f3(at(h, s, key)) for s in samples) for h in hooks)])
    return table(["lookup alone: held-out NMSE", *(f"`{h}`" for h in hooks)], rows) + command(d)


def lookup_variants() -> str:
    """TopK and three tokenized TopK inits, trained (benchmarks/lookup_variants.py)."""
    d = load("lookup_variants/lookup_variants.json")
    rows = []
    for s in d["summary"]:
        for v in ("topk", "prompt", "data", "data+bigram"):
            g = lambda k: s.get(f"{v}.{k}")  # noqa: E731
            rows.append([f"L{s['layer']}", s["k"], v, f4(g("nmse")), f4(g("ce_added")), f4(g("kl_div_with_sae")),
                         pct(g("dead_fraction")), f3(g("single_token_fraction_of_live")), times(g("speedup")),
                         times(g("speedup_counting_sample"))])
    header = ["layer", "k", "variant", "NMSE", "CE added", "KL", "dead", "single-token (of live)",
              "fewer training tokens to TopK's final NMSE", "counting the init sample"]
    return table(header, rows) + f"\n\nMeans of {d['summary'][0]['n_seeds']} seeds." + command(d)


def dead_latents() -> str:
    d = load("dead_latents.json")
    by: dict[int, dict[str, Any]] = {}
    for r in d["runs"]:
        by.setdefault(r["dead_feature_window"], {})[r["variant"]] = r
    rows = [[w, *(f"{f4(v[a]['nmse'])} / {pct(v[a]['dead_fraction'])}" for a in ("topk", "tokenized_topk"))]
            for w, v in by.items()]
    return table(["dead_feature_window", "SAELens TopK NMSE / dead", "tokenized TopK NMSE / dead"], rows) + command(d)


def architectures() -> str:
    """Every architecture against its SAELens base (benchmarks/quality.py)."""
    rows = []
    for name in ("quality/quality.json", "quality_matching_pursuit/quality.json"):
        d = load(name)
        for s in d["summary"]:
            level = f"k {s['k']}" if "topk" in s["architecture"] or s["architecture"] == "matching_pursuit" else (
                f"L1 {s['l1_coefficient']:g}" if s["architecture"] in ("standard", "gated") else f"L0 coef {s['l0_coefficient']:g}")
            rows.append([s["architecture"], f"L{s['layer']}", level, f"{s['l0_base']:.0f} / {s['l0_tokenized']:.0f}",
                         f"{f4(s['nmse_base'])} / {f4(s['nmse_tokenized'])}", f3(s["nmse_ratio"]),
                         f"{f3(s['ce_added_base'])} / {f3(s['ce_added_tokenized'])}", times(s["speedup_mean"])])
    header = ["architecture", "layer", "sparsity", "L0 base / tok.", "NMSE base / tok.", "NMSE ratio",
              "CE added base / tok.", "fewer tokens to base's final NMSE"]
    return table(header, rows) + command(load("quality/quality.json")) + command(load("quality_matching_pursuit/quality.json"))


def topk_in_depth() -> str:
    d = load("quality_topk_200k/quality.json")
    rows = [[f"L{s['layer']}", s["k"], f"{f4(s['nmse_topk'])} / {f4(s['nmse_tokenized'])}", f3(s["nmse_ratio"]),
             f"{f3(s['ce_added_topk'])} / {f3(s['ce_added_tokenized'])}",
             f"{f3(s['ce_score_topk'])} / {f3(s['ce_score_tokenized'])}", f"{times(s['speedup_min'])}-{times(s['speedup_mean'])}"]
            for s in d["summary"]]
    return table(["layer", "k", "NMSE TopK / tok.", "ratio", "CE added TopK / tok.", "CE score TopK / tok.",
                  "fewer tokens (min-mean of seeds)"], rows) + command(d)


def strategies_training() -> str:
    d = load("strategies_training.json")
    rows = [[k, f4(v["nmse"]), f3(v.get("initial_nmse")), f3((v.get("unigram_fit") or {}).get("nmse"))]
            for k, v in d["results"].items()]
    return table(["init", "final held-out NMSE", "NMSE at step 0", "unigram fit NMSE"], rows) + command(d)


def strategy_cosines() -> str:
    d = load("analysis/strategies.json")
    hooks = list(d["hooks"])
    rows = [[f"`{s}`", *(f"{d['hooks'][h][s]['cosine']:.2f} / {d['hooks'][h][s]['cosine_centred']:.2f}"
                         if s in d["hooks"][h] else "" for h in hooks)] for s in d["strategies"]]
    return table(["strategy", *(f"`{h}` cos / centred" for h in hooks)], rows) + command(d)


def trained_lookup() -> str:
    """The demo SAE's trained lookup (``analyze lookup``, results/analysis/lookup.json). A
    lookup started from a prompt table is also compared with that table (its rows' cosine
    to their init, detection with the raw table); a data-estimated one has no saved table,
    and a bigram lookup adds its pair rows."""
    d = load("analysis/lookup.json")
    det = d["last_token_detection"]
    rows = [["lookup", f"{d['unigram_strategy']} estimate, started at {d['lookup_init_scale']:g}×, "
                       f"{d.get('lookup_ngram', 1)}-gram, {d['n_rows']:,} rows"],
            ["last-token detection, trained lookup", pct(det["trained_lookup"])]]
    if "unigram_table" in det:
        rows.append(["last-token detection, unigram table", pct(det["unigram_table"])])
    rows.append(["positions", f"{det['n_positions']:,}"])
    if "lookup_sim_mean" in d:
        rows += [["lookup_sim mean / max", f"{f3(d['lookup_sim_mean'])} / {f3(d['lookup_sim_max'])}"],
                 ["rows moved from their init", f"{d['rows_moved_from_init']:,} of {d['n_rows']:,}"],
                 ["cosine to init, median / mean", f"{f3(d['cosine_to_init_median'])} / {f3(d['cosine_to_init_mean'])}"]]
    if b := d.get("bigrams"):
        rows += [["pair rows", f"{b['bigram_rows']:,}"],
                 ["positions reading a pair row", pct(b["positions_reading_a_bigram_row"])],
                 ["last-bigram detection (among pair rows)", pct(b["last_bigram_detection"])],
                 ["row norm median, pair / token rows", f"{b['bigram_row_norm_median']:.1f} / {b['token_row_norm_median']:.1f}"],
                 ["pair row's cosine to its token's row, median", f3(b["bigram_row_cosine_to_token_row_median"])]]
    return table(["the demo's trained lookup", ""], rows) + command(d)


def bos_positions() -> str:
    d = load("bos_positions.json")
    rows = [[k, f4(v["nmse_ordinary"]), f4(v["nmse_separators"])] for k, v in d["results"].items()]
    note = (f"\n\nSeparators are {pct(d['separator_share_of_positions'])} of positions, mean norm "
            f"{d['separator_mean_norm']:.0f} against {d['ordinary_mean_norm']:.0f} for ordinary tokens.")
    return table(["SAE, trained with", "NMSE ordinary tokens", "NMSE separators"], rows) + note + command(d)


def lookup_updates() -> str:
    d = load("lookup_updates_quality/lookup_updates_quality.json")
    rows = [[k, f4(v["nmse"]), f3(v["ce_added"]), f"{v['dead_latents']:.0f}", f"{v['train_s']:.0f}"]
            for k, v in d["summary"].items() if isinstance(v, dict) and "nmse" in v]
    spread = max(d["summary"]["seed_spread_nmse"].values())
    return table(["variant", "held-out NMSE", "CE added", "dead latents", "train time (s)"], rows) + \
        f"\n\nMeans of seeds {d['settings']['seeds']}; the largest seed spread of NMSE is {spread:.4f}." + command(d)


def speed() -> str:
    """Step time of each tokenized architecture over its SAELens base (benchmarks/step_time.py)."""
    out = []
    for name in ("step_time_V50257.json", "step_time_V262144.json", "step_time_V262144_dense.json"):
        d = load(name)
        c = d["config"]
        archs = list(d["results"])
        cols = sorted({k for a in archs for k in d["results"][a]["ratio_vs_base"]}, key=lambda k: ("/dense" in k, k))
        kinds = sorted({k.split("/")[1] if "/" in k else "sparse" for k in cols})
        rows = []
        for kind in kinds:
            cells = []
            for a in archs:
                key = f"tokenized_{a}" + ("" if kind == "sparse" else f"/{kind}")
                ratio = d["results"][a]["ratio_vs_base"].get(key)
                cells.append("" if ratio is None else f"{ratio:.2f}×")
            rows.append([f"{kind} lookup", *cells])
        out.append(f"V = {c['d_vocab']:,}, d_in {c['d_in']}, d_sae {c['d_sae']}, batch {c['batch']} "
                   f"({d['machine']}; medians of {c['steps']} steps):\n\n" + table(["", *archs], rows) + command(d))
    m = load("step_memory_V262144.json")
    rows = [[k, f"{v['added_by_training'] / 2**30:.2f}", f"{v['peak_rss'] / 2**30:.2f}"] for k, v in m["results"].items()]
    out.append("Memory (each variant in a fresh process; RSS added by three training steps on top of the built SAE):\n\n"
               + table(["variant", "added by training (GiB)", "peak RSS (GiB)"], rows) + command(m))
    return "\n\n".join(out)


def unigram_throughput() -> str:
    d = load("unigram_throughput.json")
    rows = [[k, f"{v:.1f}"] for k, v in d["median_s"].items()]
    return table(["pass over the vocabulary", "median s"], rows) + \
        f"\n\nRatio table / forward: {d['ratio_table_over_forward']:.2f}." + command(d)


def unigram_multi_hook() -> str:
    d = load("unigram_multi_hook.json")
    rows = [[k, f"{v:.2f}"] for k, v in d["median_s"].items()]
    return table([f"{len(d['hooks'])} hooks", "median s"], rows) + command(d)


def saebench_core() -> str:
    d = load("saebench_demo/saebench_demo.json")
    saes = list(d["saes"])
    spec = [("explained variance", "reconstruction_quality", "explained_variance"),
            ("CE loss score", "model_performance_preservation", "ce_loss_score"),
            ("KL with SAE", "model_behavior_preservation", "kl_div_with_sae")]
    rows = [[label, *(f4(d["saes"][s]["core"][group][key]) for s in saes)] for label, group, key in spec]
    return table(["SAEBench core", *saes], rows)


def saebench_absorption() -> str:
    rows = []
    for name, label in (("saebench_demo/saebench_demo.json", ""), ("lookup_prior_demo/saebench/saebench_demo.json", " (prior `space,t`)")):
        d = load(name)
        for s, evals in d["saes"].items():
            if "absorption" not in evals:
                continue
            m = evals["absorption"]["eval_result_metrics"]["mean"]
            rows.append([s + label, f3(m["mean_absorption_fraction_score"]), f3(m["mean_full_absorption_score"]),
                         f"{m['mean_num_split_features']:.2f}"])
    return table(["SAE", "mean absorption fraction", "full absorption rate", "split features per letter"], rows)


def saebench_spelling() -> str:
    d = load("saebench_demo/saebench_demo.json")["spelling"]
    groups = list(d["n_words"])
    rows = [["the model's activation", *(f3(d["activation"][g]) for g in groups)]]
    for sae in ("sae_topk", "sae_tokenized"):
        for part, vals in d[sae].items():
            rows.append([f"{sae}: {part}", *(f3(vals[g]) for g in groups)])
    return table(["first-letter probe accuracy", *(f"{g} ({d['n_words'][g]:,})" for g in groups)], rows)


def multi_runner() -> str:
    """One multi-SAE run against one run per SAE (benchmarks/multi_runner.py)."""
    d = load("multi_runner.json")
    rows = [[k, f"{v['tokens_embedded']:,}", f"{v['wall_s']:.0f}"] for k, v in d["results"].items()]
    return (table([f"{len(d['saes'])} SAEs ({', '.join(d['saes'])})", "tokens the LLM embedded", "wall time (s)"], rows)
            + f"\n\nOne run per SAE over one multi-SAE run: {d['ratio_tokens_embedded']:.2f}× the LLM tokens, "
              f"{d['ratio_wall']:.2f}× the wall time." + command(d))


def default_cost() -> str:
    """The default lookup's step time and memory beyond SAELens's TopK
    (benchmarks/step_time.py --bigram, benchmarks/default_cost.py)."""
    rows = []
    for V in (50257, 262144):
        d = load(f"step_time_bigram_V{V}.json")
        c = d["config"]
        r = d["results"]["topk"]
        parts = r.get("median_part_s", {}).get("tokenized_topk", {})
        ms = lambda k: f"{parts[k] * 1e3:.1f}" if k in parts else ""  # noqa: E731
        rows.append([f"{V:,}", f"{c['d_in']}", f"{c['d_sae']}", f"{c['batch']}",
                     f"{r['median_step_s']['topk'] * 1e3:.0f}", f"{r['median_step_s']['tokenized_topk'] * 1e3:.0f}",
                     ms("row_index"), ms("stage_rows"), ms("lazy_adam_rows"),
                     f"{r['ratio_vs_base']['tokenized_topk']:.3f}×"])
    out = ["Step time, interleaved in one process (SAELens's `SAETrainer.step`; medians of "
           f"{c['steps']} steps after {c['warmup']}, in ms; the lookup's parts are inside its step):\n\n"
           + table(["V", "d_in", "d_sae", "batch", "TopK step", "tokenized step", "bigram row lookup",
                    "staging the rows", "lazy Adam on the rows", "tokenized / TopK"], rows) + command(d)]
    rows = []
    for name in ("default_cost_V50257_sparse_rowwise.json", "default_cost_V262144_sparse_rowwise.json",
                 "default_cost_V50257.json", "default_cost_V262144.json", "default_cost_V262144_memory.json",
                 "default_cost_V262144_before.json"):
        d = load(name)
        moments = "per row" if d["config"].get("lookup_updates") == "sparse_rowwise" else "per element"
        c, r, sm = d["config"], d["results"], d["summary"]
        code = d["config"].get("code", "this checkout")
        hold = sm.get("lookup_init_hold", "memory")  # runs before lookup_init_hold held it in memory
        tok, base = r["tokenized_topk"], r["topk"]
        phases = {k: v - tok["built_rss"] for k, v in tok["phase_peak_rss"].items()}
        init = max(v for k, v in phases.items() if k.startswith("runner init"))
        owned = sm["lookup_owned_bytes"]
        held = sm["held_sample_bytes"] if hold == "memory" else 0
        rows.append([f"{c['d_vocab']:,}", code, moments, f"{mib(sm['held_sample_bytes'])} {'on disk' if hold == 'disk' else 'in memory'}",
                     mib(sm["lookup_table_bytes_V_d"]), mib(owned["table"]),
                     mib(owned["optimizer_state"]), mib(init), mib(base["added_peak"]),
                     mib(tok["added_peak"]), f"{sm['extra_peak_over_V_d_4']:.2f}×",
                     f"{(sm['extra_peak_bytes'] - held) / owned['table']:.2f}×"])
    out.append("Memory, trained end to end through the runners (each in a fresh process; MiB of resident "
               f"memory above the built model; {c['training_tokens']:,} training tokens, d_in {c['d_in']}, "
               f"d_sae {c['d_sae']}, batch {c['batch']}, default `lookup_init_tokens`; the last column leaves "
               "out a sample held in memory):\n\n" + table(
                   ["V", "code", "second moment", "held init sample", "V·d_in·4", "W_lookup (with bigram rows)", "its optimizer state",
                    "peak during the init", "TopK adds", "tokenized adds", "extra / V·d_in·4",
                    "extra beyond a sample in memory / W_lookup"], rows)
               + command(d))
    return "\n\n".join(out)


def moment_storage() -> str:
    """Where lazy Adam's moments live: grown by copying as rows are touched (before) against
    every row reserved at once and committed as written (on the CPU, since 0.3.1), the default
    lookup trained end to end (benchmarks/default_cost.py; exact peaks from the kernel's VmHWM)."""
    rows, commands = [], ""
    for name, storage in (("grown", "grown 1.5× by copying (before)"), ("reserved", "reserved, committed as written")):
        d = load(f"moment_storage/{name}_V50257.json")
        sm, tok, base = d["summary"], d["results"]["tokenized_topk"], d["results"]["topk"]
        owned = sm["lookup_owned_bytes"]
        rows.append([storage, d["config"]["code"], mib(owned["table"]), mib(owned["optimizer_state"]),
                     mib(base["added_exact_peak"]), mib(tok["added_exact_peak"]), mib(sm["extra_exact_peak_bytes"]),
                     mib(sm["extra_exact_peak_bytes"] - owned["table"] - owned["optimizer_state"]),
                     f"{sm['extra_exact_peak_over_lookup_table']:.2f}×"])
        commands += command(d)
    c = d["config"]
    return (f"V {c['d_vocab']:,}, d_in {c['d_in']}, d_sae {c['d_sae']}, batch {c['batch']}, {c['training_tokens']:,} "
           "training tokens, the default lookup (data estimate, bigram rows, row-wise moments), the init sample on disk, "
           f"glibc's mmap threshold fixed; MiB, each run in a fresh process:\n\n" + table(
               ["moment storage", "code", "W_lookup (with bigram rows)", "its optimizer state at the end",
                "TopK adds (peak)", "tokenized adds (peak)", "extra", "extra beyond table and state",
                "extra / W_lookup"], rows) + commands + "\n\n" + last_step_extra())


def last_step_extra() -> str:
    """Where the tokenized run's extra memory is at its last step, part by part (tokenized
    minus TopK; benchmarks/default_cost.py's ``last_step_extra``): the lookup's own parts, and
    what is neither."""
    rows, commands = [], ""
    for name in ("moment_storage/reserved_V50257.json", "default_cost_V131072_sparse_rowwise_fixed_mmap.json",
                 "moment_storage/reserved_V262144.json"):
        d = load(name)
        e, owned = d["summary"]["last_step_extra"], d["summary"]["lookup_owned_bytes"]
        rows.append([f"{d['config']['d_vocab']:,}", mib(owned["table"]), mib(owned["optimizer_state"]), mib(e["staged_rows"]),
                     mib(e["anonymous_beyond_table_state_and_staged_rows"]), mib(e["heap_after_malloc_trim"]),
                     mib(e["heap_after"] - e["heap_after_malloc_trim"]), mib(e["files_after"]), mib(e["in_the_step"]),
                     mib(e["exact_peak"]), f"{e['exact_peak'] / owned['table']:.2f}×"])
        commands += command(d)
    c = d["config"]
    return (f"Where the extra is at the last step (tokenized minus TopK, MiB; d_in {c['d_in']}, batch {c['batch']}; "
            "the state is largest then):\n\n" + table(
                ["V", "W_lookup", "its optimizer state", "staged rows (batch × d_in)", "other tensors",
                 "heap in use", "heap free, not returned", "library pages", "transients in the step",
                 "extra at the step's peak", "/ W_lookup"], rows) + commands)


def rowwise_moments() -> str:
    """Lazy Adam with one second moment per row (``lookup_updates="sparse_rowwise"``, the
    default) against one per element (``"sparse"``, the default before): held-out quality (benchmarks/defaults_check.py,
    results/defaults_check/rowwise), memory end to end (benchmarks/default_cost.py
    --lookup_updates, --glibc_mmap_threshold) and step time (benchmarks/step_time.py --rowwise)."""
    out = [_defaults_table("defaults_check/rowwise")]
    rows, commands = [], ""
    for V in (50257, 262144):
        for fixed in (False, True):
            for updates in ("sparse", "sparse_rowwise"):
                d = load(f"default_cost_V{V}" + ("" if updates == "sparse" else "_sparse_rowwise")
                         + ("_fixed_mmap" if fixed else "") + ".json")
                sm, tok, base = d["summary"], d["results"]["tokenized_topk"], d["results"]["topk"]
                owned, extra = sm["lookup_owned_bytes"], sm["extra_peak_bytes"]
                # beyond TopK's peak, in each phase of the tokenized run
                phase = {k.split(" ")[0]: v - tok["built_rss"] - base["added_peak"] for k, v in tok["phase_peak_rss"].items()}
                rows.append([f"{V:,}", "per row (the default)" if updates == "sparse_rowwise" else "per element (the default before)",
                             f"fixed at {sm['glibc_mmap_threshold'] // 1024} KiB" if fixed else "glibc's dynamic (the default)",
                             mib(owned["table"]), f"{mib(owned['optimizer_state'])} ({owned['optimizer_state'] / owned['table']:.2f}×)",
                             mib(phase["runner"]) if phase["runner"] > 0 else "below TopK's", mib(phase["training"]),
                             mib(phase["training"] - owned["table"] - owned["optimizer_state"]),
                             f"{extra / owned['table']:.2f}×"])
                commands += command(d)
    c = d["config"]
    out.append(f"Memory, trained end to end through the runners (each in a fresh process; MiB; {c['training_tokens']:,} "
               f"training tokens, d_in {c['d_in']}, d_sae {c['d_sae']}, batch {c['batch']}, the init sample on disk):\n\n"
               + table(["V", "second moment", "glibc mmap threshold", "W_lookup (with bigram rows)", "its optimizer state",
                        "beyond TopK's peak: during the init", "during training",
                        "of which (training) neither table nor state", "peak extra / W_lookup"], rows)
               + commands)
    d = load("step_time_bigram_rowwise_V50257.json")
    r, c = d["results"]["topk"], d["config"]
    out.append(f"Step time, interleaved in one process (V {c['d_vocab']:,}, d_in {c['d_in']}, d_sae {c['d_sae']}, batch "
               f"{c['batch']}; medians of {c['steps']} steps after {c['warmup']}, in ms):\n\n" + table(
                   ["TopK", "tokenized, per element", "tokenized, per row", "per element / TopK", "per row / TopK"],
                   [[f"{r['median_step_s'][k] * 1e3:.0f}" for k in ("topk", "tokenized_topk", "tokenized_topk/sparse_rowwise")]
                    + [f"{r['ratio_vs_base'][k]:.3f}×" for k in ("tokenized_topk", "tokenized_topk/sparse_rowwise")]])
               + command(d))
    return "\n\n".join(out)


def sparsity(s: dict) -> str:
    """A sweep row's sparsity level as the architecture reads it (quality.py's SPARSITY)."""
    knob = {"standard": "l1", "gated": "l1", "jumprelu": "l0"}.get(s["architecture"])
    return f"{knob} {s[f'{knob}_coefficient']:g}" if knob else f"k {s['k']}"


def init_scale_of(side: dict) -> float:
    """The scale a tokenized SAE's lookup started at: recorded since 0.3; before, its variant's
    override, else the default of the day (1.0 for the data estimate, 0.5 for a prompt table)."""
    return (side.get("lookup_init_scale") or (side.get("overrides") or {}).get("lookup_init_scale")
            or (1.0 if side.get("unigram_strategy") == "data" else 0.5))


def lookup_moments(d: dict) -> str:
    """What a quality.py sweep's tokenized SAEs were, in the two settings whose default moved:
    the lookup moments (recorded per SAE since the move to row-wise; sweeps before it ran
    per-element) and the init scale (recorded since 0.3; before it, 1.0 for the data
    estimate and 0.5 for a prompt table), and for the TopK family what AuxK decodes (recorded
    since 0.4; before it, SAELens's raw pre-activations)."""
    tok = d["runs"][0]["tokenized"]
    updates = tok.get("lookup_updates") or "sparse"
    moments = {"sparse_rowwise": "row-wise", "sparse": "per-element"}.get(updates, updates)
    text = f"{moments} lookup moments, the lookup started at {init_scale_of(tok):g}× its table"
    if tok.get("auxk_relu"):
        return text + ", AuxK on ReLU'd activations"
    # the architectures with AuxK when sweeps did not yet record it: history, so a literal
    # (this script reads JSON only and does not import the package)
    if tok.get("auxk_relu") is False or all(
            r["architecture"] in ("topk", "batchtopk", "matryoshka_batchtopk") for r in d["runs"]):
        return text + ", AuxK on raw pre-activations"
    return text


def rowwise_architectures() -> str:
    """Every architecture's base, its default tokenized version and the row-wise one, all in
    one multi-SAE run (benchmarks/quality.py --engine multi --tokenized_variants,
    results/rowwise_architectures)."""
    return variants_table("rowwise_architectures/quality.json")


def lookup_knobs() -> str:
    """TopK at k 32 and 128: the default tokenized SAE beside other lookup settings (lookup
    lr, init scale), one multi-SAE run per layer (the runs that compared more than the
    init scale; ``init_scale`` has every full-against-half pair)."""
    return "\n\n".join(variants_table(f"lookup_knobs_{x}/quality.json") for x in ("l9", "l3"))


def init_scale_sides(r: dict) -> dict[float, dict]:
    """A lookup_knobs run's tokenized SAEs that differ from each other in the init scale alone,
    by scale (the default and its variants; a variant that moved another knob is left out)."""
    by_scale: dict[float, dict] = {}
    for side in ({**r["tokenized"], "tokens_to_reach_base_final_nmse": r["tokens_to_reach_base_final_nmse"]},
                 *r["variants"].values()):
        if not set(side.get("overrides") or {}) - {"lookup_init_scale"}:
            by_scale.setdefault(init_scale_of(side), side)
    return by_scale


def init_scale_sweeps() -> Iterator[tuple[str, dict, dict, dict[float, dict]]]:
    """Every lookup_knobs run (and level) that trained three or more init scales beside each
    other on the same batches against the same base: (result folder, sweep, run, sides by
    scale). The sweep table and benchmarks/plot_init_scale.py read these."""
    for f in sorted(RESULTS.glob("lookup_knobs*/quality.json")):
        d = load(str(f.relative_to(RESULTS)))
        for r in d["runs"]:
            by_scale = init_scale_sides(r)
            if len(by_scale) >= 3:
                yield f.parent.name, d, r, by_scale


def init_scale_sweep() -> str:
    """Held-out NMSE (and CE added) against the init scale (``init_scale_sweeps``)."""
    sweeps = list(init_scale_sweeps())
    rows, scales = [], sorted({x for *_, by_scale in sweeps for x in by_scale})
    for name, d, r, by_scale in sorted(sweeps, key=lambda w: (w[2]["layer"], w[2].get("k", 0),
                                                            w[1]["settings"]["training_tokens"], w[2]["seed"])):
        cells = [f"{by_scale[x]['nmse'] / r['base']['nmse']:.2f}× ({by_scale[x]['ce_added']:.3f})"
                 if x in by_scale else "" for x in scales]
        rows.append([ARCHITECTURE_NAMES[r["architecture"]], f"L{r['layer']}", sparsity(r),
                     f"{d['settings']['training_tokens']:,}", r["seed"],
                     f"{r['base']['nmse']:.3f} ({r['base']['ce_added']:.3f})", *cells, name])
    return table(["architecture", "layer", "sparsity", "training tokens", "seed", "base: NMSE (CE added)",
                  *(f"scale {x:g}: NMSE / base's (CE added)" for x in scales), "result"], rows)


def init_scale() -> str:
    """The evidence for the lookup's init scale, one row per SAE pair: every run that trained
    the data-estimated lookup at the whole estimate (1.0, the default before 0.3) beside half
    (0.5) on the same batches against the same base: the lookup_knobs multi-SAE runs (either
    side may be the variant), the small-data defaults check (results/defaults_check/init_scale)
    and the demo before and after the default moved (results/demo_0.2, results/demo)."""
    rows: list[tuple[tuple, list]] = []
    lower: list[bool] = []

    def reach(*tokens: int | None) -> str:
        return " / ".join("never" if t is None else "at init" if t == 0 else f"{t / 1000:.0f}k" for t in tokens)

    def add(corpus: str, arch: str, layer: int, level: dict, tokens: int, seed: int, base: dict, whole: dict,
            half: dict, reached: tuple, source: str) -> None:
        ce = (f"{base['ce_added']:.3f} / {whole['ce_added']:.3f} / {half['ce_added']:.3f}"
              if "ce_added" in base else "")
        l0 = f"{whole['l0']:.0f} / {half['l0']:.0f}" if "l0" in whole else ""
        key = (corpus != "wiki-summaries-en", corpus, list(ARCHITECTURE_NAMES).index(arch), layer, level.get("k", 0),
               level["l0_coefficient"] if arch == "jumprelu" else 0, tokens, seed)
        lower.append(half["nmse"] < whole["nmse"])
        rows.append((key, [corpus, ARCHITECTURE_NAMES[arch], f"L{layer}", sparsity({"architecture": arch, **level}),
                           f"{tokens:,}", seed, f"{whole['nmse'] / base['nmse']:.2f}× / {half['nmse'] / base['nmse']:.2f}×",
                           ce, l0, reach(*reached), source]))

    for f in sorted(RESULTS.glob("lookup_knobs*/quality.json")):
        d = load(str(f.relative_to(RESULTS)))
        corpus = d["settings"].get("dataset") or "wiki-summaries-en"
        for r in d["runs"]:
            by_scale = init_scale_sides(r)
            if 1.0 in by_scale and 0.5 in by_scale:
                whole, half = by_scale[1.0], by_scale[0.5]
                add(corpus, r["architecture"], r["layer"], r, d["settings"]["training_tokens"], r["seed"], r["base"],
                    whole, half, (whole["tokens_to_reach_base_final_nmse"], half["tokens_to_reach_base_final_nmse"]),
                    f.parent.name)
    for f in sorted((RESULTS / "defaults_check/init_scale").glob("*.json")):
        d = load(str(f.relative_to(RESULTS)))
        st = d["settings"]
        label = next(k for k, ov in json.loads(st["variants"]).items() if ov == {"lookup_init_scale": 0.5})
        for r in d["runs"]:
            whole, half = r["tokenized"]["default"], r["tokenized"][label]
            add(st["dataset"], st["architecture"], st["layer"], {"k": st["k"]}, st["training_tokens"], r["seed"],
                r["topk"], whole, half, (whole["tokens_to_reach_topk_final"], half["tokens_to_reach_topk_final"]),
                f"defaults_check/init_scale/{f.stem}")
    before, after = load("demo_0.2/results.json"), load("demo/results.json")
    s = after["settings"]
    assert before["settings"] == s and after["results"]["tokenized TopK"]["lookup_init_scale"] == 0.5
    add("wiki-summaries-en", "topk", int(s["hook_name"].split(".")[1]), {"k": s["k"]}, s["training_tokens"], s["seed"],
        after["results"]["SAELens TopK"], before["results"]["tokenized TopK"], after["results"]["tokenized TopK"],
        (before["tokens_to_reach_topk_final_nmse"], after["tokens_to_reach_topk_final_nmse"]), "demo_0.2, demo")
    return table(["corpus", "architecture", "layer", "sparsity", "training tokens", "seed",
                  "NMSE / base's: scale 1.0 / 0.5", "CE added: base / 1.0 / 0.5", "L0: 1.0 / 0.5",
                  "tokens to the base's final NMSE: 1.0 / 0.5", "result"], [row for _, row in sorted(rows)]) + (
        f"\n\nHalf ends lower in held-out NMSE than the whole estimate in {sum(lower)} of these {len(lower)} pairs.")


def variants_table(name: str) -> str:
    """A ``quality.py --tokenized_variants`` run: per SAE, base / tokenized / each variant."""
    d = load(name)
    settings = d["settings"]
    labels = list(settings["tokenized_variants"])
    rows = []
    for s in d["summary"]:
        rows.append([ARCHITECTURE_NAMES.get(s["architecture"], s["architecture"]), f"L{s['layer']}", sparsity(s),
                     " / ".join(f"{s[f'l0_{side}']:.0f}" for side in ("base", "tokenized", *labels)),
                     " / ".join(f4(s[f"nmse_{side}"]) for side in ("base", "tokenized", *labels)),
                     " / ".join(f3(s[f"nmse_ratio{suffix}"]) for suffix in ("", *(f"_{x}" for x in labels))),
                     " / ".join(f3(s[f"ce_added_{side}"]) for side in ("base", "tokenized", *labels)),
                     " / ".join(f"{s[f'dead_latents_{side}']:.0f}" for side in ("base", "tokenized", *labels))])
    sides = "base / tokenized / " + " / ".join(labels)
    together = "".join(f" Seed {t['seed']}: {t['saes']} SAEs in one multi-SAE run, {t['wall_s'] / 60:.0f} min; the model "
                       f"embedded {t['tokens_embedded']:,} tokens." for t in d["runs_together"])
    return (table(["architecture", "layer", "sparsity", f"L0 {sides}", f"NMSE {sides}", "NMSE / base's: tokenized / "
                   + " / ".join(labels), f"CE added {sides}", f"dead {sides}"], rows)
            + f"\n\n{settings['training_tokens']:,} training tokens, width {settings['expansion']}×, batch "
            f"{settings['batch']}, lr {settings['lr']}, seeds {', '.join(map(str, settings['seeds']))}. tokenized: "
            f"the defaults when this ran ({lookup_moments(d)}). "
            + ", ".join(f"{label}: {overrides({'overrides': ov})}" for label, ov in settings["tokenized_variants"].items())
            + (". Both sides: " + "; ".join(f"{a}: {overrides({'overrides': ov})}" for a, ov in
                                            settings.get("architecture_overrides", {}).items())
               if settings.get("architecture_overrides") else "") + "." + together + command(d))


def touched_rows() -> str:
    """Lookup rows a run on real text touches, hence lazy Adam's moments (benchmarks/touched_rows.py)."""
    d = load("touched_rows.json")
    rows = [[r["dataset"], f"{r['run_tokens']:,}", f"{r['init_sample_tokens']:,}", f"{r['distinct_tokens']:,}",
             f"{r['bigram_rows']:,}", f"{r['table_rows']:,}", f"{r['rows_touched']:,}", pct(r["touched_fraction"]),
             f"{r['moments_over_table']:.2f}×"] for r in d["results"]]
    return (table(["corpus", "run (tokens)", "init sample", "distinct tokens seen", "bigram rows chosen",
                   "W_lookup rows", "rows touched", "touched", "lazy Adam's moments / W_lookup"], rows)
            + f"\n\n{d['model']} (d_vocab {d['d_vocab']:,}), the default lookup (`lookup_init_tokens` "
            f"{d['lookup_init_tokens']:,}, up to {d['lookup_bigram_rows']:,} bigram rows seen at least "
            f"{d['lookup_bigram_min_count']} times); the moments' storage grows 1.5× at a time, so it may hold up to "
            "half as much again." + command(d))


def init_sample_size() -> str:
    """Held-out NMSE of the default tokenized TopK against its init sample size
    (benchmarks/init_sample_size.py)."""
    d = load("init_sample_size/init_sample_size.json")
    runs = list(d["runs"])
    extra = RESULTS / "init_sample_size_overrides" / "init_sample_size.json"
    extra_cmd = ""
    if extra.exists():  # the same, with config overrides (--overrides, TopK reused via --baseline)
        e = json.loads(extra.read_text())
        runs += [{**r, "topk": None} for r in e["runs"]]
        extra_cmd = command(e)
    rows = []
    for r in runs:
        if r["topk"] is not None:
            rows.append([f"L{r['layer']}", "SAELens TopK", "", "", f4(r["topk"]["nmse"]), ""])
        label = "tokenized TopK, " + (", ".join(f"`{k}={v}`" for k, v in r.get("overrides", {}).items()) or "defaults")
        for n, v in r["tokenized"].items():
            rows.append([f"L{r['layer']}", label, f"{int(n):,}",
                         f"{v['held_sample_bytes'] / 2**20:,.0f}", f4(v["nmse"]),
                         reached(v["speedup"], v["tokens_to_reach_topk_final"] == 0)])
    s = d["settings"]
    return (table(["hook", "SAE", "lookup_init_tokens", "held sample (MiB)", "held-out NMSE",
                   "fewer training tokens to TopK's final NMSE"], rows)
            + f"\n\nSmolLM2-135M, k {s['k']}, {s['training_tokens']:,} training tokens, seed {s['seed']} "
              f"(one seed: differences of a few percent are within seed noise, see the TopK in depth table)."
            + command(d) + extra_cmd)


def defaults_check() -> str:
    """SAELens's TopK against tokenized TopK variants on each corpus, layer and length, per
    seed (benchmarks/defaults_check.py; one JSON per corpus/layer/length)."""
    return _defaults_table("defaults_check")


def defaults_now() -> str:
    """The defaults of 0.2 (the lookup at the whole estimate) on the held-out corpus, each base
    trained at its tokenized version's changed defaults (benchmarks/defaults_check.py,
    results/defaults_check/current)."""
    return _defaults_table("defaults_check/current")


def auxk() -> str:
    """TopK and tokenized TopK with and without SAELens's AuxK loss (benchmarks/defaults_check.py
    with ``aux_loss_coefficient=0`` variants, results/defaults_check/auxk)."""
    return _defaults_table("defaults_check/auxk")


def auxk_matched() -> str:
    """TopK, BatchTopK and Matryoshka BatchTopK, each side at SAELens's AuxK coefficient and
    at 1/32, each tokenized SAE against the base trained with the same coefficient
    (benchmarks/defaults_check.py --architecture ..., results/defaults_check/auxk_{topk,batchtopk,matryoshka})."""
    rows, commands = [], ""
    folders = ("auxk_topk", "auxk_batchtopk", "auxk_matryoshka")
    files = [f for folder in folders for f in (RESULTS / "defaults_check" / folder).glob("*.json")]
    order = {a: i for i, a in enumerate(("topk", "batchtopk", "matryoshka_batchtopk"))}
    for d in sorted((json.loads(f.read_text()) for f in files), key=lambda d: (order[d["settings"]["architecture"]], d["settings"]["k"])):
        arch = ARCHITECTURE_NAMES[d["settings"]["architecture"]]
        for label in d["runs"][0]["tokenized"]:
            pairs = [(r["topk"] if label == "default" else r["topk_variants"][label], r["tokenized"][label]) for r in d["runs"]]
            coef = pairs[0][1]["overrides"].get("aux_loss_coefficient", "1.0 (SAELens's; both sides' default when run)")
            rows.append([arch, d["settings"]["k"], coef, ", ".join(f4(b["nmse"]) for b, _ in pairs),
                         ", ".join(f4(t["nmse"]) for _, t in pairs), ", ".join(f3(t["nmse"] / b["nmse"]) for b, t in pairs),
                         ", ".join(f"{b['dead_latents']} / {t['dead_latents']}" for b, t in pairs)])
        commands += command(d)
    s = d["settings"]
    return (table(["base", "k", "aux_loss_coefficient (both sides)", "base NMSE (per seed)", "tokenized NMSE (per seed)",
                   "tokenized / base", "dead latents, base / tokenized"], rows)
            + f"\n\nSmolLM2-135M, {d['dataset']} L{s['layer']}, {s['training_tokens']:,} training tokens, seeds "
            f"{', '.join(map(str, s['seeds']))}, width 8×, lr 3e-3, batch {s['batch']}, `dead_feature_window=50` "
            "(the workbench's settings); held-out NMSE at the end of the run." + commands)

def prior() -> str:
    """The prior of data-estimated rows: the sample mean against a prompt unigram centred on
    it (benchmarks/defaults_check.py with a ``lookup_init_prior`` variant, results/defaults_check/prior)."""
    # these runs predate the change they decided: their "default" had the sample mean as prior
    return _defaults_table("defaults_check/prior", "defaults then (`lookup_init_prior=mean`)")


def length() -> str:
    """The advantage as a run grows: TopK and the tokenized TopK variants along one run of
    one pass over the corpus (benchmarks/defaults_check.py, results/length): the final
    table, then the NMSE ratio at points along each run."""
    out = [_defaults_table("length")]
    for f in sorted((RESULTS / "length").glob("*.json")):
        d = json.loads(f.read_text())
        labels = list(d["runs"][0]["tokenized"])
        rows = []
        for r in d["runs"]:
            topk = dict(r["topk"]["curve"])
            toks = [dict(r["tokenized"][label]["curve"]) for label in labels]
            rows += [[f"{t:,}", r["seed"], f4(topk[t]), *(f4(tok[t]) for tok in toks), *(f3(tok[t] / topk[t]) for tok in toks)]
                     for t in sorted(topk) if t and all(t in tok for tok in toks)]
        s = d["settings"]
        out.append(f"Along the run ({d['dataset']} L{s['layer']}, k {s['k']}, {s['training_tokens']:,} tokens):\n\n" + table(
            ["training tokens", "seed", "TopK NMSE", *(f"tokenized ({label}) NMSE" for label in labels),
             *(f"{label} / TopK" for label in labels)], rows))
    return "\n\n".join(out)


def _defaults_table(folder: str, default_label: str = "defaults") -> str:
    files = sorted((RESULTS / folder).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no benchmarks/results/{folder}/*.json: run benchmarks/defaults_check.py")
    runs = [json.loads(f.read_text()) for f in files]
    with_dead = any("dead_latents" in d["runs"][0]["topk"] for d in runs)  # recorded since the AuxK check
    rows, commands = [], ""
    for d in runs:
        s = d["settings"]
        where = f"{d['dataset']} L{s['layer']}, {s['training_tokens']:,} tokens, batch {s.get('batch', 1024)}, seeds {', '.join(map(str, s['seeds']))}"
        arch = ARCHITECTURE_NAMES[s.get("architecture", "topk")]  # the "topk" keys hold the base
        where += f", k {s['k']}" if s.get("architecture", "topk") != "topk" else ""
        groups = [(f"SAELens {arch}", [[r["topk"] for r in d["runs"]]], False)]
        groups += [(f"SAELens {arch}", [[r["topk_variants"][k] for r in d["runs"]]], False) for k in d["runs"][0].get("topk_variants", {})]
        groups += [(f"tokenized {arch}", [[r["tokenized"][k] for r in d["runs"]]], True) for k in d["runs"][0]["tokenized"]]
        for i, (name, (vs,), tokenized) in enumerate(groups):
            row = [where, name + (f", {overrides(vs[0], default_label)}" if i else ""), ", ".join(f4(v["nmse"]) for v in vs),
                   ", ".join(f3(v["nmse_ratio_to_topk"]) for v in vs) if i else "",
                   ", ".join(reached(v["speedup"], v["tokens_to_reach_topk_final"] == 0) for v in vs) if tokenized else ""]
            if with_dead:
                row.append(", ".join(str(v.get("dead_latents", "not recorded")) for v in vs))
            rows.append(row)
        commands += command(d)
    head = ["corpus, hook, run length", "SAE", "held-out NMSE (per seed)", "/ TopK's (per seed)",
            "fewer training tokens to TopK's final NMSE (per seed)"] + (["dead latents on held-out text"] if with_dead else [])
    return (table(head, rows) + f"\n\nSmolLM2-135M, k {s['k']}, width 8×, lr 3e-3 (the workbench's settings)." + commands)


def overrides(run: dict, default_label: str = "defaults") -> str:
    return ", ".join(f"`{k}={v}`" for k, v in run["overrides"].items()) or default_label


def nmse_at_l0(curve: list[tuple[float, float]], l0: float) -> float | None:
    """A frontier's NMSE at ``l0``, interpolated linearly in log L0 and log NMSE between the two
    measured points around it; None outside the measured L0 range (no extrapolation). This is how
    SAEs whose sparsity is not set directly (JumpReLU's L0 coefficient, which leaves a tokenized
    SAE far sparser than its base at the same coefficient) are compared at matched L0."""
    pts = sorted(curve)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= l0 <= x1:
            t = 0.0 if x1 == x0 else (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None


def matched_l0_ratio(s: dict, summary: list[dict]) -> str:
    """The tokenized NMSE over its base's frontier at the tokenized SAE's own L0."""
    base = [(r["l0_base"], r["nmse_base"]) for r in summary
            if (r["architecture"], r["layer"]) == (s["architecture"], s["layer"])]
    at = nmse_at_l0(base, s["l0_tokenized"])
    return f3(s["nmse_tokenized"] / at) if at else "outside the base's L0 range"


def pareto() -> str:
    """The frontier through the multi-SAE runner (benchmarks/quality.py --engine multi)."""
    return pareto_tables(multi=True)


def pareto_earlier() -> str:
    """The frontier sweeps made with one runner per SAE (benchmarks/quality.py --engine single)."""
    return pareto_tables(multi=False)


def pareto_tables(multi: bool) -> str:
    """Base vs tokenized at every sparsity level (benchmarks/quality.py over several k,
    results/pareto_*/quality.json), one table per sweep of the given engine."""
    out = []
    for f in sorted(RESULTS.glob("pareto_*/quality.json")):
        d = json.loads(f.read_text())
        settings = d.get("settings") or {}
        if (settings.get("engine") == "multi") != multi:
            continue
        # the run length: in the settings, or (sweeps saved before settings were) the command
        tokens = settings["training_tokens"] if settings else int(d["command"].split("--training_tokens ")[1].split()[0])
        engine = ("one multi-SAE run per seed" if settings.get("engine") == "multi" else "one runner per SAE")
        changed = ", ".join(f"`{k}={v}`" for k, v in (settings.get("tokenized_overrides") or {}).items())
        both = "; ".join(f"{ARCHITECTURE_NAMES[a]}: " + ", ".join(f"`{k}={v}`" for k, v in fields.items())
                         for a, fields in (settings.get("architecture_overrides") or {}).items())
        tokenized_variants = settings.get("tokenized_variants") or {}
        labels = list(tokenized_variants)
        rows = [[s["architecture"], f"L{s['layer']}", sparsity(s), f"{s['l0_base']:.0f} / {s['l0_tokenized']:.0f}",
                 f"{f4(s['nmse_base'])} / {f4(s['nmse_tokenized'])}", f3(s["nmse_ratio"]),
                 matched_l0_ratio(s, d["summary"]),
                 f"{f3(s['ce_added_base'])} / {f3(s['ce_added_tokenized'])}",
                 reached(s["speedup_mean"], bool(s.get("reached_at_init"))),
                 f"{s['dead_latents_base']:.0f} / {s['dead_latents_tokenized']:.0f}",
                 f"{s['single_token_latents_base']:.0f} / {s['single_token_latents_tokenized']:.0f}", s["n_seeds"]]
                + [f"{s[f'l0_{v}']:.0f} / {f4(s[f'nmse_{v}'])} / {f3(s[f'nmse_ratio_{v}'])}" for v in labels]
                for s in d["summary"]]
        variants = "; ".join(f"{v}: {overrides({'overrides': ov})}" for v, ov in tokenized_variants.items())
        text = (f"**`{f.parent.name}`**: {tokens:,} training tokens, {engine}"
                + (f", tokenized SAEs with {changed}" if changed else f", {lookup_moments(d)}")
                + (f"; both sides with {both}" if both else "")
                + (f"; beside each tokenized SAE, in the same run, {variants}" if variants else "") + ".\n\n"
                + table(["architecture", "layer", "sparsity", "L0 base / tok.", "NMSE base / tok.", "NMSE ratio",
                         "NMSE ratio at the tokenized L0",
                         "CE added base / tok.", "fewer tokens to base's final NMSE", "dead base / tok.",
                         "single-token latents base / tok.", "seeds", *(f"{v}: L0 / NMSE / ratio" for v in labels)],
                        rows) + command(d))
        for t in d.get("runs_together") or []:  # the multi engine: one multi-SAE run per seed
            text += (f" Seed {t['seed']}: {t['saes']} SAEs in one multi-SAE run; the model embedded "
                     f"{t['tokens_embedded']:,} tokens for {t['training_tokens']:,} training tokens per SAE "
                     f"({t['tokens_embedded'] / t['training_tokens']:.2f}×), {t['wall_s'] / 60:.0f} min.")
        out.append(text)
    if not out:
        raise FileNotFoundError(f"no benchmarks/results/pareto_*/quality.json made with --engine "
                                f"{'multi' if multi else 'single'}: run benchmarks/quality.py with several --ks")
    return "\n\n".join(out)


#: frontier sweeps rerun with AuxK at SAELens's coefficient on both sides, beside the sweep at
#: the tokenized default's 1/32 on the same seeds and batches
AUXK_FRONTIERS = (("pareto_multi_200k_relu", "pareto_multi_200k_relu_auxk1"),
                  ("pareto_multi_200k_l9_batchtopk_relu", "pareto_multi_200k_l9_batchtopk_relu_auxk1"))


def late_rise(curve: list[list[float]]) -> float:
    """A held-out NMSE curve's highest point after 100k training tokens over its lowest
    before: above 1 a run got worse late (the jumps of results.md#the-late-jumps-at-layer-9)."""
    return max(v for t, v in curve if t >= 100_000) / min(v for t, v in curve if 0 < t < 100_000)


def auxk_frontier() -> str:
    """The frontier at AuxK 1/32 (the tokenized default, the workbench trains the base at it
    too) and at 1.0 (SAELens's), AuxK on ReLU'd activations for the tokenized SAEs and raw for
    the bases at both: each point on the seeds both sweeps ran (results/pareto_*_auxk1 beside
    the sweep they repeat)."""
    def key(r: dict) -> tuple:  # one point of a sweep
        return r["architecture"], r["layer"], r["k"], r["seed"]

    out = []
    for default, rerun in AUXK_FRONTIERS:
        if not (RESULTS / rerun / "quality.json").exists():
            continue
        again = load(f"{rerun}/quality.json")
        before = {key(r): r for r in load(f"{default}/quality.json")["runs"]}
        rows = []
        for r1 in sorted(again["runs"], key=key):
            for coef, r in (("1/32", before[key(r1)]), ("1.0", r1)):
                b, t = r["base"], r["tokenized"]
                rows.append([ARCHITECTURE_NAMES[r["architecture"]], f"L{r['layer']}", r["k"], r["seed"], coef,
                             f"{f4(b['nmse'])} / {f4(t['nmse'])}", f3(t["nmse"] / b["nmse"]),
                             f"{f3(b['ce_added'])} / {f3(t['ce_added'])}", f"{b['dead_latents']:,} / {t['dead_latents']:,}",
                             f"{late_rise(b['curve']):.2f}× / {late_rise(t['curve']):.2f}×"])
        out.append(f"**`{rerun}`** against **`{default}`**:\n\n" + table(
            ["architecture", "layer", "k", "seed", "AuxK coefficient (both sides)", "held-out NMSE base / tok.",
             "tok. / base", "CE added base / tok.", "dead on held-out text base / tok.",
             "highest NMSE after 100k / lowest before, base / tok."], rows) + command(again))
    if not out:
        raise FileNotFoundError("no benchmarks/results/pareto_*_auxk1/quality.json: run benchmarks/quality.py with "
                                "--architecture_overrides setting aux_loss_coefficient to 1.0 (benchmarks/run_all.sh)")
    return "\n\n".join(out)


def auxk_l3_batchtopk() -> str:
    """BatchTopK and Matryoshka BatchTopK at layer 3, where they swung at AuxK 1.0 with raw
    values: the tokenized SAE at its default 1/32 and at 1.0 beside it (ReLU'd AuxK both),
    the base at 1/32, one multi-SAE run (results/auxk_l3_batchtopk)."""
    d = load("auxk_l3_batchtopk/quality.json")
    rises = table(["architecture", "k", "highest NMSE after 100k / lowest before: base / tokenized / "
                   + " / ".join(d["settings"]["tokenized_variants"])],
                  [[ARCHITECTURE_NAMES[r["architecture"]], r["k"],
                    " / ".join(f"{late_rise(side['curve']):.2f}×" for side in (r["base"], r["tokenized"], *r["variants"].values()))]
                   for r in d["runs"]])
    return variants_table("auxk_l3_batchtopk/quality.json") + "\n\n" + rises


def data_parallel() -> str:
    """1 process vs 2 gloo ranks; the lookup sync vs a dense all-reduce, per step (benchmarks/data_parallel.py)."""
    d = load("data_parallel.json")
    c, t = d["communication"], d.get("throughput") or {}
    rows = [[k.replace("_", " "), f"{v['tokens_per_s']:.0f} tokens/s", f"{v['wall_s']:.0f}"] for k, v in t.items() if isinstance(v, dict)]
    rows += [["lookup sync / dense all-reduce, per step", f"{c['lookup_sync_bytes_gathered_per_rank']:,} / {c['dense_allreduce_bytes_per_rank']:,} bytes", f"{c['lookup_sync_median_s']:.3f} / {c['dense_allreduce_median_s']:.3f}"]]
    return table(["data parallel", "throughput or bytes per rank", "seconds"], rows) + f"\n\n{t.get('setting', '')}. {c['setting']}." + command(d)


def transcoders() -> str:
    """Tokenized vs plain TopK transcoders per SmolLM2 MLP (benchmarks/transcoders.py)."""
    d = load("transcoders/transcoders.json")
    rows = []
    for r in d["layers"]:
        p, t = r["plain"], r["tokenized"]
        to = r["tokens_to_plain_final"]
        speed = None if not to else d["settings"]["training_tokens"] / to
        rows.append([f"MLP {r['layer']}", f"{t['lookup_share_at_init']:.1%}", f"{p['nmse']:.4f} / {t['nmse']:.4f}",
                     reached(speed, to == 0), f"{p['ce_added']:.3f} / {t['ce_added']:.3f}",
                     f"{p['live_latents']} / {t['live_latents']}",
                     f"{p['single_token_fraction_of_live']:.1%} / {t['single_token_fraction_of_live']:.1%}"]
                    + ([f"{p['single_previous_token_fraction_of_live']:.1%} / {t['single_previous_token_fraction_of_live']:.1%}"]
                       if "single_previous_token_fraction_of_live" in t else []))
    head = ["layer", "lookup alone (variance share)", "NMSE plain / tokenized", "fewer tokens to plain's end",
            "CE added plain / tokenized", "live latents plain / tokenized", "single-token share of live"]
    if "single_previous_token_fraction_of_live" in d["layers"][0]["tokenized"]:
        head.append("single-previous-token share of live")
    s = d["settings"]
    return (table(head, rows) + f"\n\n{d['model']}, {d['dataset']}, TopK k={s['k']}, {s['expansion']}x, "
            f"{s['training_tokens']:,} training tokens, batch {s['batch']}, lr {s['lr']}, one seed. Held-out text: "
            f"{s['heldout_rows']} rows for NMSE and latents (live: 16+ firings), {s['ce_rows']} for CE." + command(d))


def jumps_label(settings: dict) -> str:
    """What a benchmarks/jumps.py run changed, for its table row and its plot's legend (runs
    saved before ``--lookup_lr``, ``--aux_loss_coefficient`` and ``--aux_acts`` existed ran
    at the defaults of their day)."""
    label = "row's own bias correction" if settings["row_bias_correction"] else "lazy Adam"
    label += f", lookup lr {settings.get('lookup_lr', 0.03):g}"
    aux = settings.get("aux_loss_coefficient")
    if aux == 0:
        label += ", no AuxK"
    else:
        label += f", AuxK {aux:g}" if aux is not None else ""
        label += {"relu": ", AuxK on ReLU'd activations", "raw": ", AuxK on raw pre-activations",
                  "raw_no_b_dec": ", AuxK on raw pre-activations, no AuxK gradient to b_dec"}[settings["aux_acts"]]
    label += f", seed {settings['seed']}" if settings["seed"] else ""
    return label + (", TopK beside" if settings["base"] else "")


def jumps() -> str:
    """Tokenized TopK at layer 9 with per-step probes: lazy Adam as it is, each row's own bias
    correction, a lower lookup lr, no AuxK, and AuxK on raw and on ReLU'd activations with
    TopK beside (benchmarks/jumps.py, results/jumps/*/jumps.json)."""
    rows, commands, runs = [], [], set()
    files = [(json.loads(f.read_text()), f) for f in (RESULTS / "jumps").glob("*/jumps.json")]
    # the lookup probes first, then AuxK with TopK beside: raw, then ReLU'd
    for d, f in sorted(files, key=lambda p: (p[0]["settings"]["base"], p[0]["settings"]["aux_acts"] == "relu", p[1].parent.name)):
        st = d["settings"]
        label = jumps_label(st)
        runs.add((st["layer"], st["training_tokens"], st["seed"]))
        for name, steps in d["steps"].items():
            curve = d["curves"][name]
            late = [(t, v) for t, v in curve if t >= 100_000]
            t_max, v_max = max(late, key=lambda p: p[1])
            low = min(v for t, v in curve if t < 100_000 and t > 0)
            row = [label, name.replace("tokenized_topk", "tokenized").replace("_k", ", k "), f4(curve[-1][1]), f4(low),
                   f"{f4(v_max)} at {t_max // 1000}k", f"{v_max / low:.2f}×"]
            if name.startswith("tokenized"):
                new = [s["nmse_new"] / s["nmse_seen"] for s in steps if s["nmse_new"] and s["nmse_seen"]]
                worst = max((s for s in steps if s["samples"] >= 100_000), key=lambda s: s["nmse"])
                row += [f"{worst['nmse']:.3f} at {worst['samples'] // 1000}k: {worst['nmse_new']:.3f} / {worst['nmse_seen']:.3f}",
                        f"{sorted(new)[len(new) // 2]:.2f}",
                        f"{min(s['update_rms'] for s in steps):.4f}-{max(s['update_rms'] for s in steps):.4f}"]
            else:
                row += ["–"] * 3
            if "dead" in steps[0]:  # runs that recorded AuxK's side
                row += [f"{steps[-1]['dead']:,} of {d['d_sae'][name]:,}", f"{max(s.get('aux_negative', 0) for s in steps):.2f}",
                        f"{max(s['b_dec_step'] for s in steps):.3f}"]
            else:
                row += ["–"] * 3
            rows.append(row)
        commands.append(d["command"])
    return (table(["run", "SAE", "held-out NMSE at the end", "lowest before 100k", "highest after 100k",
                   "highest / lowest", "worst batch NMSE after 100k: at rows first touched / the rest",
                   "median batch NMSE ratio, first-touched rows / the rest", "lookup update RMS per step",
                   "dead latents at the end (50-step window)",
                   "largest share of negative values among those AuxK decodes", "largest change of b_dec in one step"],
                  rows)
            + "\n\n" + "; ".join(f"Layer {layer}, {tokens:,} training tokens, seed {seed}" for layer, tokens, seed in sorted(runs))
            + ", one multi-SAE run per group of lines. Commands: " + "; ".join(f"`{c}`" for c in commands) + ".")


RENDERERS: dict[str, Callable[[], str]] = {f.__name__: f for f in (
    demo, lookup_prior_demo, lookup_alone, defaults_check, defaults_now, rowwise_moments, lookup_knobs, init_scale, init_scale_sweep, moment_storage, pareto, pareto_earlier, lookup_variants, dead_latents, architectures, topk_in_depth,
    strategies_training, strategy_cosines, trained_lookup, bos_positions, lookup_updates, speed,
    unigram_throughput, unigram_multi_hook, saebench_core, saebench_absorption, saebench_spelling, multi_runner,
    default_cost, touched_rows, rowwise_architectures, init_sample_size, data_parallel, transcoders, auxk, auxk_matched, auxk_frontier, auxk_l3_batchtopk, prior, length, jumps)}


README_BLOCK = re.compile(r"(<!-- results: ([a-z_]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def render_readme(text: str) -> str:
    """``text`` (a README) with each result block re-rendered."""
    return README_BLOCK.sub(lambda m: m.group(1) + RENDERERS[m.group(2)]() + "\n" + m.group(4), text)


def main(names: list[str]) -> None:
    if names == ["--readme"]:
        readme = RESULTS.parent.parent / "README.md"
        readme.write_text(render_readme(readme.read_text()))
        return
    for name in names or list(RENDERERS):
        print(f"## {name}\n\n{RENDERERS[name]()}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
