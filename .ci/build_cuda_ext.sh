#!/usr/bin/env bash
# Compile AND link the Bi-WKV CUDA extension (medurwkv_net/csrc/bi_wkv_cuda.cu) with nvcc, no GPU needed.
# Usage: .ci/build_cuda_ext.sh [PYTHON]   (PYTHON: an interpreter whose torch is a CUDA build;
#        default: $PYTHON, else python3). Exits non-zero, loudly, if anything fails.
# The toolkit is found the way users' runs find it (medurwkv_net.ops.build.find_cuda_home): CUDA_HOME when
# it is a complete toolkit, else the one behind the nvcc on PATH (wrapper scripts followed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-${PYTHON:-python3}}"

fail() { echo "build_cuda_ext: FAILED: $*" >&2; exit 1; }

command -v "$py" >/dev/null 2>&1 || fail "python interpreter '$py' not found"
"$py" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
  || fail "torch in '$py' is not a CUDA build ($("$py" -c 'import torch; print(torch.__version__)' 2>&1))"

# A fresh extensions folder so that a stale cache cannot hide a broken build.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(mktemp -d)}"
export MAX_JOBS="${MAX_JOBS:-2}"
cd "$here"
# The build helper needs only torch: import it from the source tree, without the package's other dependencies.
"$py" - <<'PY' || fail "compiling or linking the CUDA extension"
import sys

import torch

from medurwkv_net.ops import build

home = build.find_cuda_home()
if home is None:
    sys.exit("build_cuda_ext: no CUDA toolkit found (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda)")
print(f"build_cuda_ext: CUDA toolkit {home}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"targets {build.cuda_targets()}", flush=True)
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
