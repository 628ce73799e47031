"""ONNX export of a Med-URWKV network with dynamic batch and spatial sizes.

:func:`export_onnx` traces the network once with ``torch.export`` (batch, H, W and, in 3D, D declared
dynamic) and translates the program with ``torch.onnx.export(..., dynamo=True)``. The network's shape code
stays symbolic while exporting (padding to a multiple of 32 is written as ``ceil(h / 32) * 32``, the position
embedding is always resized, padding is applied even when it is zero; see
:func:`medurwkv_net.networks.blocks.exporting`) and the Bi-WKV op runs its loop-free plain-PyTorch form
(:func:`medurwkv_net.ops.bi_wkv_torch` with ``loop_free=True``, whose graph does not depend on the number of
tokens). So one ``.onnx`` file runs in onnxruntime at any size, including sizes that are not multiples of 32
and sizes whose padded patch grids differ from the example's, within 1e-4 of the eager network.

The weights are stored once, inside the file, under their PyTorch names; the graph adds about 0.1 MB per
VRWKV block. Weights over 1.8 GB go to ``<file>.data`` beside it (ONNX's protobuf limit is 2 GB).

Export time (torch 2.13, 2 CPU cores): about 100 s for the default 2D model (VRWKV-T encoder, 14M parameters,
21 VRWKV blocks; 58 MB file for 56 MB of weights) and for the default 3D one (66.5 MB for 63.8 MB), about 50 s
for the 5-block models of the tests;
most of it goes to ``torch.export`` and its decompositions and to the translation, and it grows with the number
of blocks, not with the example's size. The exported graph is written without ``torch.onnx``'s optimisation
pass (it took longer than the export itself; onnxruntime optimises the graph when it loads it). The
TorchScript-based exporter (``dynamo=False``) is not used: it is deprecated since torch 2.9, it fails on the
scripted network, and tracing fixes every size in the graph.

Requires the ``export`` extra (``pip install "medurwkv-net[export]"``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ["export_onnx", "compare_onnx", "default_example", "ONNX_INPUT", "ONNX_OUTPUT"]

#: Names of the ONNX graph's input and output (those of the bundles' ``network_data_format``).
ONNX_INPUT = "image"
ONNX_OUTPUT = "pred"
_AXES = ("height", "width", "depth")  # MONAI order of the spatial axes: [B, C, H, W(, D)]
_EXTERNAL_LIMIT = 1_800_000_000  # bytes of weights above which they go to a .data file (protobuf: 2 GB)
_INSTALL = 'pip install "medurwkv-net[export]"'


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ONNX export needs the '{module}' package: {_INSTALL}") from e


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if type(x) is not torch.Tensor and hasattr(x, "as_tensor") else x


def default_example(net: nn.Module) -> torch.Tensor:
    """A batch of 2 random inputs for tracing ``net``: ``in_channels`` channels, 77 x 93 (2D) or 70 x 75 x 69
    (3D) voxels; sizes that are not multiples of 32 and whose padded grids are all at least 2 (sizes that
    do not make the exported graph depend on them)."""
    channels = getattr(net, "in_channels", None)
    dims = getattr(net, "spatial_dims", None)
    if not isinstance(channels, int) or dims not in (2, 3):
        raise ValueError(
            f"export_onnx: cannot tell the input shape of {type(net).__name__} (no in_channels/spatial_dims "
            "attributes); pass example_input, e.g. torch.randn(2, C, 96, 96)."
        )
    spatial = [77, 93] if dims == 2 else [70, 75, 69]
    return torch.randn([2, channels] + spatial)


def _example(net: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    x = default_example(net) if example_input is None else example_input
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"export_onnx: example_input must be a torch.Tensor, got {type(x).__name__}.")
    x = _plain(x)
    if x.dim() < 3 or not x.is_floating_point():
        raise ValueError(
            f"export_onnx: example_input must be a floating [B, C, *spatial] tensor, got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}."
        )
    if min(x.shape[2:]) < 2:
        raise ValueError(
            f"export_onnx: example_input of shape {tuple(x.shape)} has a spatial size below 2; a size of 1 "
            "would be fixed in the graph. Trace with a larger example (e.g. 96 per axis); the exported "
            "model still accepts size 1."
        )
    if x.shape[0] == 1:  # a batch of 1 would be fixed in the graph: trace with 2 (the model accepts any)
        x = torch.cat([x, x], 0)
    param = next(net.parameters(), None)
    return x.to(param.device) if param is not None else x


def _dynamic_shapes(x: torch.Tensor) -> Tuple[dict]:
    """Batch and spatial axes of the one input, named for the ONNX graph (``batch``, ``height``, ...)."""
    dims = {0: "batch"}
    for i in range(2, x.dim()):
        dims[i] = _AXES[i - 2] if i - 2 < len(_AXES) else f"axis{i}"
    return (dims,)


def _check_dynamic(ep: Any, x: torch.Tensor) -> None:
    """Refuse a program in which tracing fixed an input size or bounded its range."""
    name = ep.graph_signature.user_inputs[0]
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == name)
    shape = node.meta["val"].shape
    for i in [0] + list(range(2, x.dim())):
        size = shape[i]
        if isinstance(size, int):
            fixed = f"to {size}"
        else:
            vr = ep.range_constraints.get(size.node.expr)
            if vr is None or (bool(vr.upper >= 2**31) and bool(vr.lower <= 2)):  # upper: int_oo when unbounded
                continue
            fixed = f"to the range [{vr.lower}, {vr.upper}]"
        raise ValueError(
            f"export_onnx: tracing with an input of shape {tuple(x.shape)} restricted axis {i} {fixed}; trace "
            "with a larger example whose sizes are not multiples of 32, e.g. torch.randn(2, C, 77, 93)."
        )


def _tidy(model: Any, n_axes: int) -> None:
    """Drop the per-node export metadata (source paths and stack traces: most of the file otherwise) and
    give the output the input's axis names (the network crops its output to the input's size)."""
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()
    image, pred = model.graph.inputs[0], model.graph.outputs[0]
    if image.shape is not None and pred.shape is not None and len(pred.shape) == n_axes:
        pred.shape = ir.Shape([image.shape[0], pred.shape[1]] + list(image.shape[2:]))


def export_onnx(
    net: nn.Module,
    path: Union[str, os.PathLike],
    example_input: Optional[torch.Tensor] = None,
    opset_version: int = 18,
) -> Path:
    """Write ``net`` as an ONNX model whose batch size and spatial sizes are dynamic.

    The model is exported in eval mode (``net``'s mode is restored afterwards). Its input is named
    ``image`` (``[batch, C, height, width]``, or ``[..., depth]`` in 3D) and its output ``pred`` (the
    same axes). It runs in onnxruntime at any size (see the module docstring); :func:`compare_onnx` checks
    a file against the eager network. The graph is written as exported (onnxruntime optimises it when it
    loads it), with the parameters under their PyTorch names.

    Args:
        net: a :class:`~medurwkv_net.MedURWKV` (2D or 3D), or a module built from this package's blocks
            taking one ``[B, C, *spatial]`` tensor.
        path: the ``.onnx`` file to write (folders are created).
        example_input: a ``[B, C, *spatial]`` tensor to trace with; only its channels, dtype and rough size
            matter. Default: :func:`default_example`. A batch of 1 is traced as 2.
        opset_version: ONNX opset (18 or newer).

    Returns:
        the path written.

    Raises:
        ValueError: a bad example, or one with which tracing fixed a size (the message names the axis).
        ImportError: ``onnx``/``onnxscript`` are not installed.
    """
    _require("onnx")
    _require("onnxscript")
    path = Path(path)
    x = _example(net, example_input)
    n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                net,
                (x,),
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(x),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                opset_version=opset_version,
                optimize=False,
                verbose=False,
            )
    finally:
        net.train(was_training)
    assert program is not None  # dynamo=True always returns the ONNXProgram
    _check_dynamic(program.exported_program, x)
    _tidy(program.model, x.dim())
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=n_bytes > _EXTERNAL_LIMIT)
    return path


def compare_onnx(
    path: Union[str, os.PathLike], net: nn.Module, shapes: Sequence[Sequence[int]], seed: int = 0
) -> List[Tuple[Tuple[int, ...], float, float]]:
    """Run an exported file in onnxruntime (CPU) and ``net`` in eager mode on random inputs of ``shapes``.

    Returns:
        one ``(shape, max |onnx - eager|, max |eager|)`` per shape.

    Raises:
        ImportError: onnxruntime is not installed.
        ValueError: an output of the wrong shape (naming both shapes).
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    param = next(net.parameters(), None)
    was_training = net.training
    net.eval()
    rows = []
    try:
        for shape in shapes:
            x = torch.randn([int(s) for s in shape], generator=gen)
            with torch.no_grad():
                ref = net(x.to(param.device) if param is not None else x).float().cpu()
            out = torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])
            if out.shape != ref.shape:
                raise ValueError(
                    f"{path}: ONNX output of shape {tuple(out.shape)} for input {tuple(shape)}, "
                    f"eager {tuple(ref.shape)}."
                )
            rows.append((tuple(int(s) for s in shape), float((out - ref).abs().max()), float(ref.abs().max())))
    finally:
        net.train(was_training)
    return rows
