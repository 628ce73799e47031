"""The image/label pair check shared by ``prepare-data`` (:func:`medurwkv_net.data.splits.check_cases`) and
``verify-data`` (:mod:`medurwkv_net.reliability.verify_cases`).

A pair is an image and one or more label files (several masks of one case are united). It is sound when every
label has the image's spatial shape, the affines (where both files have one) agree within a tolerance, and,
for masks, :func:`medurwkv_net.data.transforms.mask_foreground` (the one threshold rule, also used by
``LoadMaskd``) accepts every file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .readers import Loaded, channel_first
from .transforms import mask_foreground, mask_threshold

__all__ = ["LabelPart", "PairCheck", "check_pair"]


@dataclass
class LabelPart:
    """One label file of a pair.

    Attributes:
        loaded: the decoded file.
        what: how messages name it (``"label"``, ``"mask 'x.png'"``).
        source: its path, named by the mask conversion's messages ("" for an array).
    """

    loaded: Loaded
    what: str = "label"
    source: str = ""


@dataclass
class PairCheck:
    """What :func:`check_pair` found.

    Attributes:
        errors: ``(check, message)`` pairs; ``check`` is ``shape``, ``affine`` or ``label_values``.
        foreground: for masks, whether any foreground is left after thresholding (None: not checked).
        empty_note: for masks without foreground, a warning saying why the label is empty.
    """

    errors: list[tuple[str, str]] = field(default_factory=list)
    foreground: bool | None = None
    empty_note: str | None = None


def _spacing(affine: np.ndarray) -> list[float]:
    k = affine.shape[0] - 1
    return [round(float(np.linalg.norm(affine[:k, i])), 6) for i in range(k)]


def _affine_problem(a: np.ndarray, b: np.ndarray, atol: float, what: str) -> str | None:
    if a.shape != b.shape:
        return f"image affine {a.shape} and {what} affine {b.shape} differ in rank"
    diff = float(np.abs(a - b).max())
    if diff <= atol:
        return None
    return (
        f"image and {what} affines differ by up to {diff:.4g} (tolerance {atol}); "
        f"spacing image {_spacing(a)} vs label {_spacing(b)}, "
        f"origin image {a[:-1, -1].round(4).tolist()} vs label {b[:-1, -1].round(4).tolist()}"
    )


def _mask_foreground(parts: Sequence[LabelPart], threshold: float | None, out: PairCheck) -> None:
    """Unite the parts' foreground into ``out``; a refused mask is a ``label_values`` error."""
    found, nonzero_max = False, 0.0
    for part in parts:
        try:
            found = found or bool(mask_foreground(channel_first(part.loaded), threshold, source=part.source).any())
        except ValueError as e:
            out.errors.append(("label_values", str(e)))
            return
        colour = channel_first(part.loaded)
        colour = colour[:-1] if colour.shape[0] in (2, 4) else colour  # alpha is not data
        if colour.size:
            nonzero_max = max(nonzero_max, float(np.max(colour)))
    out.foreground = found
    if found:
        return
    if nonzero_max > 0:
        rule = threshold if threshold is not None else f"auto ({mask_threshold(np.array([nonzero_max])):g})"
        out.empty_note = (
            f"mask has non-zero values (max {nonzero_max:g}) but none above the threshold {rule}: "
            "empty after thresholding"
        )
    else:
        out.empty_note = "label is empty (background 0 only)"


def check_pair(
    image: Loaded | None,
    labels: Sequence[LabelPart],
    mask: bool,
    threshold: float | None = None,
    affine_atol: float = 1e-3,
    image_what: str = "image",
) -> PairCheck:
    """Check an image and its label file(s) as the training pipeline will pair them.

    Args:
        image: the decoded image, or None when it could not be read (only the labels are then checked).
        labels: the label file(s) of the case.
        mask: the labels are binary masks (their foreground is taken with the threshold rule).
        threshold: the masks' threshold (None: automatic, see :func:`medurwkv_net.data.transforms.mask_threshold`).
        affine_atol: tolerance (in mm) of the image vs label affine comparison.
        image_what: how messages name the image.

    Returns:
        The errors found (the shape check stops at the first mismatch) and, for masks, the foreground.
    """
    out = PairCheck()
    for part in labels:
        lab = part.loaded
        if image is not None and image.spatial_shape != lab.spatial_shape:
            out.errors.append(
                (
                    "shape",
                    f"{image_what} spatial shape {image.spatial_shape} != {part.what} spatial shape "
                    f"{lab.spatial_shape}",
                )
            )
            return out
        if image is not None and image.affine is not None and lab.affine is not None:
            problem = _affine_problem(image.affine, lab.affine, affine_atol, part.what)
            if problem is not None:
                out.errors.append(("affine", problem))
    if mask:
        _mask_foreground(labels, threshold, out)
    return out
