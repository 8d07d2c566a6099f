#!/usr/bin/env bash
# The GPU check: one prepared script, at most ~8 minutes on one H100, run whenever a GPU machine is lent.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; output under $OUT (or ./gpu_check_out)
#
# 1. the CUDA tests (device-side augmentation, no host sync per step, bf16 / channels_last);
# 2. `make bench` on CUDA: one KD step (classic loop, engine fp32, bf16 + channels_last, teacher table),
#    a cohort of 8 methods vs the 8 runs alone, the cifar100-similar suite estimate;
# 3. a 2-epoch run at real size (a generated CIFAR-100 of 50,000 + 10,000 random images in torchvision's
#    format): kd resnet32x4 → resnet8x4 plain, with every fast switch (bf16, channels_last), with the teacher
#    table, and the 8-method cohort vs alone; images/s per run from the stored per-epoch seconds;
# 4. bf16 fidelity on real data: the smoke suite (digits, 3 seeds) exact vs bf16 + channels_last + fused SGD;
# 5. the ImageNet path: 1 epoch of kd resnet34 -> resnet18 (imagenet suite, bf16) on a generated ImageFolder of
#    2,000 JPEGs (375-500 px) with each loader (pil, decode, dali if installed): images/s, data-wait share
#    (section 2's loader benchmark also times pil / decode / dali on CUDA);
# (3b.) --runs-per-gpu K = 1, 2, 4 for 4 small runs on one GPU (wall time each).
# Nothing here is downloaded: torch must already be importable (the venv, or the machine's python).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
KD="$PY -m kdbench"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
log() { echo "=== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

log "device"
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/summary.txt" || exit 1
$PY -m pip install --quiet --no-deps -e . >/dev/null 2>&1 || true

log "1. CUDA tests"
timeout 90 $PY -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py tests/test_augment.py 2>&1 | tail -3 | tee -a "$OUT/summary.txt"

log "2. benchmarks on CUDA"
KDBENCH_BENCH_ROUNDS=5 timeout 150 $PY -m pytest benchmarks -q -p no:cacheprovider \
    --benchmark-columns=min,median,rounds --benchmark-json="$OUT/bench.json" 2>&1 | tail -40 | tee -a "$OUT/summary.txt"

log "3. real-size CIFAR-100 shape, 2 epochs"
timeout 60 $PY - "$OUT/data" <<'EOF'
import pickle, sys
from pathlib import Path
import numpy as np
root = Path(sys.argv[1]) / "cifar-100-python"
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for name, n in (("train", 50_000), ("test", 10_000)):
    entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": rng.integers(0, 100, n).tolist()}
    (root / name).write_bytes(pickle.dumps(entry))
(root / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
EOF
COMMON=(--suite cifar100-similar --epochs 2 --data-root "$OUT/data" --device cuda --no-progress --latency-batch-sizes 1)
PAIR="resnet8x4←resnet32x4 seed=0"
run() {  # label, results name, extra options…
    local label=$1 name=$2; shift 2
    timeout 120 $KD run "${COMMON[@]}" --results "$OUT/$name.sqlite" --work-dir "$OUT/runs" --teacher-root "$OUT/teachers" "$@" \
        >"$OUT/$name.log" 2>&1
    echo "$label: exit $? $(tail -1 "$OUT/$name.log")" | tee -a "$OUT/summary.txt"
}
run "kd fp32, live teacher" plain -k "kd $PAIR" --cohorts off --teacher-table off
run "kd bf16 + channels_last" fast -k "kd $PAIR" --cohorts off --bf16 --channels-last
run "kd fp32, teacher table" table -k "kd $PAIR" --cohorts off --teacher-table on
EIGHT=(); for m in kd dkd at fitnet rkd pkt sp crd; do EIGHT+=(-k "$m $PAIR"); done
run "8 methods alone (1 epoch)" alone "${EIGHT[@]}" --epochs 1 --cohorts off --teacher-table off
run "8 methods as a cohort (1 epoch)" cohort "${EIGHT[@]}" --epochs 1 --teacher-table off
for K in 1 2 4; do  # packing small runs on one GPU: 4 kd runs (seeds 0-3), K at a time on GPU 0
    start=$(date +%s)
    CUDA_VISIBLE_DEVICES=0 timeout 150 $KD run "${COMMON[@]}" --epochs 1 --seeds 0,1,2,3 -k "kd resnet8x4←resnet32x4" \
        --workers 1 --runs-per-gpu $K --results "$OUT/pack$K.sqlite" --work-dir "$OUT/pack$K" --teacher-root "$OUT/teachers" \
        >"$OUT/pack$K.log" 2>&1
    echo "runs-per-gpu $K: exit $? in $(( $(date +%s) - start )) s (4 runs + teacher, 1 epoch)" | tee -a "$OUT/summary.txt"
done
$PY - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sqlite3, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("plain", "fast", "table", "alone", "cohort"):
    path = out / f"{name}.sqlite"
    if not path.exists():
        print(f"{name}: no results"); continue
    rows = sqlite3.connect(path).execute("SELECT kind, config, curve, versions FROM runs WHERE kind='student'").fetchall()
    seconds = sum(e["seconds"] for _, _, curve, _ in rows for e in json.loads(curve))
    epochs = sum(len(json.loads(curve)) for _, _, curve, _ in rows)
    top1 = [round(json.loads(curve)[-1]["test_top1"], 2) for _, _, curve, _ in rows if json.loads(curve)]
    print(f"{name:7s} {len(rows)} student runs, {epochs} epochs, {seconds:8.1f} s, "
          f"{50_000 * epochs / max(seconds, 1e-9):9.0f} images/s (per run-epoch summed); last top-1 {top1}")
EOF
log "4. bf16 fidelity on real data: the smoke suite (digits, 3 seeds) fp32 vs bf16 + channels_last on CUDA"
for mode in exact fast; do
    extra=(); [ "$mode" = fast ] && extra=(--bf16 --channels-last --fused-sgd)
    timeout 75 $KD run --suite smoke --device cuda --no-progress --latency-batch-sizes 1 --results "$OUT/smoke-$mode.sqlite" \
        --work-dir "$OUT/smoke-runs-$mode" "${extra[@]}" >"$OUT/smoke-$mode.log" 2>&1
    echo "smoke $mode: exit $? $(tail -1 "$OUT/smoke-$mode.log")" | tee -a "$OUT/summary.txt"
    $KD results export --results "$OUT/smoke-$mode.sqlite" --format jsonl -o "$OUT/smoke-$mode.jsonl" >/dev/null 2>&1
done
$KD compare "$OUT/smoke-exact.jsonl" "$OUT/smoke-fast.jsonl" --tolerance 0.5 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
log "5. ImageNet path: 1 epoch of kd resnet34->resnet18 on 2,000 generated JPEGs, per loader"
timeout 90 $PY - "$OUT/inet" <<'PYEOF'
import sys
from pathlib import Path
import torch, torchvision
from kdbench.testing import write_image_folder
root = Path(sys.argv[1])
folder = write_image_folder(root / "data" / "imagenet", num_classes=10, train=180, test=20, sizes=(375, 500))
for split in ("train", "val"):
    for index, path in enumerate(sorted((folder / split).iterdir())):
        path.rename(path.with_name(f"n0144076{index}"))
torch.save(torchvision.models.resnet34().state_dict(), root / "resnet34-b627a593.pth")
PYEOF
for L in pil decode dali; do
    timeout 100 $KD run --suite imagenet -k "kd resnet18 seed=0" --epochs 1 --device cuda --bf16 --channels-last \
        --data-root "$OUT/inet/data" --teacher resnet34="$OUT/inet/resnet34-b627a593.pth" --loader $L \
        --results "$OUT/inet-$L.sqlite" --work-dir "$OUT/inet-runs-$L" --no-progress --latency-batch-sizes 1 \
        >"$OUT/inet-$L.log" 2>&1
    echo "loader $L: exit $? $(grep 'images/s' "$OUT/inet-$L.log" | tail -1)" | tee -a "$OUT/summary.txt"
done
log "done (outputs in $OUT)"
