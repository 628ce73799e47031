"""The command line: every command's --help shows its real arguments and exits 0; failures are one line."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from medurwkv_net.cli import COMMANDS, main


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "medurwkv_net", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"  {name} " in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help_shows_its_arguments(name, capsys):
    module, attr, _ = COMMANDS[name]
    function = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert f"medurwkv-net {name}" in text and "'medurwkv-net" not in text
    assert inspect.getdoc(function).splitlines()[0][:40] in " ".join(text.split())
    for param in inspect.signature(function).parameters.values():
        if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            assert param.name.upper() in text or f"--{param.name}" in text, (name, param.name)


def test_unknown_command_and_failing_command(capsys, tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-command"])
    assert exit_.value.code == 2 and "unknown command 'no-such-command'" in capsys.readouterr().err
    monkeypatch.delenv("MEDURWKV_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["convert-weights", str(tmp_path / "in.pth"), str(tmp_path / "out.bin")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert err.startswith("medurwkv-net convert-weights: error: ") and "must end with .safetensors" in err
    assert "Traceback" not in err
