#!/usr/bin/env bash
# The checks that need a GPU (k-means, features, pretraining), for a lent GPU machine whose
# python3 holds torch and Triton. Run from the repository root; logs go to $OUT (default
# /tmp/gpu_kmeans). Packages the machine lacks (lightly for pretraining, kymatio for the
# scattering filters) can be put on PYTHONPATH, which is kept.
#
#   bash benchmarks/gpu_kmeans.sh tests       CUDA tests: CPU/CUDA agreement, the fused kernels,
#                                             the feature loop's copies (side stream, lagged), no
#                                             wait in normalize or in pretraining steps, autocast
#   bash benchmarks/gpu_kmeans.sh iteration   one Lloyd iteration, 3M x 384, k=60k: ours (TF32,
#                                             fused) vs the plain torch loop in FP32 and TF32
#   bash benchmarks/gpu_kmeans.sh config-a    the whole of config A on 3M points, timed (exit 3:
#                                             stopped after STOP_AFTER s; run again to go on)
#   bash benchmarks/gpu_kmeans.sh seeding     greedy k-means++ with its bounds, k=60k on 300k x
#                                             384: plain steps against the fused kernels
#   bash benchmarks/gpu_kmeans.sh features    the percentiles (top-k vs sort), then the feature
#                                             pipeline against the model alone, and bf16 in
#                                             channels-last against NCHW (not used on GPUs yet)
#   bash benchmarks/gpu_kmeans.sh pretraining SimCLR/BYOL throughput against the bare step, and
#                                             its two layouts in bf16
#   bash benchmarks/gpu_kmeans.sh pending     tests, seeding, features, pretraining in turn, each
#                                             under its own time limit (about 9 minutes in all:
#                                             one device call); then config-a in the next calls
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_kmeans}
mkdir -p "$out"
case "${1:-}" in
    tests)
        nvidia-smi -L | tee "$out/tests.log"
        python3 -m pytest -q -p no:cacheprovider tests/test_nearest_kernel.py tests/test_backbones.py \
            tests/test_kmeans.py tests/test_seeding_kernel.py tests/test_features_loop.py tests/test_ssl.py \
            tests/test_precision.py \
            -k "cuda or nearest" 2>&1 | tee -a "$out/tests.log"
        ;;
    iteration)
        python3 benchmarks/kmeans.py --device cuda --precision tf32 --iters 3 \
            --case 3000000x384:60000 --no-alternative --verbose 2>&1 | tee "$out/iteration.log"
        ;;
    config-a)
        # A call of the lent machine lasts at most 10 minutes: after STOP_AFTER seconds the run
        # stops at its next finished k-means run (exit 3), kept in .gpu_state/config_a; the
        # same command, run again on the still-warm machine, goes on from there.
        python3 benchmarks/kmeans.py --device cuda --precision tf32 \
            --hierarchical-config configs/clusters/A_3M_3lvl_60k_4k_300.yaml \
            --hierarchical-scale 1 --resume-dir .gpu_state/config_a \
            --stop-after "${STOP_AFTER:-420}" 2>&1 | tee "$out/config_a.log"
        ;;
    seeding)
        python3 benchmarks/seeding.py --device cuda --precision tf32 --path plain --path fused \
            --case 300000x384:60000 2>&1 | tee "$out/seeding.log"
        ;;
    features)
        python3 benchmarks/normalization.py --device cuda --batch 1024 --repeat 20 2>&1 \
            | tee "$out/normalization.log"
        python3 benchmarks/features.py --speed --device cuda --synthetic 60000 \
            --batch-size 1024 --workers 8 --rows 50000 2>&1 | tee "$out/features.log"
        ;;
    pretraining)
        python3 benchmarks/evaluation.py --throughput --device cuda 2>&1 | tee "$out/pretraining.log"
        ;;
    pending)
        for part in tests:120 seeding:150 features:150 pretraining:120; do
            timeout "${part#*:}" bash "$0" "${part%%:*}"
            echo "== ${part%%:*}: exit $?" | tee -a "$out/pending.log"
        done
        ;;
    *)
        echo "usage: bash benchmarks/gpu_kmeans.sh tests|iteration|config-a|seeding|features|pretraining|pending" >&2
        exit 2
        ;;
esac
