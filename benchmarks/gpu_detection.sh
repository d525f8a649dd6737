#!/usr/bin/env bash
# Detection on a GPU in one call: the demo, benchmarks/bench_detect.py against the naive
# per-proposal detector, and `rcnn test` end to end (Selective Search included) on a synthetic
# split the size of VOC2007 test (4,952 images), then one training epoch for peak memory.
#
#   bash benchmarks/gpu_detection.sh RESULTS_DIR [PYTHON]
#
# A small smoke run on a CPU:
#   DEVICE=cpu BIG=20 BENCH="--images 2 --naive-images 1" DEMO="--images 12 --epochs 1" \
#       EPOCH=0 bash benchmarks/gpu_detection.sh /tmp/smoke .venv/bin/python
set -euo pipefail
results=${1:-gpu-detection}
python=${2:-python3}
device=${DEVICE:-cuda}
big=${BIG:-5000}
mkdir -p "$results"
work=$(mktemp -d)
log() { echo "== $(date +%T) $*"; }
rcnn() { "$python" -m rcnn "$@"; }
timed() {  # timed LABEL COMMAND...: runs it, then prints "LABEL wall N s"
    local label=$1 start
    shift
    start=$(date +%s.%N)
    "$@"
    echo "$label wall $("$python" -c "print(round($(date +%s.%N) - $start, 1))") s"
}

log demo
# shellcheck disable=SC2086
timed demo "$python" -m rcnn demo --out "$work/demo" --device "$device" --no-progress ${DEMO:-} \
    > "$results/demo.log" 2>&1 || { tail -30 "$results/demo.log"; exit 1; }
tail -22 "$results/demo.log"

log "a 227x227 model for the benchmarks (3 epochs on the demo's regions)"
rcnn train --data "$work/demo/regions" --out "$work/run227" --epochs 3 --weights none \
    --optimizer adam --lr 1e-4 --device "$device" --no-progress | tail -2

log bench_detect
# shellcheck disable=SC2086
"$python" benchmarks/bench_detect.py --model "$work/run227" --device "$device" \
    ${BENCH:---images 24 --naive-images 4} --json-out "$results/bench_detect.json"

log "synthetic VOC2007-test-sized split"
timed synth "$python" -m rcnn synth "$work/big" --images "$big" \
    --size 320x240 --val-fraction 0.0002 --test-fraction 0.9904 --seed 1

log "rcnn test end to end"
timed "rcnn test" "$python" -m rcnn test "$work/run227" \
    --voc-root "$work/big" --split test --out "$work/big-test" --cache-dir "$work/cache" \
    --device "$device" --no-progress
cp "$work/big-test/metrics.json" "$results/big-test-metrics.json"

if [ "${EPOCH:-1}" = 1 ]; then
    log "one training epoch, recipe scale, peak memory"
    "$python" benchmarks/bench_gpu.py --only-epoch --json-out "$results/epoch.json" | tail -12
fi
log done
