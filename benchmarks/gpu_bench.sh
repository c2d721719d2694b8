#!/usr/bin/env bash
# GPU benchmark of the upscaling (issue 13 deliverable 7): compute-limit and end-to-end
# pixel-days/s at the GPU shape, and the maximum deviation of tf32 / bf16 from fp32.
# Budget: <= 8 minutes on one H100/H200 (bench preset: 320 x 320 px, 2 years).
#
#   benchmarks/gpu_bench.sh                          # CUDA, bench preset
#   benchmarks/gpu_bench.sh --device cpu --preset tiny   # the same script on a CPU (tested)
#
# Extra arguments go to python -m kgml_grid.bench.gpu (see --help). Writes
# benchmarks/results/gpu_bench_<device>_<preset>.json unless --out is given.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then py="$here/.venv/bin/python"; else py=python3; fi
fi
device=cuda preset=bench out=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --device) device="${args[$((i + 1))]}" ;;
    --preset) preset="${args[$((i + 1))]}" ;;
    --out) out="${args[$((i + 1))]}" ;;
  esac
done
if [[ -z "$out" ]]; then
  out="$here/benchmarks/results/gpu_bench_${device//:/}_${preset}.json"
  args+=(--out "$out")
fi
cd "$here"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
timeout 480 "$py" -m kgml_grid.bench.gpu "${args[@]}"
echo "gpu_bench: wrote $out in $(($(date +%s) - start)) s" >&2
