"""Bi-WKV operator: public entry point, backend dispatch, kernel autograd Function and the O(T^2)
pure-PyTorch reference ``bi_wkv_ref`` (tests only).

Semantics (``docs/DESIGN.md`` section 2), for ``w, u: [C]`` and ``k, v: [B, T, C]``::

    num_t = sum_{i != t} exp(-(|t-i|-1) * w + k_i) * v_i  +  exp(u + k_t) * v_t
    den_t = sum_{i != t} exp(-(|t-i|-1) * w + k_i)        +  exp(u + k_t)
    out_t = num_t / den_t

Backends, all computing that function:

- ``"cpu"``: C++ kernel (``medurwkv_net/csrc/bi_wkv_cpu.cpp``), float32/float64, O(T), parallel over B*C.
- ``"cuda"``: CUDA kernel (``medurwkv_net/csrc/bi_wkv_cuda.cu``), float32/float16/bfloat16/float64, O(T).
- ``"torch"``: linear-time pure PyTorch (:func:`bi_wkv_torch`); used for TorchScript, tracing,
  ``torch.export`` and ONNX export, and as the fallback when a kernel cannot be built.
- ``"ref"``: the O(T^2) definition (:func:`bi_wkv_ref`).
- ``"auto"`` (default): the kernel for the tensors' device; if it cannot be built, or the GPU has no
  image of it (a compute capability the build did not target), warn once (naming the reason, the
  build folder and how to rebuild) and use ``"torch"``.

The environment variable ``MEDURWKV_WKV_BACKEND`` overrides ``"auto"``; an explicit ``backend``
argument other than ``"auto"`` overrides both.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch

from .bi_wkv_torch import bi_wkv_torch

__all__ = ["bi_wkv", "bi_wkv_ref", "bi_wkv_torch", "BACKENDS", "ENV_BACKEND", "resolve_backend"]

BACKENDS = ("auto", "cpu", "cuda", "torch", "ref")
ENV_BACKEND = "MEDURWKV_WKV_BACKEND"

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
_WARNED: set = set()


def bi_wkv_ref(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """O(T^2) definition of Bi-WKV (docs/DESIGN.md section 2), for tests only.

    Allocates ``B * T * T * C`` elements: use only for small T.

    Args:
        w: ``[C]`` decay (already divided by T).
        u: ``[C]`` current-token bonus (already divided by T).
        k: ``[B, T, C]`` keys.
        v: ``[B, T, C]`` values.

    Returns:
        ``[B, T, C]`` in the dtype of ``k``.
    """
    T = k.shape[1]
    t = torch.arange(T, device=k.device)
    dist = (t[:, None] - t[None, :]).abs().to(k.dtype)  # [T, T]
    logits = -(dist - 1)[None, :, :, None] * w.to(k.dtype) + k[:, None, :, :]  # [B, T, T, C]
    eye = torch.eye(T, dtype=torch.bool, device=k.device)[None, :, :, None]
    logits = torch.where(eye, (u.to(k.dtype) + k)[:, None, :, :].expand_as(logits), logits)
    weights = torch.softmax(logits, dim=2)
    return (weights * v[:, None, :, :]).sum(dim=2)


def _describe(x: torch.Tensor) -> str:
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"


def check_inputs(w: Any, u: Any, k: Any, v: Any, check_finite: bool = True) -> None:
    """Validate Bi-WKV inputs.

    Args:
        w: ``[C]`` floating tensor.
        u: ``[C]`` floating tensor, same dtype as ``w``.
        k: ``[B, T, C]`` tensor, float16/bfloat16/float32/float64, not empty.
        v: like ``k``.
        check_finite: also require finite ``w`` and ``u`` (reads their values).

    Raises:
        ValueError: naming the offending argument with its shape/dtype/device.
    """
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"bi_wkv: {name} must be a torch.Tensor, got {type(x).__name__}")
    if k.dim() != 3:
        raise ValueError(f"bi_wkv: k must have shape [B, T, C], got {_describe(k)}")
    if v.shape != k.shape:
        raise ValueError(f"bi_wkv: v must have the shape of k {tuple(k.shape)}, got {_describe(v)}")
    if k.numel() == 0:
        raise ValueError(f"bi_wkv: k and v must not be empty (B, T, C >= 1), got {_describe(k)}")
    C = k.shape[2]
    for name, x in (("w", w), ("u", u)):
        if x.dim() != 1 or x.shape[0] != C:
            raise ValueError(f"bi_wkv: {name} must have shape [C] = [{C}] (C of k), got {_describe(x)}")
    if k.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"bi_wkv: k must be float16, bfloat16, float32 or float64, got {_describe(k)}")
    if v.dtype != k.dtype:
        raise ValueError(f"bi_wkv: v must have the dtype of k ({k.dtype}), got {_describe(v)}")
    for name, x in (("w", w), ("u", u)):
        if not x.is_floating_point():
            raise ValueError(f"bi_wkv: {name} must be a floating tensor, got {_describe(x)}")
    if u.dtype != w.dtype:
        raise ValueError(f"bi_wkv: u must have the dtype of w ({w.dtype}), got {_describe(u)}")
    for name, x in (("w", w), ("u", u), ("v", v)):
        if x.device != k.device:
            raise ValueError(f"bi_wkv: {name} must be on the device of k ({k.device}), got {_describe(x)}")
    if check_finite:
        for name, x in (("w", w), ("u", u)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"bi_wkv: {name} must be finite, got non-finite values ({_describe(x)})")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``backend`` (argument, then ``MEDURWKV_WKV_BACKEND``) into a concrete backend name.

    Args:
        backend: one of :data:`BACKENDS`.
        device: device of the inputs.

    Returns:
        ``"cpu"``, ``"cuda"``, ``"torch"`` or ``"ref"``; ``"auto"`` becomes the device's kernel name
        (or ``"torch"`` for other devices). Availability is checked later.

    Raises:
        ValueError: unknown backend name, or a kernel backend for the wrong device.
    """
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"bi_wkv: backend must be one of {BACKENDS}, got {backend!r}")
    backend = backend.lower()
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"bi_wkv: {ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        return device.type if device.type in _KERNEL_DTYPES else "torch"
    if backend in _KERNEL_DTYPES and device.type != backend:
        raise ValueError(f"bi_wkv: backend {backend!r} needs {backend} tensors, got device {device}")
    return backend


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class BiWKVFunction(torch.autograd.Function):
    """Autograd Function around a compiled kernel (CPU or CUDA): gradients for w, u, k and v.

    Inputs must be contiguous; ``w`` and ``u`` in float32 (float64 when ``k`` is float64). The
    kernels scale by the per-channel maximum of ``k``; when a sequence needs more dynamic range
    than that gives (only for extreme ``w``, ``u`` or ``k``, see ``medurwkv_net/csrc/``) they report it and this
    Function computes that call with the log-scaled :func:`bi_wkv_torch` instead (its backward
    re-runs :func:`bi_wkv_torch` under autograd).
    """

    @staticmethod
    def forward(ctx, w, u, k, v, ext):  # noqa: D102
        y, ok = ext.forward(w, u, k, v)
        ctx.ext = ext
        ctx.fallback = not ok
        if not ok:
            y = bi_wkv_torch(w, u, k, v)
        ctx.save_for_backward(w, u, k, v, y)
        return y

    @staticmethod
    def backward(ctx, gy):  # noqa: D102
        w, u, k, v, y = ctx.saved_tensors
        if ctx.fallback:
            with torch.enable_grad():
                ins = [x.detach().requires_grad_(True) for x in (w, u, k, v)]
                out = bi_wkv_torch(ins[0], ins[1], ins[2], ins[3])
                gw, gu, gk, gv = torch.autograd.grad(out, ins, gy)
            return gw, gu, gk, gv, None
        gw, gu, gk, gv = ctx.ext.backward(w, u, k, v, y, gy.contiguous())
        return gw, gu, gk, gv, None


#: Messages of CUDA errors that mean "this GPU cannot run the compiled kernel", not a bug in a call.
_NO_IMAGE_ERRORS = (
    "no kernel image is available",
    "invalid device function",
    "unsupported toolchain",
    "device kernel image is invalid",
    "unsupported gpu architecture",
)
_UNSUPPORTED_DEVICES: set = set()


def _arch_hint(device: torch.device) -> str:
    if device.type != "cuda":
        return f"run `{build_hint()}`"
    major, minor = torch.cuda.get_device_capability(device)
    return (
        f"rebuild for this GPU with `TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" {build_hint()} --cuda=True` "
        "(and keep TORCH_CUDA_ARCH_LIST set when training)"
    )


def build_hint() -> str:
    """The command that rebuilds the kernels (named in fallback warnings)."""
    from .build import REBUILD_HINT

    return REBUILD_HINT


def _device_key(device: torch.device) -> str:
    return f"{device.type}:{device.index if device.index is not None else 0}"


def _device_unsupported(name: str, device: torch.device) -> Optional[str]:
    """Why the compiled ``name`` kernel cannot run on ``device`` (known before any launch), or None."""
    if _device_key(device) in _UNSUPPORTED_DEVICES:
        return "an earlier launch on this device failed"
    if name != "cuda":
        return None
    from .build import cuda_targets, device_has_kernel_image

    capability = torch.cuda.get_device_capability(device)
    if device_has_kernel_image(capability) is False:
        return (
            f"the kernel was built for {', '.join(cuda_targets() or [])} and this GPU "
            f"({torch.cuda.get_device_name(device)}) has compute capability {capability[0]}.{capability[1]}"
        )
    return None


def _kernel(name: str, w, u, k, v) -> torch.Tensor:
    """Run the compiled kernel ``name`` (``"cpu"`` or ``"cuda"``) through :class:`BiWKVFunction`.

    A launch that fails because the device has no image of the kernel falls back to
    :func:`bi_wkv_torch` with one warning; any other error propagates.
    """
    from . import build

    ext = build.load_extension(cuda=(name == "cuda"))
    acc = torch.float64 if k.dtype == torch.float64 else torch.float32
    try:
        return BiWKVFunction.apply(
            w.to(acc).contiguous(), u.to(acc).contiguous(), k.contiguous(), v.contiguous(), ext
        )
    except RuntimeError as err:
        text = str(err).lower()
        if not any(m in text for m in _NO_IMAGE_ERRORS):
            raise
        _UNSUPPORTED_DEVICES.add(_device_key(k.device))
        _warn_once(
            f"{name}-device:{_device_key(k.device)}",
            f"medurwkv_net: the Bi-WKV {name} kernel cannot run on {k.device} ({str(err).strip().splitlines()[0]}); "
            f"using the pure-PyTorch linear path instead. To get the kernel, {_arch_hint(k.device)}.",
        )
        return bi_wkv_torch(w, u, k, v)


@torch.jit.unused
def _bi_wkv_eager(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
    check_inputs(w, u, k, v, check_finite=not exporting)
    if exporting:
        return bi_wkv_torch(w, u, k, v)
    explicit = isinstance(backend, str) and backend.lower() != "auto"
    name = resolve_backend(backend, k.device)
    if name == "ref":
        return bi_wkv_ref(w, u, k, v)
    if name == "torch":
        return bi_wkv_torch(w, u, k, v)
    if k.dtype not in _KERNEL_DTYPES[name]:
        if explicit:
            raise ValueError(
                f"bi_wkv: the {name} kernel supports {_KERNEL_DTYPES[name]}, got k with {_describe(k)}"
            )
        # e.g. float16 on CPU: no CPU half kernel, compute in float32 and cast back.
        if name == "cpu":
            return bi_wkv(w, u, k.float(), v.float(), backend).to(k.dtype)
        return bi_wkv_torch(w, u, k, v)
    from . import build

    try:
        build.load_extension(cuda=(name == "cuda"))
    except Exception as err:  # noqa: BLE001 - any build/import failure means "not available"
        if explicit or os.environ.get(ENV_BACKEND, "").strip().lower() == name:
            raise RuntimeError(f"bi_wkv: the {name} kernel is not available: {err}") from err
        _warn_once(
            name,
            f"medurwkv_net: Bi-WKV {name} kernel unavailable ({err}); using the pure-PyTorch linear path "
            f"instead. To rebuild it: `{build_hint()}`"
            + (" --cuda=True" if name == "cuda" else "")
            + ".",
        )
        return bi_wkv_torch(w, u, k, v)
    why = _device_unsupported(name, k.device)
    if why is not None:
        if explicit:
            raise RuntimeError(f"bi_wkv: the {name} kernel cannot run on {k.device}: {why}")
        _warn_once(
            f"{name}-device:{_device_key(k.device)}",
            f"medurwkv_net: the Bi-WKV {name} kernel cannot run on {k.device}: {why}; using the pure-PyTorch "
            f"linear path instead. To get the kernel, {_arch_hint(k.device)}.",
        )
        return bi_wkv_torch(w, u, k, v)
    return _kernel(name, w, u, k, v)


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Bi-WKV: bidirectional linear-attention mixing of Vision-RWKV, O(T) time and memory.

    Args:
        w: ``[C]`` spatial decay already divided by T (not exponentiated; may be negative).
        u: ``[C]`` spatial first (current-token bonus) already divided by T.
        k: ``[B, T, C]`` keys (float16, bfloat16, float32 or float64; any strides).
        v: ``[B, T, C]`` values, dtype and device of ``k``.
        backend: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"torch"`` or ``"ref"`` (see module docs).

    Returns:
        ``[B, T, C]`` output in the dtype of ``k``; differentiable w.r.t. all four inputs.

    Raises:
        ValueError: bad shapes, dtypes, devices, empty inputs, non-finite ``w``/``u``, bad backend.
        RuntimeError: an explicitly requested kernel cannot be built.
    """
    if torch.jit.is_scripting():
        return bi_wkv_torch(w, u, k, v)
    return _bi_wkv_eager(w, u, k, v, backend)
