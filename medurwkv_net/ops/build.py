"""Build and load the Bi-WKV C++ / CUDA extensions with ``torch.utils.cpp_extension`` (ninja).

The kernel sources ship inside the package (``medurwkv_net/csrc/``), so an installed wheel builds them
as a source checkout does. Extensions compile on first use and are cached in the torch extensions
folder (``$TORCH_EXTENSIONS_DIR`` or torch's default); the folder name holds a hash of the sources, the
flags, the CUDA targets and the torch version, so a changed kernel or torch rebuilds.
``python -m medurwkv_net build-ext`` prebuilds (see :func:`build_ext`).

Compiler flags: torch's own (its C++ standard included) plus optimisation and OpenMP; nothing that
contradicts what the installed torch asks for.

Builds are guarded by :class:`~medurwkv_net.ops.build_lock.BuildLock`: a process waits a bounded time
for another one that is building, with a message naming it; a build that was killed leaves nothing
that blocks later runs. A finished build leaves a marker with the library's SHA-256; a library with a
matching marker is imported directly, without a build step.

CUDA: the toolkit is ``$CUDA_HOME`` / ``$CUDA_PATH`` when they hold a complete toolkit (``bin/nvcc``,
``include/cuda_runtime.h`` and ``lib64/`` or ``lib/`` with ``libcudart.so``); otherwise it is found
from the ``nvcc`` on ``PATH``, following symlinks and wrapper scripts (``nvcc -dryrun``). Targets are
sm_75, sm_80, sm_86, sm_89 and sm_90 plus compute_90 PTX (newer GPUs compile the PTX) unless
``TORCH_CUDA_ARCH_LIST`` is set.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .build_lock import TORCH_LOCK_NAME, BuildLock

__all__ = [
    "build_ext",
    "load_extension",
    "csrc_dir",
    "find_cuda_home",
    "cuda_targets",
    "cuda_arch_flags",
    "device_has_kernel_image",
    "extension_dir",
    "KernelBuildError",
    "REBUILD_HINT",
]

_CPU_SOURCES = ("bi_wkv_cpu.cpp",)
_CUDA_SOURCES = ("bi_wkv_cuda.cu",)
_HEADERS = ("bi_wkv_math.cuh",)  # included by both kernels: part of the build's hash
_DEFAULT_TARGETS = ("7.5", "8.0", "8.6", "8.9", "9.0+PTX")
_MARKER_SUFFIX = ".sha256"
_LOADED: Dict[bool, ModuleType] = {}
_ERRORS: Dict[bool, BaseException] = {}
_LOCK = threading.Lock()

REBUILD_HINT = "python -m medurwkv_net build-ext --clean"


class KernelBuildError(RuntimeError):
    """A Bi-WKV extension could not be built or imported; ``build_dir`` names its folder (or None).

    Args:
        message: what failed and what to do.
        build_dir: the extension's build folder, if known.
    """

    def __init__(self, message: str, build_dir: Optional[Path] = None) -> None:
        super().__init__(message)
        self.build_dir = build_dir


def csrc_dir() -> Path:
    """Folder holding the kernel sources: ``$MEDURWKV_CSRC_DIR`` if set, else ``medurwkv_net/csrc``.

    Raises:
        FileNotFoundError: the folder does not hold ``bi_wkv_cpu.cpp``.
    """
    env = os.environ.get("MEDURWKV_CSRC_DIR")
    folder = Path(env) if env else Path(__file__).resolve().parents[1] / "csrc"
    if not (folder / _CPU_SOURCES[0]).is_file():
        hint = "unset MEDURWKV_CSRC_DIR or point it at" if env else "reinstall medurwkv-net; the package must contain"
        raise FileNotFoundError(
            f"Bi-WKV kernel sources not found: {folder / _CPU_SOURCES[0]} does not exist ({hint} "
            "the folder with bi_wkv_cpu.cpp and bi_wkv_cuda.cu)"
        )
    return folder


def _toolkit_problem(path: Optional[str]) -> Optional[str]:
    """What a folder lacks to be a CUDA toolkit, or None when it is complete."""
    if not path:
        return "not set"
    root = Path(path)
    if not (root / "bin" / "nvcc").exists():
        return "no bin/nvcc"
    if not (root / "include" / "cuda_runtime.h").exists():
        return "no include/cuda_runtime.h (a wrapper folder, not the toolkit?)"
    if not any((root / lib).glob("libcudart.so*") for lib in ("lib64", "lib")):
        return "no lib64/libcudart.so"
    return None


def _toolkit_behind_nvcc(nvcc: str) -> Optional[Path]:
    real = Path(os.path.realpath(nvcc)).parent.parent
    if _toolkit_problem(str(real)) is None:
        return real
    try:  # a wrapper script that execs the real compiler: nvcc -dryrun names its folder (_HERE_)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.cu"
            src.write_text("__global__ void probe() {}\n")
            out = subprocess.run(
                [nvcc, "-dryrun", "-c", str(src), "-o", str(Path(tmp) / "probe.o")],
                capture_output=True,
                text=True,
                timeout=60,
            )
        m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, flags=re.M)
        if m:
            home = Path(m.group(1).strip()).resolve().parent
            if _toolkit_problem(str(home)) is None:
                return home
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def find_cuda_home() -> Optional[str]:
    """CUDA toolkit folder (``bin/nvcc``, ``include/cuda_runtime.h``, ``lib64/libcudart.so``), or None.

    Order: ``$CUDA_HOME``, ``$CUDA_PATH``, the toolkit behind the ``nvcc`` on ``PATH`` (symlinks and
    wrapper scripts followed), ``/usr/local/cuda``. A variable that names an incomplete folder (for
    example one holding only an ``nvcc`` wrapper) is passed over.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _toolkit_problem(os.environ.get(var)) is None:
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        home = _toolkit_behind_nvcc(nvcc)
        if home is not None:
            return str(home)
    if _toolkit_problem("/usr/local/cuda") is None:
        return "/usr/local/cuda"
    return None


def _parse_targets(spec: str) -> Optional[List[str]]:
    items = [s for s in re.split(r"[;\s,]+", spec.strip()) if s]
    if not items or not all(re.fullmatch(r"\d+\.\d+a?(\+PTX)?", s) for s in items):
        return None
    return items


def cuda_targets() -> Optional[List[str]]:
    """CUDA targets of the build, e.g. ``["7.5", "8.0", "8.6", "8.9", "9.0+PTX"]`` (the default).

    ``TORCH_CUDA_ARCH_LIST`` replaces the default when set; None when it uses names torch expands
    itself (``"Ampere"``, ``"native"``), which are then passed on to torch unchanged.
    """
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    return list(_DEFAULT_TARGETS) if not env else _parse_targets(env)


def cuda_arch_flags() -> List[str]:
    """nvcc ``-gencode`` flags for :func:`cuda_targets` ([] when torch derives them from the variable)."""
    targets = cuda_targets()
    if targets is None:
        return []
    flags = []
    for t in targets:
        num = t.split("+")[0].replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if t.endswith("+PTX"):
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def device_has_kernel_image(capability: Tuple[int, int], targets: Optional[Sequence[str]] = None) -> Optional[bool]:
    """Whether a build for ``targets`` (default :func:`cuda_targets`) runs on a GPU of ``capability``.

    A device runs a binary for an earlier minor version of its own major version (sm_80 runs on 8.6),
    and PTX for any version up to its own. Arch-specific targets (``9.0a``) run only on their exact
    version.

    Returns:
        True or False; None when the targets are not known (names that torch expands).
    """
    targets = cuda_targets() if targets is None else list(targets)
    if targets is None:
        return None
    major, minor = capability
    for t in targets:
        base = t.split("+")[0]
        specific = base.endswith("a")
        t_major, t_minor = (int(x) for x in base.rstrip("a").split("."))
        if specific and (t_major, t_minor) == (major, minor):
            return True
        if not specific and t_major == major and t_minor <= minor:
            return True
        if t.endswith("+PTX") and (t_major, t_minor) <= (major, minor):
            return True
    return False


def _nvcc_threads(arch_flags: Sequence[str]) -> List[str]:
    """nvcc ``--threads``: compile the targets of the one ``.cu`` file in parallel (one per core, at most one
    per ``-gencode``; all cores when torch derives the targets itself)."""
    cores = os.cpu_count() or 1
    n = min(cores, len(arch_flags)) if arch_flags else cores
    return ["--threads", str(max(1, n))]


def _flags(cuda: bool) -> Dict[str, List[str]]:
    if cuda:
        arch = cuda_arch_flags()
        return {
            "extra_cflags": ["-O3"],
            "extra_cuda_cflags": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"] + arch + _nvcc_threads(arch),
            "extra_ldflags": [],
        }
    omp = [] if sys.platform == "darwin" else ["-fopenmp"]
    # -Wno-psabi: GCC notes that 128-byte vector arguments changed ABI in GCC 4.6; the kernel's
    # vector helpers are all inlined, so no such argument crosses a call.
    return {"extra_cflags": ["-O3", "-Wno-psabi"] + omp, "extra_cuda_cflags": [], "extra_ldflags": omp}


def _sources(cuda: bool) -> List[Path]:
    folder = csrc_dir()
    sources = [folder / s for s in (_CUDA_SOURCES if cuda else _CPU_SOURCES)]
    for s in sources:
        if not s.is_file():
            raise FileNotFoundError(f"Bi-WKV kernel source missing: {s}")
    return sources


def _extensions_root() -> Path:
    from torch.utils import cpp_extension

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root())


def _name_and_dir(cuda: bool, sources: List[Path], flags: Dict[str, List[str]]) -> Tuple[str, Path]:
    h = hashlib.sha256()
    for s in list(sources) + [csrc_dir() / name for name in _HEADERS]:
        h.update(s.name.encode())
        h.update(s.read_bytes())
    h.update(repr(sorted(flags.items())).encode())
    h.update(torch.__version__.encode())
    h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    name = f"medurwkv_bi_wkv_{'cuda' if cuda else 'cpu'}_{h.hexdigest()[:12]}"
    return name, _extensions_root() / name


def extension_dir(cuda: bool = False) -> Path:
    """The build folder the extension uses with the current sources, flags and torch."""
    return _name_and_dir(cuda, _sources(cuda), _flags(cuda))[1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _library(build_dir: Path, name: str) -> Path:
    from torch.utils.cpp_extension import LIB_EXT

    return build_dir / f"{name}{LIB_EXT}"


def _complete_library(build_dir: Path, name: str) -> Optional[Path]:
    """The built library when a finished build vouched for it (marker with its SHA-256), else None."""
    lib = _library(build_dir, name)
    marker = lib.with_name(lib.name + _MARKER_SUFFIX)
    try:
        if lib.is_file() and marker.read_text().strip() == _sha256(lib):
            return lib
    except OSError:
        pass
    return None


def _write_marker(lib: Path) -> None:
    marker = lib.with_name(lib.name + _MARKER_SUFFIX)
    tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    tmp.write_text(_sha256(lib) + "\n")
    os.replace(tmp, marker)


def _import_library(name: str, lib: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(name, str(lib))
    spec = importlib.util.spec_from_file_location(name, lib, loader=loader)
    assert spec is not None  # a spec is always made when the loader is given
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _prepare_cuda() -> None:
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise RuntimeError(f"torch {torch.__version__} is built without CUDA; install a CUDA build of torch")
    home = find_cuda_home()
    if home is None:
        raise RuntimeError(
            "CUDA toolkit not found: set CUDA_HOME to the toolkit folder (the one holding bin/nvcc, "
            "include/cuda_runtime.h and lib64/libcudart.so), or put its nvcc on PATH"
        )
    # cpp_extension reads CUDA_HOME once at import (from the variable or `which nvcc`), and a wrapper
    # script's folder has no libraries: use the complete toolkit found above.
    if _toolkit_problem(getattr(cpp_extension, "CUDA_HOME", None)) is not None:
        cpp_extension.CUDA_HOME = home
    if _toolkit_problem(os.environ.get("CUDA_HOME")) is not None:
        os.environ["CUDA_HOME"] = home


def torch_lock_blocks_when_left() -> bool:
    """Whether this torch's ``cpp_extension`` waits for its ``lock`` file to disappear (torch <= 2.13).

    Newer torch holds an advisory lock on that file instead, which the operating system releases when
    the holder dies; the file itself then stays and means nothing.
    """
    from torch.utils import cpp_extension

    code = getattr(getattr(cpp_extension, "_jit_compile", None), "__code__", None)
    return code is None or "FileBaton" in code.co_names


def _take_over_leftovers(build_dir: Path, name: str, what: str, finished: bool) -> None:
    """With the folder's lock held: clear what an interrupted build left, with one warning saying so."""
    torch_lock = build_dir / TORCH_LOCK_NAME
    if torch_lock.exists() and torch_lock_blocks_when_left():
        # No cooperating process is building (we hold the folder's lock): torch's file is left over and
        # would make cpp_extension wait for it forever.
        torch_lock.unlink(missing_ok=True)
        note = f"removed the stale build lock {torch_lock}, left by an interrupted build of {what}"
    elif not finished and (build_dir / "build.ninja").exists() and not _library(build_dir, name).exists():
        note = f"an earlier build of {what} in {build_dir} did not finish; building it again"
    else:
        return
    warnings.warn(f"medurwkv_net: {note}", RuntimeWarning, stacklevel=5)


def _build(cuda: bool, verbose: bool) -> ModuleType:
    from torch.utils import cpp_extension

    sources = _sources(cuda)
    flags = _flags(cuda)
    name, build_dir = _name_and_dir(cuda, sources, flags)
    what = f"the Bi-WKV {'CUDA' if cuda else 'CPU'} kernel"
    lib = _complete_library(build_dir, name)
    if lib is not None and not (torch_lock_blocks_when_left() and (build_dir / TORCH_LOCK_NAME).exists()):
        return _import_library(name, lib)
    with BuildLock(build_dir, what=what):
        lib = _complete_library(build_dir, name)  # perhaps finished by the process we waited for
        _take_over_leftovers(build_dir, name, what, finished=lib is not None)
        if lib is not None:
            return _import_library(name, lib)
        if cuda:
            _prepare_cuda()
        if not _library(build_dir, name).exists():
            print(f"medurwkv_net: compiling {what} into {build_dir} (first use only) ...", file=sys.stderr, flush=True)
        module = cpp_extension.load(
            name=name,
            sources=[str(s) for s in sources],
            build_directory=str(build_dir),
            verbose=verbose,
            with_cuda=cuda,
            extra_cflags=flags["extra_cflags"],
            extra_cuda_cflags=flags["extra_cuda_cflags"],
            extra_ldflags=flags["extra_ldflags"],
        )
        _write_marker(_library(build_dir, name))
        return module


def load_extension(cuda: bool = False, verbose: bool = False) -> ModuleType:
    """Return the compiled Bi-WKV extension (building it on first use).

    Args:
        cuda: the CUDA extension instead of the CPU one.
        verbose: show the compiler commands.

    Raises:
        KernelBuildError: the build, the wait for another process's build, or the import failed. The
            message names the cause and the build folder; later calls re-raise it without rebuilding.
    """
    with _LOCK:
        if cuda in _LOADED:
            return _LOADED[cuda]
        if cuda in _ERRORS:
            raise _ERRORS[cuda]
        build_dir = None
        try:
            build_dir = extension_dir(cuda)
            mod = _build(cuda, verbose)
        except BaseException as err:  # noqa: BLE001
            if isinstance(err, KeyboardInterrupt):
                raise
            reason = f"build failed ({err})" if isinstance(err, SystemExit) else f"{type(err).__name__}: {err}"
            where = f" (build folder {build_dir})" if build_dir is not None else ""
            wrapped = KernelBuildError(f"{reason}{where}", build_dir)
            _ERRORS[cuda] = wrapped
            raise wrapped from err
        _LOADED[cuda] = mod
        return mod


def _clean(cuda: bool) -> List[str]:
    """Remove this kind's build folders (every torch and source version); refuse one in use."""
    from torch.utils import cpp_extension

    removed = []
    kind = "cuda" if cuda else "cpu"
    folders = sorted(_extensions_root().glob(f"medurwkv_bi_wkv_{kind}_*"))
    for folder in folders:  # all checked before any is removed
        owner = BuildLock(folder).held_by_other()
        if owner is not None:
            raise RuntimeError(f"not removing {folder}: {owner} is building in it; wait for it or stop that process")
    for folder in folders:
        shutil.rmtree(folder)
        removed.append(str(folder))
        # torch remembers what it built in this process and would import the removed library again
        getattr(cpp_extension.JIT_EXTENSION_VERSIONER, "entries", {}).pop(folder.name, None)
    _LOADED.pop(cuda, None)
    _ERRORS.pop(cuda, None)
    return removed


def build_ext(cuda: Optional[bool] = None, clean: bool = False, verbose: bool = False) -> str:
    """Build the Bi-WKV kernels now instead of on first use.

    The libraries land in the torch extensions folder (``$TORCH_EXTENSIONS_DIR`` or torch's default);
    set ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"7.5"`` or ``"8.6+PTX"``) to build the CUDA kernel for other
    GPUs than the default sm_75/80/86/89/90 + PTX.

    Args:
        cuda: True builds the CPU and the CUDA kernel, False only the CPU kernel; by default the CUDA
            one too when a CUDA build of torch and a CUDA toolkit are present.
        clean: first remove the kernels' build folders (a damaged or interrupted build), then build.
        verbose: show the compiler commands.

    Returns:
        A summary naming the removed folders and the built libraries.

    Raises:
        RuntimeError: a requested build failed, or a folder to clean is in use by a running build.
    """
    if cuda is None:
        cuda = torch.version.cuda is not None and find_cuda_home() is not None
    lines = []
    for want_cuda in [False, True] if cuda else [False]:
        kind = "CUDA" if want_cuda else "CPU"
        if clean:
            removed = _clean(want_cuda)
            lines.append(f"removed {len(removed)} {kind} build folder(s)" + "".join(f"\n  {r}" for r in removed))
        try:
            mod = load_extension(cuda=want_cuda, verbose=verbose)
        except Exception as err:
            raise RuntimeError(f"building the {kind} Bi-WKV kernel failed: {err}") from err
        lines.append(f"built the {kind} kernel: {mod.__file__}")
    return "\n".join(lines)
