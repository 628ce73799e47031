"""Intensity normalisation against a smooth multiplicative field (MR intensity non-uniformity).

:class:`DivideByLocalMeand` divides each pixel of the object by the mean intensity of the object around
it (a Gaussian-weighted mean over the object only, so the background does not pull the edge down). A field
that varies slowly compared with the Gaussian's width cancels in that ratio, while the contrast between
neighbouring tissues (grey against white matter) is kept; the background is set to 0. It is a
deterministic step of the preprocessing, applied the same way in training, evaluation and inference.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.networks.layers import GaussianFilter
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["DivideByLocalMean", "DivideByLocalMeand"]


class DivideByLocalMean(Transform):
    """Divide a channel-first image by its Gaussian-weighted local mean over the object (foreground).

    Args:
        sigma: width of the Gaussian in pixels (one value or one per spatial axis). Fields whose
            wavelength is many ``sigma`` long cancel; structures smaller than ``sigma`` keep their contrast.
        threshold: the object is where the image exceeds ``threshold`` times its 99th percentile.
        max_value: ratios are clipped to ``[0, max_value]``.

    Examples::

        >>> import torch
        >>> img = torch.ones(1, 64, 64) * torch.linspace(0.8, 1.2, 64)  # a flat object under a smooth field
        >>> out = DivideByLocalMean(sigma=8.0)(img)
        >>> bool(((out - 1).abs() < 0.05).all())  # raw: 0.8 .. 1.2
        True
    """

    def __init__(self, sigma: float | Sequence[float] = 16.0, threshold: float = 0.1, max_value: float = 4.0) -> None:
        sigmas = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"DivideByLocalMean: sigma must be > 0, got {sigma!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"DivideByLocalMean: threshold must be in [0, 1), got {threshold!r}")
        if max_value <= 0:
            raise ValueError(f"DivideByLocalMean: max_value must be > 0, got {max_value!r}")
        self.sigma = sigmas
        self.threshold = float(threshold)
        self.max_value = float(max_value)

    def __call__(self, img):
        """Return the ratio image (same type and shape as ``img``, floating point)."""
        x = convert_to_tensor(img, track_meta=False).float()
        if x.ndim not in (3, 4):
            raise ValueError(f"DivideByLocalMean: expected a channel-first 2D or 3D image, got shape {tuple(x.shape)}")
        spatial_dims = x.ndim - 1
        sigma = self.sigma * spatial_dims if len(self.sigma) == 1 else self.sigma
        if len(sigma) != spatial_dims:
            raise ValueError(f"DivideByLocalMean: {len(sigma)} sigmas for a {spatial_dims}D image")
        out = torch.zeros_like(x)
        smooth = GaussianFilter(spatial_dims, sigma=sigma)
        for c in range(x.shape[0]):
            channel = x[c]
            level = torch.quantile(channel.flatten()[:: max(1, channel.numel() // 100000)], 0.99)
            if level <= 0:
                continue  # an empty channel stays 0
            inside = (channel > self.threshold * level).float()
            weight = smooth(inside[None, None])[0, 0]
            local_mean = smooth((channel * inside)[None, None])[0, 0] / weight.clamp_min(1e-6)
            ratio = channel / local_mean.clamp_min(1e-6 * float(level))
            out[c] = (ratio * inside).clamp(0.0, self.max_value)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class DivideByLocalMeand(MapTransform):
    """Dictionary version of :class:`DivideByLocalMean`.

    Args:
        keys: keys of the images to normalise.
        sigma: see :class:`DivideByLocalMean`.
        threshold: see :class:`DivideByLocalMean`.
        max_value: see :class:`DivideByLocalMean`.
        allow_missing_keys: do not fail on a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float | Sequence[float] = 16.0,
        threshold: float = 0.1,
        max_value: float = 4.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = DivideByLocalMean(sigma, threshold, max_value)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Normalise every key of ``data`` present in ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
