"""LoadMaskd / EnsureChannelsd: binarisation, union, channel handling and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medurwkv_net.data import EnsureChannelsd, LoadMaskd, binarize_mask


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
    with pytest.raises(ValueError, match=r"key 'image'.*5 channels \(shape \(5, 2, 2\)\) into 3"):
        EnsureChannelsd("image", 3)({"image": torch.zeros(5, 2, 2)})
    with pytest.raises(ValueError, match="must be a positive int"):
        EnsureChannelsd("image", 0)


def test_ensure_channels_keeps_multimodal_images():
    img = torch.arange(16.0).reshape(4, 2, 2)  # e.g. four MSD modalities: no channel is alpha
    out = EnsureChannelsd("image", 4)({"image": img})["image"]
    assert torch.equal(out, img)
    assert EnsureChannelsd("image", 2)({"image": img[:2]})["image"].shape[0] == 2
