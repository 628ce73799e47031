#!/usr/bin/env bash
# MONAI Label integration check: `monailabel start_server` (monailabel 0.8.5, its monaibundle sample app) serves
# the demo bundle (NIfTI) and Kvasir-SEG (PNG) on 127.0.0.1, on CPU and offline; 3D Slicer's calls over REST
# (/info/, /activelearning/first, /train/<model> for one epoch, /infer/<model>) are checked by
# tests/integration/monailabel_check.py, in a separate virtual environment (monailabel 0.8.5 + monai 1.6.1
# beside torch 2.14.1 / torchvision 0.29.1 from the local wheel index).
#
#   .ci/monailabel_check.sh VENV [SOURCE_VENV]
#
# VENV: the environment to use; created when missing. If SOURCE_VENV (an environment that already has
# torch 2.14.1, e.g. a CUDA build environment) is given, VENV reads SOURCE_VENV's packages through a .pth
# file (nothing copied, torch not reinstalled; what VENV installs itself comes first on sys.path);
# otherwise torch 2.14.1 is installed from the package index. Run from anywhere.
set -euo pipefail
VENV=${1:?usage: .ci/monailabel_check.sh VENV [SOURCE_VENV]}
SOURCE_VENV=${2:-}
REPO="$(cd "$(dirname "$0")/.." && pwd)"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    if [ -n "$SOURCE_VENV" ]; then
        base="$("$SOURCE_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        own="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        echo "::: $VENV reads the packages of $SOURCE_VENV ($base)"
        echo "$base" > "$own/_base_environment.pth"
    fi
fi
PY="$VENV/bin/python"   # always 'python -m pip': VENV's own pip, whatever is on PATH
# The DICOM pins are the README's MONAI Label recipe: pydicom-seg (imported by monailabel's server) needs
# pydicom 2, and pynetdicom / dicomweb-client releases for pydicom 2 go with it.
echo "::: installing monailabel 0.8.5, monai 1.6.1, torch 2.14.1, torchvision 0.29.1 (and this package) into $VENV"
"$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "monai==1.6.1" "monailabel==0.8.5" \
    "pydicom==2.4.4" "pynetdicom==2.1.1" "dicomweb-client==0.59.3" \
    "pytorch-ignite>=0.5" "nilearn>=0.10" "fire>=0.6" "huggingface_hub>=0.24" safetensors tqdm tensorboard \
    matplotlib nibabel scipy
"$PY" -m pip install -q --no-deps -e "$REPO"
"$PY" -c "import torch, monai, monailabel; print('torch', torch.__version__, 'monai', monai.__version__, 'monailabel', monailabel.__version__)"

echo "::: MONAI Label server: /info/, /train/ (1 epoch) and /infer/ for the demo bundle (NIfTI) and Kvasir-SEG (PNG), CPU"
start=$SECONDS
CUDA_VISIBLE_DEVICES="" "$PY" "$REPO/tests/integration/monailabel_check.py" --bundle "$REPO/bundles/medurwkv_mni152_tissue" \
    --photo-bundle "$REPO/bundles/medurwkv_kvasir"
echo "::: MONAI Label server check took $((SECONDS - start)) s"
