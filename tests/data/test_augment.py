"""The photo augmentations of medurwkv_net.data.augment: types and meta kept, prob 0 identity, known
answers of each operation, reproducibility, and bad arguments or inputs refused with the key and shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medurwkv_net.data import RandColorJitterd, RandHEStainJitterd, RandJPEGd, RandSpeckleNoised
from medurwkv_net.data import augment_ops as ops


def _smooth_rgb(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """An RGB image in [0.1, 0.9] with gradients and a soft blob (what JPEG compresses well)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    blob = torch.exp(-((yy - 0.5) ** 2 + (xx - 0.4) ** 2) / 0.05)
    base = torch.stack((0.3 + 0.5 * xx * blob, 0.2 + 0.6 * yy, 0.5 + 0.3 * blob))
    return (base + 0.02 * torch.rand(3, h, w, generator=g)).clamp(0.1, 0.9)


def _transforms(prob: float) -> list:
    return [RandColorJitterd("image", brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1, prob=prob),
            RandHEStainJitterd("image", alpha=0.1, beta=0.1, prob=prob),
            RandJPEGd("image", quality=(10, 20), prob=prob),
            RandSpeckleNoised("image", std=(0.1, 0.2), prob=prob)]


@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("kind", ["meta", "tensor", "numpy32", "numpy64"])
def test_type_dtype_shape_and_meta_are_kept(index, kind):
    base = _smooth_rgb(40, 48)
    img = {"meta": MetaTensor(base, meta={"filename_or_obj": "case.png"}), "tensor": base,
           "numpy32": base.numpy(), "numpy64": base.numpy().astype(np.float64)}[kind]
    t = _transforms(1.0)[index]
    t.set_random_state(3)
    out = t({"image": img, "label": "untouched"})
    assert type(out["image"]) is type(img) and out["image"].dtype == img.dtype and out["image"].shape == img.shape
    assert out["label"] == "untouched"
    if kind == "meta":
        assert out["image"].meta["filename_or_obj"] == "case.png"
    changed = np.abs(np.asarray(out["image"], dtype=np.float64) - np.asarray(img, dtype=np.float64)).mean()
    assert changed > 1e-3, type(t).__name__  # prob 1 with these ranges always changes the image
    assert 0.0 <= float(np.min(np.asarray(out["image"]))) and float(np.max(np.asarray(out["image"]))) <= 1.0


@pytest.mark.parametrize("index", range(4))
def test_prob_zero_is_identity(index):
    img = MetaTensor(_smooth_rgb(), meta={"filename_or_obj": "a.png"})
    t = _transforms(0.0)[index]
    for seed in range(3):
        t.set_random_state(seed)
        out = t({"image": img})["image"]
        assert torch.equal(torch.as_tensor(out), torch.as_tensor(img))


@pytest.mark.parametrize("index", range(4))
def test_same_seed_same_result_other_seed_other_result(index):
    img = _smooth_rgb()
    a, b, c = _transforms(1.0)[index], _transforms(1.0)[index], _transforms(1.0)[index]
    a.set_random_state(7)
    b.set_random_state(7)
    c.set_random_state(8)
    out_a, out_b, out_c = (t({"image": img})["image"] for t in (a, b, c))
    assert torch.equal(out_a, out_b)
    assert not torch.equal(out_a, out_c)


def test_colour_jitter_neutral_factors_are_identity():
    img = _smooth_rgb()
    t = RandColorJitterd("image", brightness=(1, 1), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), prob=1.0)
    torch.testing.assert_close(t({"image": img})["image"], img, atol=1e-5, rtol=0)


def test_colour_jitter_known_answers():
    img = _smooth_rgb()
    torch.testing.assert_close(ops.adjust_brightness(img, 0.5), img * 0.5)
    grey = ops.adjust_saturation(img, 0.0)  # no colour left: three equal channels, the BT.601 grey level
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])
    torch.testing.assert_close(grey[0], 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])
    flat = ops.adjust_contrast(img, 0.0)  # contrast 0: the mean grey level everywhere
    torch.testing.assert_close(flat, torch.full_like(img, float(grey[0].mean())))
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(ops.adjust_hue(red, 0.5), torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1).expand(3, 2, 2))
    torch.testing.assert_close(ops.adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 2, 2))


def test_hsv_round_trip_and_known_colours():
    img = torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ops.hsv_to_rgb(ops.rgb_to_hsv(img)), img, atol=1e-6, rtol=0)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.5], [1.0, 1.0, 0.0]])
    hsv = ops.rgb_to_hsv(colours.T.reshape(3, 5, 1))[:, :, 0].T
    expected = torch.tensor([[0.0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0.0, 0, 0.5], [1 / 6, 1, 1]])
    torch.testing.assert_close(hsv, expected)


def test_colour_jitter_brightness_and_contrast_on_one_channel():
    img = _smooth_rgb()[:1]
    t = RandColorJitterd("image", brightness=(0.5, 0.5), prob=1.0)
    torch.testing.assert_close(t({"image": img})["image"], img * 0.5)
    with pytest.raises(ValueError, match=r"RandColorJitterd: 'image' has shape \(1, 64, 64\): expected 3"):
        RandColorJitterd("image", brightness=0.2, hue=0.1, prob=1.0)({"image": img})


def test_he_jitter_neutral_returns_input():
    img = _smooth_rgb()
    t = RandHEStainJitterd("image", alpha=(1.0, 1.0), beta=(0.0, 0.0), prob=1.0)
    torch.testing.assert_close(t({"image": img})["image"], img, atol=1e-5, rtol=0)


def test_he_jitter_scales_the_stain_optical_density():
    """A pixel made of haematoxylin only: scaling the H stain by 2 doubles its optical density; a shift of
    beta adds beta times the stain's unit vector; eosin scaling leaves it alone."""
    h = torch.tensor(ops.HED_STAINS[0], dtype=torch.float64)
    h = h / h.norm()
    pixel = torch.exp(-0.4 * h).view(3, 1, 1)
    torch.testing.assert_close(ops.he_stain_jitter(pixel, [2, 1, 1], [0, 0, 0]), torch.exp(-0.8 * h).view(3, 1, 1))
    torch.testing.assert_close(ops.he_stain_jitter(pixel, [1, 1, 1], [0.1, 0, 0]), torch.exp(-0.5 * h).view(3, 1, 1))
    torch.testing.assert_close(ops.he_stain_jitter(pixel, [1, 3, 1], [0, 0, 0]), pixel)


def _jpeg_error(img: torch.Tensor, quality: int) -> float:
    out = RandJPEGd("image", quality=quality, prob=1.0)({"image": img})["image"]
    torch.testing.assert_close(out * 255, (out * 255).round(), atol=1e-4, rtol=0)  # 8-bit values
    return float((out - img).abs().mean())


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quality_100_is_close_and_5_is_far(channels):
    img = _smooth_rgb()[:channels]
    best, worst = _jpeg_error(img, 100), _jpeg_error(img, 5)
    assert best < 0.01 and worst > 3 * best, (best, worst)


def test_speckle_keeps_the_mean_and_has_the_drawn_spread():
    img = torch.full((3, 256, 256), 0.5)
    for distribution in ("gaussian", "gamma"):
        t = RandSpeckleNoised("image", std=(0.2, 0.2), distribution=distribution, prob=1.0)
        t.set_random_state(0)
        out = t({"image": img})["image"]
        assert abs(float(out.mean()) - 0.5) < 0.005, distribution
        assert abs(float((out / 0.5).std()) - 0.2) < 0.01, distribution
        assert not torch.equal(out[0], out[1])
    shared = RandSpeckleNoised("image", std=0.3, distribution="gamma", same_for_channels=True, prob=1.0)
    out = shared({"image": img})["image"]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grey stored as RGB stays grey
    dark = RandSpeckleNoised("image", std=(0.1, 0.1), prob=1.0)({"image": torch.zeros(1, 8, 8)})["image"]
    assert torch.equal(dark, torch.zeros(1, 8, 8))  # multiplicative: black stays black


@pytest.mark.parametrize("make, match", [
    (lambda: RandColorJitterd("image", brightness=-0.1), "brightness must be >= 0"),
    (lambda: RandColorJitterd("image", hue=0.7), r"hue range \[-0.7, 0.7\] must lie within"),
    (lambda: RandColorJitterd("image", contrast=[1.2, 0.8]), "low > high"),
    (lambda: RandColorJitterd("image", saturation="high"), "saturation must be a number or a"),
    (lambda: RandColorJitterd("image", brightness=0.1, prob=1.5), r"prob must be a number in \[0, 1\]"),
    (lambda: RandHEStainJitterd("image", alpha=None), "alpha must be a number or a"),
    (lambda: RandJPEGd("image", quality=(0, 50)), r"must lie within \[1, 100\]"),
    (lambda: RandJPEGd("image", quality=30.5), "quality must be integers"),
    (lambda: RandSpeckleNoised("image", distribution="poisson"), "distribution must be one of gaussian, gamma"),
    (lambda: RandSpeckleNoised("image", same_for_channels="yes"), "same_for_channels must be true or false"),
])
def test_bad_arguments_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("t, img, match", [
    (RandHEStainJitterd("image", prob=0.0), torch.rand(1, 8, 8), r"'image' has shape \(1, 8, 8\): expected 3"),
    (RandColorJitterd("image", saturation=0.2), torch.rand(2, 8, 8), r"shape \(2, 8, 8\): expected 3"),
    (RandJPEGd("image", prob=1.0), torch.rand(3, 4, 8, 8), r"\(3, 4, 8, 8\): expected \[C, H, W\]"),
    (RandJPEGd("image", prob=1.0), torch.rand(2, 8, 8), r"expected 1 or 3 channel"),
    (RandColorJitterd("image", brightness=0.2), torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8),
     "dtype torch.uint8 .* expected floating point"),
    (RandColorJitterd("image", brightness=0.2), torch.rand(3, 8, 8) * 255, r"values in \[.*\]: expected intensities"),
    (RandHEStainJitterd("image"), (torch.rand(3, 8, 8) - 0.45) / 0.225, "before NormalizeIntensityd"),
    (RandSpeckleNoised("image"), torch.rand(1, 8, 8) * 255, r"'image' \(shape \(1, 8, 8\)\) holds values"),
    (RandColorJitterd("image", brightness=0.2), torch.rand(8), r"'image' has shape \(8,\): expected a channel-first"),
])
def test_bad_inputs_are_refused_with_key_and_shape(t, img, match):
    """Checked on every call, also when the sample is not drawn: a misplaced transform fails at once."""
    with pytest.raises(ValueError, match=match):
        t({"image": img})


def test_speckle_without_clip_takes_any_range():
    img = torch.full((1, 64, 64), 200.0)
    out = RandSpeckleNoised("image", std=0.1, clip=None, prob=1.0)({"image": img})["image"]
    assert float(out.max()) > 200.0 and abs(float(out.mean()) - 200.0) < 2.0
