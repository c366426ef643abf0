"""How exactly does resuming from a checkpoint reproduce an uninterrupted run?

For SAELens TopK and tokenized TopK alike: train for --training_tokens with one checkpoint
halfway, then resume a second runner from that checkpoint (SAELens's
``resume_from_checkpoint``) and train to the same end; report the largest difference of
every parameter between the two final SAEs. Uses the tests' tiny model and text (the
tokenized trainer's own state is checked bitwise in tests/test_lookup_updates.py; what
remains here is SAELens's data stream and RNG, which its resume does not restore).

    python benchmarks/resume_gap.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import runner_cfg, tiny_model, token_dataset  # noqa: E402
from sae_lens import LanguageModelSAETrainingRunner, TopKTrainingSAEConfig  # noqa: E402

from sae_lens_tokenized import TokenizedSAETrainingRunner, TokenizedTopKTrainingSAEConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--training_tokens", type=int, default=16 * 256)
    ap.add_argument("--out", default="benchmarks/results/resume_gap.json")
    args = ap.parse_args()
    model, data = tiny_model(), token_dataset()
    hook = "blocks.1.hook_resid_pre"
    result = {}
    for name, make_cfg, runner_cls in (
        ("topk", lambda: TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), LanguageModelSAETrainingRunner),
        ("tokenized_topk", lambda: TokenizedTopKTrainingSAEConfig(d_in=32, d_sae=64, k=4), TokenizedSAETrainingRunner),
    ):
        tmp = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        straight = runner_cls(runner_cfg(make_cfg(), hook, args.training_tokens, checkpoint_path=str(tmp / "ck"),
                                         n_checkpoints=1), override_model=model, override_dataset=data).run()
        (ckpt,) = [p.parent for p in (tmp / "ck").rglob("trainer_state.pt")]
        torch.manual_seed(0)
        resumed = runner_cls(runner_cfg(make_cfg(), hook, args.training_tokens, resume_from_checkpoint=str(ckpt)),
                             override_model=model, override_dataset=data).run()
        a, b = straight.state_dict(), resumed.state_dict()
        result[name] = {k: {"max_abs_diff": float((a[k] - b[k]).abs().max()),
                            "relative": float((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12))} for k in a}
        print(name, {k: f"{v['relative']:.2e}" for k, v in result[name].items()}, flush=True)
    out = {"command": "python benchmarks/resume_gap.py " + f"--training_tokens {args.training_tokens}",
           "relative_l2_gap_resumed_vs_straight": result}
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
