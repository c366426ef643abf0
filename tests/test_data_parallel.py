"""Data-parallel training under torchrun, on CPU with gloo and two real processes.

Each test starts ``torchrun --standalone --nproc_per_node 2 tests/dp_worker.py`` (one
thread per rank) and checks what the ranks wrote against one process here:

* the same fixed global batches, split over 2 ranks, give the weights, the lazy Adam state
  and the firing statistics of one process with the whole batch (float32 summation order
  is the only difference: tolerance 1e-5 of each tensor's scale);
* the lookup statistics reduced across ranks equal one process's on the union of the data;
* the plugin's runner under torchrun: disjoint shards, the global batch split, one
  checkpoint folder, identical replicas, rank 0 writes an SAE that loads in one process,
  resume on 2 ranks; a dead rank ends the run with an error, mismatched ranks are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import dp_worker  # noqa: E402

WORKER = Path(__file__).parent / "dp_worker.py"


def torchrun(mode: str, out: Path, args: dict | None = None, timeout: float = 240,
             dist_timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAE_LENS_TOKENIZED_DIST_TIMEOUT": str(dist_timeout)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), mode, str(out), json.dumps(args or {})]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def assert_same(got: dict, ref: dict, rel: float = 1e-5) -> None:
    assert got.keys() == ref.keys()
    for key in ref:
        a, b = ref[key], got[key]
        assert a.shape == b.shape, key
        scale = float(a.double().abs().max()) if a.numel() else 0.0
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        assert diff <= rel * max(scale, 1e-30), f"{key}: differs by {diff:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_two_ranks_train_exactly_what_one_process_trains_on_the_whole_batch(tmp_path, arch):
    steps = 6
    ok(torchrun("steps", tmp_path / "state.pt", {"arch": arch, "steps": steps}))
    got = torch.load(tmp_path / "state.pt")
    ref = dp_worker.train_steps(arch, steps)
    assert_same(got, ref)
    # what the check is about: the lookup trained (bigram rows included), latents went
    # dead and fired on one rank only, and the whole global batch was counted
    assert int(ref["trainer.n_training_samples"]) == dp_worker.GLOBAL_BATCH * steps
    assert ref["adam.touched"].max() >= dp_worker.D_VOCAB  # bigram rows got moments
    if arch == "topk":
        assert ref["trainer.n_forward_passes_since_fired"].max() > 0


def test_reduced_lookup_statistics_equal_one_process_on_the_union(tmp_path):
    ok(torchrun("stats", tmp_path / "stats"))
    ref = dp_worker.statistics()
    for rank in (0, 1):
        assert_same(torch.load(str(tmp_path / "stats") + f".rank{rank}"), ref)
    assert len(ref["keys"]) > 0 and int(ref["bigram_counts"].min()) >= 2


def _ranks(out: Path) -> tuple[dict, dict]:
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def test_the_runner_trains_one_sae_on_disjoint_shards_and_rank_0_writes_it(tmp_path):
    from sae_lens import SAE

    ok(torchrun("runner", tmp_path))
    r0, r1 = _ranks(tmp_path)
    assert r0["world"] == r1["world"] == 2
    assert r0["rows"] + r1["rows"] == r0["total_rows"] and r0["first_row"] != r1["first_row"]
    assert r0["local_batch"] == r1["local_batch"] == 128  # the global 256, split
    assert r0["checkpoint_path"] == r1["checkpoint_path"]
    # the init's statistics were reduced: both ranks start from the same lookup before any
    # broadcast, and train identical replicas
    assert torch.equal(r0["lookup_at_init"], r1["lookup_at_init"])
    assert torch.equal(r0["trained_lookup"], r1["trained_lookup"]) and torch.equal(r0["W_dec"], r1["W_dec"])
    assert not torch.equal(r0["trained_lookup"], r0["lookup_at_init"])
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert torch.equal(loaded.W_lookup.detach(), r0["trained_lookup"])
    counts = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["activations"]
    assert counts["trained_on"] == 6144 and counts["read"] >= counts["trained_on"]
    (checkpoint,) = Path(r0["checkpoint_path"]).iterdir()
    assert {p.name for p in checkpoint.glob("activations_store_state_rank*")} == {
        "activations_store_state_rank0.safetensors", "activations_store_state_rank1.safetensors"}

    # resume on the same world size: each rank takes its own data position back
    resumed = tmp_path / "resumed"
    ok(torchrun("runner", resumed, {"resume_from_checkpoint": str(checkpoint), "checkpoint_path": None,
                                    "n_checkpoints": 0, "output_path": str(resumed / "sae")}))
    again = json.loads((resumed / "sae" / "cfg.json").read_text())["metadata"]["activations"]
    assert again["trained_on"] == 6144  # counted from the checkpoint's 3328 on
    assert again["read"] < counts["read"]  # only the rest was read
    s0, s1 = _ranks(resumed)
    assert torch.equal(s0["trained_lookup"], s1["trained_lookup"])


def test_a_plain_saelens_sae_trains_data_parallel_through_the_plugins_runner(tmp_path):
    from sae_lens import SAE

    ok(torchrun("runner", tmp_path, {"plain": True}))
    r0, r1 = _ranks(tmp_path)
    assert torch.equal(r0["W_dec"], r1["W_dec"]) and r0["first_row"] != r1["first_row"]
    # SAELens's TopK folds the decoder norms into the encoder when it saves for inference
    unit = r0["W_dec"] / r0["W_dec"].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(SAE.load_from_disk(tmp_path / "sae").W_dec.detach(), unit)


def test_a_tokenized_transcoder_trains_data_parallel_and_rank_0_writes_it(tmp_path):
    """The transcoder's target travels beside its input through each rank's store, its
    output-space lookup statistics are reduced across ranks, and the replicas stay equal."""
    from sae_lens import SAE

    ok(torchrun("runner", tmp_path, {"transcoder": True}))
    r0, r1 = _ranks(tmp_path)
    assert r0["first_row"] != r1["first_row"] and r0["local_batch"] == 128
    assert torch.equal(r0["lookup_at_init"], r1["lookup_at_init"])
    assert torch.equal(r0["trained_lookup"], r1["trained_lookup"]) and torch.equal(r0["W_dec"], r1["W_dec"])
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    assert torch.equal(loaded.W_lookup.detach(), r0["trained_lookup"])


def test_a_rank_that_dies_ends_the_run_with_an_error_not_a_hang(tmp_path):
    start = time.monotonic()
    proc = torchrun("runner", tmp_path, {"die_on_rank": 1}, timeout=200)
    assert proc.returncode != 0
    assert time.monotonic() - start < 150
    assert "exitcode  : 7" in proc.stderr or "exitcode: 7" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "sae").exists()


@pytest.mark.slow  # torch's collectives and this package's timeout: nothing version-specific
def test_a_rank_that_hangs_ends_the_run_within_the_stated_timeout(tmp_path):
    start = time.monotonic()
    proc = torchrun("runner", tmp_path, {"hang_on_rank": 1}, timeout=200, dist_timeout=15)
    assert proc.returncode != 0
    assert time.monotonic() - start < 150  # the hung rank sleeps for an hour
    assert "DataParallelError: rank 0/2" in proc.stderr, proc.stderr[-3000:]
    assert "within 15 s (SAE_LENS_TOKENIZED_DIST_TIMEOUT)" in proc.stderr
    assert not (tmp_path / "sae").exists()


@pytest.mark.slow  # as the config mismatch test, which runs at both ends
def test_ranks_that_loaded_different_models_are_refused_before_any_work(tmp_path):
    proc = torchrun("runner", tmp_path, {"rank1_overrides": {"model_seed": 1}})
    assert proc.returncode != 0
    assert "different models" in proc.stderr and "parameter sum: rank 0" in proc.stderr, proc.stderr[-3000:]
    assert "Training SAE" not in proc.stderr and not (tmp_path / "rank0.pt").exists()


def test_ranks_started_with_different_configs_are_refused_before_any_work(tmp_path):
    proc = torchrun("runner", tmp_path, {"rank1_overrides": {"lr": 1e-3}})
    assert proc.returncode != 0
    assert "different configs" in proc.stderr and "lr: rank 0 '0.003', rank 1 '0.001'" in proc.stderr
    assert "Training SAE" not in proc.stderr and not (tmp_path / "rank0.pt").exists()
