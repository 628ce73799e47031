#!/usr/bin/env bash
# Settle the Bi-WKV CUDA path on any NVIDIA GPU in under five minutes: build, accuracy against float64
# in every dtype (shapes at chunk boundaries, T = 1), extreme ranges, compute-sanitizer memcheck and
# initcheck, B*T*C > 2^31, a side stream, bitwise determinism, a second device, no host
# synchronisation, CUDA graph capture and torch.compile, bandwidth against a device copy, the VRWKV
# reference features and a Med-URWKV bf16 training step against the CPU kernel.
# One PASS/FAIL/SKIP line per check, then a summary; exit status 1 if any check failed.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--only GROUPS] [--tolerance-scale X]
#   --dry-run (automatic without a GPU): the same checks on the CPU kernel at small sizes.
#   Python: $PYTHON, else python3 (a CUDA build of torch and this package's dependencies).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
cd "$here"
exec "$py" "$here/benchmarks/gpu_check.py" "$@"
