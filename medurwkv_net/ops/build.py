"""Build and load the Bi-WKV C++ / CUDA extensions with ``torch.utils.cpp_extension`` (ninja).

Extensions compile on first use and are cached in the torch extensions folder
(``$TORCH_EXTENSIONS_DIR`` or torch's default). The cache key includes a hash of the sources, the
flags and the torch version, so a changed kernel or torch rebuilds. ``python -m medurwkv_net
build-ext`` prebuilds (see :func:`build_ext`).

CUDA: ``CUDA_HOME`` / ``CUDA_PATH`` are used when they hold ``bin/nvcc``; otherwise the toolkit is
found from the ``nvcc`` on ``PATH`` (following wrapper scripts via ``nvcc -dryrun``). Targets are
sm_80, sm_86, sm_89, sm_90 plus compute_90 PTX unless ``TORCH_CUDA_ARCH_LIST`` is set.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import torch

__all__ = ["build_ext", "load_extension", "csrc_dir", "find_cuda_home", "cuda_arch_flags"]

_CPU_SOURCES = ("bi_wkv_cpu.cpp",)
_CUDA_SOURCES = ("bi_wkv_cuda.cu",)
_DEFAULT_ARCHS = ("80", "86", "89", "90")
_LOADED: Dict[bool, ModuleType] = {}
_ERRORS: Dict[bool, BaseException] = {}
_LOCK = threading.Lock()


def csrc_dir() -> Path:
    """Folder holding the kernel sources.

    Looks at ``$MEDURWKV_CSRC_DIR``, then ``<repo>/csrc`` (editable install / source checkout), then
    ``medurwkv_net/csrc`` (sources shipped inside the package).

    Raises:
        FileNotFoundError: no candidate holds ``bi_wkv_cpu.cpp``.
    """
    here = Path(__file__).resolve()
    candidates: List[Path] = []
    env = os.environ.get("MEDURWKV_CSRC_DIR")
    if env:
        candidates.append(Path(env))
    candidates += [here.parents[2] / "csrc", here.parents[1] / "csrc"]
    for c in candidates:
        if (c / _CPU_SOURCES[0]).is_file():
            return c
    raise FileNotFoundError(
        "Bi-WKV kernel sources not found (looked for bi_wkv_cpu.cpp in "
        + ", ".join(str(c) for c in candidates)
        + "); install from a source checkout or set MEDURWKV_CSRC_DIR"
    )


def _cuda_home_ok(path: Optional[str]) -> bool:
    return bool(path) and (Path(path) / "bin" / "nvcc").exists()


def find_cuda_home() -> Optional[str]:
    """CUDA toolkit folder (holding ``bin/nvcc`` and ``lib64``), or None.

    Order: ``$CUDA_HOME``, ``$CUDA_PATH``, then the ``nvcc`` on ``PATH``: its real location after
    symlinks, or (for wrapper scripts that exec the real compiler) the ``_HERE_`` folder that
    ``nvcc -dryrun`` reports.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _cuda_home_ok(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    real = Path(os.path.realpath(nvcc))
    if (real.parent.parent / "include" / "cuda_runtime.h").exists():
        return str(real.parent.parent)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.cu"
            src.write_text("__global__ void probe() {}\n")
            out = subprocess.run(
                [nvcc, "-dryrun", "-c", str(src), "-o", str(Path(tmp) / "probe.o")],
                capture_output=True, text=True, timeout=60,
            )
        m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, flags=re.M)
        if m:
            home = Path(m.group(1).strip()).resolve().parent
            if _cuda_home_ok(str(home)):
                return str(home)
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def cuda_arch_flags() -> List[str]:
    """nvcc ``-gencode`` flags: sm_80/86/89/90 + compute_90 PTX, or [] when TORCH_CUDA_ARCH_LIST is set
    (torch then derives the flags from it)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in _DEFAULT_ARCHS]
    last = _DEFAULT_ARCHS[-1]
    return flags + [f"-gencode=arch=compute_{last},code=compute_{last}"]


def _flags(cuda: bool) -> Dict[str, List[str]]:
    if cuda:
        return {
            "extra_cflags": ["-O3"],
            "extra_cuda_cflags": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"] + cuda_arch_flags(),
            "extra_ldflags": [],
        }
    omp = [] if sys.platform == "darwin" else ["-fopenmp"]
    # -Wno-psabi: GCC notes that 128-byte vector arguments changed ABI in GCC 4.6; the kernel's
    # vector helpers are all inlined, so no such argument crosses a call.
    return {"extra_cflags": ["-O3", "-std=c++17", "-Wno-psabi"] + omp, "extra_cuda_cflags": [], "extra_ldflags": omp}


def _name_and_dir(cuda: bool, sources: List[Path], flags: Dict[str, List[str]]):
    h = hashlib.sha256()
    for s in sources:
        h.update(s.name.encode())
        h.update(s.read_bytes())
    h.update(repr(sorted(flags.items())).encode())
    h.update(torch.__version__.encode())
    h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    name = f"medurwkv_bi_wkv_{'cuda' if cuda else 'cpu'}_{h.hexdigest()[:12]}"
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    return name, Path(root) / name


def _build(cuda: bool, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    src_dir = csrc_dir()
    sources = [src_dir / s for s in (_CUDA_SOURCES if cuda else _CPU_SOURCES)]
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"Bi-WKV kernel source missing: {s}")
    if cuda:
        home = find_cuda_home()
        if home is None:
            raise RuntimeError("CUDA toolkit not found: set CUDA_HOME or put nvcc on PATH")
        os.environ.setdefault("CUDA_HOME", home)
        # cpp_extension reads CUDA_HOME once at import time; keep it consistent with what we found.
        if not _cuda_home_ok(getattr(cpp_extension, "CUDA_HOME", None)):
            cpp_extension.CUDA_HOME = home
        if torch.version.cuda is None:
            raise RuntimeError(f"torch {torch.__version__} is built without CUDA")
    flags = _flags(cuda)
    name, build_dir = _name_and_dir(cuda, sources, flags)
    build_dir.mkdir(parents=True, exist_ok=True)
    if not list(build_dir.glob(f"{name}*.so")) and not list(build_dir.glob(f"{name}*.pyd")):
        print(
            f"medurwkv_net: compiling the Bi-WKV {'CUDA' if cuda else 'CPU'} kernel into {build_dir} "
            "(first use only) ...",
            file=sys.stderr,
            flush=True,
        )
    return cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        build_directory=str(build_dir),
        verbose=verbose,
        with_cuda=cuda,
        **flags,
    )


def load_extension(cuda: bool = False, verbose: bool = False) -> ModuleType:
    """Return the compiled Bi-WKV extension (building it on first use).

    Args:
        cuda: the CUDA extension instead of the CPU one.
        verbose: show the compiler commands.

    Raises:
        Exception: whatever the build or import raised (remembered: later calls re-raise it
            without rebuilding).
    """
    with _LOCK:
        if cuda in _LOADED:
            return _LOADED[cuda]
        if cuda in _ERRORS:
            raise _ERRORS[cuda]
        try:
            mod = _build(cuda, verbose)
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            if isinstance(err, SystemExit):  # cpp_extension may exit on ninja failure
                err = RuntimeError(f"build failed ({err})")
            _ERRORS[cuda] = err
            raise err
        _LOADED[cuda] = mod
        return mod


def build_ext(cuda: Optional[bool] = None, verbose: bool = False) -> str:
    """Prebuild the Bi-WKV extensions (``python -m medurwkv_net build-ext [--cuda]``).

    Args:
        cuda: True builds CPU and CUDA kernels, False only the CPU kernel, None the CUDA one too when
            a CUDA toolkit and a CUDA build of torch are present.
        verbose: show compiler commands.

    Returns:
        A one-line summary naming the built extension files (the CLI prints it).

    Raises:
        RuntimeError: a requested build failed.
    """
    if cuda is None:
        cuda = torch.version.cuda is not None and find_cuda_home() is not None
    built = []
    for want_cuda in ([False, True] if cuda else [False]):
        try:
            mod = load_extension(cuda=want_cuda, verbose=verbose)
        except Exception as err:
            raise RuntimeError(f"building the {'CUDA' if want_cuda else 'CPU'} Bi-WKV kernel failed: {err}") from err
        built.append(f"{'cuda' if want_cuda else 'cpu'}: {mod.__file__}")
    return "built " + "; ".join(built)
