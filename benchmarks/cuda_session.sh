#!/usr/bin/env bash
# Every CUDA measurement and test of graphprune, as one short run (a lent GPU machine's time is scarce).
# Writes under $OUT (default ./out/cuda): the latency-target table (markdown + JSONL), the dense-vs-shrunk
# latency table and plot, the CUDA test log, and the latency lookup table it built.
# Usage: OUT=out/cuda bash benchmarks/cuda_session.sh [smoke]     (about 10 minutes of a 15-minute lease;
#   SKIP_TESTS=1 skips the CUDA tests, T1/T2/T3 cap the three steps in seconds; carry a torch-pruning wheel and
#   put it on PYTHONPATH for step 3's peer comparison)
#   smoke: the CUDA tests and one small latency plan only (about a minute), to check the machine first.
# DEVICE=cpu SIZE=32 BATCH=2 MODELS=resnet18 makes a dry run on a machine without a GPU.
set -u
OUT=${OUT:-out/cuda}
mkdir -p "$OUT/cache"
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda} SIZE=${SIZE:-224} BATCH=${BATCH:-128} MODELS=${MODELS:-resnet50 vgg16_bn mobilenet_v2}
DTYPE=${DTYPE:-bfloat16} MRT=${MRT:-0.5}
log="$OUT/log.txt"
python3 - <<'PY' 2>&1 | tee -a "$log"
import platform, torch, torchvision, networkx
print("torch", torch.__version__, "torchvision", torchvision.__version__, "networkx", networkx.__version__,
      "python", platform.python_version(), "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())
PY
if [ "$DEVICE" = cuda ] && [ -z "${SKIP_TESTS:-}" ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m "" tests/planning/test_budget.py tests/coupling/test_adversarial.py \
    tests/measure/test_runtimes.py tests/measure/test_bench.py -k "cuda" 2>&1 | tee "$OUT/pytest_cuda.log" | tail -5
fi
if [ "${1:-}" = smoke ]; then
  timeout 120 python3 benchmarks/latency_target.py --device "$DEVICE" --dtype "$DTYPE" --channels-last \
    --batch 8 --size 64 --models resnet18 --targets 0.5 --min-run-time 0.2 --repeats 1 --threads 8 \
    --cache "$OUT/cache/latency.json" --jsonl "$OUT/latency_target_smoke.jsonl" 2>&1 | tee -a "$log" | tail -3
  exit 0
fi
# 1. Latency targets at the library's default tradeoff, all models and targets.
timeout ${T1:-330} python3 benchmarks/latency_target.py --device "$DEVICE" --dtype "$DTYPE" --channels-last \
  --batch "$BATCH" --size "$SIZE" --models $MODELS --targets 0.75 0.5 --min-run-time "$MRT" --repeats 2 --threads 8 \
  --cache "$OUT/cache/latency.json" --jsonl "$OUT/latency_target_cuda.jsonl" --out "$OUT/latency_target_cuda.md" \
  2>&1 | tee -a "$log" | grep -v "^W1"
# 1b. Optional (GRAPHS_MODELS=...): the same targets planned for and timed in CUDA graphs (no launch cost).
[ -n "${GRAPHS_MODELS:-}" ] && timeout ${T1B:-200} python3 benchmarks/latency_target.py --device "$DEVICE" --dtype "$DTYPE" \
  --channels-last --runtime cudagraphs --batch "$BATCH" --size "$SIZE" --models ${GRAPHS_MODELS:-} --targets 0.75 0.5 \
  --min-run-time "$MRT" --repeats 2 --threads 8 --cache "$OUT/cache/latency.json" \
  --jsonl "$OUT/latency_target_cuda_graphs.jsonl" 2>&1 | tee -a "$log" | grep "^| "
# 2. Optional (TRADEOFF_MODELS=...): the planner's tradeoff, both ends, at target 0.5 (tables from step 1's cache).
[ -n "${TRADEOFF_MODELS:-}" ] && timeout ${T2:-100} python3 benchmarks/latency_target.py --device "$DEVICE" --dtype "$DTYPE" --channels-last \
  --batch "$BATCH" --size "$SIZE" --models ${TRADEOFF_MODELS:-} --targets 0.5 --tradeoffs 0 0.5 \
  --min-run-time "$MRT" --repeats 2 --threads 8 --cache "$OUT/cache/latency.json" \
  --jsonl "$OUT/latency_target_cuda.jsonl" 2>&1 | tee -a "$log" | grep "^| "
# 3. Dense vs shrunk at ratio 0.5 (widths rounded to 8), eager and CUDA graphs, Torch-Pruning at equal MACs.
if [ "$DEVICE" = cuda ]; then
  TP=$(python3 -c "import torch_pruning" 2>/dev/null && echo --torch-pruning)
  timeout ${T3:-200} python3 benchmarks/latency.py --device cuda --models $MODELS --ratio 0.5 --round-to 8 \
    --batch 1 "$BATCH" --dtype "$DTYPE" --channels-last --runtime eager cudagraphs --min-run-time 0.1 --repeats 2 \
    --threads 8 ${TP:-} --markdown "$OUT/latency_cuda.md" --plot "$OUT/latency_cuda.png" 2>&1 | tee -a "$log" | tail -40
fi
