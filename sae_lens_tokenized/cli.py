"""``sae-lens-tokenized``: train, demo, unigrams, analyze, evals (and push / convert).

``train`` takes exactly the arguments of ``python -m sae_lens.llm_sae_training_runner``
(SAELens's own parser, with the tokenized architectures registered) and runs the
tokenized runner. The offline default is reachable by name:
``--model_name smollm2-135m-instruct --dataset_path wiki-summaries-en``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

TOKENIZED_DEFAULT_ARCH = "tokenized_topk"


# ------------------------------------------------------------------------ train ------------
def parse_train_args(args: Sequence[str]) -> Any:
    """SAELens's CLI parser (``_parse_cfg_args``, sae-lens 6.54.12; see _compat.py), with
    ``--architecture tokenized_topk`` as the default instead of ``standard``."""
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    args = list(args)
    if not any(a == "--architecture" or a.startswith("--architecture=") for a in args):
        args = ["--architecture", TOKENIZED_DEFAULT_ARCH, *args]
    return _parse_cfg_args(args)


@contextlib.contextmanager
def _without_override_notices() -> Iterator[None]:
    """SAELens logs "You just passed in a model/dataset which will override ..." for every
    override; for the offline names the user asked for exactly that, so nothing is theirs
    to act on."""
    from sae_lens import logger

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("You just passed in a")

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def run_train(args: Sequence[str]) -> Any:
    from sae_lens import LanguageModelSAETrainingRunner

    from sae_lens_tokenized.integrations.offline import (
        OFFLINE_DATASETS,
        OFFLINE_MODELS,
        load_offline_dataset,
        load_offline_model,
    )
    from sae_lens_tokenized.lookup.config import LookupTrainingConfig
    from sae_lens_tokenized.training.runner import TokenizedSAETrainingRunner

    cfg = parse_train_args(args)
    kwargs: dict[str, Any] = {}
    if cfg.model_name in OFFLINE_MODELS:
        kwargs["override_model"] = load_offline_model(cfg.model_name, device=cfg.llm_device or "cpu")
    if cfg.dataset_path in OFFLINE_DATASETS:
        if "override_model" not in kwargs:
            raise SystemExit(f"--dataset_path {cfg.dataset_path} is tokenized for the offline model; "
                             f"use --model_name {OFFLINE_MODELS[0]}")
        kwargs["override_dataset"] = load_offline_dataset(
            cfg.dataset_path, kwargs["override_model"].tokenizer, context_size=cfg.context_size)
    runner_cls = TokenizedSAETrainingRunner if isinstance(cfg.sae, LookupTrainingConfig) else LanguageModelSAETrainingRunner
    with _without_override_notices():  # the user named them; this CLI passes the objects
        runner = runner_cls(cfg, **kwargs)
    sae = runner.run()
    if cfg.output_path:
        print(f"saved {type(sae).__name__} to {cfg.output_path}")
    return sae


# ------------------------------------------------------------------------ unigrams ---------
def run_unigrams(ns: argparse.Namespace) -> None:
    from sae_lens_tokenized.integrations.offline import load_model
    from sae_lens_tokenized.lookup.strategies import UnigramStrategy
    from sae_lens_tokenized.lookup_init.unigrams import get_unigram_table, save_unigram_table, table_metadata

    model = load_model(ns.model_name, ns.device)
    strategy = str(UnigramStrategy.parse(ns.strategy))
    table = get_unigram_table(model, ns.hook_name, strategy, batch_size=ns.batch_size,
                              cache_dir=False if ns.no_cache else True)
    print(f"unigram table {tuple(table.shape)} for {ns.model_name} at {ns.hook_name} [{strategy}]")
    if ns.out:
        meta = table_metadata(model, ns.hook_name, strategy, None, table.dtype)
        print(f"wrote {save_unigram_table(ns.out, table, meta)}")


def _text_tokens(model: Any, ns: argparse.Namespace) -> torch.Tensor:
    from sae_lens_tokenized.integrations.offline import load_offline_dataset

    ds = load_offline_dataset(ns.dataset, model.tokenizer, context_size=ns.seq_len + 1, split="heldout")
    # drop the separator each row starts with: the note runs real text with no BOS prepended
    return ds[: ns.n_sequences]["tokens"][:, 1:]


def run_analyze(ns: argparse.Namespace) -> None:
    from sae_lens_tokenized.integrations.offline import load_model
    import sae_lens_tokenized.analysis as analysis

    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(ns.model_name, ns.device)
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in ns.layers]
    if ns.what == "strategies":
        tokens = _text_tokens(model, ns)
        result = analysis.compare_strategies(model, tokens, hooks, control_token=ns.control_token)
        analysis.plot_strategies(result, str(out / "strategies.png"))
    elif ns.what == "massive":
        tokens = _text_tokens(model, ns)
        result = analysis.massive_activations(model, tokens, hooks)
        analysis.plot_massive(result, str(out / "massive.png"))
    else:
        from sae_lens_tokenized.integrations.offline import load_saved_sae
        from sae_lens_tokenized.lookup_init.unigrams import get_unigram_table

        if not ns.sae:
            raise SystemExit("analyze lookup needs --sae PATH (a saved tokenized SAE folder)")
        sae = load_saved_sae(ns.sae, ns.device)
        # where the lookup's rows live: a transcoder's lookup is in its output space
        hook = getattr(sae.cfg.metadata, "hook_name_out", None) or sae.cfg.metadata.hook_name
        # a data-estimated lookup has no prompt table to compare with
        table = (None if sae.cfg.unigram_strategy in ("data", "precomputed")
                 else get_unigram_table(model, hook, sae.cfg.unigram_strategy))
        tokens = _text_tokens(model, ns)
        result = analysis.lookup_analysis(sae, table, model, tokens, hook)
        page = analysis.lookup_page(sae, model, tokens, out / "lookup.html", unigrams=table)
        print(f"wrote {page} (open it in a browser)")
    result["command"] = "sae-lens-tokenized " + " ".join(ns.argv)
    path = out / f"{ns.what}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


# ------------------------------------------------------------------------ main -------------
def build_parser() -> argparse.ArgumentParser:
    from sae_lens_tokenized.integrations.offline import SMOLLM2, WIKI_DATASET

    p = argparse.ArgumentParser(prog="sae-lens-tokenized", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train an SAE; same arguments as python -m sae_lens.llm_sae_training_runner",
                   add_help=False)

    d = sub.add_parser("demo", help="tokenized TopK vs SAELens TopK on SmolLM2 + Wikipedia, offline")
    from sae_lens_tokenized.workbench.demo import add_demo_args

    add_demo_args(d)

    u = sub.add_parser("unigrams", help="compute (and cache) a unigram table")
    u.add_argument("--model_name", default=SMOLLM2)
    u.add_argument("--hook_name", required=True)
    u.add_argument("--strategy", default="bos,t", help="template, e.g. 'bos,t', 'space,t', '220,t'")
    u.add_argument("--batch_size", type=int, default=1024)
    u.add_argument("--device", default="cpu")
    u.add_argument("--no_cache", action="store_true")
    u.add_argument("--out", help="also write the table (with metadata) to this .safetensors file")

    a = sub.add_parser("analyze", help="strategy comparison, massive activations, lookup analyses")
    a.add_argument("what", choices=["strategies", "massive", "lookup"])
    a.add_argument("--model_name", default=SMOLLM2)
    a.add_argument("--dataset", default=WIKI_DATASET)
    a.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12])
    a.add_argument("--n_sequences", type=int, default=30)
    a.add_argument("--seq_len", type=int, default=256)
    a.add_argument("--control_token", type=int, default=None, help="adds [X, t] and the control [bos, X]")
    a.add_argument("--sae", help="saved tokenized SAE folder (for 'lookup')")
    a.add_argument("--device", default="cpu")
    a.add_argument("--out", default="analysis_out")

    from sae_lens_tokenized.integrations.evals import add_evals_command

    add_evals_command(sub)
    try:
        from sae_lens_tokenized.integrations.hub import add_hub_commands
    except ImportError:  # pragma: no cover
        pass
    else:
        add_hub_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        run_train(argv[1:])
        return
    ns = build_parser().parse_args(argv)
    ns.argv = argv
    if ns.command == "demo":
        from sae_lens_tokenized.workbench.demo import run_demo

        run_demo(ns)
    elif ns.command == "unigrams":
        run_unigrams(ns)
    elif ns.command == "analyze":
        run_analyze(ns)
    else:
        ns.func(ns)


if __name__ == "__main__":
    main()
