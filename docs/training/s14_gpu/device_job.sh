#!/bin/bash
# One-shot device job: CIFAR-10 base models (resnet20, plain20, vgg_cifar) trained concurrently on
# the GPU with epochs sized to the lease, then a CUDA smoke of the search and the CUDA latency tests.
# Usage (repo root): bash .gpu/run.sh DEVICE END_S [MAXSAMPLES]
set -u
T0=$(date +%s)
DEV=${1:-cuda}; END=${2:-520}; MAXS=${3:-}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
el() { echo $(( $(date +%s) - T0 )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RLPRUNE_CACHE=/tmp/rlcache OMP_NUM_THREADS=4 OMP_WAIT_POLICY=PASSIVE TQDM_DISABLE=1
DATA=/work/shared/data/cifar10/train
if [ ! -d "$DATA/airplane" ]; then
  mkdir -p "$DATA" 2>/dev/null || DATA=$PWD/.gpu/data/train
  mkdir -p "$DATA" && python3 -c "import zipfile,sys; zipfile.ZipFile('.gpu/cifar10_train.zip').extractall(sys.argv[1])" "$DATA" || exit 1
fi
echo "data at $DATA ($(el)s)"
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv 2>&1 | tail -2
SPEC="imagefolder:$DATA"
MS=""; [ -n "$MAXS" ] && MS="--max-samples $MAXS"
python3 .gpu/prep.py "$SPEC" 2>&1 | grep -v Warning | tee "$OUT/prep.log" || exit 1
echo "prep done ($(el)s)"
RECIPE="--batch-size 128 --augment --nesterov --label-smoothing 0.1 --cutout 16 --precision bf16 --device $DEV --no-progress --dataset $SPEC $MS"
MODELS="resnet20 plain20 vgg_cifar"
for m in $MODELS; do
  timeout 120 python3 scripts/train_base.py --model $m --epochs 3 --lr 0.1 $RECIPE --retrain --cache-dir /tmp/calib > /tmp/calib_$m.log 2>&1 &
done
wait
LEFT=$(( END - $(el) ))
python3 .gpu/plan.py $LEFT ${CAP:-200} $MODELS | tee "$OUT/plan.txt"
echo "calibrated ($(el)s); training until ${END}s"
declare -A WARM=([resnet20]=models/pretrained/resnet20-cifar10_train-988471ca-43d332.pt [plain20]=models/pretrained/plain20-cifar10_train-988471ca-2b0ab1.pt [vgg_cifar]=models/pretrained/vgg_cifar-cifar10_train-988471ca-3d961a.pt)
while read -r m E PE; do
  [ "$E" -lt 2 ] && { echo "$m: no calibration ($PE)"; tail -5 /tmp/calib_$m.log; continue; }
  if [ "$E" -ge ${SCRATCH_MIN:-120} ] || [ ! -f "${WARM[$m]}" ]; then INIT="--lr 0.1"; else INIT="--lr 0.05 --init-from ${WARM[$m]}"; fi
  echo "$m: $E epochs ($PE s/epoch) $INIT"
  timeout $(( END - $(el) + 30 )) python3 scripts/ship_base_model.py --to /tmp/ship/$m --model $m --epochs $E $INIT $RECIPE > "$OUT/train_$m.log" 2>&1 &
done < "$OUT/plan.txt"
wait
echo "training done ($(el)s)"; grep -h "shipped\|error" "$OUT"/train_*.log
tar czf "$OUT/ship.tgz" -C /tmp ship 2>/dev/null; ls -la /tmp/ship/* 2>/dev/null
SMOKE=$(( ${LIMIT:-585} - $(el) - 8 ))
if [ "$SMOKE" -gt 20 ]; then
  timeout $(( SMOKE / 3 )) python3 -m pytest -q -p no:cacheprovider tests/test_latency.py -k cuda 2>&1 | tail -5 | tee "$OUT/cuda_tests.log"
  timeout $(( SMOKE * 2 / 3 - 5 )) python3 scripts/train_agent.py --device $DEV --episodes 30 --warmup 10 --no-progress --output-dir /tmp/smoke > "$OUT/smoke_agent.log" 2>&1; echo "smoke rc $?"
  tail -25 "$OUT/smoke_agent.log"
fi
echo "end ($(el)s)"
