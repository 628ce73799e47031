"""Checks an installed medurwkv-net wheel as a user gets it (run from outside the repository).

- the package is imported from site-packages, not from a source tree;
- the kernel sources are inside it and the CPU kernel compiles and runs with no fallback warning;
- ``bi_wkv`` on CPU agrees with ``bi_wkv_ref`` to 1e-5;
- ``medurwkv-net --help`` and ``<command> --help`` exit 0 for every command.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import torch

import medurwkv_net
from medurwkv_net.cli import COMMANDS
from medurwkv_net.ops import bi_wkv, bi_wkv_ref, build

site = Path(sysconfig.get_paths()["purelib"]).resolve()
pkg = Path(medurwkv_net.__file__).resolve().parent
assert pkg.parent == site, f"medurwkv_net imported from {pkg}, not from the installed wheel in {site}"
assert all((pkg / "csrc" / n).is_file() for n in ("bi_wkv_cpu.cpp", "bi_wkv_cuda.cu", "bi_wkv_math.cuh"))
print(f"check_wheel: torch {torch.__version__}; medurwkv_net {medurwkv_net.__version__} from {pkg}")

g = torch.Generator().manual_seed(0)
w, u = torch.randn(32, generator=g) / 100, torch.randn(32, generator=g) / 100
k, v = torch.randn(2, 100, 32, generator=g), torch.randn(2, 100, 32, generator=g)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y = bi_wkv(w, u, k, v)
fallback = [str(c.message) for c in caught if "pure-PyTorch" in str(c.message)]
assert not fallback, f"bi_wkv fell back to the PyTorch path: {fallback}"
kernel = build._LOADED.get(False)
assert kernel is not None, "bi_wkv did not run the compiled CPU kernel"
err = (y - bi_wkv_ref(w, u, k, v)).abs().max().item()
assert err < 1e-5, f"CPU kernel differs from bi_wkv_ref by {err:.2e}"
print(f"check_wheel: CPU kernel {kernel.__file__}; max |bi_wkv - bi_wkv_ref| = {err:.1e}")

exe = str(Path(sys.executable).parent / "medurwkv-net")  # the environment's scripts folder, as pip installs it
assert Path(exe).is_file(), f"the medurwkv-net console script is not installed ({exe} is missing)"
for args in [[exe, "--help"], [sys.executable, "-m", "medurwkv_net", "--help"]] + [
    [exe, name, "--help"] for name in COMMANDS
]:
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip(), f"{' '.join(args[1:])}: exit {out.returncode}\n{out.stderr}"
print(f"check_wheel: --help exits 0 for the CLI and its {len(COMMANDS)} commands; OK")
