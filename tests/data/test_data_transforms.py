"""LoadMaskd / EnsureChannelsd: binarisation, union, channel handling and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medurwkv_net.data import EnsureChannelsd, LoadMaskd, binarize_mask
from medurwkv_net.data.transforms import image_to_channels, mask_foreground
from medurwkv_net.reliability.verify_data import verify_datalist


def test_binarize_auto_threshold_handles_01_and_255_and_jpeg_noise():
    m01 = torch.tensor([[[0, 1], [1, 0]]])
    assert binarize_mask(m01).tolist() == [[[False, True], [True, False]]]
    noisy = torch.tensor([[[3, 250], [130, 120]]])  # JPEG ringing around 0/255
    assert binarize_mask(noisy).tolist() == [[[False, True], [True, False]]]
    ids = torch.tensor([[[0, 7], [2, 0]]])  # instance ids
    assert binarize_mask(ids, threshold=0).tolist() == [[[False, True], [True, False]]]
    assert binarize_mask(ids).tolist() == [[[False, False], [False, False]]]  # auto would lose ids: GlaS sets 0
    rgb = torch.zeros(3, 2, 2)
    rgb[2, 1, 1] = 255  # foreground in one colour channel only
    assert binarize_mask(rgb).sum() == 1


def test_loadmaskd_unites_files_of_mixed_modes_and_keeps_first_file_meta(tmp_path):
    a = np.zeros((5, 7), np.uint8)
    a[1, 1] = 255
    b = np.zeros((5, 7), np.uint8)
    b[3, 5] = 255
    Image.fromarray(a).save(tmp_path / "x_mask.png")
    Image.fromarray(b).convert("RGB").save(tmp_path / "x_mask_1.png")  # mixed L and RGB masks
    out = LoadMaskd("label")({"label": [str(tmp_path / "x_mask.png"), str(tmp_path / "x_mask_1.png")], "k": 1})
    m = out["label"]
    assert out["k"] == 1
    assert m.shape == (1, 7, 5) and m.dtype == torch.uint8
    assert m[0].T.numpy().tolist() == ((a > 0) | (b > 0)).astype(np.uint8).tolist()
    assert m.meta["filename_or_obj"].endswith("x_mask.png")
    assert list(m.meta["spatial_shape"]) == [7, 5]


def test_loadmaskd_shape_mismatch_names_both_files(tmp_path):
    Image.new("L", (7, 5)).save(tmp_path / "a.png")
    Image.new("L", (6, 5)).save(tmp_path / "b.png")
    with pytest.raises(ValueError,
                       match=r"key 'label'.*'.*b\.png' has spatial shape \(6, 5\) but '.*a\.png'.*\(7, 5\)"):
        LoadMaskd("label")({"label": [str(tmp_path / "a.png"), str(tmp_path / "b.png")]})


@pytest.mark.parametrize(("c_in", "c_out"), [(1, 3), (3, 1), (4, 3), (2, 1), (3, 3), (4, 1)])
def test_ensure_channels(c_in, c_out):
    x = torch.arange(c_in * 6, dtype=torch.float32).reshape(c_in, 2, 3)
    y = EnsureChannelsd("image", c_out)({"image": x})["image"]
    assert y.shape == (c_out, 2, 3)
    colour = x[: 3 if c_in >= 3 else 1]
    if c_out == 1:
        torch.testing.assert_close(y, colour.mean(0, keepdim=True))
    else:
        torch.testing.assert_close(y, colour.expand(3, 2, 3) if colour.shape[0] == 1 else colour)


def test_ensure_channels_rejects_other_counts():
    with pytest.raises(ValueError, match=r"key 'image'.*5 channels \(shape \(5, 2, 2\)\); the network takes 3"):
        EnsureChannelsd("image", 3)({"image": torch.zeros(5, 2, 2)})
    with pytest.raises(ValueError, match="must be a positive int"):
        EnsureChannelsd("image", 0)


def test_ensure_channels_keeps_multimodal_images():
    img = torch.arange(16.0).reshape(4, 2, 2)  # e.g. four MSD modalities: no channel is alpha
    out = EnsureChannelsd("image", 4)({"image": img})["image"]
    assert torch.equal(out, img)
    assert EnsureChannelsd("image", 2)({"image": img[:2]})["image"].shape[0] == 2


def _rgba_mask(path, h=40, w=50, frac=0.05):
    """An RGBA mask as drawing programs save it: opaque everywhere, the lesion white, the rest black."""
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    n = int(round(h * w * frac))
    rows = n // w
    rgba[:rows, :, :3] = 255
    rgba[rows, : n - rows * w, :3] = 255
    Image.fromarray(rgba, "RGBA").save(path)
    return n / (h * w)


def test_rgba_mask_alpha_is_dropped_and_verify_data_agrees(tmp_path):
    frac = _rgba_mask(tmp_path / "m.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "i.png")
    m = LoadMaskd("label")({"label": str(tmp_path / "m.png")})["label"]
    assert float(m.float().mean()) == pytest.approx(frac) and frac == pytest.approx(0.05)
    rep = verify_datalist([{"image": str(tmp_path / "i.png"), "label": str(tmp_path / "m.png")}],
                          label_mode="mask", image_channels=3)
    assert rep.ok and rep.cases[0].label_classes == [0, 1]


def test_mask_drawn_only_in_alpha_is_refused_with_the_file(tmp_path):
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[2:4, 2:5, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"'.*a\.png' draws its shape only in the alpha"):
        LoadMaskd("label")({"label": str(tmp_path / "a.png")})


def test_sixteen_bit_masks_and_images(tmp_path):
    m = np.zeros((5, 7), np.uint16)
    m[1:3, 2:5] = 65535
    Image.fromarray(m).save(tmp_path / "m16.png")
    out = LoadMaskd("label")({"label": str(tmp_path / "m16.png")})["label"]
    assert out[0].T.numpy().tolist() == (m > 0).astype(np.uint8).tolist()
    assert mask_foreground(torch.tensor([[[0, 255]]], dtype=torch.int32)).tolist() == [[[False, True]]]
    ramp = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1800)
    Image.fromarray(ramp).save(tmp_path / "i16.png")
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    chain = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                     EnsureChannelsd("image", 3, eight_bit=True)])
    img = chain({"image": str(tmp_path / "i16.png")})["image"]
    assert img.shape == (3, 7, 5)
    np.testing.assert_allclose(img[0].T.numpy(), ramp * 255.0 / 65535.0, rtol=1e-5)
    assert len(np.unique(img.numpy())) == 35  # not clipped to one value
    dark = np.full((4, 4), 200, np.uint16)  # a 16-bit file with small values is still scaled as 16-bit
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    img = chain({"image": str(tmp_path / "dark16.png")})["image"]
    assert float(img.max()) == pytest.approx(200 * 255 / 65535, rel=1e-5)


def test_float_images_are_refused_with_the_file():
    x = torch.full((1, 2, 2), 0.5)
    with pytest.raises(ValueError, match=r"image 'x\.tif' \(PIL mode F\).*convert it to 8-bit"):
        image_to_channels(x, 3, eight_bit=True, mode="F", source="x.tif")
    with pytest.raises(ValueError, match="holds values from 0 to 70000"):
        image_to_channels(torch.tensor([[[0.0, 70000.0]]]), 1, eight_bit=True)


def test_verify_data_converts_channels_as_training_does(tmp_path):
    """A grey image in a 3-channel bundle and an RGB image in a 1-channel bundle are converted by
    EnsureChannelsd; verification with convert_channels accepts them and rejects what it refuses."""
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 2:5] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.new("L", (8, 6), 90).save(tmp_path / "grey.png")
    Image.new("RGB", (8, 6), (9, 80, 200)).save(tmp_path / "rgb.jpg")
    Image.new("F", (8, 6), 0.5).save(tmp_path / "float.tif")
    cases = [{"image": str(tmp_path / n), "label": str(tmp_path / "m.png")} for n in ("grey.png", "rgb.jpg")]
    for channels in (1, 3):
        assert not verify_datalist(cases, label_mode="mask", image_channels=channels).ok  # literal check
        rep = verify_datalist(cases, label_mode="mask", image_channels=channels, convert_channels=True,
                              eight_bit=True)
        assert rep.ok, rep.summary()
    rep = verify_datalist([{"image": str(tmp_path / "float.tif"), "label": str(tmp_path / "m.png")}],
                          label_mode="mask", image_channels=3, convert_channels=True, eight_bit=True)
    assert not rep.ok and "float.tif" in rep.summary() and "convert it to 8-bit" in rep.summary()
