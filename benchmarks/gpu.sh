#!/usr/bin/env bash
# The GPU checks of lorsp, one script, at most 8 minutes on one H100/H200; never needs Ray.
#
#   benchmarks/gpu.sh --fetch-wheels   # on a machine with pip and a registry: the wheels a bare GPU
#                                      # machine lacks, into .whl/ (git-ignored; carry it there)
#   benchmarks/gpu.sh                  # on the GPU machine: CUDA tests, step and data benchmarks
#   benchmarks/gpu.sh --cpu            # the same steps end to end on CPU, tiny settings (no GPU)
#
# What runs, each step under its own time limit (they add up to 7.3 minutes; a step that runs out is
# reported and the script goes on):
#   1. CUDA tests: tests/test_cuda.py (bf16 autocast against fp32: forward, gradients, a training
#      run) and the Triton kernels against the eager path (tests/test_prompts.py: on CUDA, and in
#      Triton's CPU interpreter).
#   2. benchmarks/step.py: ViT-B/16, 224 px, batch 128, bf16, random weights (no download) for none,
#      lorvp, lorsp (K=4, T=8) and spike_nvpt; the LoRSP T/K sweep; peak memory; SpikingJelly's
#      reference neurons for contrast. Then the eager (non-Triton) LoRSP path, for contrast.
#   3. benchmarks/data.py: on-device batching against the step it feeds.
#   4. The targets, read from step.json: LoRSP step <= 1.10 x LoR-VP, memory <= 1.15 x; LoR-VP <= 1.05 x none.
# Results (logs and JSON) go to $OUT when set (the device tool's output folder), else ./gpu-results.
#
# A bare GPU machine has torch, timm, triton, numpy, pyarrow, PIL, yaml and pytest, but not pydantic
# (lorsp.config) or SpikingJelly: they come from .whl/, installed into a private folder on PYTHONPATH.
# Ray, Optuna and MLflow are never imported: lorsp.prompts, .model, .data and .train do not use them.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=(
  "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"
  "typing-extensions==4.16.0" "spikingjelly==2.0.0" "loguru==0.7.3"  # SpikingJelly imports loguru
)
MODE=gpu
case "${1:-}" in
  --fetch-wheels)
    mkdir -p .whl
    for w in "${WHEELS[@]}"; do
      "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d .whl "$w" || exit 1
    done
    ls -l .whl
    exit 0 ;;
  --cpu) MODE=cpu ;;
  "") ;;
  *) echo "usage: benchmarks/gpu.sh [--cpu | --fetch-wheels]" >&2; exit 2 ;;
esac

RESULTS=${OUT:-gpu-results}
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# Carried wheels, only for what this Python lacks.
if ! "$PY" -c "import pydantic, spikingjelly.activation_based.neuron" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: this Python lacks pydantic or spikingjelly and .whl/ is empty: run benchmarks/gpu.sh --fetch-wheels where pip can reach a registry, and carry .whl" >&2
    exit 2
  fi
  SITE=$(mktemp -d /tmp/lorsp-site.XXXX)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl || exit 2
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
"$PY" - <<'EOF' || exit 2
import sys
import lorsp.train, lorsp.model, lorsp.data  # noqa: F401  (the method layer and the data path)
for name in ("ray", "optuna", "mlflow"):
    assert name not in sys.modules, f"{name} was imported: the GPU checks must run without it"
import torch
print(f"gpu.sh: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"cuda {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
EOF
if [ "$MODE" = gpu ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu.sh: no CUDA device; run with --cpu for the CPU rehearsal" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

status=0
step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to $RESULTS/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  local tick=$SECONDS
  echo; echo "=== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - tick))s"
  [ "$rc" -eq 0 ] || status=1
}

TESTS=(tests/test_cuda.py "tests/test_prompts.py::test_triton_kernels_equal_eager_path_in_interpreter"
       "tests/test_prompts.py::test_lorsp_on_cuda_matches_cpu" "tests/test_prompts.py::test_lorsp_neurons_run_in_fp32_under_autocast")
step tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}"
if [ "$MODE" = gpu ]; then
  BENCH=(--config gpu)
else
  BENCH=(--config cpu --threads 1 --rounds 1 --reps 1 --batch-size 16)
fi
# methods first, on their own: the targets below read its JSON even if a later step runs out of time
step step 120 "$PY" benchmarks/step.py "${BENCH[@]}" --sections methods --json "$RESULTS/step.json"
step sweep 110 "$PY" benchmarks/step.py "${BENCH[@]}" --sections sweep,reference --json "$RESULTS/sweep.json"
if [ "$MODE" = gpu ]; then
  step step_eager 50 env LORSP_LIF_BACKEND=torch "$PY" benchmarks/step.py --config gpu --sections methods \
    --rounds 3 --reps 2 --json "$RESULTS/step_eager.json"
  step data 40 "$PY" benchmarks/data.py --config gpu --json "$RESULTS/data.json"
else
  step data 40 "$PY" benchmarks/data.py --config cpu --threads 1 --batches 2 --rounds 1 --json "$RESULTS/data.json"
fi

echo; echo "=== targets"
"$PY" - "$RESULTS/step.json" "$MODE" <<'EOF' || status=1
import json, sys
path, mode = sys.argv[1], sys.argv[2]
try:
    methods = json.load(open(path))["methods"]
except (OSError, KeyError, ValueError) as err:
    sys.exit(f"no step figures to check ({err})")
ls = next(k for k in methods if k.startswith("lorsp"))
share = methods["lorvp"]["prompt_share"]
checks = [("LoRSP step / LoR-VP", methods[ls]["x_lorvp"][0], 1.10),
          # `none` skips the backward pass through the frozen backbone that every pixel prompt needs, so
          # the whole-step ratio is ~2 by construction; what LoR-VP itself adds is its prompt's share.
          ("LoR-VP step / the same step without its prompt", 1 / (1 - share), 1.05)]
if "peak_mib" in methods[ls]:
    checks.append(("LoRSP peak memory / LoR-VP", methods[ls]["peak_mib"] / methods["lorvp"]["peak_mib"], 1.15))
for what, value, target in checks:
    verdict = ("met" if value <= target else "MISSED") if mode == "gpu" else "(CPU rehearsal: not a GPU figure)"
    print(f"{what}: {value:.3f} (target <= {target:.2f}) {verdict}")
print(f"LoR-VP step / none: {methods['lorvp']['x_none'][0]:.3f} (none has no backward through the backbone)")
EOF
echo; echo "gpu.sh: done in ${SECONDS}s, exit $status; logs and JSON in $RESULTS/"
exit $status
