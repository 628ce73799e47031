"""The bundles' transform chains as Python functions, for scripts, benchmarks and tests.

The bundles themselves list these MONAI transforms in their JSON (``train#deterministic_transforms``,
``train#random_transforms``, ``preprocessing``, ``postprocessing``), where users read and override
them; these functions build the same chains from a few options, e.g. for a benchmark that trains other
networks with a bundle's recipe. What the options mean:

``in_channels``
    channels the network takes; images are converted with
    :class:`medurwkv_net.data.transforms.EnsureChannelsd` (grey repeated, RGB averaged, alpha dropped).
``spatial_mode``
    ``"crop"``: train on random ``spatial_size`` crops (padded when the image is smaller), validate,
    evaluate and infer on whole images with a sliding window of ``spatial_size`` (see
    :func:`make_inferer`); for images whose size varies little or that are large.
    ``"resize"``: every image is resized to ``spatial_size`` (labels with nearest neighbour);
    validation and evaluation metrics are computed at that size, inference resizes the
    prediction back to the original size (``Invertd``). This is the usual protocol of the 2D
    photograph benchmarks (ISIC, Kvasir, BUSI, GlaS).
``intensity``
    ``"minmax"``: each image is scaled to [0, 1] (MRI/CT slices); ``"imagenet"``: 8-bit input
    divided by 255 then normalised with the ImageNet mean/std (use with the pretrained encoder).
``flip_axes``, ``rotate90`` (training only)
    random flips along these spatial axes and random 90-degree rotations; the defaults (both axes,
    rotations) are for images whose orientation carries no meaning, ``[0]`` and ``false`` keep the
    anatomical orientation of registered slices (the demo).
``intensity_scale``, ``intensity_shift`` (training only)
    amplitudes of random intensity scaling and shift (defaults 0.1 and 0.1, for images from many
    devices). The demo's slices all come from one template, so the only intensity variation between
    them is the factor of the per-slice min-max scaling (slice maxima differ by up to ~20 %): it
    augments exactly that (``0.15``, no shift), which leaves the GM / WM intensities the labels follow intact.
``label_mode``
    how a label file becomes class indices: ``"index"``: the file holds the indices 0..num_classes-1
    (NIfTI label maps, the demo); ``"mask"``: a binary mask of a 2D photograph (or a list of masks to
    unite), read by :class:`medurwkv_net.data.transforms.LoadMaskd` with ``label_threshold``
    (``None``: automatic, 0/1 masks use > 0, 8-bit masks > 127; ``0`` for GlaS instance ids).

Postprocessing (:func:`postprocessing`) turns logits into a class-index mask ``pred``, restores the
original size in ``"resize"`` mode and, when ``output_dir`` is given, saves it with
:class:`SaveMaskd` in the input's own format (NIfTI for NIfTI input, PNG otherwise).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.utils import convert_to_tensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    SaveImage,
    SaveImaged,
    ScaleIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from medurwkv_net.data.transforms import EnsureChannelsd, LoadMaskd
from medurwkv_net.pretrained.registry import get_pretrained_cfg
from medurwkv_net.reliability.inference import SafeSimpleInferer, SafeSlidingWindowInferer

__all__ = [
    "SaveMaskd",
    "NIFTI_EXTENSIONS",
    "PHOTO_EXTENSIONS",
    "eval_transforms",
    "inference_transforms",
    "make_inferer",
    "postprocessing",
    "train_transforms",
]

SPATIAL_MODES = ("crop", "resize")
INTENSITY_MODES = ("minmax", "imagenet")
LABEL_MODES = ("index", "mask")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")
PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: normalisation of the ImageNet-pretrained encoder, from the pretrained registry (the default VRWKV-T release)
IMAGENET_MEAN = get_pretrained_cfg("tiny").mean
IMAGENET_STD = get_pretrained_cfg("tiny").std


def _source_name(d: Mapping, key: Hashable) -> str:
    value = d.get(key)
    meta = getattr(value, "meta", None) or d.get(f"{key}_meta_dict") or {}
    return str(meta.get("filename_or_obj", f"<in-memory '{key}'>"))


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


class SaveMaskd(SaveImaged):
    """Save a class-index mask next to nothing else but in the format of the image it came from.

    NIfTI input (``.nii``/``.nii.gz``) -> ``<name>_<postfix>.nii.gz`` (uint8, the input's affine);
    anything else -> ``<name>_<postfix>.png`` (uint8 grey PNG with value ``index * png_scale``, by
    default ``255 // (num_classes - 1)`` so binary masks are 0/255). The mask must already have the
    input's size (``postprocessing`` restores it). Subclassing ``SaveImaged`` lets MONAI Label's
    bundle infer task drop this writer as it drops every ``SaveImaged``.

    Args:
        keys: the mask keys.
        output_dir: folder the masks are written to.
        num_classes: classes of the mask (background included), for the default ``png_scale``.
        ref_key: key of the input image, whose metadata names the file when the mask has none.
        output_postfix: appended to the input file's name.
        png_scale: PNG grey value per class index (``None``: ``255 // (num_classes - 1)``).
        print_log: log each file written.
        allow_missing_keys: skip keys missing from the data instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        num_classes: int,
        ref_key: str = "image",
        output_postfix: str = "seg",
        png_scale: int | None = None,
        print_log: bool = True,
        allow_missing_keys: bool = False,
    ):
        super().__init__(
            keys,
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=".nii.gz",
            output_dtype=np.uint8,
            resample=False,
            separate_folder=False,
            print_log=print_log,
            allow_missing_keys=allow_missing_keys,
        )
        self.ref_key = ref_key
        self.png_scale = int(png_scale) if png_scale is not None else max(1, 255 // max(1, num_classes - 1))
        if num_classes - 1 > 255 // self.png_scale:
            raise ValueError(f"png_scale {self.png_scale} * {num_classes - 1} classes exceeds 255")
        self.png_saver = SaveImage(
            output_dir=output_dir,
            output_postfix=output_postfix,
            output_ext=".png",
            output_dtype=np.uint8,
            resample=False,
            separate_folder=False,
            print_log=print_log,
            writer="PILWriter",
        )

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            meta = dict(getattr(d[key], "meta", None) or {})
            if "filename_or_obj" not in meta and self.ref_key in d:
                meta = dict(getattr(d[self.ref_key], "meta", None) or {})  # prediction without the input's meta
            source = str(meta.get("filename_or_obj", ""))
            if not source:
                raise ValueError(f"SaveMaskd: neither '{key}' nor '{self.ref_key}' carries the input file name")
            mask = MetaTensor(convert_to_tensor(d[key], track_meta=False), meta=meta)
            if source.lower().endswith(NIFTI_EXTENSIONS):
                self.saver(img=mask.to(torch.uint8))
            else:
                self.png_saver(img=mask * self.png_scale)
        return d


def _load_chain(keys: list[str], in_channels: int, label_mode: str, label_threshold: float | None):
    _check_choice("label_mode", label_mode, LABEL_MODES)
    chain = [
        LoadImaged(keys="image", image_only=True),
        EnsureChannelFirstd(keys="image"),
        EnsureChannelsd(keys="image", channels=in_channels),
    ]
    if "label" in keys:
        if label_mode == "index":
            chain += [LoadImaged(keys="label", image_only=True), EnsureChannelFirstd(keys="label")]
        else:
            chain.append(LoadMaskd(keys="label", threshold=label_threshold))
        chain.append(EnsureTyped(keys="label", dtype=torch.float32, track_meta=True))
    return chain


def _intensity_chain(intensity: str, in_channels: int):
    _check_choice("intensity", intensity, INTENSITY_MODES)
    if intensity == "minmax":
        return [ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)]
    mean = IMAGENET_MEAN if in_channels == 3 else (float(np.mean(IMAGENET_MEAN)),)
    std = IMAGENET_STD if in_channels == 3 else (float(np.mean(IMAGENET_STD)),)
    return [
        ScaleIntensityRanged(keys="image", a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True),
        # NormalizeIntensity takes per-channel sequences; NormalizeIntensityd's annotation lists only arrays
        NormalizeIntensityd(keys="image", subtrahend=mean, divisor=std, channel_wise=True),  # type: ignore[arg-type]
    ]


def _deterministic(keys, in_channels, spatial_size, spatial_mode, intensity, label_mode, label_threshold) -> list:
    _check_choice("spatial_mode", spatial_mode, SPATIAL_MODES)
    chain = _load_chain(keys, in_channels, label_mode, label_threshold)
    chain += _intensity_chain(intensity, in_channels)
    if spatial_mode == "resize":
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        chain.append(Resized(keys=keys, spatial_size=spatial_size, mode=modes))
    return chain


def train_transforms(
    in_channels: int,
    spatial_size: Sequence[int],
    spatial_mode: str = "crop",
    intensity: str = "minmax",
    label_mode: str = "index",
    label_threshold: float | None = None,
    num_samples: int = 4,
    flip_axes: Sequence[int] = (0, 1),
    rotate90: bool = True,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
) -> Compose:
    """Training chain: load, channels, labels, intensity, (resize), then random crop/flip/rot90/intensity.

    Deterministic transforms come first so that ``CacheDataset`` caches their result.
    ``num_samples`` crops are drawn per image in ``"crop"`` mode (ignored for ``"resize"``).
    ``flip_axes``: spatial axes each flipped with probability 0.5; ``rotate90``: random multiples of 90
    degrees in the first two spatial axes. The defaults (both axes, rotations) suit images whose
    orientation carries no meaning (dermoscopy, endoscopy, histology); images in a standard anatomical
    orientation (e.g. slices registered to MNI space) keep it with ``flip_axes=[0]`` (left-right, the
    brain's near symmetry) and ``rotate90=False``. ``intensity_scale`` / ``intensity_shift``: amplitudes of
    the random intensity scaling (``x * (1 + u)``, ``|u| <= intensity_scale``) and shift (``x + u``,
    ``|u| <= intensity_shift``), each applied with probability 0.5; 0 disables it.
    """
    if not 0 <= intensity_scale < 1:  # a factor 1 + u <= 0 would blank or invert the image
        raise ValueError(f"intensity_scale must be in [0, 1), got {intensity_scale!r}")
    if not intensity_shift >= 0:
        raise ValueError(f"intensity_shift must be >= 0, got {intensity_shift!r}")
    keys = ["image", "label"]
    chain = _deterministic(keys, in_channels, spatial_size, spatial_mode, intensity, label_mode, label_threshold)
    if spatial_mode == "crop":
        chain += [
            SpatialPadd(keys=keys, spatial_size=spatial_size),
            RandSpatialCropSamplesd(keys=keys, roi_size=spatial_size, num_samples=num_samples, random_size=False),
        ]
    chain += [RandFlipd(keys=keys, spatial_axis=int(axis), prob=0.5) for axis in flip_axes]
    if rotate90:
        chain.append(RandRotate90d(keys=keys, prob=0.5, max_k=3))
    if intensity_scale:
        chain.append(RandScaleIntensityd(keys="image", factors=float(intensity_scale), prob=0.5))
    if intensity_shift:
        chain.append(RandShiftIntensityd(keys="image", offsets=float(intensity_shift), prob=0.5))
    chain += [
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),  # plain tensors: faster batches
    ]
    return Compose(chain)


def eval_transforms(
    in_channels: int,
    spatial_size: Sequence[int],
    spatial_mode: str = "crop",
    intensity: str = "minmax",
    label_mode: str = "index",
    label_threshold: float | None = None,
) -> Compose:
    """Validation / evaluation chain (image and label, no randomness)."""
    keys = ["image", "label"]
    chain = _deterministic(keys, in_channels, spatial_size, spatial_mode, intensity, label_mode, label_threshold)
    return Compose(chain + [EnsureTyped(keys=keys, dtype=torch.float32, track_meta=True)])


def inference_transforms(
    in_channels: int,
    spatial_size: Sequence[int],
    spatial_mode: str = "crop",
    intensity: str = "minmax",
) -> Compose:
    """Inference chain (image only): what MONAI Label reads as ``preprocessing``."""
    chain = _deterministic(["image"], in_channels, spatial_size, spatial_mode, intensity, "index", None)
    return Compose(chain + [EnsureTyped(keys="image", dtype=torch.float32, track_meta=True)])


def make_inferer(
    spatial_size: Sequence[int],
    spatial_mode: str = "crop",
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    checkpoint: str | None = None,
):
    """Sliding window of ``spatial_size`` for ``"crop"`` mode, a plain forward pass for ``"resize"``.

    Both check their input (NaN/Inf, channels, dimensions) and refuse NaN/Inf weights or network output
    with a message naming ``checkpoint`` (the weight file, e.g. ``models/model.pt``), instead of writing
    all-background masks (:class:`~medurwkv_net.reliability.SafeSlidingWindowInferer`).
    """
    if _check_choice("spatial_mode", spatial_mode, SPATIAL_MODES) == "resize":
        return SafeSimpleInferer(spatial_dims=len(spatial_size), checkpoint=checkpoint)
    return SafeSlidingWindowInferer(
        roi_size=spatial_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian", checkpoint=checkpoint
    )


def postprocessing(
    num_classes: int,
    spatial_mode: str = "crop",
    preprocessing: Compose | None = None,
    output_dir: str | None = None,
    with_label: bool = False,
    output_postfix: str = "seg",
    png_scale: int | None = None,
) -> Compose:
    """Logits -> class-index mask ``pred``.

    Args:
        num_classes: number of output channels.
        spatial_mode: as for the preprocessing; ``"resize"`` with ``preprocessing`` given inverts the
            resize so that ``pred`` has the original image size (inference). ``"crop"`` predicts on
            the whole image already.
        preprocessing: the chain that produced the input (the same object, as ``@preprocessing``).
        output_dir: when given, ``pred`` is saved there with :class:`SaveMaskd`.
        with_label: also one-hot encode ``label`` and keep ``pred`` one-hot (what MONAI's metric
            handlers want); for validation/evaluation, where metrics are computed at network size.
    """
    _check_choice("spatial_mode", spatial_mode, SPATIAL_MODES)
    chain: list = [Activationsd(keys="pred", softmax=True)]
    if spatial_mode == "resize" and preprocessing is not None and not with_label:
        chain.append(Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False))
    if with_label:
        chain.append(AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=num_classes))
    else:
        chain.append(AsDiscreted(keys="pred", argmax=True))
    if output_dir is not None:
        if with_label:
            raise ValueError("postprocessing: saving masks needs with_label=False (pred must be class indices)")
        chain.append(
            SaveMaskd(
                keys="pred",
                output_dir=output_dir,
                num_classes=num_classes,
                output_postfix=output_postfix,
                png_scale=png_scale,
            )
        )
    return Compose(chain)


#: files in a folder of images that are not inputs: ISIC 2017 superpixel maps, ground-truth masks laid beside
#: their images (``*_segmentation``, ``*_mask``, ``*_mask_1``, GlaS ``*_anno``)
NOT_INPUT = re.compile(r"_(superpixels|segmentation|mask(_\d+)?|anno)$", re.IGNORECASE)


def _stem(name: str, extensions: Sequence[str]) -> str:
    low = name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if low.endswith(ext.lower()):
            return name[: len(name) - len(ext)]
    return name


def list_images(
    folder: str, extensions: Sequence[str] = NIFTI_EXTENSIONS + PHOTO_EXTENSIONS, missing_ok: bool = False
) -> list[dict]:
    """``[{"image": path}, ...]`` for the image files directly in ``folder`` (sorted), for inference.
    Files that are not inputs (:data:`NOT_INPUT`: ``*_superpixels.*``, ``*_segmentation.*``, ``*_mask*.*``,
    ``*_anno.*``) are skipped, so that a release's own image folder can be passed as it is.

    Args:
        folder: the folder of input images (``input_dir`` of the bundles' inference.json).
        extensions: file name endings taken as images (any case).
        missing_ok: return ``[]`` for a folder that does not exist, so that a workflow can be built and
            checked without data; the bundles' ``run`` calls this again without it, which refuses
            a missing or empty folder before the run starts.

    Raises:
        FileNotFoundError: naming the folder and what to pass instead.
    """
    if not os.path.isdir(folder):
        if missing_ok:
            return []
        raise FileNotFoundError(f"input_dir '{folder}' is not a folder: pass --input_dir <folder of images>")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(n for n in os.listdir(folder) if n.lower().endswith(exts) and not n.startswith("."))
    names = [n for n in files if not NOT_INPUT.search(_stem(n, exts))]
    if len(names) < len(files):
        logging.getLogger(__name__).info(
            f"input_dir '{folder}': {len(files) - len(names)} file(s) that are not inputs skipped "
            f"(superpixel maps, masks), e.g. {[n for n in files if n not in names][:3]}"
        )
    if not names:
        raise FileNotFoundError(
            f"input_dir '{folder}' holds no image with extension {list(extensions)}"
            + (f" (only superpixel maps or masks: {files[:3]})" if files else "")
        )
    return [{"image": os.path.join(folder, n)} for n in names]
