"""DivideByLocalMean(d): a smooth multiplicative field cancels, tissue contrast stays, bad input is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medurwkv_net.data.intensity import DivideByLocalMean, DivideByLocalMeand


def _two_tissues(shape=(96, 112)) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc of 'white matter' (1.0) in a ring-striped 'grey matter' (0.65) object on a 0 background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    img = np.zeros(shape, np.float32)
    img[r < 40] = 0.65
    wm = (r < 40) & (np.sin(r / 2.0) > 0)
    img[wm] = 1.0
    return torch.from_numpy(img)[None], torch.from_numpy(wm)


def test_a_smooth_field_cancels_and_the_contrast_stays():
    img, wm = _two_tissues()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, img.shape[1]), torch.linspace(0, 1, img.shape[2]), indexing="ij")
    field = 0.8 + 0.4 * (0.5 * yy + 0.5 * xx)  # 0.8 .. 1.2, like an uncorrected 1.5 T scan
    t = DivideByLocalMean(sigma=8.0)
    clean, biased = t(img), t(img * field)
    inside = img[0] > 0
    raw_shift = ((img * field)[0][inside] - img[0][inside]).abs().max()
    assert raw_shift > 0.1  # the field moves the raw intensities by over 10 %
    assert (biased[0][inside] - clean[0][inside]).abs().max() < 0.05  # the field is gone
    assert clean[0][wm].mean() > 1.15 * clean[0][inside & ~wm].mean()  # white brighter than grey, as before
    assert torch.all(clean[0][~inside] == 0)


def test_scale_free_type_and_meta_kept_3d():
    rng = np.random.default_rng(0)
    vol = MetaTensor(torch.from_numpy(rng.random((1, 20, 24, 16), dtype=np.float32) + 0.5), meta={"x": 1})
    out = DivideByLocalMeand("image", sigma=[4.0, 4.0, 2.0])({"image": vol})["image"]
    assert isinstance(out, MetaTensor) and out.meta["x"] == 1 and out.shape == vol.shape
    torch.testing.assert_close(DivideByLocalMean(sigma=[4.0, 4.0, 2.0])(vol * 7.0), out)  # global gain cancels
    arr = np.asarray(vol.as_tensor())
    assert isinstance(DivideByLocalMean(sigma=4.0)(arr), np.ndarray)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"sigma": 0.0}, "sigma"), ({"threshold": 1.0}, "threshold"), ({"max_value": 0.0}, "max_value")],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DivideByLocalMean(**kwargs)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"shape \(5, 6\)"):
        DivideByLocalMean()(torch.ones(5, 6))
    with pytest.raises(ValueError, match="2 sigmas for a 3D image"):
        DivideByLocalMean(sigma=[2.0, 2.0])(torch.ones(1, 8, 8, 8))


def test_empty_channel_stays_zero():
    assert torch.all(DivideByLocalMean()(torch.zeros(2, 16, 16)) == 0)
