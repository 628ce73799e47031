#!/usr/bin/env bash
# Compile AND link the Bi-WKV CUDA extension (csrc/bi_wkv_cuda.cu) with nvcc, no GPU needed.
# Usage: .ci/build_cuda_ext.sh [PYTHON]   (PYTHON: an interpreter whose torch is a CUDA build;
#        default: $PYTHON, else python3). Exits non-zero, loudly, if anything fails.
# CUDA_HOME: taken from the environment when it holds bin/nvcc; otherwise derived from the nvcc on
# PATH (wrapper scripts that exec the real nvcc are followed via `nvcc -dryrun`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-${PYTHON:-python3}}"

fail() { echo "build_cuda_ext: FAILED: $*" >&2; exit 1; }

command -v "$py" >/dev/null 2>&1 || fail "python interpreter '$py' not found"
"$py" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
  || fail "torch in '$py' is not a CUDA build ($("$py" -c 'import torch; print(torch.__version__)' 2>&1))"

if [[ -z "${CUDA_HOME:-}" || ! -x "${CUDA_HOME}/bin/nvcc" ]]; then
  command -v nvcc >/dev/null 2>&1 || fail "nvcc not on PATH and CUDA_HOME not set"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  echo '__global__ void probe() {}' > "$tmp/probe.cu"
  here_dir="$(nvcc -dryrun -c "$tmp/probe.cu" -o "$tmp/probe.o" 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n1)"
  [[ -n "$here_dir" ]] || here_dir="$(dirname "$(readlink -f "$(command -v nvcc)")")"
  CUDA_HOME="$(cd "$here_dir/.." && pwd)"
fi
[[ -x "$CUDA_HOME/bin/nvcc" ]] || fail "no nvcc in CUDA_HOME=$CUDA_HOME"
ls "$CUDA_HOME"/lib64/libcudart.so* >/dev/null 2>&1 || fail "no lib64/libcudart.so in CUDA_HOME=$CUDA_HOME"
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
echo "build_cuda_ext: CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n1))"
echo "build_cuda_ext: torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')"

# A fresh extensions folder so that a stale cache cannot hide a broken build.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(mktemp -d)}"
export MAX_JOBS="${MAX_JOBS:-2}"
cd "$here"
"$py" - <<'PY' || fail "compiling or linking the CUDA extension"
import importlib.util
import sys

# Load the build helper by path: it needs only torch, not the package's other dependencies.
spec = importlib.util.spec_from_file_location("medurwkv_build", "medurwkv_net/ops/build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

try:
    mod = build.load_extension(cuda=True, verbose=True)
except BaseException as err:  # print the compiler's complaint before failing
    print(f"build_cuda_ext: {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(1)
for fn in ("forward", "backward"):
    if not callable(getattr(mod, fn, None)):
        sys.exit(f"extension lacks {fn}()")
print(f"build_cuda_ext: OK, linked and imported {mod.__file__}")
PY
