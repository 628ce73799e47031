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


def _head(shape=(160, 176)) -> torch.Tensor:
    """An off-centre elliptic 'head' of two striped tissues (1.0 and 0.65) on a 0 background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    inside = ((yy - 70) / 60) ** 2 + ((xx - 90) / 70) ** 2 < 1
    img = np.where(np.sin(xx / 3.0) > 0, 1.0, 0.65).astype(np.float32) * inside
    return torch.from_numpy(img)[None]


def test_local_linear_fit_cancels_a_sloping_field_up_to_the_edge():
    """A field log-linear in position cancels exactly with order 1 (full grid, sigma 8) and to within 0.5 % on
    the coarse grid used for wide windows (sigma 32), at the edge too, where the local mean (order 0) is off."""
    img = _head()
    yy, xx = torch.meshgrid(torch.arange(img.shape[1]).float(), torch.arange(img.shape[2]).float(), indexing="ij")
    field = torch.exp(0.002 * yy - 0.0015 * xx)[None]  # 0.77 .. 1.38 over the head: strong, linear in log
    inside = img[0] > 0
    edge = inside & (torch.nn.functional.max_pool2d((~inside).float()[None], 9, 1, 4)[0] > 0)
    for sigma, tol in ((8.0, 1e-3), (32.0, 5e-3)):
        linear = DivideByLocalMean(sigma=sigma, order=1)
        err = (linear(img * field)[0] / linear(img)[0].clamp_min(1e-6) - 1)[inside].abs()
        assert float(err.max()) < tol, (sigma, float(err.max()))
    mean = DivideByLocalMean(sigma=32.0)
    err0 = (mean(img * field)[0] / mean(img)[0].clamp_min(1e-6) - 1)[edge].abs()
    assert float(err0.max()) > 0.05  # what order 1 is for: the off-centre mean leaves the slope at the edge
    out = DivideByLocalMean(sigma=32.0, order=1)(img)[0]
    stripes = torch.sin(xx / 3.0) > 0
    assert out[inside & stripes].mean() > 1.3 * out[inside & ~stripes].mean()  # contrast kept (1 / 0.65)
    assert torch.all(out[~inside] == 0)


def test_local_linear_fit_3d_and_dict():
    img = _head((48, 56))[0]
    vol = MetaTensor(torch.stack([img] * 20, dim=-1)[None], meta={"x": 1})  # (1, 48, 56, 20)
    zz = torch.linspace(0, 1, 20)
    field = torch.exp(0.3 * zz)[None, None, None]  # along the third axis only
    out = DivideByLocalMeand("image", sigma=6.0, order=1)({"image": vol * field})["image"]
    assert isinstance(out, MetaTensor) and out.meta["x"] == 1 and out.shape == vol.shape
    torch.testing.assert_close(out, DivideByLocalMean(sigma=6.0, order=1)(vol), atol=2e-3, rtol=2e-3)


def test_bad_order_is_named():
    with pytest.raises(ValueError, match="order must be 0"):
        DivideByLocalMean(order=2)
