"""Colour, stain, compression and speckle operations behind :mod:`medurwkv_net.data.augment`.

Plain functions on float tensors, channel first (``[C, *spatial]``), intensities in [0, 1]; each takes its
parameters explicitly (the random transforms draw them), so that every operation has a known answer:

- :func:`adjust_brightness`, :func:`adjust_contrast`, :func:`adjust_saturation`, :func:`adjust_hue`: the
  usual colour-jitter operations (brightness and contrast also on one channel);
- :func:`rgb_to_hsv` / :func:`hsv_to_rgb`: the hexcone model, hue in [0, 1);
- :func:`he_stain_jitter`: colour deconvolution with the Ruifrok & Johnston H&E-DAB stain vectors, each
  stain's optical density scaled and shifted, then back to RGB;
- :func:`jpeg_roundtrip`: encode and decode with PIL at a JPEG quality (grey or RGB, 2D);
- :func:`speckle`: multiplicative noise ``image * noise`` with unit-mean noise.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

__all__ = [
    "HED_STAINS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "he_stain_jitter",
    "hsv_to_rgb",
    "jpeg_roundtrip",
    "rgb_to_hsv",
    "speckle",
]

# Ruifrok & Johnston, "Quantification of histochemical staining by color deconvolution", Anal. Quant.
# Cytol. Histol. 23(4), 2001: optical density of haematoxylin, eosin and DAB in R, G, B (rows), before
# normalisation to unit length.
HED_STAINS = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in the grey level
_OD_FLOOR = 1e-6  # smallest intensity taken into optical density (-ln 1e-6 = 13.8)


def _grey(img: torch.Tensor) -> torch.Tensor:
    """Grey level ``[1, *spatial]`` of a 1- or 3-channel image."""
    if img.shape[0] == 1:
        return img
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, *([1] * (img.ndim - 1)))
    return (img * w).sum(0, keepdim=True)


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """``img * factor``, clipped to [0, 1] (``factor`` 1: unchanged)."""
    return (img * factor).clamp(0.0, 1.0)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's mean grey level: ``mean + factor * (img - mean)``, clipped to [0, 1]."""
    mean = _grey(img).mean()
    return (mean + factor * (img - mean)).clamp(0.0, 1.0)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend an RGB image with its grey level per pixel: 0 gives grey, 1 the image, above 1 more colour."""
    grey = _grey(img)
    return (grey + factor * (img - grey)).clamp(0.0, 1.0)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """RGB ``[3, *spatial]`` in [0, 1] -> hue (in [0, 1)), saturation, value."""
    r, g, b = img[0], img[1], img[2]
    maxc, _ = img.max(0)
    minc, _ = img.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r, ((g - b) / safe) % 6.0, torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((h, s, maxc))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Hue (in [0, 1), wrapped), saturation, value ``[3, *spatial]`` -> RGB."""
    h, s, v = hsv[0] % 1.0, hsv[1], hsv[2]
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6
    # (r, g, b) of each of the six sectors of the hexcone
    table = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    out = torch.zeros((3, *h.shape), dtype=hsv.dtype, device=hsv.device)
    for k, rgb in enumerate(table):
        at = sector == k
        for c in range(3):
            out[c] = torch.where(at, rgb[c], out[c])
    return out


def adjust_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of an RGB image by ``shift`` turns (in [-0.5, 0.5]; 0: unchanged)."""
    hsv = rgb_to_hsv(img)
    hsv[0] = (hsv[0] + shift) % 1.0
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


def _stain_matrix(dtype: torch.dtype, device) -> torch.Tensor:
    m = torch.tensor(HED_STAINS, dtype=torch.float64)
    return (m / m.norm(dim=1, keepdim=True)).to(dtype=dtype, device=device)


def he_stain_jitter(img: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Scale and shift each stain of an RGB image in optical density space (Tellez et al. 2018).

    The image is taken to optical density ``od = -ln(max(img, 1e-6))``, unmixed into haematoxylin, eosin and
    DAB concentrations with the Ruifrok & Johnston stain vectors (``od = conc @ stains``), each concentration
    becomes ``alpha[i] * conc[i] + beta[i]`` (``beta`` in optical-density units, natural log), and the result
    is mixed back and returned as RGB in [0, 1]. ``alpha`` 1 and ``beta`` 0 return the image (intensities
    below 1e-6 become 1e-6).

    Args:
        img: RGB ``[3, *spatial]`` in [0, 1].
        alpha: three factors (haematoxylin, eosin, DAB).
        beta: three offsets, likewise.

    Returns:
        The jittered RGB image, same shape and dtype.
    """
    dtype = img.dtype if img.dtype == torch.float64 else torch.float32
    stains = _stain_matrix(torch.float64, img.device)
    unmix = torch.linalg.inv(stains).to(dtype)
    stains = stains.to(dtype)
    flat = img.to(dtype).reshape(3, -1)
    od = -torch.log(flat.clamp(_OD_FLOOR, 1.0))
    conc = unmix.T @ od  # [3 stains, N]: od = stains.T @ conc
    a = torch.as_tensor(alpha, dtype=dtype, device=img.device).view(3, 1)
    b = torch.as_tensor(beta, dtype=dtype, device=img.device).view(3, 1)
    od = stains.T @ (conc * a + b)
    return torch.exp(-od).clamp(0.0, 1.0).reshape(img.shape).to(img.dtype)


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """The image after JPEG encoding at ``quality`` (1-100) and decoding with PIL (8-bit, clipped to [0, 1]).

    Args:
        img: grey ``[1, H, W]`` or RGB ``[3, H, W]`` in [0, 1].
        quality: the JPEG quality.

    Returns:
        The decoded image in [0, 1], same shape, dtype and device.
    """
    arr = (img.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    pil = Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(np.moveaxis(arr, 0, -1), "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert(pil.mode), dtype=np.float32) / 255.0
    out = out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=img.dtype, device=img.device)


def speckle(img: torch.Tensor, noise: torch.Tensor, clip: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """``img * noise`` (``noise`` broadcast over ``img``, unit mean), clipped to ``clip`` unless None."""
    out = img * noise.to(dtype=img.dtype, device=img.device)
    return out if clip is None else out.clamp(float(clip[0]), float(clip[1]))
