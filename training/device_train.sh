#!/usr/bin/env bash
# Train a detector on a lent GPU machine from chunks made by `python -m training.pack` (see docs/DEVELOPING.md,
# "Training on a lent GPU machine"). Runs THERE, in the checkout's copy; each `device` call carries the code
# (models/ untracked for the session) plus one chunk, and a warm machine keeps what earlier calls staged.
#
#   bash training/device_train.sh stage                      # copy .device/{pack-*,wheels,start.pt} present
#                                                            # into $WTV_HOME (one call per chunk)
#   bash training/device_train.sh train CONFIG HOURS [KEY=VALUE ...]
#                                                            # install the carried wheels, train CONFIG on the
#                                                            # staged data from $WTV_HOME/start.pt for HOURS,
#                                                            # put best.pt (in 15 MiB pieces) and the run's
#                                                            # metrics into $OUT
#   bash training/device_train.sh all CONFIG HOURS [...]     # stage, then train (everything in one call)
#
# Environment: WTV_HOME (default /tmp/wtv), PYTHON (default python3), DEVICE (default 0; `cpu` to try it here),
# OUT (the device tool sets it; default $WTV_HOME/out). Extra KEY=VALUE pairs go to `training.detect --set`.
# Back here: `cat best.pt.part-* > best.pt`, then `python -m export.onnx` on the CPU (the card's latency then
# describes a laptop).
set -euo pipefail

WTV_HOME=${WTV_HOME:-/tmp/wtv}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-0}
OUT=${OUT:-$WTV_HOME/out}
PACK=${PACK:-.device}

stage() {
    mkdir -p "$WTV_HOME/data" "$WTV_HOME/wheels"
    local n=0
    for chunk in "$PACK"/pack-*; do
        [ -d "$chunk" ] || continue
        cp -r "$chunk"/. "$WTV_HOME/data/"
        n=$((n + 1))
        echo "staged $chunk"
    done
    if [ -d "$PACK/wheels" ]; then cp "$PACK"/wheels/*.whl "$WTV_HOME/wheels/" 2>/dev/null || true; fi
    if [ -f "$PACK/start.pt" ]; then cp "$PACK/start.pt" "$WTV_HOME/start.pt"; fi
    echo "stage: $n chunk(s); $(find "$WTV_HOME/data/images" -type f 2>/dev/null | wc -l) images in $WTV_HOME/data"
}

install() {
    if ! "$PYTHON" -c "import ultralytics" 2>/dev/null; then
        ls "$WTV_HOME"/wheels/*.whl >/dev/null 2>&1 || { echo "no ultralytics and no wheels staged" >&2; exit 1; }
        "$PYTHON" -m pip install --no-deps --no-index -q "$WTV_HOME"/wheels/*.whl
    fi
    if ! "$PYTHON" -c "import polars" 2>/dev/null; then
        # ultralytics imports polars only to read results.csv back into the checkpoint (inside a try): a stub
        # that fails there is enough, and saves carrying the ~40 MiB polars runtime
        mkdir -p "$WTV_HOME/stubs/polars"
        printf 'def read_csv(*a, **k):\n    raise RuntimeError("polars stub (training/device_train.sh)")\n' \
            > "$WTV_HOME/stubs/polars/__init__.py"
        export PYTHONPATH="$WTV_HOME/stubs${PYTHONPATH:+:$PYTHONPATH}"
    fi
}

train() {
    local config=$1 hours=$2
    shift 2
    [ -f "$WTV_HOME/data/data.yaml" ] || { echo "no staged data.yaml in $WTV_HOME/data: stage chunk 00" >&2; exit 1; }
    install
    local sets=(--set "data=$WTV_HOME/data" --set "device=$DEVICE" --set "runs=$WTV_HOME/runs"
                --set "train_args.time=$hours")
    if [ -f "$WTV_HOME/start.pt" ]; then sets+=(--set "train_args.pretrained=$WTV_HOME/start.pt"); fi
    for kv in "$@"; do sets+=(--set "$kv"); done
    mkdir -p "$OUT"
    local run
    run=$(YOLO_OFFLINE=1 PYTHONUNBUFFERED=1 "$PYTHON" -m training.detect --config "$config" "${sets[@]}" \
          2>&1 | tee "$OUT/train.log" | tail -n 1)
    echo "run folder: $run"
    [ -f "$run/weights/best.pt" ] || { echo "no best.pt in $run" >&2; exit 1; }
    split -b 15M -d "$run/weights/best.pt" "$OUT/best.pt.part-"
    cp "$run"/results.csv "$run"/metrics.json "$run"/run.json "$run"/args.yaml "$OUT/" 2>/dev/null || true
    sha256sum "$run/weights/best.pt" | tee "$OUT/best.pt.sha256"
}

cmd=${1:-}
case "$cmd" in
    stage) stage ;;
    train) shift; [ $# -ge 2 ] || { echo "usage: $0 train CONFIG HOURS [KEY=VALUE ...]" >&2; exit 2; }; train "$@" ;;
    all) shift; [ $# -ge 2 ] || { echo "usage: $0 all CONFIG HOURS [KEY=VALUE ...]" >&2; exit 2; }; stage; train "$@" ;;
    *) echo "usage: $0 stage | train CONFIG HOURS [KEY=VALUE ...] | all CONFIG HOURS [...]" >&2; exit 2 ;;
esac
