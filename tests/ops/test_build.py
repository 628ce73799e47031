"""Kernel build settings: sources inside the package, torch's compiler flags, CUDA targets and toolkit
discovery, and the fallback when a GPU has no image of the kernel."""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import pytest
import torch

import medurwkv_net
from medurwkv_net.ops import ENV_BACKEND, bi_wkv, bi_wkv_ref
from medurwkv_net.ops import bi_wkv_interface as iface
from medurwkv_net.ops import build


def test_sources_ship_inside_the_package(monkeypatch):
    monkeypatch.delenv("MEDURWKV_CSRC_DIR", raising=False)
    d = build.csrc_dir()
    assert d == Path(medurwkv_net.__file__).resolve().parent / "csrc"
    assert (d / "bi_wkv_cpu.cpp").is_file() and (d / "bi_wkv_cuda.cu").is_file()
    monkeypatch.setenv("MEDURWKV_CSRC_DIR", str(d.parent / "no_such_dir"))
    with pytest.raises(FileNotFoundError, match="MEDURWKV_CSRC_DIR"):
        build.csrc_dir()


def test_cpu_flags_leave_the_language_standard_to_torch():
    flags = build._flags(cuda=False)
    assert not [f for f in flags["extra_cflags"] if f.startswith("-std")], flags


def test_default_cuda_targets_cover_turing_to_hopper_plus_ptx(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert build.cuda_targets() == ["7.5", "8.0", "8.6", "8.9", "9.0+PTX"]
    flags = build.cuda_arch_flags()
    for arch in ("75", "80", "86", "89", "90"):
        assert f"-gencode=arch=compute_{arch},code=sm_{arch}" in flags
    assert "-gencode=arch=compute_90,code=compute_90" in flags  # PTX for newer GPUs
    assert len(flags) == 6
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;8.6+PTX")
    assert build.cuda_arch_flags() == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_86,code=sm_86",
        "-gencode=arch=compute_86,code=compute_86",
    ]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Ampere")
    assert build.cuda_targets() is None and build.cuda_arch_flags() == []  # names: torch expands them


def test_nvcc_compiles_the_targets_in_parallel(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(build.os, "cpu_count", lambda: 2)
    flags = build._flags(cuda=True)["extra_cuda_cflags"]
    assert flags[flags.index("--threads") + 1] == "2"
    monkeypatch.setattr(build.os, "cpu_count", lambda: 64)  # never more threads than -gencode targets
    flags = build._flags(cuda=True)["extra_cuda_cflags"]
    assert flags[flags.index("--threads") + 1] == str(len(build.cuda_arch_flags()))


@pytest.mark.parametrize(
    "capability,targets,expected",
    [
        ((7, 5), None, True),  # T4, RTX 20xx
        ((8, 6), None, True),
        ((8, 7), None, True),  # sm_86 binary runs on 8.7
        ((9, 0), None, True),
        ((12, 0), None, True),  # newer than every binary: the compute_90 PTX
        ((7, 0), None, False),  # V100: older than every target
        ((6, 1), None, False),
        ((7, 5), ["8.0", "9.0"], False),
        ((10, 0), ["8.0", "9.0"], False),  # no PTX: nothing for a newer major version
        ((9, 0), ["9.0a"], True),
        ((10, 0), ["9.0a"], False),
        ((8, 9), ["8.0+PTX"], True),
    ],
)
def test_device_has_kernel_image(monkeypatch, capability, targets, expected):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert build.device_has_kernel_image(capability, targets) is expected


def _fake_toolkit(root: Path) -> Path:
    for sub in ("bin", "include", "lib64"):
        (root / sub).mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64" / "libcudart.so").write_text("")
    nvcc = root / "bin" / "nvcc"
    # what nvcc -dryrun prints first: the folder of the real compiler
    nvcc.write_text(f'#!/bin/sh\necho "#$ _HERE_={root / "bin"}"\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


def test_cuda_home_found_behind_an_nvcc_wrapper(tmp_path, monkeypatch):
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = tmp_path / "usr_local"
    (wrapper / "bin").mkdir(parents=True)
    script = wrapper / "bin" / "nvcc"
    script.write_text(f'#!/bin/sh\nexec {toolkit / "bin" / "nvcc"} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{wrapper / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("CUDA_HOME", str(wrapper))  # torch's guess: the wrapper's folder, no libraries
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert build._toolkit_problem(str(wrapper)) is not None
    assert build.find_cuda_home() == str(toolkit)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert build.find_cuda_home() == str(toolkit)


class _NoImageExtension:
    """A compiled extension whose launches fail as on a GPU the build did not target."""

    calls = 0

    def forward(self, w, u, k, v):
        type(self).calls += 1
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\n"
                           "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.")


def test_launch_without_kernel_image_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(build, "load_extension", lambda cuda=False, verbose=False: _NoImageExtension())
    monkeypatch.setattr(iface, "_WARNED", set())
    monkeypatch.setattr(iface, "_UNSUPPORTED_DEVICES", set())
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(8, generator=g) / 30, torch.randn(8, generator=g) / 30
    k, v = torch.randn(2, 30, 8, generator=g), torch.randn(2, 30, 8, generator=g)
    with pytest.warns(RuntimeWarning, match="no kernel image is available.*pure-PyTorch") as record:
        y = bi_wkv(w, u, k, v)
    assert len([r for r in record if "kernel" in str(r.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y2 = bi_wkv(w, u, k, v)  # later calls: silent, and no further launch attempt
    assert _NoImageExtension.calls == 1
    torch.testing.assert_close(y, bi_wkv_ref(w, u, k, v), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2, y)


def test_other_launch_errors_propagate(monkeypatch):
    class Broken:
        def forward(self, w, u, k, v):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(build, "load_extension", lambda cuda=False, verbose=False: Broken())
    monkeypatch.setattr(iface, "_UNSUPPORTED_DEVICES", set())
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        bi_wkv(torch.zeros(4), torch.zeros(4), torch.randn(1, 5, 4), torch.randn(1, 5, 4))


def test_gpu_outside_the_targets_is_refused_before_launch(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(iface, "_UNSUPPORTED_DEVICES", set())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    why = iface._device_unsupported("cuda", torch.device("cuda:0"))
    assert "7.5, 8.0, 8.6, 8.9, 9.0+PTX" in why and "Tesla V100" in why and "7.0" in why
    hint = iface._arch_hint(torch.device("cuda:0"))
    assert 'TORCH_CUDA_ARCH_LIST="7.0"' in hint and "build-ext" in hint
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert iface._device_unsupported("cuda", torch.device("cuda:0")) is None


def test_shared_header_is_part_of_the_build_hash(tmp_path, monkeypatch):
    """Both kernels include bi_wkv_math.cuh: editing it must rebuild them (a new build folder)."""
    import shutil

    src = tmp_path / "csrc"
    shutil.copytree(build.csrc_dir(), src)
    monkeypatch.setenv("MEDURWKV_CSRC_DIR", str(src))
    before = (build.extension_dir(cuda=False), build.extension_dir(cuda=True))
    header = src / "bi_wkv_math.cuh"
    header.write_text(header.read_text() + "\n// edited\n")
    after = (build.extension_dir(cuda=False), build.extension_dir(cuda=True))
    assert before[0] != after[0] and before[1] != after[1]
