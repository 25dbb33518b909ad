#!/usr/bin/env bash
# Launch DDP training with torchrun on one machine.
#   scripts/train.sh [NPROC] [--config FILE] [key=value ...]
# NPROC defaults to $NPROC, else the number of visible GPUs, else 2 CPU processes (gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then NPROC=$1; shift; fi
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c "import torch; print(torch.cuda.device_count() or 2)")
fi
exec torchrun --standalone --nproc_per_node="$NPROC" run.py train-rvq-ddp "$@"
