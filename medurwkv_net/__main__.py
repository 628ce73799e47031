"""Command line: ``python -m medurwkv_net <command> ...`` (python-fire).

Commands are imported lazily so that ``--help`` and unrelated commands stay fast.
"""
from __future__ import annotations

import importlib

_COMMANDS = {
    "build-ext": ("medurwkv_net.ops.build", "build_ext"),
    "convert-weights": ("medurwkv_net.pretrained", "convert_weights"),
    "verify-data": ("medurwkv_net.reliability.verify_data", "verify_data_cli"),
    "prepare-data": ("medurwkv_net.data", "prepare_data_cli"),
    "hub-prepare": ("medurwkv_net.hub", "prepare_bundle_repo"),
}


def _lazy(module: str, attr: str):
    def command(*args, **kwargs):
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    command.__doc__ = f"See {module}.{attr}."
    return command


def main() -> None:
    import fire

    fire.Fire({name: _lazy(mod, attr) for name, (mod, attr) in _COMMANDS.items()})


if __name__ == "__main__":
    main()
