"""``medurwkv-net export-onnx``: write a bundle's network and weights as ONNX with dynamic sizes."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from medurwkv_net.onnx_export import compare_onnx, default_example, export_onnx

__all__ = ["export_onnx_cli"]


def _check_shapes(channels: int, dims: int) -> List[List[int]]:
    """Two input shapes for the check after export: sizes that are not multiples of 32, whose padded
    grids differ from each other and from the default example's."""
    if dims == 3:
        return [[1, channels, 40, 36, 20], [1, channels, 97, 33, 45]]
    return [[1, channels, 50, 70], [1, channels, 97, 64]]


def export_onnx_cli(
    filepath: str = "models/model.onnx",
    config_file: Union[str, Sequence[str]] = "configs/inference.json",
    ckpt_file: str = "models/model.pt",
    net_id: str = "network_def",
    key_in_ckpt: str = "",
    size: Optional[Sequence[int]] = None,
    check: bool = True,
    opset_version: int = 18,
) -> None:
    """Write a bundle's network with its weights as ONNX (dynamic batch and spatial sizes); run from the
    bundle folder, like ``python -m monai.bundle ckpt_export``.

    Args:
        filepath: the ``.onnx`` file to write.
        config_file: the config (or list of configs) defining ``net_id``; ``configs/inference.json`` builds
            the network with ``pretrained: false``.
        ckpt_file: the trained weights (a state dict, ``.pt`` or ``.safetensors``).
        net_id: the config key of the network.
        key_in_ckpt: the key of the state dict inside the checkpoint, if it is a dictionary of several objects.
        size: spatial size to trace with (e.g. ``"[96,96]"``); default 77 x 93 (2D) or 70 x 75 x 69 (3D).
        check: run the file in onnxruntime at two other sizes and compare with the eager network (fails
            above 1e-4 of the largest output value, at least 1e-4).
        opset_version: ONNX opset (18 or newer).
    """
    import time

    from monai.bundle import ConfigParser

    from medurwkv_net.core.weights import safe_load_weights

    parser = ConfigParser()
    parser.read_config(config_file)
    if net_id not in parser:
        raise ValueError(f"{config_file} has no '{net_id}' (the network definition); pass --net_id.")
    net = parser.get_parsed_content(net_id)
    if not isinstance(net, nn.Module):
        raise ValueError(f"'{net_id}' of {config_file} is a {type(net).__name__}, not a network.")
    state = safe_load_weights(ckpt_file)
    if key_in_ckpt:
        if not isinstance(state, dict) or key_in_ckpt not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{ckpt_file} has no key '{key_in_ckpt}' (it holds {keys}).")
        state = state[key_in_ckpt]
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the weights in {ckpt_file} do not fit '{net_id}' of {config_file} ({first}); "
            "pass the config the weights were trained with, or --key_in_ckpt for a checkpoint of several objects."
        ) from e
    example = default_example(net)
    if size is not None:
        spatial = [int(s) for s in size]
        if len(spatial) != example.dim() - 2:
            raise ValueError(f"--size needs {example.dim() - 2} sizes for this network, got {size!r}.")
        example = torch.randn(list(example.shape[:2]) + spatial)
    start = time.perf_counter()
    out = export_onnx(net, filepath, example, opset_version=opset_version)
    n_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; weights {n_bytes / 1e6:.1f} MB) "
        f"in {time.perf_counter() - start:.0f} s"
    )
    if not check:
        return
    for shape, err, scale in compare_onnx(out, net, _check_shapes(example.shape[1], example.dim() - 2)):
        tol = 1e-4 * max(1.0, scale)
        print(f"onnxruntime at {list(shape)}: max |onnx - eager| = {err:.2e} (limit {tol:.1e})")
        if not err <= tol:
            raise ValueError(
                f"{out} differs from the eager network by {err:.2e} at input shape {list(shape)} (limit {tol:.1e})."
            )
