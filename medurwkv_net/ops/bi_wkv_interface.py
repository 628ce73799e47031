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
  ``torch.export`` and ONNX export (``torch.export`` and the dynamo ONNX exporter get its loop-free form,
  valid for every sequence length), and as the fallback when a kernel cannot be built.
- ``"ref"``: the O(T^2) definition (:func:`bi_wkv_ref`).
- ``"auto"`` (default): the kernel for the tensors' device; if it cannot be built, or the GPU has no
  image of it (a compute capability the build did not target), warn once (naming the reason, the
  build folder and how to rebuild) and use ``"torch"``.

The environment variable ``MEDURWKV_WKV_BACKEND`` overrides ``"auto"``; an explicit ``backend``
argument other than ``"auto"`` overrides both.

The kernels are registered as the ``torch.library`` operators ``medurwkv::bi_wkv_forward`` and
``medurwkv::bi_wkv_backward`` (with fake implementations and autograd), so ``torch.compile`` and CUDA
graphs capture them. The op reads no tensor values on the host: it makes no device synchronisation,
and NaN/Inf inputs give NaN/Inf outputs (check data with
:func:`medurwkv_net.reliability.validate_image` or :func:`medurwkv_net.networks.check_finite_input`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Tuple

import torch

from .bi_wkv_torch import bi_wkv_torch

__all__ = [
    "bi_wkv",
    "bi_wkv_ref",
    "bi_wkv_torch",
    "bi_wkv_kernel_forward",
    "bi_wkv_kernel_backward",
    "BACKENDS",
    "ENV_BACKEND",
    "resolve_backend",
]

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


def check_inputs(w: Any, u: Any, k: Any, v: Any) -> None:
    """Validate Bi-WKV inputs from their shapes, dtypes and devices (no tensor value is read).

    Args:
        w: ``[C]`` floating tensor.
        u: ``[C]`` floating tensor, same dtype as ``w``.
        k: ``[B, T, C]`` tensor, float16/bfloat16/float32/float64, not empty.
        v: like ``k``.

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


def _acc_dtype(k: torch.Tensor) -> torch.dtype:
    return torch.float64 if k.dtype == torch.float64 else torch.float32


@torch.library.custom_op("medurwkv::bi_wkv_forward", mutates_args=())
def bi_wkv_kernel_forward(
    w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled kernel of the tensors' device (``torch.ops.medurwkv.bi_wkv_forward``).

    Args:
        w, u: ``[C]`` contiguous, float32 (float64 when ``k`` is float64).
        k, v: ``[B, T, C]`` contiguous.

    Returns:
        ``(y, yc, lse, c0)``: the output in the dtype of ``k``, and for the backward: on CPU the centred
        output ``y - c0`` and in ``lse`` the right key sums at the end of every block of 64 tokens
        (``[B, ceil(T / 64), C]``, float64); on CUDA both empty (its backward recomputes what it needs on its
        tiles); the centring value ``c0`` (``[B, C]``, the mean of ``v`` over the first 16 tokens).
    """
    from . import build

    return tuple(build.load_extension(cuda=k.device.type == "cuda").forward(w, u, k, v))


@bi_wkv_kernel_forward.register_fake
def _(w, u, k, v):
    B, _, C = k.shape
    if k.device.type == "cpu":
        T = k.shape[1]
        return (
            torch.empty_like(k),
            torch.empty_like(k),
            k.new_empty((B, (T + 63) // 64, C), dtype=torch.float64),
            k.new_empty((B, C), dtype=torch.float64),
        )
    acc = _acc_dtype(k)
    return (
        torch.empty_like(k),
        k.new_empty((0,), dtype=acc),
        k.new_empty((0,), dtype=acc),
        k.new_empty((B, C), dtype=acc),
    )


@torch.library.custom_op("medurwkv::bi_wkv_backward", mutates_args=())
def bi_wkv_kernel_backward(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    yc: torch.Tensor,
    lse: torch.Tensor,
    c0: torch.Tensor,
    gy: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(gw, gu, gk, gv)`` from the saved outputs of :func:`bi_wkv_kernel_forward`."""
    from . import build

    ext = build.load_extension(cuda=k.device.type == "cuda")
    return tuple(ext.backward(w, u, k, v, yc, lse, c0, gy.contiguous()))


@bi_wkv_kernel_backward.register_fake
def _(w, u, k, v, yc, lse, c0, gy):
    return torch.empty_like(w), torch.empty_like(u), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    w, u, k, v = inputs
    _, yc, lse, c0 = output
    ctx.save_for_backward(w, u, k, v, yc, lse, c0)
    ctx.mark_non_differentiable(yc, lse, c0)


def _backward(ctx, gy, _gyc, _glse, _gc0):
    w, u, k, v, yc, lse, c0 = ctx.saved_tensors
    if gy is None:
        gy = torch.zeros_like(k)
    return tuple(bi_wkv_kernel_backward(w, u, k, v, yc, lse, c0, gy))


bi_wkv_kernel_forward.register_autograd(_backward, setup_context=_setup_context)


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
        f'rebuild for this GPU with `TORCH_CUDA_ARCH_LIST="{major}.{minor}" {build_hint()} --cuda=True` '
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


@torch.compiler.assume_constant_result
def _kernel_ready(name: str, device: str, explicit: bool) -> bool:
    """Whether the compiled ``name`` kernel can run on ``device`` (building it on first use).

    Decided from the build and the device's compute capability only, never from tensor values, so
    ``torch.compile`` evaluates it once while tracing. When the kernel is unavailable: an explicit request
    (argument or ``MEDURWKV_WKV_BACKEND``) raises, ``"auto"`` warns once and returns False (the caller
    uses :func:`bi_wkv_torch`).
    """
    from . import build

    dev = torch.device(device)
    explicit = explicit or os.environ.get(ENV_BACKEND, "").strip().lower() == name
    try:
        build.load_extension(cuda=(name == "cuda"))
    except Exception as err:  # noqa: BLE001 - any build/import failure means "not available"
        if explicit:
            raise RuntimeError(f"bi_wkv: the {name} kernel is not available: {err}") from err
        _warn_once(
            name,
            f"medurwkv_net: Bi-WKV {name} kernel unavailable ({err}); using the pure-PyTorch linear path "
            f"instead. To rebuild it: `{build_hint()}`" + (" --cuda=True" if name == "cuda" else "") + ".",
        )
        return False
    why = _device_unsupported(name, dev)
    if why is not None:
        if explicit:
            raise RuntimeError(f"bi_wkv: the {name} kernel cannot run on {dev}: {why}")
        _warn_once(
            f"{name}-device:{_device_key(dev)}",
            f"medurwkv_net: the Bi-WKV {name} kernel cannot run on {dev}: {why}; using the pure-PyTorch "
            f"linear path instead. To get the kernel, {_arch_hint(dev)}.",
        )
        return False
    return True


def _kernel(name: str, w, u, k, v) -> torch.Tensor:
    """Run the compiled kernel ``name`` (``"cpu"`` or ``"cuda"``) through ``torch.ops.medurwkv``.

    In eager mode, a launch that fails because the device has no image of the kernel falls back to
    :func:`bi_wkv_torch` with one warning; any other error propagates.
    """
    acc = _acc_dtype(k)
    args = (w.to(acc).contiguous(), u.to(acc).contiguous(), k.contiguous(), v.contiguous())
    if torch.compiler.is_compiling():
        return bi_wkv_kernel_forward(*args)[0]
    try:
        return bi_wkv_kernel_forward(*args)[0]
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
    check_inputs(w, u, k, v)
    if torch.compiler.is_exporting():  # torch.export / dynamo ONNX: a graph valid for every T
        return bi_wkv_torch(w, u, k, v, loop_free=True)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return bi_wkv_torch(w, u, k, v)
    explicit = isinstance(backend, str) and backend.lower() != "auto"
    name = resolve_backend(backend, k.device)
    if name == "ref":
        return bi_wkv_ref(w, u, k, v)
    if name == "torch":
        return bi_wkv_torch(w, u, k, v)
    if k.dtype not in _KERNEL_DTYPES[name]:
        if explicit:
            raise ValueError(f"bi_wkv: the {name} kernel supports {_KERNEL_DTYPES[name]}, got k with {_describe(k)}")
        # e.g. float16 on CPU: no CPU half kernel, compute in float32 and cast back.
        if name == "cpu":
            return bi_wkv(w, u, k.float(), v.float(), backend).to(k.dtype)
        return bi_wkv_torch(w, u, k, v)
    if not _kernel_ready(name, _device_key(k.device), explicit):
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
        ValueError: bad shapes, dtypes, devices, empty inputs, bad backend. Values are not checked (that
            would synchronise the device): NaN/Inf inputs give NaN/Inf outputs.
        RuntimeError: an explicitly requested kernel cannot be built.
    """
    if torch.jit.is_scripting():
        return bi_wkv_torch(w, u, k, v)
    return _bi_wkv_eager(w, u, k, v, backend)
