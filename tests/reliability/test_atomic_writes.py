"""Files the package writes: atomic (no temporary file left, unique temporary names) and with the umask's mode."""
import os
import stat

import numpy as np
import pytest
from ignite.engine import Engine

from medurwkv_net.bundle import CurvePlotter
from medurwkv_net.data.mni152 import _atomic_write_bytes
from medurwkv_net.data.splits import write_datalist
from medurwkv_net.reliability import atomic_save, atomic_write_text


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path, umask):
    want = 0o666 & ~umask
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_save({"w": np.zeros(2)}, tmp_path / "m.pt")
    write_datalist({"training": []}, tmp_path / "datalist.json")
    _atomic_write_bytes(tmp_path / "prepared" / "c0.nii.gz", b"data")
    plotter = CurvePlotter(str(tmp_path / "eval" / "curves.png"))
    engine = Engine(lambda e, b: None)
    plotter.attach(engine)
    engine.state.epoch, engine.state.metrics = 1, {"train_loss": 0.5}
    plotter._on_train_epoch(engine)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["a.txt", "c0.nii.gz", "curves.json", "curves.png", "datalist.json", "m.pt"]
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(want) for p in files}
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:4] == b"\x89PNG"
