#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA GPU (made for the `device` tool's H200, whose image holds
# PyTorch with CUDA but not rasterio or jsonschema: put their cp312 wheels in .whl/ and they are installed
# without a network). Every figure and log goes to $OUT (default gpu-check/): summary.txt, env.txt and, per step,
# its standard output (.log) and error (.err).
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh       # a dry run of the script itself on a CPU (tiny sizes)
#   STEPS="tests train" WORKERS="7 15" bash benchmarks/gpu_check.sh   # some steps; the loader with 7 and 15 workers
#
# Steps, each under its own time limit: the resume and inference agreement tests on CUDA in bf16 and fp16 and the
# loader's page-locked staging slots feeding the GPU;
# bench_train.py (the thesis U-Net at batch 32 of 256², thesis e40b271 against ours, compiled, and fed from real
# shards with the Slurm profile's 7 loader workers and 8 threads); bench_infer.py on a full 10980² tile with the
# thesis model and TTA, the default margin scheme and 50 % overlap, and the parts alone.
set -u -o pipefail
OUT=${OUT:-gpu-check}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
STEPS=${STEPS:-tests train infer}
WORKERS=${WORKERS:-7}  # loader workers of bench_train (the Slurm profile: 8 threads per GPU, so 7)
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import rasterio, jsonschema" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5

step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2 start
    shift 2
    echo "== $name ($(date +%T), limit ${limit} s): $*" | tee -a "$OUT/summary.txt"
    start=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err"
    echo "   exit $? after $(($(date +%s) - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
}

{
    nvidia-smi || true
    python3 -c "import torch, rasterio, h5py, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, 'rasterio', rasterio.__version__, \
'gdal', rasterio.__gdal_version__, 'h5py', h5py.__version__, 'numpy', numpy.__version__)"
    echo "cpus $(nproc)"
    free -g
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$QUICK" = 1 ]; then
    train=(--batch-size 2 --steps 2 --patch-size 64 --base-channels 8 --synthetic-shards 16 --threads 2)
    infer=(--rows 1200 --width 1200 --base-channels 8 --threads 2)
    tests=(-k "cpu and (sigterm or known_mask)")
else
    train=(--synthetic-shards 1024 --threads 8)
    infer=(--base-channels 64 --threads 16)
    tests=(-k cuda)
fi
for name in $STEPS; do
    case $name in
    tests) step tests 300 python3 -m pytest -q -p no:cacheprovider -rs -s tests/test_resume.py tests/test_infer.py tests/test_loader.py "${tests[@]}" ;;
    train) for workers in $WORKERS; do
        step "train-$workers" 180 python3 benchmarks/bench_train.py --device "$DEVICE" --compile --workers "$workers" "${train[@]}"
    done ;;
    infer) step infer 220 python3 benchmarks/bench_infer.py --device "$DEVICE" --tta --schemes margin today --stages "${infer[@]}" ;;
    esac
done
for err in "$OUT"/*.err; do  # progress bars: keep the last 2 MB
    tail -c 2000000 "$err" >"$err.tail" && mv "$err.tail" "$err"
done
