"""Unit tests of medurwkv_net.bundle: transform chains, mask writer, handlers."""
from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from medurwkv_net import bundle
from medurwkv_net.bundle import handlers as H


def _photo(path, w=53, h=37):
    """RGB photo whose left 20 columns are bright (an orientation marker)."""
    arr = np.full((h, w, 3), 30, np.uint8)
    arr[:, :20] = 220
    Image.fromarray(arr).save(path)
    return path


def test_resize_mode_restores_size_and_orientation_in_png(tmp_path):
    src = _photo(tmp_path / "case_1.jpg")
    pre = bundle.inference_transforms(in_channels=3, spatial_size=[32, 32], spatial_mode="resize", intensity="imagenet")
    d = pre({"image": str(src)})
    assert tuple(d["image"].shape) == (3, 32, 32)
    # a "network" that predicts foreground where the image is bright
    fg = (d["image"][:1] > 0).float()
    d["pred"] = torch.cat([1 - fg, fg]) * 10
    post = bundle.postprocessing(num_classes=2, spatial_mode="resize", preprocessing=pre,
                                 output_dir=str(tmp_path / "out"))
    out = post(d)
    assert tuple(out["pred"].shape[1:]) == (53, 37)  # MONAI's (W, H) order for PIL images
    saved = np.asarray(Image.open(tmp_path / "out" / "case_1_seg.png"))
    assert saved.shape == (37, 53)
    assert set(np.unique(saved)) <= {0, 255}
    assert (saved[:, :18] == 255).mean() > 0.95 and (saved[:, 23:] == 0).mean() > 0.95


def test_nifti_mask_keeps_shape_affine_and_values(tmp_path):
    lab = np.zeros((19, 23), np.uint8)
    lab[3:9, 4:15] = 1
    lab[10:16, 2:7] = 2
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-9, -11, 40)
    nib.save(nib.Nifti1Image(lab.astype(np.float32) * 50, affine), tmp_path / "s_001.nii.gz")
    pre = bundle.inference_transforms(in_channels=1, spatial_size=[16, 16])
    d = pre({"image": str(tmp_path / "s_001.nii.gz")})
    d["pred"] = torch.nn.functional.one_hot(torch.as_tensor(lab).long(), 3).permute(2, 0, 1).float()[:, None][:, 0] * 5
    bundle.postprocessing(num_classes=3, preprocessing=pre, output_dir=str(tmp_path))(d)
    out = nib.load(tmp_path / "s_001_seg.nii.gz")
    np.testing.assert_array_equal(np.asarray(out.dataobj), lab)
    np.testing.assert_allclose(out.affine, affine)


def test_train_and_eval_chains(tmp_path):
    img = (np.arange(40 * 30).reshape(40, 30) % 97).astype(np.float32)
    lab = (img > 50).astype(np.uint8) + (img > 80).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "l.nii.gz")
    item = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    crops = bundle.train_transforms(1, [16, 16], num_samples=3)(item)
    assert len(crops) == 3
    for c in crops:
        assert tuple(c["image"].shape) == (1, 16, 16) and tuple(c["label"].shape) == (1, 16, 16)
        assert set(torch.unique(c["label"]).tolist()) <= {0.0, 1.0, 2.0}
        assert -0.2 <= float(c["image"].min()) and float(c["image"].max()) <= 1.3  # [0,1], then +-10% scale/shift aug
    ev = bundle.eval_transforms(1, [16, 16])(item)
    assert tuple(ev["image"].shape) == (1, 40, 30)
    np.testing.assert_array_equal(ev["label"][0].numpy(), lab)
    resized = bundle.eval_transforms(1, [16, 16], spatial_mode="resize")(item)
    assert tuple(resized["label"].shape) == (1, 16, 16)
    assert set(torch.unique(resized["label"]).tolist()) <= {0.0, 1.0, 2.0}  # nearest neighbour
    with pytest.raises(ValueError, match="spatial_mode"):
        bundle.train_transforms(1, [16, 16], spatial_mode="tile")
    with pytest.raises(ValueError, match="intensity"):
        bundle.eval_transforms(1, [16, 16], intensity="zscore")


def test_train_chain_spatial_augmentation_options(tmp_path):
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab.astype(np.float32), np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "l.nii.gz")
    item = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    variants = {"identity": lab, "flip0": lab[::-1]}

    def seen(**kwargs) -> set[str]:
        chain = bundle.train_transforms(1, [32, 32], num_samples=1, **kwargs)  # the crop is the whole slice
        chain.set_random_state(seed=0)
        names = set()
        for _ in range(40):
            out = chain(item)[0]["label"][0].numpy()
            names.add(next((n for n, v in variants.items() if np.array_equal(out, v)), "other"))
        return names

    # anatomical orientation kept: left-right flips only
    assert seen(flip_axes=[0], rotate90=False) == {"identity", "flip0"}
    assert seen(flip_axes=[], rotate90=False) == {"identity"}
    # the default also flips the other axis and rotates
    assert "other" in seen()


def test_train_chain_intensity_augmentation_option(tmp_path):
    img = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image((img > 0.5).astype(np.uint8), np.eye(4)), tmp_path / "l.nii.gz")
    item = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}

    def changed(**kwargs) -> int:
        chain = bundle.train_transforms(1, [32, 32], num_samples=1, flip_axes=[], rotate90=False, **kwargs)
        chain.set_random_state(seed=0)
        outs = [chain(item)[0]["image"][0].numpy() for _ in range(20)]
        return sum(not np.allclose(o, img, atol=1e-6) for o in outs)

    assert changed(intensity_scale=0, intensity_shift=0) == 0  # [0, 1] min-max scaled image, untouched
    assert changed() > 0  # default: random scale / shift
    chain = bundle.train_transforms(1, [32, 32], num_samples=1, flip_axes=[], rotate90=False,
                                    intensity_scale=0.15, intensity_shift=0)
    chain.set_random_state(seed=0)
    factors = []
    for _ in range(40):
        out = chain(item)[0]["image"][0].numpy()
        factors.append(out.max())  # the image is scaled only: its max is the factor, its min stays 0
        assert out.min() == 0 and np.allclose(out, img * out.max(), atol=1e-5)
    assert min(factors) < 1 < max(factors) and 0.85 - 1e-6 <= min(factors) and max(factors) <= 1.15 + 1e-6
    for bad in ({"intensity_scale": 1.0}, {"intensity_scale": -0.1}, {"intensity_shift": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bundle.train_transforms(1, [32, 32], **bad)


def test_list_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        bundle.list_images(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no image"):
        bundle.list_images(str(tmp_path))
    _photo(tmp_path / "b.png")
    _photo(tmp_path / "a.jpg")
    assert [d["image"].split("/")[-1] for d in bundle.list_images(str(tmp_path))] == ["a.jpg", "b.png"]


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2)
        self.calls = []

    def freeze_encoder(self):
        self.calls.append("freeze")
        self.encoder.requires_grad_(False)

    def unfreeze_encoder(self):
        self.calls.append("unfreeze")
        self.encoder.requires_grad_(True)


def test_encoder_freeze_handler_follows_epochs():
    net = _Net()
    trainable = []
    engine = Engine(lambda e, b: None)
    H.EncoderFreezeHandler(net, freeze_epochs=3).attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: trainable.append(net.encoder.weight.requires_grad))
    engine.run([0], max_epochs=5)
    assert trainable == [False, False, False, True, True]
    assert net.calls == ["freeze", "unfreeze"]
    with pytest.raises(TypeError, match="Linear has no freeze_encoder"):
        H.EncoderFreezeHandler(torch.nn.Linear(2, 2), freeze_epochs=2)
    H.EncoderFreezeHandler(torch.nn.Linear(2, 2), freeze_epochs=0)  # from scratch: any network


def test_class_metric_report_means_and_errors():
    engine = Engine(lambda e, b: None)
    engine.state.metric_details = {"dice": torch.tensor([[0.5, float("nan")], [1.0, 0.8]])}
    H.ClassMetricReport("dice", ["gm", "wm"])(engine)
    assert engine.state.metrics["dice_gm"] == pytest.approx(0.75)
    assert engine.state.metrics["dice_wm"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="2 classes, class_names has 3"):
        H.ClassMetricReport("dice", ["a", "b", "c"])(engine)
    with pytest.raises(KeyError, match="save_details=True"):
        H.ClassMetricReport("iou", ["gm", "wm"])(engine)


def test_curve_plotter_and_overlay_writer(tmp_path):
    evaluator = Engine(lambda e, b: [
        {"image": torch.rand(1, 12, 10), "label": torch.zeros(3, 12, 10).index_fill_(0, torch.tensor([b]), 1),
         "pred": torch.full((1, 12, 10), float(b))}
    ])
    overlay = H.OverlayWriter(str(tmp_path / "ov.png"), num_cases=2, class_names=["bg", "a", "b"])
    overlay.attach(evaluator)
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(train_loss=1.0 / e.state.epoch))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0, 1, 2, 1, 0, 2]))
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(val_dice=0.5))
    plotter = H.CurvePlotter(str(tmp_path / "curves.png"), evaluator=evaluator)
    plotter.attach(trainer)
    trainer.run([0], max_epochs=3)
    history = json.loads((tmp_path / "curves.json").read_text())
    assert history["train"]["train_loss"] == [[1, 2, 3], [1.0, 0.5, pytest.approx(1 / 3)]]
    assert history["validation"]["val_dice"][0] == [1, 2, 3]
    assert Image.open(tmp_path / "curves.png").size[0] > 100
    # 6 cases, 2 shown: every third one (cases 0 and 3), one-hot labels turned into indices
    assert [int(c[1].max()) for c in overlay.cases] == [0, 1]
    assert Image.open(tmp_path / "ov.png").size[1] > 100
    assert not math.isnan(float(overlay.cases[0][0].mean()))


def test_handlers_for_this_rank_without_process_group():
    hs = [H.CurvePlotter("x.png"), object()]
    assert bundle.handlers_for_this_rank(hs) == hs
