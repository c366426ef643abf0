"""``sae-lens-tokenized evals``: ``python -m sae_lens.evals`` for tokenized SAEs.

SAELens's evals CLI lists SAEs from its ``pretrained_saes.yaml`` and builds its own
``HookedTransformer``, so a tokenized SAE there has no way to get its token ids. This
runs the same pieces of ``sae_lens.evals`` (``get_eval_everything_config``, ``run_evals``,
``process_results``: the same metrics, the same JSON and CSV files) on SAEs given as local
folders or Hub repos, with the ids taken from the model's input (``token_ids_from``)::

    sae-lens-tokenized evals out/sae_tokenized --ctx_lens 128 --output_dir eval_results
    sae-lens-tokenized evals hf://user/repo/blocks.3.hook_resid_pre

Plain SAELens SAEs are accepted too (they need no ids), so a tokenized SAE and its base
architecture are scored by one command.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HUB_PREFIX = "hf://"


def load_sae(spec: str, device: str = "cpu", revision: str | None = None) -> tuple[Any, str, str]:
    """``(sae, release, sae_id)`` from a saved SAE folder or ``hf://owner/repo/<sae_id>``."""
    if spec.startswith(HUB_PREFIX):
        parts = spec[len(HUB_PREFIX):].strip("/").split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{spec!r}: a Hub SAE is hf://OWNER/REPO/SAE_ID (SAE_ID: the folder in the repo, "
                             "e.g. blocks.3.hook_resid_pre)")
        from sae_lens_tokenized.integrations.hub import load_from_hub

        repo_id, sae_id = "/".join(parts[:2]), parts[2]
        return load_from_hub(repo_id, sae_id, revision=revision, device=device), repo_id, sae_id
    folder = Path(spec)
    if not (folder / "cfg.json").is_file():
        raise SystemExit(f"{spec!r} is neither a saved SAE folder (no cfg.json in it) nor hf://OWNER/REPO/SAE_ID")
    from sae_lens_tokenized.integrations.offline import load_saved_sae  # evaluate loads its model with load_model

    return load_saved_sae(folder, device=device), str(folder.parent), folder.name


def _dataset(name: str, model: Any, ctx_len: int) -> Any:
    from sae_lens_tokenized.integrations.offline import OFFLINE_DATASETS, load_offline_dataset

    if name in OFFLINE_DATASETS:  # the held-out split: never the text the SAE trained on
        return load_offline_dataset(name, model.tokenizer, context_size=ctx_len, split="heldout")
    return name


def evaluate(
    specs: Sequence[str],
    *,
    batch_size_prompts: int = 16,
    n_eval_reconstruction_batches: int = 10,
    n_eval_sparsity_variance_batches: int = 1,
    datasets: Sequence[Any] | None = None,
    dataset_trust_remote_code: bool = False,
    ctx_lens: Sequence[int] = (128,),
    model_name: str | None = None,
    model: Any | None = None,
    device: str = "cpu",
    revision: str | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Score each SAE with SAELens's ``run_evals`` (all metrics on), one result per SAE,
    context length and dataset, in ``python -m sae_lens.evals``'s result format.

    ``datasets`` (names or tokenized ``datasets.Dataset`` objects) defaults to each SAE's
    training dataset (its held-out split for the offline text); the model is ``model`` if
    given, else loaded by ``model_name`` or the SAE's ``metadata.model_name``."""
    from sae_lens import ActivationsStore
    from sae_lens.evals import get_eval_everything_config, nested_dict, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from tqdm.auto import tqdm

    from sae_lens_tokenized.integrations.offline import load_model
    from sae_lens_tokenized.lookup.mixin import TokenLookupMixin
    from sae_lens_tokenized.splicing import token_ids_from

    loaded = [load_sae(spec, device, revision) for spec in specs]  # every spec checked before any eval runs
    transcoders = [f"{r}/{i}" for s, r, i in loaded if s.cfg.metadata.hook_name_out]
    if transcoders:
        raise ValueError(
            f"{transcoders} are transcoders: SAELens's run_evals measures an SAE at one hook (it would compare "
            "a transcoder's output with its input). Measure CE added with model.run_with_saes (docs/transcoders.md).")
    eval_config = get_eval_everything_config(
        batch_size_prompts=batch_size_prompts,
        n_eval_reconstruction_batches=n_eval_reconstruction_batches,
        n_eval_sparsity_variance_batches=n_eval_sparsity_variance_batches,
    )
    results: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for sae, release, sae_id in tqdm(loaded, desc="SAEs", disable=len(loaded) < 2):
        if model is None:
            name = model_name or sae.cfg.metadata.model_name
            if not name:
                raise SystemExit(f"{release}/{sae_id}: cfg.json names no model (metadata.model_name); pass --model_name")
            if name not in models:
                models.clear()  # one model in memory at a time, as SAELens does
                models[name] = load_model(name, device)
        lm = model if model is not None else models[name]
        for ctx_len in ctx_lens:
            for dataset in datasets or [sae.cfg.metadata.dataset_path]:
                if not dataset:
                    raise SystemExit(f"{release}/{sae_id}: cfg.json names no dataset; pass --datasets")
                store = ActivationsStore.from_sae(
                    lm, sae, context_size=ctx_len,
                    dataset=_dataset(dataset, lm, ctx_len) if isinstance(dataset, str) else dataset,
                    dataset_trust_remote_code=dataset_trust_remote_code, device=device,
                )
                store.shuffle_input_dataset(seed=42)
                ids = token_ids_from(lm, sae) if isinstance(sae, TokenLookupMixin) else contextlib.nullcontext()
                with ids:
                    scalar, featurewise = run_evals(
                        sae=sae, activation_store=store, activation_scaler=ActivationScaler(),
                        model=lm, eval_config=eval_config, verbose=verbose,
                    )
                result = nested_dict()
                result["unique_id"] = f"{release}-{sae_id}"
                result["sae_set"] = release
                result["sae_id"] = sae_id
                result["eval_cfg"]["context_size"] = ctx_len
                result["eval_cfg"]["dataset"] = dataset if isinstance(dataset, str) else "<datasets.Dataset>"
                result["eval_cfg"].update(eval_config.__dict__)
                result["metrics"] = scalar
                result["feature_metrics"] = featurewise
                result["sae_cfg"] = sae.cfg.to_dict()
                results.append(result)
    return results


def add_evals_command(sub: Any) -> None:
    e = sub.add_parser("evals", help="python -m sae_lens.evals for tokenized SAEs (local folders or hf://)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("saes", nargs="+", help="saved SAE folders, or hf://OWNER/REPO/SAE_ID")
    # the arguments of python -m sae_lens.evals (sae-lens 6.54), same names and defaults
    e.add_argument("--batch_size_prompts", type=int, default=16)
    e.add_argument("--n_eval_reconstruction_batches", type=int, default=10)
    e.add_argument("--n_eval_sparsity_variance_batches", type=int, default=1)
    e.add_argument("--datasets", nargs="+", default=None,
                   help="default: each SAE's training dataset (wiki-summaries-en: its held-out split)")
    e.add_argument("--dataset_trust_remote_code", action="store_true")
    e.add_argument("--ctx_lens", nargs="+", type=int, default=[128])
    e.add_argument("--output_dir", default="eval_results")
    e.add_argument("--verbose", action="store_true")
    # ours
    e.add_argument("--model_name", default=None, help="default: the SAE's metadata.model_name")
    e.add_argument("--device", default="cpu")
    e.add_argument("--revision", default=None, help="Hub revision for hf:// SAEs")
    e.set_defaults(func=run_evals_command)


def run_evals_command(ns: argparse.Namespace) -> None:
    from sae_lens.evals import process_results

    results = evaluate(
        ns.saes, batch_size_prompts=ns.batch_size_prompts,
        n_eval_reconstruction_batches=ns.n_eval_reconstruction_batches,
        n_eval_sparsity_variance_batches=ns.n_eval_sparsity_variance_batches,
        datasets=ns.datasets, dataset_trust_remote_code=ns.dataset_trust_remote_code,
        ctx_lens=ns.ctx_lens, model_name=ns.model_name, device=ns.device, revision=ns.revision,
        verbose=ns.verbose,
    )
    files = process_results(results, ns.output_dir)
    for r in results:
        m = r["metrics"]
        print(f"{r['unique_id']} ctx {r['eval_cfg']['context_size']}: "
              f"explained variance {m['reconstruction_quality']['explained_variance']:.4f}, "
              f"CE loss score {m['model_performance_preservation']['ce_loss_score']:.4f}, "
              f"L0 {m['sparsity']['l0']:.1f}")
    print(f"wrote {files['combined_json']} and {files['csv']}")
