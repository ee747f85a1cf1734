#!/usr/bin/env bash
# Run every dermalens benchmark; results go to benchmarks/results/*.json and
# benchmarks/results/summary.md. Run it on a quiet machine: other processes
# on the same cores change absolute timings (ratios within one script hold
# up better, see bench_common.interleaved_timings).
#
#   bash benchmarks/run_all.sh [--quick]
#
# Environment: PYTHON (default .venv/bin/python), DERMALENS_DATA (default
# ../shared/data), DEMO_CKPT (a DermaMNIST checkpoint for the quantisation
# benchmark and the load test; default: train one with configs/demo.yaml
# first), EXPLAIN_COST_ARGS / LOAD_TEST_ARGS (extra arguments for those two).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
DATA="${DERMALENS_DATA:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
QUICK=0; [[ "${1:-}" == "--quick" ]] && QUICK=1
# OpenVINO (the optional openvino / openvino-bf16 runtimes) is compared when installed.
OPENVINO=""; "$PYTHON" -c "import openvino" 2>/dev/null && OPENVINO="--openvino"
mkdir -p benchmarks/results
failed=()

run() {  # run NAME CMD...: keep going when one benchmark fails, report at the end
  local name="$1"; shift
  echo "=== $name: $*"
  if ! "$@"; then failed+=("$name"); fi
}

if (( QUICK )); then
  run inference_latency "$PYTHON" benchmarks/inference_latency.py --backbone tf_efficientnet_lite0 --image-size 64 \
      --rounds 8 --batch 8 --batch-rounds 1
  run training_throughput "$PYTHON" benchmarks/training_throughput.py --data "$DATA" --setups dermamnist \
      --workers 0 --steps 3 --repeats 1
else
  run onnx_tuning "$PYTHON" benchmarks/onnx_tuning.py
  run onnx_profile "$PYTHON" benchmarks/onnx_profile.py
  run inference_latency "$PYTHON" benchmarks/inference_latency.py $OPENVINO
  run training_throughput "$PYTHON" benchmarks/training_throughput.py --data "$DATA" --fp32-eager
  run epoch_projection "$PYTHON" benchmarks/epoch_projection.py
  [[ -f runs/ham10000_cpu/checkpoints/best.ckpt ]] && run predict_throughput "$PYTHON" benchmarks/predict_throughput.py --model runs/ham10000_cpu/checkpoints/best.ckpt
fi

CKPT="${DEMO_CKPT:-}"
if [[ -z "$CKPT" ]] && (( ! QUICK )); then
  echo "=== training a DermaMNIST demo model for the quantisation benchmark"
  rundir="runs/bench-demo-$(date +%Y%m%d-%H%M%S)"
  if "$PYTHON" -m dermalens.cli train --config demo_dermamnist --data "$DATA" --run-dir "$rundir" \
       --set training.progress_bar=false; then
    CKPT="$rundir/checkpoints/best.ckpt"
  else
    failed+=("demo training")
  fi
fi
if [[ -n "$CKPT" ]]; then
  run quantization_accuracy "$PYTHON" benchmarks/quantization_accuracy.py --model "$CKPT" --data "$DATA" $OPENVINO \
      $( (( QUICK )) && echo "--limit 200 --rounds 8" )
fi

# Explanation cost and the web app under load. --quick runs them only when
# given arguments (explain_cost takes many minutes with its defaults). The
# load test serves the demo checkpoint with its ONNX export beside it, the
# path the web app takes in practice.
if (( ! QUICK )) || [[ -n "${EXPLAIN_COST_ARGS:-}" ]]; then
  run explain_cost "$PYTHON" benchmarks/explain_cost.py ${EXPLAIN_COST_ARGS:-}
fi
if [[ -n "${LOAD_TEST_ARGS:-}" ]]; then
  run load_test "$PYTHON" benchmarks/load_test.py ${LOAD_TEST_ARGS}
elif [[ -n "$CKPT" ]] && (( ! QUICK )); then
  run export "$PYTHON" -m dermalens.cli export "$CKPT"
  run load_test "$PYTHON" benchmarks/load_test.py --model "$CKPT" --output benchmarks/results/load_test.json
fi

"$PYTHON" benchmarks/summarize.py
echo "run_all.sh took $(( SECONDS / 60 )) min $(( SECONDS % 60 )) s"
if (( ${#failed[@]} )); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
