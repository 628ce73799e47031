"""Random dictionary transforms for photographs that MONAI lacks: colour jitter, H&E stain jitter, JPEG
artefacts and speckle noise.

They follow MONAI's dictionary transforms (``RandomizableTransform`` + ``MapTransform``): ``prob`` and the
ranges are constructor arguments (config values in the bundles' ``train#random_transforms``), one draw of
the parameters per call applies to every key, ``set_random_state`` makes them reproducible, and images
are channel first (``[C, *spatial]``) torch tensors, MetaTensors (meta kept) or numpy arrays, floating
point with intensities in [0, 1] (after ``ScaleIntensityRanged``, before ``NormalizeIntensityd``).
Outputs are clipped to [0, 1] and keep the input's type, dtype and shape.

- :class:`RandColorJitterd`: brightness, contrast, saturation, hue (saturation and hue need RGB);
- :class:`RandHEStainJitterd`: H&E(-DAB) optical densities scaled and shifted per stain (Tellez et al. 2018);
- :class:`RandJPEGd`: JPEG encoding and decoding at a random quality (grey or RGB, 2D);
- :class:`RandSpeckleNoised`: multiplicative noise ``image * (1 + std * n)``, Gaussian or gamma distributed.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from . import augment_ops as ops

__all__ = ["RandColorJitterd", "RandHEStainJitterd", "RandJPEGd", "RandSpeckleNoised"]

_UNIT_SLACK = 0.5  # inputs further than this outside [0, 1] are on another scale (0..255, normalised)


def _check_prob(name: str, prob) -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= float(prob) <= 1.0:
        raise ValueError(f"{name}: prob must be a number in [0, 1], got {prob!r}")
    return float(prob)


def _pair(
    name: str, arg: str, value, single, lower: float | None = None, upper: float | None = None
) -> tuple[float, float] | None:
    """A ``(low, high)`` range from a pair, or from one number through ``single``; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name}: {arg} must be >= 0 (or a [low, high] pair), got {value!r}")
        low, high = single(float(value))
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        low, high = float(value[0]), float(value[1])
    else:
        raise ValueError(f"{name}: {arg} must be a number or a [low, high] pair, got {value!r}")
    if low > high:
        raise ValueError(f"{name}: {arg} range [{low}, {high}] has low > high")
    if (lower is not None and low < lower) or (upper is not None and high > upper):
        raise ValueError(f"{name}: {arg} range [{low}, {high}] must lie within [{lower}, {upper}]")
    return low, high


def _factor(name: str, arg: str, value) -> tuple[float, float] | None:
    """Multiplicative range: ``v`` -> ``[max(0, 1 - v), 1 + v]``; a pair is taken as given (>= 0)."""
    return _pair(name, arg, value, lambda v: (max(0.0, 1.0 - v), 1.0 + v), lower=0.0)


def _offset(name: str, arg: str, value, bound: float | None = None) -> tuple[float, float] | None:
    """Additive range: ``v`` -> ``[-v, v]``; a pair is taken as given."""
    lower = None if bound is None else -bound
    return _pair(name, arg, value, lambda v: (-v, v), lower=lower, upper=bound)


def _required(name: str, arg: str, value: tuple[float, float] | None) -> tuple[float, float]:
    if value is None:
        raise ValueError(f"{name}: {arg} must be a number or a [low, high] pair, got None")
    return value


def _image(
    name: str,
    key: Hashable,
    img,
    channels: Sequence[int] | None = None,
    unit: bool = True,
    spatial_dims: int | None = None,
    value_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """``img`` as a plain float tensor, after the checks that name the key and the shape."""
    t = convert_to_tensor(img, track_meta=False)
    shape = tuple(t.shape)
    if not isinstance(t, torch.Tensor) or t.ndim < 2:
        raise ValueError(f"{name}: '{key}' has shape {shape}: expected a channel-first image [C, *spatial]")
    if not torch.is_floating_point(t):
        raise ValueError(
            f"{name}: '{key}' has dtype {t.dtype} (shape {shape}): expected floating point with "
            "intensities in [0, 1]; scale it first (e.g. ScaleIntensityRanged to 0..1)"
        )
    if channels is not None and shape[0] not in channels:
        want = " or ".join(str(c) for c in channels)
        raise ValueError(f"{name}: '{key}' has shape {shape}: expected {want} channel(s) first")
    if spatial_dims is not None and t.ndim - 1 != spatial_dims:
        raise ValueError(f"{name}: '{key}' has shape {shape}: expected [C, H, W] (a 2D image)")
    if unit or value_range is not None:
        low, high = value_range or (0.0, 1.0)
        slack = _UNIT_SLACK * (high - low)
        vmin, vmax = (float(t.min()), float(t.max())) if t.numel() else (low, high)
        if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmin < low - slack or vmax > high + slack:
            raise ValueError(
                f"{name}: '{key}' (shape {shape}) holds values in [{vmin:.4g}, {vmax:.4g}]: expected intensities "
                f"in [{low:g}, {high:g}]; place it after the scaling to 0..1 (ScaleIntensityRanged) and before "
                "NormalizeIntensityd"
            )
    return t


def _restore(out: torch.Tensor, img):
    """``out`` in the type, dtype and device of ``img`` (a MetaTensor keeps its meta)."""
    return convert_to_dst_type(out, dst=img)[0]


class _RandDictTransform(RandomizableTransform, MapTransform):
    """Shared skeleton: check ``prob``, draw once per call, apply to every key present."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(type(self).__name__, prob))

    def _apply(self, key: Hashable, img):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _check(self, key: Hashable, img) -> torch.Tensor:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize(None)
        for key in self.key_iterator(d):
            t = self._check(key, d[key])  # also when not drawn: a misplaced transform fails at once
            if self._do_transform:
                d[key] = _restore(self._apply(key, t), d[key])
        return d


class RandColorJitterd(_RandDictTransform):
    """Random brightness, contrast, saturation and hue of images in [0, 1], applied in a random order.

    Each of ``brightness``, ``contrast`` and ``saturation`` is a number ``v`` (factor drawn from
    ``[max(0, 1 - v), 1 + v]``), a ``[low, high]`` range of factors, or None (off); ``hue`` is a number
    ``v <= 0.5`` (shift in turns drawn from ``[-v, v]``), a range within [-0.5, 0.5], or None. Brightness
    multiplies, contrast blends with the mean grey level, saturation blends each pixel with its grey level,
    hue rotates the HSV hue; each result is clipped to [0, 1]. Brightness and contrast work on one channel
    too; saturation and hue need RGB.

    Args:
        keys: keys of the images.
        brightness: brightness factor range.
        contrast: contrast factor range.
        saturation: saturation factor range.
        hue: hue shift range, in turns.
        prob: probability of jittering a sample.
        allow_missing_keys: do not fail on absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        brightness=None,
        contrast=None,
        saturation=None,
        hue=None,
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        name = type(self).__name__
        self.ranges = {
            "brightness": _factor(name, "brightness", brightness),
            "contrast": _factor(name, "contrast", contrast),
            "saturation": _factor(name, "saturation", saturation),
            "hue": _offset(name, "hue", hue, bound=0.5),
        }
        self.params: dict[str, float] = {}
        self.order: list[str] = []

    def randomize(self, data=None) -> None:
        """Draw whether to apply, the factors and their order.

        Args:
            data: unused (MONAI's ``randomize`` signature).
        """
        super().randomize(None)
        if not self._do_transform:
            return
        self.params = {k: float(self.R.uniform(*r)) for k, r in self.ranges.items() if r is not None}
        names = list(self.params)
        self.order = [names[i] for i in self.R.permutation(len(names))]

    def _check(self, key, img) -> torch.Tensor:
        colour = self.ranges["saturation"] is not None or self.ranges["hue"] is not None
        return _image(type(self).__name__, key, img, channels=(3,) if colour else (1, 3))

    def _apply(self, key, t: torch.Tensor) -> torch.Tensor:
        out = t.clamp(0.0, 1.0)
        functions = {
            "brightness": ops.adjust_brightness,
            "contrast": ops.adjust_contrast,
            "saturation": ops.adjust_saturation,
            "hue": ops.adjust_hue,
        }
        for k in self.order:
            out = functions[k](out, self.params[k])
        return out


class RandHEStainJitterd(_RandDictTransform):
    """Random H&E stain variation of RGB histology images in [0, 1] (Tellez et al. 2018).

    The image is unmixed into haematoxylin, eosin and DAB optical densities with the Ruifrok & Johnston stain
    vectors; each stain ``i`` becomes ``alpha_i * stain_i + beta_i`` with ``alpha_i`` drawn from ``alpha`` and
    ``beta_i`` from ``beta`` (independently per stain), and the result is mixed back to RGB and clipped
    (:func:`medurwkv_net.data.augment_ops.he_stain_jitter`). ``beta`` is in optical-density units
    (natural log): 0.05 darkens a white pixel by about 3 % in the stain's colour.

    Args:
        keys: keys of the RGB images.
        alpha: scale range: a number ``s`` for ``[1 - s, 1 + s]``, or ``[low, high]`` (>= 0).
        beta: shift range: a number ``s`` for ``[-s, s]``, or ``[low, high]``.
        prob: probability of jittering a sample.
        allow_missing_keys: do not fail on absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        alpha=(0.95, 1.05),
        beta=(-0.05, 0.05),
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        name = type(self).__name__
        self.alpha_range = _required(name, "alpha", _factor(name, "alpha", alpha))
        self.beta_range = _required(name, "beta", _offset(name, "beta", beta))
        self.alpha = np.ones(3)
        self.beta = np.zeros(3)

    def randomize(self, data=None) -> None:
        """Draw whether to apply, and the stain scales and shifts.

        Args:
            data: unused (MONAI's ``randomize`` signature).
        """
        super().randomize(None)
        if self._do_transform:
            self.alpha = self.R.uniform(*self.alpha_range, size=3)
            self.beta = self.R.uniform(*self.beta_range, size=3)

    def _check(self, key, img) -> torch.Tensor:
        return _image(type(self).__name__, key, img, channels=(3,))

    def _apply(self, key, t: torch.Tensor) -> torch.Tensor:
        return ops.he_stain_jitter(t, self.alpha.tolist(), self.beta.tolist())


class RandJPEGd(_RandDictTransform):
    """Random JPEG compression artefacts: the image encoded and decoded by PIL at a quality drawn from
    ``quality`` (integers, both ends included; 100 best, 1 worst). Grey ``[1, H, W]`` or RGB ``[3, H, W]``
    images in [0, 1]; the result is 8-bit (multiples of 1/255).

    Args:
        keys: keys of the images.
        quality: a ``[low, high]`` range within [1, 100], or one quality.
        prob: probability of compressing a sample.
        allow_missing_keys: do not fail on absent keys.
    """

    def __init__(
        self, keys: KeysCollection, quality=(30, 90), prob: float = 0.1, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        name = type(self).__name__
        q = _pair(name, "quality", quality, lambda v: (v, v), lower=1, upper=100)
        if q is None or any(float(v) != int(v) for v in q):
            raise ValueError(f"{name}: quality must be integers in [1, 100] (one, or [low, high]), got {quality!r}")
        self.quality_range = (int(q[0]), int(q[1]))
        self.quality = self.quality_range[1]

    def randomize(self, data=None) -> None:
        """Draw whether to apply, and the JPEG quality.

        Args:
            data: unused (MONAI's ``randomize`` signature).
        """
        super().randomize(None)
        if self._do_transform:
            self.quality = int(self.R.randint(self.quality_range[0], self.quality_range[1] + 1))

    def _check(self, key, img) -> torch.Tensor:
        return _image(type(self).__name__, key, img, channels=(1, 3), spatial_dims=2)

    def _apply(self, key, t: torch.Tensor) -> torch.Tensor:
        return ops.jpeg_roundtrip(t, self.quality)


class RandSpeckleNoised(_RandDictTransform):
    """Random multiplicative (speckle-like) noise: ``image * m`` with unit-mean noise ``m`` of standard
    deviation ``s`` drawn from ``std`` once per sample.

    ``distribution`` ``"gaussian"``: ``m = 1 + s * n`` with ``n`` standard normal; ``"gamma"``: ``m`` gamma
    distributed with shape ``1 / s**2`` and scale ``s**2`` (mean 1, standard deviation ``s``: fully developed
    speckle of an intensity image averaged over ``1 / s**2`` looks), never negative. Either way the mean
    intensity is kept. ``same_for_channels`` draws one noise field for all channels (a grey image stored as
    RGB stays grey).

    Args:
        keys: keys of the images.
        std: noise standard deviation: a number ``s`` for ``[0, s]``, or ``[low, high]`` (>= 0).
        distribution: ``"gaussian"`` or ``"gamma"``.
        same_for_channels: one noise field for all channels.
        clip: ``[low, high]`` the result is clipped to (default [0, 1]; the input must lie near it), or None.
        prob: probability of adding noise to a sample.
        allow_missing_keys: do not fail on absent keys.
    """

    DISTRIBUTIONS = ("gaussian", "gamma")

    def __init__(
        self,
        keys: KeysCollection,
        std=(0.05, 0.2),
        distribution: str = "gaussian",
        same_for_channels: bool = False,
        clip=(0.0, 1.0),
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        name = type(self).__name__
        self.std_range = _required(name, "std", _pair(name, "std", std, lambda v: (0.0, v), lower=0.0))
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"{name}: distribution must be one of {', '.join(self.DISTRIBUTIONS)}, got {distribution!r}"
            )
        if not isinstance(same_for_channels, bool):
            raise ValueError(f"{name}: same_for_channels must be true or false, got {same_for_channels!r}")
        self.clip = _pair(name, "clip", clip, lambda v: (0.0, v))
        self.distribution = distribution
        self.same_for_channels = same_for_channels
        self.std = 0.0

    def randomize(self, data=None) -> None:
        """Draw whether to apply, and the noise's standard deviation.

        Args:
            data: unused (MONAI's ``randomize`` signature).
        """
        super().randomize(None)
        if self._do_transform:
            self.std = float(self.R.uniform(*self.std_range))

    def _noise(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.std == 0.0:
            return np.ones(shape, np.float32)
        if self.distribution == "gamma":
            var = self.std**2
            return self.R.gamma(shape=1.0 / var, scale=var, size=shape).astype(np.float32)
        return (1.0 + self.std * self.R.standard_normal(shape)).astype(np.float32)

    def _check(self, key, img) -> torch.Tensor:
        return _image(type(self).__name__, key, img, unit=False, value_range=self.clip)

    def _apply(self, key, t: torch.Tensor) -> torch.Tensor:
        shape = ((1,) if self.same_for_channels else (t.shape[0],)) + tuple(t.shape[1:])
        return ops.speckle(t, torch.from_numpy(self._noise(shape)), self.clip)
