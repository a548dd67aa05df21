#!/usr/bin/env bash
# The GPU suite: the same notebooks as the CPU suite, run by papermill with mode=gpu on a GPU
# host, executed copies (and each notebook's figures JSON) under _runs/gpu/<UTC stamp>/.
#   bash tools/gpu_suite.sh [NOTEBOOK ...]      default: every notebook in nbs/
# Run bash tools/setup.sh first. Needs nvidia-smi and a CUDA build of torch (tools/setup.sh
# installs one). Exits non-zero if any notebook fails; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
export IN_TEST=1 MPLBACKEND=Agg HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} YOLO_OFFLINE=${YOLO_OFFLINE:-1}
out="_runs/gpu/$(date -u +%Y%m%dT%H%M%SZ)"; mkdir -p "$out"
export S1C_FIGURES_DIR="$PWD/$out/figures"   # each notebook records its figures here
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1 || { echo "no GPU visible (nvidia-smi failed)"; exit 2; }
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" || exit 2
nbs=("$@"); [ ${#nbs[@]} -gt 0 ] || nbs=(nbs/[0-9]*.ipynb)
fail=0
for nb in "${nbs[@]}"; do
  name=$(basename "$nb"); t=$(date +%s)
  if (cd nbs && ../.venv/bin/papermill "$name" "../$out/$name" -p mode gpu -k python3 --language python --cwd . >"../$out/${name%.ipynb}.log" 2>&1); then
    echo "ok    $name  $(( $(date +%s) - t )) s"
  else
    echo "FAIL  $name  $(( $(date +%s) - t )) s  (see $out/${name%.ipynb}.log)"; fail=1
  fi
done
echo "gpu suite: $out ($(head -2 "$out/gpu.csv" | tail -1))"
exit $fail
