#!/usr/bin/env bash
# The GPU check of the anomaly engine, in one command, on a machine with an NVIDIA GPU and no internet.
#
#   bench/gpu/check.sh [--dry-run] [WHEELS_DIR]
#
# WHEELS_DIR (or $FABGUARD_WHEELS): a folder of wheels downloaded beforehand on a machine with internet,
#   pip download 'onnxruntime-gpu[cuda,cudnn]' tensorrt -d WHEELS_DIR
# for the GPU machine's Python version. fabguard itself must already be installed (pip install -e '.[test]').
# Steps (each one's output under $RESULTS, default bench/results/anomaly/gpu):
#   1. nvidia-smi -> nvidia-smi.txt
#   2. replace the CPU onnxruntime by onnxruntime-gpu and install tensorrt, from WHEELS_DIR only -> install.txt
#   3. the providers ONNX Runtime now has -> providers.txt (CUDA and TensorRT must be there)
#   4. tests/anomaly/test_anomaly_gpu.py (none may be skipped) -> gpu_tests.txt, gpu_tests.xml
#   5. a small synthetic dataset at 256x256; PCA, VAE and PatchCore trained and exported (in $WORK)
#   6. parity of CUDA, TensorRT FP32 and FP16 against PyTorch -> parity.md, parity.json
#   7. fabguard anomaly benchmark of each model on CUDA, TensorRT FP32 and FP16 -> benchmark_<model>.md / .json
# --dry-run prints the commands without running them (tests/anomaly/test_anomaly_gpu_check.py checks them).
# Sized to finish well under 8 minutes: 40 training images, 5 VAE epochs, 100 timed runs per batch size.
set -euo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
WHEELS="${1:-${FABGUARD_WHEELS:-}}"
RESULTS="${RESULTS:-bench/results/anomaly/gpu}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/fabguard-gpu-check.XXXXXX")}"  # models and data: not results
PY="${PYTHON:-python}"
GPU_PROVIDERS=(cuda tensorrt tensorrt-fp16)
MODELS=(pca vae patchcore)

fail() { echo "check.sh: error: $*" >&2; exit 2; }
[[ -n "$WHEELS" ]] || fail "give the wheel folder: bench/gpu/check.sh WHEELS_DIR (or set FABGUARD_WHEELS)"
[[ -d "$WHEELS" ]] || fail "wheel folder $WHEELS: no such folder"
compgen -G "$WHEELS/onnxruntime_gpu-*.whl" > /dev/null || fail "$WHEELS: no onnxruntime_gpu-*.whl (pip download 'onnxruntime-gpu[cuda,cudnn]' -d $WHEELS)"
compgen -G "$WHEELS/tensorrt*.whl" > /dev/null || compgen -G "$WHEELS/tensorrt*.tar.gz" > /dev/null \
  || fail "$WHEELS: no tensorrt wheel (pip download tensorrt -d $WHEELS)"
if (( ! DRY )); then
  command -v nvidia-smi > /dev/null || fail "nvidia-smi not found: this check needs an NVIDIA GPU and its driver"
  mkdir -p "$RESULTS" "$WORK"
fi

# run CMD...: print it; run it unless --dry-run. log FILE CMD...: the same, its output also into $RESULTS/FILE
run() { echo "+ $*"; if (( ! DRY )); then "$@"; fi; }
log() { local file="$1"; shift; echo "+ $* > $RESULTS/$file"; if (( ! DRY )); then "$@" 2>&1 | tee "$RESULTS/$file"; fi; }

start=$(date +%s)
log nvidia-smi.txt nvidia-smi
log install.txt bash -c "$PY -m pip uninstall -y onnxruntime && $PY -m pip install --no-index --find-links '$WHEELS' 'onnxruntime-gpu[cuda,cudnn]' tensorrt"
# the CUDA / cuDNN / TensorRT libraries of the nvidia-* and tensorrt wheels, for ONNX Runtime to find
if (( ! DRY )); then
  LIBS=$("$PY" -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/*/lib/*.so*') + glob.glob(d + '/tensorrt_libs/*.so*')})))")
  export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
log providers.txt "$PY" -c "import onnxruntime as ort; p = ort.get_available_providers(); print(ort.__version__, p); assert {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} <= set(p), 'GPU providers missing'"
log gpu_tests.txt "$PY" -m pytest -q -rs tests/anomaly/test_anomaly_gpu.py --junitxml "$RESULTS/gpu_tests.xml"
run "$PY" -c "import sys, xml.etree.ElementTree as et; s = et.parse(sys.argv[1]).getroot().iter('testsuite').__next__(); sys.exit(f\"{s.get('skipped')} GPU test(s) skipped\" if int(s.get('skipped')) else 0)" "$RESULTS/gpu_tests.xml"

run fabguard anomaly synthetic --out "$WORK/data" --size 256 --train 40 --seed 0
run fabguard anomaly train --model pca --components 20 --data "$WORK/data" --size 256 --out "$WORK/pca.pt" --quiet
run fabguard anomaly train --model vae --epochs 5 --data "$WORK/data" --size 256 --out "$WORK/vae.pt" --quiet
run fabguard anomaly train --model patchcore --data "$WORK/data" --size 256 --out "$WORK/patchcore.pt" --quiet
for model in "${MODELS[@]}"; do
  run fabguard anomaly export --model "$WORK/$model.pt" --out "$WORK/$model.onnx"
done
log parity.txt "$PY" bench/gpu/parity.py --models "$WORK/pca.pt" "$WORK/vae.pt" "$WORK/patchcore.pt" --data "$WORK/data" \
  --providers "${GPU_PROVIDERS[@]}" --out "$RESULTS"
for model in "${MODELS[@]}"; do
  log "benchmark_$model.md" fabguard anomaly benchmark --artifact "$WORK/$model.onnx" \
    $(printf -- '--provider %s ' "${GPU_PROVIDERS[@]}") --batch 1,8,32,64 --runs 100 --json "$RESULTS/benchmark_$model.json"
done
(( DRY )) || echo "GPU check done in $(( $(date +%s) - start )) s; results in $RESULTS"
