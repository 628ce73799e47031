"""Command line: ``medurwkv-net <command> ...`` or ``python -m medurwkv_net <command> ...``.

Each command is a library function run through python-fire, so ``<command> --help`` shows that
function's real arguments and docstring. The function's module is imported only when its command
runs, which keeps ``--help`` and unrelated commands fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Dict, List, Optional, Tuple

__all__ = ["COMMANDS", "main"]

PROG = "medurwkv-net"

#: command -> (module, function, one-line summary for the command list)
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "build-ext": ("medurwkv_net.ops.build", "build_ext", "build the Bi-WKV C++/CUDA kernels now (--clean: rebuild)"),
    "prepare-data": (
        "medurwkv_net.cli.prepare_data",
        "prepare_data_cli",
        "write the datalist of an unpacked public dataset",
    ),
    "verify-data": (
        "medurwkv_net.cli.verify_data",
        "verify_data_cli",
        "check every image/label pair a bundle config reads",
    ),
    "prepare-demo": ("medurwkv_net.data.mni152", "prepare", "write the 2D demo dataset (MNI152 slices)"),
    "prepare-demo-3d": ("medurwkv_net.data.mni152_volume", "prepare", "write the 3D demo dataset (MNI152 slabs)"),
    "convert-weights": (
        "medurwkv_net.pretrained",
        "convert_weights",
        "convert a released VRWKV checkpoint to .safetensors",
    ),
    "hub-prepare": ("medurwkv_net.hub", "prepare_bundle_repo", "turn a bundle folder into a Hugging Face Hub repo"),
    "export-onnx": (
        "medurwkv_net.cli.export_onnx",
        "export_onnx_cli",
        "write a bundle's network and weights as ONNX (dynamic batch and spatial sizes)",
    ),
    "verify-metadata": (
        "medurwkv_net.bundle.metadata",
        "verify_metadata",
        "check a bundle's metadata.json against the shipped MONAI schema (offline)",
    ),
}


def usage() -> str:
    """The top-level help text: the commands with their summaries."""
    width = max(len(c) for c in COMMANDS)
    lines = [
        f"usage: {PROG} <command> [arguments]   (or: python -m medurwkv_net <command> ...)",
        "",
        "Med-URWKV for MONAI: kernels, data preparation and checks, weights, export, Hub repositories.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    lines += ["", f"`{PROG} <command> --help` shows a command's arguments."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """Run one command; ``argv`` defaults to ``sys.argv[1:]``.

    A command that fails prints one line, ``medurwkv-net <command>: error: <message>``, and exits with
    status 1; ``MEDURWKV_DEBUG=1`` shows the traceback instead.

    Raises:
        SystemExit: 0 after help, 2 for an unknown command, 1 for a failed command, else the command's status.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    import fire

    module, attr, _ = COMMANDS[name]
    function = getattr(importlib.import_module(module), attr)
    title = f"{PROG} {name}"
    if "-h" in rest or "--help" in rest:  # the command's own help, on stdout (fire writes it to stderr)
        from fire import helptext, trace

        text = helptext.HelpText(function, trace=trace.FireTrace(function, name=title))
        print(text.replace(repr(title), title))
        raise SystemExit(0)
    try:
        fire.Fire(function, command=rest, name=title)
    except Exception as err:  # noqa: BLE001 - one line for the user; the traceback on request
        if os.environ.get("MEDURWKV_DEBUG", "").strip() not in ("", "0"):
            raise
        print(f"{PROG} {name}: error: {err}\n(set MEDURWKV_DEBUG=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None
