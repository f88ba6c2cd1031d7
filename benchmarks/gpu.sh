#!/usr/bin/env bash
# The GPU figures of docs/gpu.md, in one go, on a machine with onnxruntime-gpu installed.
#
#     benchmarks/gpu.sh OUT_DIR [STEP...]        # steps: env tests bench checks deform overhead matrix
#
# Every step writes its log (and JSON where there is one) into OUT_DIR; a step that fails is
# reported and the next one runs. `python` must import edgecnn and onnxruntime-gpu (`PYTHON=...`
# to use another), with the CUDA/cuDNN libraries findable (docs/gpu.md, Install). The work runs
# in OUT_DIR/work, which is removed at the end (it holds ~200 MB of models).
set -uo pipefail
OUT="$(mkdir -p "${1:?usage: benchmarks/gpu.sh OUT_DIR [STEP...]}" && cd "$1" && pwd)"
shift
STEPS="${*:-env tests bench checks deform overhead matrix}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="$OUT/work"
mkdir -p "$WORK"
cd "$WORK"  # not the repo root: `import edgecnn` must find the installed package

step() {  # step NAME COMMAND...: run it, log into OUT/NAME.log, say how it ended
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    local started=$SECONDS
    "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$OUT/steps.log"
    tail -n 25 "$OUT/$name.log"
}

env_report() {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" - <<'EOF'
import sys, numpy as np, onnx, onnxruntime as ort, torch, edgecnn
from edgecnn.runtime import deform
print("python", sys.version.split()[0], "| onnxruntime", ort.__version__, "| onnx", onnx.__version__,
      "| torch", torch.__version__, "| edgecnn", edgecnn.__version__)
print("providers:", ort.get_available_providers())
print("DeformConv on the CPU provider:", deform.onnxruntime_has_deformconv())
for provider in ("CUDAExecutionProvider",):
    try:
        session = ort.InferenceSession(deform.DEFORMCONV_PROBE, providers=[provider])
        y = session.run(None, {"X": np.full((1, 1, 1, 1), 2, np.float32),
                               "W": np.full((1, 1, 1, 1), 3, np.float32),
                               "offset": np.zeros((1, 2, 1, 1), np.float32)})[0]
        print(f"DeformConv on {provider}: ran, y={y.ravel()}, session providers",
              session.get_providers())
    except Exception as error:
        print(f"DeformConv on {provider}: {str(error).splitlines()[0][:200]}")
EOF
}

models() {  # resnet18 at 224 with a dynamic batch axis, in fp32, fp16 and int8
    [ -f r18.int8.onnx ] && return 0
    "$PY" -m edgecnn export resnet18 -o r18.onnx &&
    "$PY" -m edgecnn quantize r18.onnx -o r18.fp16.onnx --mode fp16 &&
    "$PY" -m edgecnn quantize r18.onnx -o r18.int8.onnx --mode int8 --calibration random --calibration-size 16
}

bench_table() {
    models || return 1
    for model in r18.onnx r18.fp16.onnx r18.int8.onnx; do
        for provider in cpu cuda; do
            runs=$([ "$provider" = cpu ] && echo 50 || echo 200)
            for batch in 1 32; do
                "$PY" -m edgecnn bench "$model" --provider "$provider" --batch "$batch" --runs "$runs" --json \
                    | tee -a "$OUT/bench.jsonl"
            done
        done
    done
}

checks() {  # `edgecnn check` on CUDA (TF32 off) and what TF32 on costs in parity
    models || return 1
    "$PY" -m edgecnn check resnet18 --onnx r18.onnx --provider cuda --json
    "$PY" -m edgecnn check resnet18 --onnx r18.fp16.onnx --provider cuda --json
    "$PY" -m edgecnn check resnet18_dcn --provider cuda --json
    "$PY" -c "import numpy as np; from PIL import Image; Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), np.uint8)).save('photo.png')"
    "$PY" -m edgecnn run r18.onnx photo.png --provider cuda
    "$PY" - <<'EOF'
import numpy as np
from edgecnn.export.parity import compare
from edgecnn.runtime import Engine
x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
cpu = Engine("r18.onnx", "cpu").run(x)["logits"]
for tf32 in (True, False):
    engine = Engine("r18.onnx", "cuda", fallback=False, tf32=tf32)
    print(f"resnet18 224 fp32, CUDA with tf32={tf32} vs CPU provider:",
          compare(cpu, engine.run(x)["logits"]).as_dict(), engine.providers)
EOF
}

for name in $STEPS; do
    case $name in
        env) step env env_report ;;
        tests) step tests "$PY" -m pytest -p no:cacheprovider -m gpu -v -rs -n 0 "$REPO/tests/test_runtime_providers.py" ;;
        bench) step bench bench_table ;;
        checks) step checks checks ;;
        deform) step deform bash -c "'$PY' '$REPO/benchmarks/deform_conv.py' --provider cuda --batch 1 &&
                                     '$PY' '$REPO/benchmarks/deform_conv.py' --provider cuda --batch 32" ;;
        overhead) step overhead "$PY" "$REPO/benchmarks/runtime_overhead.py" --provider cuda --rounds 20 ;;
        matrix) step matrix env OMP_NUM_THREADS=2 EDGECNN_PROVIDER=cuda EDGECNN_PARITY_REPORT="$OUT/parity_cuda.md" \
                    EDGECNN_FULL_MATRIX=1 "$PY" -m pytest -p no:cacheprovider -q -n 8 "$REPO/tests/test_parity_matrix.py" ;;
        *) echo "unknown step $name (env tests bench checks deform overhead matrix)"; exit 2 ;;
    esac
done
rm -rf "$WORK"
