"""Inference faults: broken weights, unsafe or junk model files, tiny images, a stopped data loader worker."""
import contextlib
import os
import pickle
import signal

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from monai.transforms import Lambdad

from medurwkv_net.bundle import inference_transforms, make_inferer, postprocessing
from medurwkv_net.reliability import (
    CorruptWeightsError,
    SafeCheckpointLoader,
    TimeoutDataLoader,
    UnsafeWeightsError,
)


def _images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"case{i}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((h, w)).astype(np.float32), np.eye(4)), path)
        paths.append(str(path))
    return paths


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def _evaluator(tmp_path, net, images, checkpoint=None, mode="crop", loader_kwargs=None, extra=None):
    pre = inference_transforms(1, [16, 16], mode, "minmax")
    if extra is not None:
        pre = extra(pre)
    loader = TimeoutDataLoader(Dataset([{"image": p} for p in images], pre), batch_size=1, **(loader_kwargs or {}))
    handlers = [] if checkpoint is None else [SafeCheckpointLoader(str(checkpoint), {"model": net})]
    return SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=net, val_handlers=handlers,
        inferer=make_inferer([16, 16], mode, checkpoint=None if checkpoint is None else str(checkpoint)),
        postprocessing=postprocessing(2, mode, pre, str(tmp_path / "out")),
    )


def test_a_nan_weight_in_the_model_file_is_refused_naming_the_file(tmp_path):
    images = _images(tmp_path / "in", [(20, 20)])
    net = _net()
    state = net.state_dict()
    state["0.weight"][0, 0, 1, 1] = float("nan")
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match=rf"refusing to load '{tmp_path / 'model.pt'}': 1 weight tensor\(s\) hold "
                                           r"NaN/Inf values \(first: 0.weight\)"):
        _evaluator(tmp_path, _net(), images, checkpoint=tmp_path / "model.pt").run()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_the_bundle_inferer_refuses_nan_weights_and_output_naming_the_checkpoint(tmp_path, mode):
    images = _images(tmp_path / "in", [(20, 20)])
    net = _net()  # weights given to the inferer directly, as MONAI Label does
    with torch.no_grad():
        net[2].bias[1] = float("nan")
    inferer = make_inferer([16, 16], mode, checkpoint="models/model.pt")
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(RuntimeError, match=r"refusing to run inference: 1 weight tensor\(s\) of the weights loaded "
                                           r"from 'models/model.pt' hold NaN/Inf values \(first: 2.bias\)"):
        inferer(x, net)

    class RaisesOnNaN(torch.nn.Module):  # like the Bi-WKV operator, which refuses a non-finite decay
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((2,), float("nan")))

        def forward(self, x):
            if not bool(torch.isfinite(self.w).all()):
                raise ValueError("w must be finite")
            return x.repeat(1, 2, 1, 1)

    with pytest.raises(RuntimeError, match=r"of the weights loaded from 'models/model.pt' hold NaN/Inf values"):
        inferer(x, RaisesOnNaN())
    assert not (tmp_path / "out").exists() and images


def test_unsafe_and_junk_model_files_are_refused_naming_the_file(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    evil, junk, empty = tmp_path / "evil.pt", tmp_path / "junk.pt", tmp_path / "empty.pt"
    torch.save({"0.weight": Payload()}, evil)
    junk.write_bytes(os.urandom(1 << 16))
    empty.write_bytes(b"")
    images = _images(tmp_path / "in", [(20, 20)])
    with pytest.raises(UnsafeWeightsError) as info:
        _evaluator(tmp_path, _net(), images, checkpoint=evil).run()
    msg = str(info.value)
    assert msg.startswith(f"refused to load weight file '{evil}': it holds pickled Python objects") and "system" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    with pytest.raises(CorruptWeightsError, match=rf"cannot read weight file '{junk}' \(65536 bytes\): not a PyTorch "
                                                  r"file \(a PyTorch file is a zip archive"):
        _evaluator(tmp_path, _net(), images, checkpoint=junk).run()
    with pytest.raises(CorruptWeightsError, match=rf"weight file '{empty}' is empty \(0 bytes\)"):
        _evaluator(tmp_path, _net(), images, checkpoint=empty).run()
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump({"w": Payload()}, f, protocol=2)
    with pytest.raises(UnsafeWeightsError, match="system"):
        _evaluator(tmp_path, _net(), images, checkpoint=tmp_path / "plain.pt").run()


@pytest.mark.parametrize("mode", ["crop", "resize"])
def test_tiny_images_are_segmented_down_to_2_pixels_and_1_pixel_is_refused(tmp_path, mode):
    images = _images(tmp_path / "in", [(2, 2), (3, 5)])
    _evaluator(tmp_path, _net(), images, mode=mode).run()
    out = sorted(os.listdir(tmp_path / "out"))
    assert out == ["case0_seg.nii.gz", "case1_seg.nii.gz"]
    assert nib.load(tmp_path / "out" / "case1_seg.nii.gz").shape[:2] == (3, 5)
    one = _images(tmp_path / "one", [(1, 1)])
    with pytest.raises(ValueError, match=rf"image '{one[0]}' is 1 x 1 pixels: too small to segment"):
        _evaluator(tmp_path, _net(), one, mode=mode).run()


def test_a_stopped_worker_times_out_naming_the_case(tmp_path):
    images = _images(tmp_path / "in", [(20, 20)] * 3)
    pid_file = tmp_path / "worker.pid"
    main_pid = os.getpid()

    def stop_on_third(x):
        if "case2" in str(x.meta.get("filename_or_obj", "")) and os.getpid() != main_pid:
            pid_file.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)  # what a stopped worker looks like
        return x

    def add_stopper(pre):
        pre.transforms = (*pre.transforms, Lambdad(keys="image", func=stop_on_third))
        return pre

    ev = _evaluator(tmp_path, _net(), images, extra=add_stopper,
                    loader_kwargs={"num_workers": 1, "timeout": 3, "multiprocessing_context": "fork"})
    try:
        with pytest.raises(RuntimeError, match=r"no data for 3 s: a data loader worker is stuck on one of the "
                                               r"batches 1..2 \(") as info:
            ev.run()
        assert f"'{images[2]}'" in str(info.value)
    finally:
        if pid_file.exists():  # normally already ended by the loader
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert sorted(os.listdir(tmp_path / "out")) == ["case0_seg.nii.gz"]
