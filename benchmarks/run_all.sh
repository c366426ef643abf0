#!/usr/bin/env bash
# The commands that produced benchmarks/results/ (CPU, 2 cores; see each JSON's "command").
# Run from the repo root inside the project environment: ./run.sh bash benchmarks/run_all.sh
# The lookup's default second moment became per row (lookup_updates="sparse_rowwise") after every command
# below had run except the demo: where a command's tokenized SAE is "the default" and its results are not
# labelled row-wise, it ran per element; to repeat it add lookup_updates="sparse" (quality.py:
# --tokenized_overrides '{"lookup_updates": "sparse"}'; defaults_check.py: a variant with it).
# Likewise the lookup's init scale became 0.5 (half the data estimate) in 0.3, after every command below had
# run except the demo: their "default" tokenized SAE started at the whole estimate; to repeat one, add
# lookup_init_scale=1.0 the same way (quality.py: --tokenized_overrides '{"lookup_init_scale": 1.0}'; variants
# set their own scale on top).
set -euo pipefail
R=benchmarks/results
mkdir -p $R/demo $R/analysis
# per-step time and memory, every architecture vs its SAELens base (sparse and dense lookup)
python benchmarks/step_time.py --d_vocab 50257 --d_in 768 --d_sae 6144 --batch 2048 --steps 12 --warmup 2 --dense
python benchmarks/step_time.py --d_vocab 262144 --d_in 2304 --d_sae 9216 --batch 1024 --steps 12 --warmup 2 \
    --architectures standard gated topk abstopk jumprelu batchtopk matryoshka_batchtopk
python benchmarks/step_time.py --d_vocab 262144 --d_in 2304 --d_sae 9216 --batch 1024 --steps 3 --warmup 1 \
    --architectures topk --dense --out $R/step_time_V262144_dense.json
python benchmarks/step_time.py --d_vocab 262144 --d_in 2304 --d_sae 9216 --batch 1024 --memory --architectures topk --dense
python benchmarks/plot_step_time.py $R/step_time_V50257.json $R/step_time_V262144.json
python benchmarks/lookup_updates_quality.py --layer 3 --seeds 0 1 --training_tokens 100000 --sparse_lr_multipliers 3  # sparse vs dense
python benchmarks/resume_gap.py                                              # resume vs uninterrupted, TopK and tokenized
python benchmarks/unigram_multi_hook.py                                      # tables for 7 hooks in one pass
python benchmarks/lookup_init.py --layers 3 9                               # the lookup alone: prompt vs data vs bigram
python benchmarks/dead_latents.py --windows 1000 50                          # why the demo's SAEs were 62% dead
python benchmarks/lookup_variants.py --layers 3 9 --ks 16 32 --seeds 0 1     # prompt / data / data+bigram vs TopK (~80 min)
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
# do the defaults generalise? (other corpora, small data; docs "Do the defaults generalise?")
python benchmarks/defaults_check.py --dataset bbc-news-en --layer 9 --training_tokens 400000 --seeds 0 1 \
    --variants '{"min_count_2": {"lookup_bigram_min_count": 2}}'
python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 3 --training_tokens 20000 --seeds 0 1 2 \
    --variants '{"min_count_2": {"lookup_bigram_min_count": 2}, "min_count_3": {"lookup_bigram_min_count": 3}, "unigram": {"lookup_ngram": 1}}'
python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 4 --training_tokens 20000 --batch 4096 --seeds 0 1 \
    --variants '{"min_count_1": {"lookup_bigram_min_count": 1}}'
# the frontier (stopped by hand after L3 k 8-64; --replot summarises a stopped sweep's quality_partial.json)
python benchmarks/quality.py --architectures topk --layers 3 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 \
    --seeds 0 --training_tokens 100000 --unigram_strategy data --out $R/pareto_topk
# and at 100k tokens on the development corpus, with the lookup's lr lowered or frozen (the frontier's loss at k 32)
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 3 --training_tokens 100000 --seeds 0 \
    --variants '{"lookup_lr_1e-2": {"lookup_lr": 0.01}, "frozen_lookup": {"train_lookup": false}}'
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 3 --training_tokens 100000 --seeds 0 \
    --variants '{"init_scale_0.5": {"lookup_init_scale": 0.5}, "unigram_only": {"lookup_ngram": 1}}' --out /tmp/dc  # then merge its variants into the JSON above
# the prior of rare and unseen tokens (docs "The prior of rare and unseen tokens")
python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 3 --training_tokens 20000 --seeds 0 1 2 \
    --variants '{"prior_space_t": {"lookup_init_prior": "space,t"}}' --out $R/defaults_check/prior
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 3 --training_tokens 400000 --seeds 0 1 \
    --variants '{"prior_space_t": {"lookup_init_prior": "space,t"}}' --out $R/defaults_check/prior
# the default's cost: step time and memory end to end, and the rows real text touches
python benchmarks/default_cost.py --d_vocab 50257
python benchmarks/default_cost.py --d_vocab 262144
python benchmarks/default_cost.py --d_vocab 262144 --lookup_init_hold memory
python benchmarks/touched_rows.py
# the frontier at 200k tokens (stopped by hand after k 32; then --replot of its quality_partial.json)
python benchmarks/quality.py --architectures topk batchtopk --layers 3 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 \
    --seeds 0 1 --training_tokens 200000 --unigram_strategy data --out $R/pareto_l3_200k
# the frontier through SAELens's multi-SAE runner: per seed, all 20 SAEs (both layers, five k, TopK and its
# tokenized version) in one run, one LLM forward per batch, at today's defaults
python benchmarks/quality.py --engine multi --architectures topk --layers 3 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 \
    --l0s 5 5 5 5 5 --seeds 0 1 --training_tokens 200000 --unigram_strategy data --out $R/pareto_multi_200k
# ... at layer 9 with row-wise lookup moments, and BatchTopK at layer 9 (one seed each)
python benchmarks/quality.py --engine multi --architectures topk --layers 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 \
    --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_overrides '{"lookup_updates": "sparse_rowwise"}' --out $R/pareto_multi_200k_rowwise
python benchmarks/quality.py --engine multi --architectures batchtopk --layers 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 \
    --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data --out $R/pareto_multi_200k_batchtopk
# Matryoshka BatchTopK at layer 9, with row-wise lookup moments beside the per-element ones in the same run
python benchmarks/quality.py --engine multi --architectures matryoshka_batchtopk --layers 9 --ks 8 16 32 64 128 \
    --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/pareto_multi_200k_matryoshka
# BatchTopK and Matryoshka BatchTopK at layer 3, at today's defaults (row-wise lookup moments)
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 3 \
    --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --out $R/pareto_multi_200k_l3_batchtopk_seed0
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 3 \
    --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds 1 --training_tokens 200000 --unigram_strategy data \
    --out $R/pareto_multi_200k_l3_batchtopk_seed1
python benchmarks/quality.py --merge $R/pareto_multi_200k_l3_batchtopk_seed{0,1}/quality.json \
    --out $R/pareto_multi_200k_l3_batchtopk  # one seed per sitting, one sweep (then rm the _seed folders)
# JumpReLU at both layers: one L0-coefficient grid on both sides (a tokenized JumpReLU is far sparser at
# the same coefficient); the results page compares each tokenized SAE to its base's frontier at its own L0.
python benchmarks/quality.py --engine multi --architectures jumprelu --layers 3 9 --ks 32 32 32 32 32 32 32 \
    --l1s 5 5 5 5 5 5 5 --l0s 0.03125 0.125 0.5 2 8 32 128 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' --out $R/pareto_multi_200k_jumprelu_grid
python benchmarks/quality.py --engine multi --architectures jumprelu --layers 3 9 --ks 32 32 --l1s 5 5 \
    --l0s 0.001953125 0.0078125 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' --out $R/pareto_multi_200k_jumprelu_low
python benchmarks/quality.py --merge $R/pareto_multi_200k_jumprelu_{grid,low}/quality.json \
    --out $R/pareto_multi_200k_jumprelu  # the grid widened to lower coefficients in a second sitting
# L9 TopK at k 32 and 128: the default tokenized SAE beside a lower lookup lr and a halved init, one multi-SAE run
python benchmarks/quality.py --engine multi --architectures topk --layers 9 --ks 32 128 --l1s 5 5 --l0s 5 5 \
    --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"lookup_lr_1e_2": {"lookup_lr": 0.01}, "lookup_lr_3e_3": {"lookup_lr": 0.003}, "init_scale_half": {"lookup_init_scale": 0.5}}' \
    --out $R/lookup_knobs_l9
python benchmarks/quality.py --engine multi --architectures topk --layers 3 --ks 32 128 --l1s 5 5 --l0s 5 5 \
    --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}, "init_scale_quarter": {"lookup_init_scale": 0.25}}' \
    --out $R/lookup_knobs_l3
python benchmarks/quality.py --engine multi --architectures topk --layers 9 --ks 32 128 --l1s 5 5 --l0s 5 5 \
    --seeds 1 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' --out $R/lookup_knobs_l9_seed1
# the whole estimate against half before the default moved: layer 3 second seed, BBC News (two seeds),
# BatchTopK and Matryoshka at layer 9, JumpReLU at layer 3, and Shakespeare at 20k tokens
python benchmarks/quality.py --engine multi --architectures topk --layers 3 --ks 32 128 --l1s 5 --l0s 5 --seeds 1 \
    --training_tokens 200000 --unigram_strategy data --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' \
    --out $R/lookup_knobs_l3_seed1
for SEED in 0 1; do
python benchmarks/quality.py --engine multi --dataset bbc-news-en --architectures topk --layers 9 --ks 32 128 --l1s 5 \
    --l0s 5 --seeds $SEED --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' \
    --out $R/lookup_knobs_bbc_l9$([ $SEED = 1 ] && echo _seed1)
done
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 9 --ks 32 128 \
    --l1s 5 --l0s 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' --out $R/lookup_knobs_l9_batchtopk
python benchmarks/quality.py --engine multi --architectures jumprelu --layers 3 --ks 32 --l1s 5 --l0s 0.0078125 0.125 \
    --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' \
    --tokenized_variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' --out $R/lookup_knobs_l3_jumprelu
python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 3 --training_tokens 20000 --seeds 0 1 \
    --variants '{"init_scale_half": {"lookup_init_scale": 0.5}}' --out $R/defaults_check/init_scale
# after the default moved to half: the whole estimate as the variant, layer 9, k 32, 400k tokens; and the demo
# of 0.2 (benchmarks/results/demo_0.2: the demo's results.json as committed before the move)
python benchmarks/quality.py --engine multi --architectures topk --layers 9 --ks 32 --l1s 5 --l0s 5 --seeds 0 \
    --training_tokens 400000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_whole": {"lookup_init_scale": 1.0}}' --out $R/lookup_knobs_l9_400k
# L9 k 128 over one pass: does a longer run (a larger init sample) close the k-128 gap? (not run yet)
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 9 --k 128 --training_tokens 1000000 --seeds 0 \
    --out $R/length
# every other architecture: base, per-element and row-wise lookup moments in one multi-SAE run
python benchmarks/quality.py --engine multi --architectures standard gated jumprelu abstopk matryoshka_batchtopk \
    --layers 9 --ks 32 --l1s 10 --l0s 2 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' \
    --tokenized_variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/rowwise_architectures
# the advantage as a run grows, one pass (1M tokens): the runs of 0.2 (results/length_0.2) were
# `defaults_check.py --dataset wiki-summaries-en --training_tokens 1000000 --seeds 0 --out $R/length` with 0.2's
# package, at layer 3 (AuxK 1.0 then) and at layer 9 (--variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}');
# remade at today's defaults below
# AuxK and the BatchTopK family (run when both sides defaulted to SAELens's aux_loss_coefficient=1.0; the
# tokenized ones, and the workbench's bases beside them, now default to 1/32: to repeat the 1.0 rows, add
# '"aux_1": {"aux_loss_coefficient": 1.0}' to both variant lists)
for k in 32 16; do
python benchmarks/defaults_check.py --architecture batchtopk --layer 3 --k $k --training_tokens 200000 --seeds 0 1 \
    --variants '{"aux_1_32": {"aux_loss_coefficient": 0.03125}}' --topk_variants '{"aux_1_32": {"aux_loss_coefficient": 0.03125}}' \
    --out $R/defaults_check/auxk_batchtopk
done
python benchmarks/defaults_check.py --architecture matryoshka_batchtopk --layer 3 --k 32 --training_tokens 200000 --seeds 0 1 \
    --variants '{"aux_1_32": {"aux_loss_coefficient": 0.03125}}' --topk_variants '{"aux_1_32": {"aux_loss_coefficient": 0.03125}}' \
    --out $R/defaults_check/auxk_matryoshka
# the defaults as they are now, on the held-out corpus (the base at the tokenized TopK's changed defaults)
python benchmarks/defaults_check.py --dataset bbc-news-en --layer 9 --training_tokens 400000 --seeds 0 1 \
    --variants '{"aux_1": {"aux_loss_coefficient": 1.0}}' --out $R/defaults_check/current
# one second moment per row (lookup_updates="sparse_rowwise"): quality, memory (glibc's threshold dynamic and fixed), step time
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 3 --training_tokens 200000 --seeds 0 1 \
    --variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/defaults_check/rowwise
python benchmarks/defaults_check.py --dataset shakespeare-plays --layer 3 --training_tokens 20000 --seeds 0 1 2 \
    --variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/defaults_check/rowwise
python benchmarks/defaults_check.py --dataset bbc-news-en --layer 9 --training_tokens 400000 --seeds 0 1 \
    --variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/defaults_check/rowwise
python benchmarks/defaults_check.py --architecture batchtopk --layer 3 --k 32 --training_tokens 200000 --seeds 0 1 \
    --variants '{"rowwise": {"lookup_updates": "sparse_rowwise"}}' --out $R/defaults_check/rowwise
for V in 50257 262144; do
python benchmarks/default_cost.py --d_vocab $V --lookup_updates sparse_rowwise
python benchmarks/default_cost.py --d_vocab $V --glibc_mmap_threshold 131072
python benchmarks/default_cost.py --d_vocab $V --lookup_updates sparse_rowwise --glibc_mmap_threshold 131072
done
python benchmarks/step_time.py --bigram --rowwise --architectures topk --d_vocab 50257 --d_in 256 --d_sae 2048 \
    --batch 4096 --steps 30 --out $R/step_time_bigram_rowwise_V50257.json
# Where lazy Adam's moments live (0.3.1): the same default_cost run on the code before (grown by copying,
# the package at 21e655c, this script) and after (reserved on the CPU); the kernel's exact peaks
for CODE in grown reserved; do  # check out 21e655c's sae_lens_tokenized/ for "grown"
python benchmarks/default_cost.py --d_vocab 50257 --lookup_updates sparse_rowwise --glibc_mmap_threshold 131072 \
    --out $R/moment_storage/${CODE}_V50257.json
done
# init scales between half and whole, in 400k-token runs: three scales beside each other in one multi-SAE run
for RUN in "9 128 0 lookup_knobs_l9_k128_400k" "9 128 1 lookup_knobs_l9_k128_400k_seed1" "3 32 0 lookup_knobs_l3_400k" \
           "9 32 1 lookup_knobs_l9_400k_seed1" "3 32 1 lookup_knobs_l3_400k_seed1" "9 64 0 lookup_knobs_l9_k64_400k"; do
set -- $RUN  # layer, k, seed, result folder
python benchmarks/quality.py --engine multi --architectures topk --layers $1 --ks $2 --l1s 5 --l0s 5 --seeds $3 \
    --training_tokens 400000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_whole": {"lookup_init_scale": 1.0}, "init_scale_three_quarters": {"lookup_init_scale": 0.75}}' \
    --out $R/$4
done
# JumpReLU at layer 3 on a second seed, the whole estimate beside the default (half)
python benchmarks/quality.py --engine multi --architectures jumprelu --layers 3 --ks 32 --l1s 5 --l0s 0.0078125 0.125 \
    --seeds 1 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' \
    --tokenized_variants '{"init_scale_whole": {"lookup_init_scale": 1.0}}' --out $R/lookup_knobs_l3_jumprelu_seed1
# JumpReLU's frontier at layer 3 at today's default (half), base and tokenized at each coefficient
python benchmarks/quality.py --engine multi --architectures jumprelu --layers 3 --ks 32 32 32 32 \
    --l1s 5 5 5 5 --l0s 0.125 0.5 2 8 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"jumprelu": {"jumprelu_ste_to_input": true}}' --out $R/pareto_multi_200k_jumprelu_half
# the advantage as a run grows, at today's default (half) with the whole estimate beside it: one pass, layer 9, k 32
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 9 --training_tokens 1000000 --seeds 0 \
    --variants '{"init_scale_whole": {"lookup_init_scale": 1.0}}' --out $R/length
python benchmarks/defaults_check.py --dataset wiki-summaries-en --layer 3 --training_tokens 1000000 --seeds 0 \
    --variants '{"init_scale_whole": {"lookup_init_scale": 1.0}}' --out $R/length
# where the extra memory is at the last step (default_cost.py's last_step_extra): V 50,257 (the reserved run
# above, remade with it), the sweeps issue's own setting, V 131,072, and V 262,144
python benchmarks/default_cost.py --d_vocab 131072 --lookup_updates sparse_rowwise --glibc_mmap_threshold 131072 --code 0.3.1
python benchmarks/default_cost.py --d_vocab 262144 --lookup_updates sparse_rowwise --glibc_mmap_threshold 131072 --code 0.3.1 \
    --out $R/moment_storage/reserved_V262144.json
# BatchTopK and Matryoshka at layer 9, second seed, the whole estimate beside the default
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 9 --ks 32 128 \
    --l1s 5 --l0s 5 --seeds 1 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"init_scale_whole": {"lookup_init_scale": 1.0}}' --out $R/lookup_knobs_l9_batchtopk_seed1
# TopK's frontier at the defaults of 0.3 (half; AuxK on raw pre-activations), as it ran on 0.3;
# on 0.4 the same command decodes ReLU'd activations in AuxK (the sweep below):
#   for seed in 0 1; do python benchmarks/quality.py --engine multi --architectures topk --layers 3 9
#     --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds $seed --training_tokens 200000
#     --unigram_strategy data --out $R/pareto_multi_200k_half_seed$seed; done
#   python benchmarks/quality.py --merge $R/pareto_multi_200k_half_seed{0,1}/quality.json --out $R/pareto_multi_200k_half
# the late jumps at layer 9: per-step probes, lazy Adam's bias correction against each row's own,
# the lookup lr, no AuxK, then AuxK's values raw (SAELens; the default up to 0.3) and ReLU'd (0.4)
python benchmarks/jumps.py --ks 16 32 --aux_acts raw --out $R/jumps/default
python benchmarks/jumps.py --ks 16 32 --row_bias_correction --aux_acts raw --out $R/jumps/row_bias_correction
python benchmarks/jumps.py --ks 16 32 --lookup_lr 0.01 --aux_acts raw --out $R/jumps/lookup_lr_0.01
python benchmarks/jumps.py --ks 16 32 --aux_loss_coefficient 0 --aux_acts raw --out $R/jumps/auxk_0
python benchmarks/jumps.py --plot $R/jumps/{default,row_bias_correction,lookup_lr_0.01,auxk_0}/jumps.json --out $R/jumps
python benchmarks/jumps.py --ks 16 32 --base --aux_acts raw --out $R/jumps/auxk_raw_base
python benchmarks/jumps.py --ks 16 32 --base --aux_acts relu --out $R/jumps/auxk_relu_base
python benchmarks/jumps.py --ks 16 32 --base --aux_acts raw_no_b_dec --out $R/jumps/auxk_raw_no_b_dec_base
for acts in relu raw; do  # a second seed of the two
python benchmarks/jumps.py --ks 16 32 --base --aux_acts $acts --seed 1 --out $R/jumps/auxk_${acts}_base_seed1
done
# TopK's frontier at today's defaults (0.4: AuxK on ReLU'd activations), a seed per sitting
for seed in 0 1; do
python benchmarks/quality.py --engine multi --architectures topk --layers 3 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 \
    --l0s 5 5 5 5 5 --seeds $seed --training_tokens 200000 --unigram_strategy data --out $R/pareto_multi_200k_relu_seed$seed
done
python benchmarks/quality.py --merge $R/pareto_multi_200k_relu_seed{0,1}/quality.json \
    --out $R/pareto_multi_200k_relu  # then rm the _seed folders
# AuxK at 1.0 with the ReLU, both sides (is the larger coefficient safe now, and does it revive more latents?)
python benchmarks/jumps.py --ks 16 32 --base --aux_acts relu --aux_loss_coefficient 1 --out $R/jumps/auxk_relu_1_base
python benchmarks/jumps.py --plot_auxk $R/jumps/auxk_{raw,raw_no_b_dec,relu,relu_1}_base/jumps.json --out $R/jumps
# BatchTopK and Matryoshka BatchTopK at layer 9 at today's defaults (one seed, one multi-SAE run)
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 9 \
    --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --out $R/pareto_multi_200k_l9_batchtopk_relu
# The two frontiers above rerun with AuxK at SAELens's 1.0 on both sides (seed 0, the same batches):
# does the larger coefficient revive the tokenized SAEs' dead latents without costing NMSE or a jump?
python benchmarks/quality.py --engine multi --architectures topk --layers 3 9 --ks 8 16 32 64 128 --l1s 5 5 5 5 5 \
    --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"topk": {"aux_loss_coefficient": 1.0}}' --out $R/pareto_multi_200k_relu_auxk1
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 9 \
    --ks 8 16 32 64 128 --l1s 5 5 5 5 5 --l0s 5 5 5 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --architecture_overrides '{"batchtopk": {"aux_loss_coefficient": 1.0}, "matryoshka_batchtopk": {"aux_loss_coefficient": 1.0}}' \
    --out $R/pareto_multi_200k_l9_batchtopk_relu_auxk1
# BatchTopK and Matryoshka BatchTopK at layer 3 (where they swung at 1.0 with raw values): the tokenized SAE
# at 1.0 beside the default one at 1/32, one multi-SAE run
python benchmarks/quality.py --engine multi --architectures batchtopk matryoshka_batchtopk --layers 3 --ks 16 32 \
    --l1s 5 5 --l0s 5 5 --seeds 0 --training_tokens 200000 --unigram_strategy data \
    --tokenized_variants '{"auxk_1": {"aux_loss_coefficient": 1.0}}' --out $R/auxk_l3_batchtopk
# SAELens's TopK at 1.0 with the ReLU where the frontier's TopK (raw values) rose late: layer 9, k 64 and 128
python benchmarks/jumps.py --ks 64 128 --base --aux_acts relu --aux_loss_coefficient 1 --out $R/jumps/auxk_relu_1_base_k64_128
