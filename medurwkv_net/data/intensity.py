"""Intensity normalisation against a smooth multiplicative field (MR intensity non-uniformity).

:class:`DivideByLocalMeand` divides each pixel of the object by the mean intensity of the object around
it (a Gaussian-weighted mean over the object only, so the background does not pull the edge down). A field
that varies slowly compared with the Gaussian's width cancels in that ratio, while the contrast between
neighbouring tissues (grey against white matter) is kept; the background is set to 0. Near the edge of the
object the local mean is taken off-centre (only the inside counts), so a field sloping across the edge does
not cancel there; ``order=1`` divides instead by a local linear fit of the log intensity (a Gaussian-weighted
least-squares plane, evaluated at the pixel), under which any field that is log-linear over the window
cancels everywhere. It is a deterministic step of the preprocessing, applied the same way in training,
evaluation and inference.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.networks.layers import GaussianFilter, separable_filtering
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
        order: 0 divides by the local mean; 1 divides by ``exp`` of a Gaussian-weighted least-squares fit of a
            linear function of position to the log intensity of the object around the pixel, evaluated at the
            pixel. A field that is linear over the window then cancels exactly, also at the edge of the object,
            where the local mean is taken off-centre.

    Examples::

        >>> import torch
        >>> img = torch.ones(1, 64, 64) * torch.linspace(0.8, 1.2, 64)  # a flat object under a smooth field
        >>> out = DivideByLocalMean(sigma=8.0)(img)
        >>> bool(((out - 1).abs() < 0.05).all())  # raw: 0.8 .. 1.2
        True
    """

    def __init__(
        self, sigma: float | Sequence[float] = 16.0, threshold: float = 0.1, max_value: float = 4.0, order: int = 0
    ) -> None:
        sigmas = [float(sigma)] if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
        if not sigmas or min(sigmas) <= 0:
            raise ValueError(f"DivideByLocalMean: sigma must be > 0, got {sigma!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"DivideByLocalMean: threshold must be in [0, 1), got {threshold!r}")
        if max_value <= 0:
            raise ValueError(f"DivideByLocalMean: max_value must be > 0, got {max_value!r}")
        if order not in (0, 1):
            raise ValueError(f"DivideByLocalMean: order must be 0 (local mean) or 1 (local linear fit), got {order!r}")
        self.sigma = sigmas
        self.order = int(order)
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
            if self.order == 1:
                ratio = channel / _local_linear_fit(channel.clamp_min(1e-6 * float(level)), inside, sigma)
            else:
                weight = smooth(inside[None, None])[0, 0]
                local_mean = smooth((channel * inside)[None, None])[0, 0] / weight.clamp_min(1e-6)
                ratio = channel / local_mean.clamp_min(1e-6 * float(level))
            out[c] = (ratio * inside).clamp(0.0, self.max_value)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


def _local_linear_fit(channel: torch.Tensor, inside: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """``exp(a(x))`` where ``a(x) + b(x) . (p - x)`` fits ``log channel(p)`` over ``inside`` with weights ``G(p - x)``.

    The weighted moments of the offsets ``u = (p - x) / sigma`` up to order 2 are separable Gaussian filters
    with kernels ``g(u) u^k``; the normal equations are solved at every pixel. The fit is smooth on the scale of
    ``sigma``, so it is computed on a grid coarser by ``min(sigma) // 8`` (area averages) and interpolated back.
    """
    dims = channel.ndim
    shape = channel.shape
    factor = max(1, int(min(sigma) // 8))
    mode = "bilinear" if dims == 2 else "trilinear"
    log_values = torch.log(channel) * inside
    if factor > 1:
        coarse = [-(-n // factor) for n in shape]
        inside = F.interpolate(inside[None, None], size=coarse, mode="area")[0, 0]
        log_values = F.interpolate(log_values[None, None], size=coarse, mode="area")[0, 0]
        sigma = [s * c / n for s, c, n in zip(sigma, coarse, shape)]

    def kernel(s: float, power: int) -> torch.Tensor:
        radius = max(1, int(3.0 * s))
        u = torch.arange(-radius, radius + 1, dtype=torch.float32, device=channel.device) / s
        return torch.exp(-0.5 * u**2) * u**power

    def moment(x: torch.Tensor, powers: Sequence[int]) -> torch.Tensor:
        return separable_filtering(x[None, None], [kernel(s, k) for s, k in zip(sigma, powers)])[0, 0]

    unit = [[int(i == j) for j in range(dims)] for i in range(dims)]
    basis = [[0] * dims, *unit]  # constant, then one linear term per axis
    weights: dict[tuple[int, ...], torch.Tensor] = {}  # the normal matrix is symmetric: each moment filtered once
    for r in basis:
        for c in basis:
            powers = tuple(a + b for a, b in zip(r, c))
            if powers not in weights:
                weights[powers] = moment(inside, powers)
    lhs = torch.stack(
        [torch.stack([weights[tuple(a + b for a, b in zip(r, c))] for c in basis], -1) for r in basis], -2
    )
    rhs = torch.stack([moment(log_values, r) for r in basis], -1)
    ridge = 1e-4 * float(lhs[..., 0, 0].max()) * torch.eye(len(basis), device=channel.device)
    intercept = torch.linalg.solve(lhs + ridge, rhs[..., None])[..., 0, 0]
    if factor > 1:
        intercept = F.interpolate(intercept[None, None], size=list(shape), mode=mode, align_corners=False)[0, 0]
    return torch.exp(intercept)


class DivideByLocalMeand(MapTransform):
    """Dictionary version of :class:`DivideByLocalMean`.

    Args:
        keys: keys of the images to normalise.
        sigma: see :class:`DivideByLocalMean`.
        threshold: see :class:`DivideByLocalMean`.
        max_value: see :class:`DivideByLocalMean`.
        order: see :class:`DivideByLocalMean`.
        allow_missing_keys: do not fail on a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        sigma: float | Sequence[float] = 16.0,
        threshold: float = 0.1,
        max_value: float = 4.0,
        order: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = DivideByLocalMean(sigma, threshold, max_value, order)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Normalise every key of ``data`` present in ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
