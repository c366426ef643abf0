#!/usr/bin/env bash
# The commands that produced benchmarks/results/ (CPU, 2 cores; see each JSON's "command").
# Run from the repo root inside the project environment: ./run.sh bash benchmarks/run_all.sh
set -euo pipefail
R=benchmarks/results
mkdir -p $R/demo $R/analysis
python benchmarks/step_time.py --steps 10                                   # issue: per-step time
sae-lens-tokenized demo --out /tmp/sltok-demo                               # the README's first command
cp /tmp/sltok-demo/{results.json,table.txt,nmse_vs_tokens.png} $R/demo/     # (not the SAE weights)
python benchmarks/quality.py --architectures topk --layers 3 9 --ks 16 32 --seeds 0 1 --training_tokens 200000 --out $R/quality_topk_200k
python benchmarks/quality.py --architectures standard gated topk abstopk jumprelu batchtopk matryoshka_batchtopk \
    --layers 3 9 --ks 16 32 --l1s 30 10 --l0s 30 10 --training_tokens 100000        # every architecture vs its base
python benchmarks/quality.py --architectures matching_pursuit --layers 3 --ks 16 --l1s 30 --l0s 30 \
    --training_tokens 50000 --curve_points 8 --eval_activations 10000 --out $R/quality_matching_pursuit  # slow per step
python benchmarks/strategies_training.py --training_tokens 150000
python benchmarks/bos_positions.py --training_tokens 150000
python benchmarks/unigram_throughput.py
sae-lens-tokenized analyze strategies --layers 2 6 12 --n_sequences 30 --seq_len 256 --control_token 37233 --out $R/analysis
sae-lens-tokenized analyze massive --layers 2 6 12 --n_sequences 30 --seq_len 256 --out $R/analysis
sae-lens-tokenized analyze lookup --sae /tmp/sltok-demo/sae_tokenized --n_sequences 30 --seq_len 128 --out $R/analysis
