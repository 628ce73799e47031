"""Build and run the CPU harness of the CUDA kernel math (``cuda_math_harness.cpp``).

The harness compiles ``medurwkv_net/csrc/bi_wkv_math.cuh`` with the host C++ compiler: the functions the
CUDA kernels call, with the kernels' chunk size and the warp scan emulated lane by lane.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

import medurwkv_net

HERE = Path(__file__).resolve().parent
CSRC = Path(medurwkv_net.__file__).resolve().parent / "csrc"
OUTPUTS = ("y", "yc", "lse", "gk", "gv")


def build(out_dir: Path, defines: Sequence[str] = ()) -> Path:
    """Compile the harness into ``out_dir`` (``defines``: extra ``-D`` macros, e.g. a mutation)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or c++) on PATH")
    exe = out_dir / ("cuda_math_harness" + "".join(f"_{d}" for d in defines))
    cmd = [cxx, "-O2", "-std=c++17", "-Wall", "-Werror", f"-I{CSRC}", str(HERE / "cuda_math_harness.cpp")]
    cmd += ["-o", str(exe)]
    cmd += [f"-D{d}" for d in defines]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def run(exe: Path, w, u, k, v, gy, precision: int, work: Path) -> Dict[str, torch.Tensor]:
    """Forward and backward of the CUDA math on the host; values are float64 tensors.

    Args:
        exe: the built harness.
        w, u: ``[C]``; k, v, gy: ``[B, T, C]`` (any float dtype; passed as float64, then rounded to
            the accumulation dtype by the harness).
        precision: 32 (float accumulation, as the kernels for float32/float16/bfloat16) or 64.
        work: a folder for the input and output files.

    Returns:
        ``y``, ``yc`` (centred output), ``lse``, ``gk``, ``gv`` as ``[B, T, C]`` and ``gw``, ``gu`` as ``[C]``.
    """
    B, T, C = k.shape
    head = np.array([precision, B, T, C], dtype=np.int64)
    arrays = [x.detach().double().cpu().contiguous().numpy().ravel() for x in (w, u, k, v, gy)]
    src, dst = work / "in.bin", work / "out.bin"
    with open(src, "wb") as f:
        f.write(head.tobytes())
        for a in arrays:
            f.write(a.tobytes())
    subprocess.run([str(exe), str(src), str(dst)], check=True)
    flat = torch.from_numpy(np.fromfile(dst, dtype=np.float64))
    n = B * T * C
    out = {name: flat[i * n:(i + 1) * n].reshape(B, T, C) for i, name in enumerate(OUTPUTS)}
    out["gw"] = flat[5 * n:5 * n + C]
    out["gu"] = flat[5 * n + C:5 * n + 2 * C]
    return out
